//! Harness for fault's privileged integration tests (tier 2 in STYLE.md).
//!
//! Every piece of kernel state a test creates is held by a guard whose `Drop` undoes it, so a
//! failing (panicking) test still leaves the machine as it found it. Drops never panic: a
//! cleanup that fails is reported on stderr, and [`assert_no_leftovers`] catches what remains.
//!
//! Tests run one at a time (`--test-threads=1`): they share the host's BPF and cgroup state.

pub mod abs_wait;
pub mod browser;
mod cgroup;
mod container;
mod cri;
mod docker;
mod fault;
mod hosts;
mod leftovers;
mod mesh;
mod netns;
mod process;
mod serve;
mod traffic;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

pub use cgroup::{enter_cgroup, Cgroup};
pub use container::{podman_available, Container, IMAGE_BUSYBOX, IMAGE_PYTHON};
pub use cri::{Containerd, Pod, IMAGE_PAUSE};
pub use docker::{docker_cli, DockerContainer, Dockerd};
pub use fault::{
    fault, fault_bin, fault_ok, forget_attachments, status_rules, write_policy, FaultApply,
    PolicyFile, STATE_DIR,
};
pub use hosts::{anchor, hosts, Hosts};
pub use leftovers::{assert_no_leftovers, leftovers};
pub use mesh::{mesh, Mesh, MeshHost, Reach};
pub use netns::{enter_netns, Netns, VethPair};
pub use process::{
    probe, probe_bin, probe_json, run_at, run_in, spawn_at, spawn_in, vdso_of, ChildGuard, Place,
};
pub use serve::{serve, Reply, Server};
pub use traffic::{udp, udp_at};

/// CLOCK_MONOTONIC now, in ns: the clock the tests, fault-probe and the programs share, so
/// their moments compare across processes.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: one timespec to write into; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Whether the running kernel is older than `major.minor` (from /proc/sys/kernel/osrelease).
pub fn kernel_before(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    version < (major, minor)
}

/// Panics unless the test runs as root (the suite needs CAP_SYS_ADMIN and CAP_BPF).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (euid is {euid}): run the suite through `sudo cargo xtask test`"
    );
}

/// Where the cgroup v2 hierarchy is mounted, read from /proc/self/mountinfo (on these hybrid
/// machines it is /sys/fs/cgroup/unified, elsewhere usually /sys/fs/cgroup).
pub fn cgroup2_mount() -> PathBuf {
    static MOUNT: OnceLock<PathBuf> = OnceLock::new();
    MOUNT
        .get_or_init(|| {
            let info = std::fs::read_to_string("/proc/self/mountinfo")
                .expect("reading /proc/self/mountinfo");
            parse_cgroup2_mount(&info).expect("no cgroup2 mount in /proc/self/mountinfo")
        })
        .clone()
}

/// mountinfo lines: `id parent maj:min root mountpoint opts [optional...] - fstype source ...`.
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = before.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `<label>-<pid>-<n>`: unique within this machine while the process lives, and traceable to
/// the test binary that made it.
pub fn unique_name(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{label}-{}-{n}", std::process::id())
}

/// Runs to completion and returns the output; panics only if the program cannot start.
pub fn output_of(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", display(cmd)))
}

/// Runs to completion and returns stdout; panics with stderr on a non-zero exit.
pub fn check(cmd: &mut Command) -> String {
    let out = output_of(cmd);
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}{}",
        display(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`check`] but for Drop impls: failures go to stderr, never a panic.
fn check_quietly(cmd: &mut Command) -> bool {
    match cmd.output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!(
                "cleanup: `{}` failed ({}): {}",
                display(cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("cleanup: cannot start `{}`: {e}", display(cmd));
            false
        }
    }
}

fn display(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Says why a test returns without testing, past libtest's output capture (which takes only
/// `print!`/`eprint!`), so the reason shows in every run.
pub fn skip(reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {reason}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let info = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_cgroup2_mount(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn unescapes_octal_in_mount_points() {
        assert_eq!(unescape_mountinfo(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
    }
}
