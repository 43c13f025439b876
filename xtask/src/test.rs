//! `cargo xtask test`: unit tests, then the privileged suite against the release binary.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{build, cmd, setup};

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

    vm_stage()?;

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

/// Hook for a future stage that boots a qemu guest (another kernel version) and runs the
/// privileged suite inside it; see shared/vm/. It does nothing yet.
fn vm_stage() -> Result<()> {
    Ok(())
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
