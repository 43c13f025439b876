//! `cargo xtask test`: unit tests, then the privileged suite against the release binary.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::{build, cmd, setup};

/// How long `cargo xtask test` fuzzes each target.
const FUZZ_SECONDS: u64 = 20;

pub fn run(root: &Path) -> Result<()> {
    // Checked first so nothing is built for a run that cannot finish: the suite creates
    // network namespaces, cgroups and BPF links.
    if !is_root()? {
        bail!("`cargo xtask test` needs root (the privileged suite creates namespaces, cgroups and BPF links); run it with sudo");
    }
    setup::ensure()?;
    let fault = build::fault(root)?;
    let target = crate::target_dir(root);
    let mut probe_build = cmd::cargo();
    probe_build
        .current_dir(root)
        .args(["build", "--release", "-p", "fault-tests", "--bins"]);
    cmd::run(&mut probe_build)?;
    let probe = target.join("release/fault-probe");

    let mut stages: Vec<(&str, Option<i32>)> = Vec::new();

    // Stage 1: tests that need neither root nor the kernel.
    let mut unit = cmd::cargo();
    unit.current_dir(root)
        .args(["test", "--workspace", "--exclude", "fault-tests"]);
    stages.push(("unit tests", exit_code(&mut unit)?));

    // Stage 1b: a short fuzzing run of each target (`cargo xtask fuzz` runs longer ones).
    let fuzzed = crate::fuzz::run(root, FUZZ_SECONDS).map_or_else(
        |err| {
            eprintln!("xtask test: fuzzing: {err:#}");
            Some(1)
        },
        |()| None,
    );
    stages.push(("fuzzing", fuzzed));

    // Stage 2: real attachments on namespaces and cgroups, one test at a time because they
    // share the host's BPF and cgroup state.
    let mut privileged = cmd::cargo();
    privileged
        .current_dir(root)
        .args([
            "test",
            "--release",
            "-p",
            "fault-tests",
            "--",
            "--test-threads=1",
        ])
        .env("FAULT_BIN", &fault)
        .env("FAULT_PROBE", &probe);
    stages.push(("privileged tests", exit_code(&mut privileged)?));

    // Stage 3: the same suite on the other kernel the product targets.
    let guest = vm_stage(root, &fault, &probe, "6.1", skip_in_guest).unwrap_or_else(|err| {
        eprintln!("xtask test: the qemu guest stage could not run: {err:#}");
        Some(1)
    });
    stages.push(("privileged tests in the 6.1 guest", guest));

    // Stage 4: 6.12 (trixie's kernel), the first guest with both tcx and fq.
    let guest = vm_stage(root, &fault, &probe, "6.12", skip_in_guest).unwrap_or_else(|err| {
        eprintln!("xtask test: the 6.12 guest stage could not run: {err:#}");
        Some(1)
    });
    stages.push(("privileged tests in the 6.12 guest", guest));

    // Stage 5: 5.10 (bullseye's kernel): clsact, fq without bpf_skb_set_tstamp, no netns
    // cookie, no tcx.
    let guest = vm_stage(root, &fault, &probe, "5.10", skip_in_5_10).unwrap_or_else(|err| {
        eprintln!("xtask test: the 5.10 guest stage could not run: {err:#}");
        Some(1)
    });
    stages.push(("privileged tests in the 5.10 guest", guest));

    let summary: Vec<String> = stages
        .iter()
        .map(|(name, failed)| match failed {
            None => format!("{name} passed"),
            Some(code) => format!("{name} FAILED (exit {code})"),
        })
        .collect();
    println!("xtask test: {}", summary.join("; "));
    if let Some(code) = stages.iter().find_map(|(_, failed)| *failed) {
        std::process::exit(code);
    }
    Ok(())
}

/// Runs the privileged test binaries that `skip` keeps in a qemu guest booting Debian's
/// `kernel` (see vm.rs): 6.1 (bookworm) has clsact instead of tcx, sch_fq and netem; 6.12
/// (trixie) has tcx and fq both; neither has lockdown. One boot for all of them, since each
/// boot costs seconds under TCG. The container tests skip themselves there (no podman in
/// the guest). `None` when every binary passed.
fn vm_stage(
    root: &Path,
    fault: &Path,
    probe: &Path,
    kernel: &str,
    skip: fn(&str) -> Option<&'static str>,
) -> Result<Option<i32>> {
    let mut binaries = integration_test_binaries(root)?;
    if binaries.is_empty() {
        bail!("cargo reported no test binaries for fault-tests");
    }
    binaries.retain(|(name, _)| {
        let Some(why) = skip(name) else {
            return true;
        };
        println!("xtask test: the {kernel} guest skips the {name} suite ({why})");
        false
    });
    let mut command: Vec<String> = [
        "env".to_string(),
        format!("FAULT_BIN={}", fault.display()),
        format!("FAULT_PROBE={}", probe.display()),
        "sh".into(),
        "-c".into(),
        GUEST_SUITE.into(),
        "guest-suite".into(),
    ]
    .into();
    for (name, path) in binaries {
        command.push(name);
        command.push(path.display().to_string());
    }
    println!("xtask test: booting the {kernel} guest for the privileged suite");
    let code = crate::vm::run_in_guest(root, kernel, &command)?;
    Ok((code != 0).then_some(code))
}

