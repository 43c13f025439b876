//! `cargo xtask build`: the release `fault` binary.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cmd;

/// Builds `fault` in release mode and returns the binary's path. fault-user's build.rs
/// compiles the eBPF crate on nightly (through aya-build) and embeds the object.
pub fn fault(root: &Path) -> Result<PathBuf> {
    let mut c = cmd::cargo();
    c.current_dir(root)
        .args(["build", "--release", "-p", "fault-user"]);
    cmd::run(&mut c)?;
    Ok(crate::target_dir(root).join("release/fault"))
}

/// Builds the traffic probe the tests and the demo use; returns its path.
pub fn probe(root: &Path) -> Result<PathBuf> {
    let mut c = cmd::cargo();
    c.current_dir(root).args([
        "build",
        "--release",
        "-p",
        "fault-tests",
        "--bin",
        "fault-probe",
    ]);
    cmd::run(&mut c)?;
    Ok(crate::target_dir(root).join("release/fault-probe"))
}
