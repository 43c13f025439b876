//! `cargo xtask fuzz [--time SECS]`: runs each cargo-fuzz target of fault-user/fuzz (parse,
//! validate and compile of a FaultPolicy, and of an Experiment) for SECS seconds on a seed
//! corpus made from policies/ and from inputs that once hurt. libFuzzer's own limits make a
//! bound a failure: an input taking over a second, an allocation over 64 MiB.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd;

/// The targets, with the `kind` each one writes in front of the fuzzer's bytes.
const TARGETS: &[(&str, &str)] = &[("policy", "FaultPolicy"), ("experiment", "Experiment")];

/// Inputs the issue found hostile, as seeds (in front of them each target writes
/// `apiVersion` and `kind`).
fn hostile_seeds() -> Vec<(&'static str, String)> {
    vec![
        (
            "deep-flow",
            format!("spec: {}{}\n", "[".repeat(200), "]".repeat(200)),
        ),
        (
            "many-ports",
            format!(
                "metadata: {{name: p}}\nspec:\n  duration: 1s\n  targets: [{{pid: 1}}]\n  \
                 network:\n    - direction: egress\n      match: {{ports: [{}]}}\n      \
                 drop: {{probability: 1%}}\n",
                (1..2000)
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ),
        (
            "huge-delay",
            "metadata: {name: p}\nspec:\n  duration: 1s\n  targets: [{pid: 1}]\n  network:\n    \
             - direction: egress\n      delay: {latency: 99999999999h, jitter: 99999999999h}\n"
                .into(),
        ),
        ("option-name", "metadata: {name: --all}\n".into()),
        ("bom", "\u{feff}metadata: {name: p}\n".into()),
    ]
}

pub fn run(root: &Path, seconds: u64) -> Result<()> {
    crate::setup::ensure()?;
    for (target, kind) in TARGETS {
        let corpus = corpus(root, kind, target)?;
        let mut c = Command::new("rustup");
        c.current_dir(root)
            .args(["run", "nightly", "cargo", "fuzz", "run", "--fuzz-dir"])
            .arg(root.join("fault-user/fuzz"))
            .arg(target)
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-timeout=1",
                "-malloc_limit_mb=64",
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ]);
        println!(
            "xtask fuzz: {target} for {seconds} s ({})",
            cmd::display(&c)
        );
        cmd::run(&mut c).with_context(|| format!("fuzz target {target} failed"))?;
    }
    check_corpus(root)
}

/// The product itself on every input the fuzzer kept: one release `fault check` over all
/// of them must answer each (exit 0 or 2, never a panic) within [`MAX_RSS_KIB`].
fn check_corpus(root: &Path) -> Result<()> {
    let fault = crate::build::fault(root)?;
    let out = crate::target_dir(root).join("fuzz-check");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let mut files = Vec::new();
    for (target, kind) in TARGETS {
        let dir = crate::target_dir(root).join("fuzz-corpus").join(target);
        for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let path = entry?.path();
            let mut text = format!("apiVersion: fault/v1\nkind: {kind}\n").into_bytes();
            text.extend(std::fs::read(&path)?);
            let file = out.join(format!("{target}-{}.yaml", files.len()));
            std::fs::write(&file, text)?;
            files.push(file);
        }
    }
    let begun = std::time::Instant::now();
    let mut c = Command::new(&fault);
    c.arg("check")
        .args(&files)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let (code, peak_kib) = run_measured(&mut c)?;
    println!(
        "xtask fuzz: fault check read the {} inputs of the corpus in {:.2} s, exit {code}, \
         peak RSS {} KiB",
        files.len(),
        begun.elapsed().as_secs_f64(),
        peak_kib
    );
    if !matches!(code, 0 | 2) {
        anyhow::bail!("fault check exited {code} on the corpus (a panic is 101)");
    }
    if peak_kib > MAX_RSS_KIB {
        anyhow::bail!("fault check peaked at {peak_kib} KiB, over {MAX_RSS_KIB} KiB");
    }
    Ok(())
}

/// The bound on `fault check`'s memory across the corpus: 64 MiB.
const MAX_RSS_KIB: i64 = 64 * 1024;

/// Runs `cmd` to its end; its exit code (or 128 + signal) and its peak RSS in KiB.
fn run_measured(cmd: &mut Command) -> Result<(i32, i64)> {
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::display(cmd)))?;
    let mut status = 0;
    // SAFETY: rusage is plain integers; all zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: valid out pointers; the pid is our unreaped child.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        anyhow::bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let code = match libc::WIFEXITED(status) {
        true => libc::WEXITSTATUS(status),
        false => 128 + libc::WTERMSIG(status),
    };
    Ok((code, usage.ru_maxrss))
}

/// The target's corpus directory, with the seeds in it: every example policy of `kind`
/// without its first two lines (the target writes them), and the hostile inputs.
fn corpus(root: &Path, kind: &str, target: &str) -> Result<PathBuf> {
    let dir = crate::target_dir(root).join("fuzz-corpus").join(target);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let examples = root.join("policies");
    for entry in std::fs::read_dir(&examples).context("list policies/")? {
        let path = entry?.path();
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        if !text.contains(&format!("kind: {kind}\n")) {
            continue;
        }
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("apiVersion:") && !l.starts_with("kind:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let name = path.file_stem().unwrap_or_default().to_string_lossy();
        std::fs::write(dir.join(format!("seed-{name}")), body)?;
    }
    for (name, body) in hostile_seeds() {
        std::fs::write(dir.join(format!("seed-{name}")), body)?;
    }
    Ok(dir)
}