/// Why the guests (5.10, 6.1, 6.12) skip a suite, if they do. The clock and kills suites check readings
/// to the millisecond; under TCG emulation the guest's own timing is coarser than that, so
/// they run on the host kernel only. The observe and report suites check fault's own output
/// with host tools the guest image lacks (promtool, chromium); nothing in them depends on
/// the kernel beyond what the other suites cover there.
fn skip_in_guest(name: &str) -> Option<&'static str> {
    let why = match name {
        "clock" | "kills" => "millisecond timing checks do not hold under emulation",
        "campaigns" => {
            "its 100 kills and 200 cycles take 3 minutes on the host and many times that \
                 under emulation, past CI's limit; each kind it kills is proven in the guest \
                 by the other suites"
        }
        "observe" | "report" => {
            "it checks fault's output with promtool and chromium, which the guest lacks"
        }
        "agent" => {
            "it checks the agent's metrics with promtool, which the guest lacks; what the \
             agent puts in the kernel is `fault apply`'s, which the other suites prove there"
        }
        "deploy" => {
            "it checks the Kubernetes manifests with kubernetes-validate and builds an image \
             with podman, which the guest lacks; no kernel is involved"
        }
        "pods" => {
            "it runs pods on containerd through the CRI, which the guest lacks; the faults it \
             puts on them are `fault apply`'s, which the other suites prove there"
        }
        "cri_harness" => {
            "it runs pods through a private containerd with podman's images, and the guest \
             has neither containerd nor podman; it proves the harness, not the kernel"
        }
        "docker" => {
            "it runs containers on a private dockerd with podman's image, and the guest has \
             neither dockerd nor podman; the faults it puts on them are `fault apply`'s, which \
             the other suites prove there"
        }
        _ => return None,
    };
    Some(why)
}

/// What the 5.10 guest skips: what every guest skips, and the rawclock suite. Under qemu's
/// TCG, 5.10 twice livelocked both vCPUs in CI at one instruction of the system-call exit
/// path (soft lockups at `syscall_exit_to_user_mode+0xb3`, the loader just back from a
/// bpf() call) while the rewrite's sys_enter/sys_exit raw tracepoints were attached or
/// detached, and the guest ran out its 1800 s. The suite passed in 5.10 each of the four
/// times it was run alone here; it runs on 6.1 and 6.12 in CI.
fn skip_in_5_10(name: &str) -> Option<&'static str> {
    match name {
        "rawclock" => Some(
            "under emulation 5.10 can livelock at the system-call exit path as the rewrite's \
             raw tracepoints attach or detach (twice in CI); run it alone with `cargo xtask vm \
             --kernel 5.10`",
        ),
        _ => skip_in_guest(name),
    }
}

/// Runs in the guest with NAME PATH pairs: each binary one test at a time, then each one's
/// `test result:` line again, so a CI log shows the outcome in one place.
const GUEST_SUITE: &str = r#"
summary=/tmp/fault-suite-summary
: >$summary
failed=0
while [ $# -ge 2 ]; do
    name=$1
    bin=$2
    shift 2
    echo "==> $name (kernel $(uname -r), qemu guest)"
    { "$bin" --test-threads=1; echo $? >/tmp/fault-suite-rc; } 2>&1 | tee /tmp/fault-suite-log
    rc=$(cat /tmp/fault-suite-rc)
    result=$(grep '^test result:' /tmp/fault-suite-log | tail -n 1)
    echo "guest $(uname -r) $name: ${result:-no test result} (exit $rc)" >>$summary
    [ "$rc" = 0 ] || failed=$rc
done
cat $summary
exit $failed
"#;

/// The integration-test executables of fault-tests (target kind `test`), by target name, from
/// cargo's JSON messages. Read by hand: xtask keeps to std, anyhow and clap.
fn integration_test_binaries(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut c = cmd::cargo();
    c.current_dir(root)
        .args([
            "test",
            "--release",
            "-p",
            "fault-tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit());
    let out = c
        .output()
        .with_context(|| format!("cannot start `{}`", cmd::display(&c)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", cmd::display(&c), out.status);
    }
    let mut binaries: Vec<(String, PathBuf)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(r#""reason":"compiler-artifact""#))
        .filter_map(|line| {
            let (_, target) = line.split_once(r#""target":{"#)?;
            let (_, kinds) = target.split_once(r#""kind":["#)?;
            let kinds = kinds.split(']').next()?;
            if !kinds.split(',').any(|k| k == r#""test""#) {
                return None;
            }
            let name = json_string(target, "name")?;
            let executable = json_string(line, "executable")?;
            Some((name, PathBuf::from(executable)))
        })
        .collect();
    binaries.sort();
    Ok(binaries)
}

/// The first string value of `"key":"..."` in `json`, unescaped (enough for names and paths).
fn json_string(json: &str, key: &str) -> Option<String> {
    let (_, rest) = json.split_once(&format!(r#""{key}":""#))?;
    let mut value = String::new();
    let mut chars = rest.chars();
    loop {
        match chars.next()? {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
}

/// Runs with inherited stdio: `None` on success, else the exit code to propagate.
fn exit_code(c: &mut Command) -> Result<Option<i32>> {
    let status = c
        .status()
        .with_context(|| format!("cannot start `{}`", cmd::display(c)))?;
    Ok((!status.success()).then(|| status.code().unwrap_or(1)))
}

/// The owner of /proc/self is the effective uid of the process reading it.
fn is_root() -> Result<bool> {
    Ok(std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid()
        == 0)
}
