//! Blast-radius guards: targets that would reach the whole host, or fault itself, are
//! refused at plan time unless the policy says `spec.allow_host_wide: true`. A zombie or
//! exiting process is refused either way: it has nothing left to fault.
//!
//! What reaches the whole host: the cgroup2 root (every process), pid 1 (the host's init)
//! and kernel threads (their cgroup is the root), fault's own cgroup and its ancestors (the
//! loader, its watchdog and its probes would be faulted too), and a cgroup holding most of
//! the host's processes.

use std::path::{Component, Path, PathBuf};

use crate::{
    error::Error,
    policy::{Policy, TargetSpec},
    sys::{mounts, proc},
    target::{Resolved, ResolvedTarget},
};

/// A cgroup holding more than this share of the host's processes is host-wide.
const HOST_SHARE: f64 = 0.5;
/// ... on a host with at least this many (a tiny VM's few processes prove nothing).
const HOST_SHARE_MIN: usize = 20;
/// `/proc/PID/stat` flags: a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

const OVERRIDE: &str = "set spec.allow_host_wide: true to fault it anyway";

fn refuse(policy: &Policy) -> impl Fn(String) -> Error + '_ {
    |reason| Error::Refused {
        file: policy.file.clone(),
        reason,
    }
}

/// Refuses the policy's pid targets that are exited, and those that are the host's init or
/// kernel threads (unless allowed): before they are resolved.
pub fn check_pids(policy: &Policy) -> Result<(), Error> {
    let specs = policy
        .targets
        .iter()
        .chain(policy.groups.iter().flat_map(|g| &g.targets));
    for spec in specs {
        if let TargetSpec::Pid(pid) = spec {
            check_pid(*pid, policy.allow_host_wide).map_err(refuse(policy))?;
        }
    }
    Ok(())
}

/// Refuses the policy's resolved targets that reach the whole host or fault itself (naming
/// the target and why), unless allowed.
pub fn check(policy: &Policy, resolved: &Resolved) -> Result<(), Error> {
    check_targets(policy, &resolved.targets)
}

/// [`check`] on some targets: those resolved at the start, or one found again later.
pub fn check_targets(policy: &Policy, targets: &[ResolvedTarget]) -> Result<(), Error> {
    let refuse = refuse(policy);
    if policy.allow_host_wide {
        return Ok(());
    }
    let mount = mounts::cgroup2_mount()
        .map_err(|e| refuse(format!("cannot find the cgroup2 mount: {e}")))?;
    let mount = normal(&mount);
    let own = own_cgroup(&mount).map_err(&refuse)?;
    let host = process_count(Path::new("/proc"));
    for t in targets {
        let cgroup = normal(&t.cgroup);
        if let Some(why) = host_wide(&cgroup, &mount, &own, host) {
            return Err(refuse(format!("target {}: {why}; {OVERRIDE}", t.label)));
        }
    }
    Ok(())
}

/// Why `pid` may not be a target: always when it is exiting, unless `allow` when it is the
/// host's init or a kernel thread.
fn check_pid(pid: u32, allow: bool) -> Result<(), String> {
    let Some(stat) = proc::stat(pid) else {
        return Ok(()); // gone: resolving says so
    };
    if stat.is_dead() {
        return Err(format!(
            "target pid {pid}: the process has exited (a zombie) and has nothing left to fault"
        ));
    }
    if allow {
        return Ok(());
    }
    if pid == 1 {
        return Err(format!(
            "target pid 1: it is the host's init, and its cgroup holds the host; {OVERRIDE}"
        ));
    }
    if stat.flags & PF_KTHREAD != 0 {
        return Err(format!(
            "target pid {pid}: it is a kernel thread, whose cgroup is the host's root; {OVERRIDE}"
        ));
    }
    Ok(())
}

/// Why faulting `cgroup` reaches the whole host or fault itself, if it does; the paths are
/// normal, `host` counts the host's processes.
fn host_wide(cgroup: &Path, mount: &Path, own: &Path, host: usize) -> Option<String> {
    if let Some(why) = holds_fault(cgroup, mount, own) {
        return Some(why);
    }
    let inside = crate::target::subtree_pids(cgroup).len();
    let share = inside as f64 / host.max(1) as f64;
    (host >= HOST_SHARE_MIN && share > HOST_SHARE).then(|| {
        format!(
            "cgroup {} holds {inside} of the host's {host} processes ({:.0} %, over {:.0} %)",
            cgroup.display(),
            share * 100.0,
            HOST_SHARE * 100.0
        )
    })
}

/// Why `cgroup` is the root or holds fault itself, if it is or does; the paths are normal.
pub fn holds_fault(cgroup: &Path, mount: &Path, own: &Path) -> Option<String> {
    if cgroup == mount {
        return Some(format!(
            "{} is the cgroup2 root, which holds every process on the host",
            cgroup.display()
        ));
    }
    if cgroup == own {
        return Some(format!(
            "{} is fault's own cgroup (the loader, its watchdog and probes run there)",
            cgroup.display()
        ));
    }
    own.starts_with(cgroup).then(|| {
        format!(
            "{} holds fault's own cgroup {} (the loader, its watchdog and probes run there)",
            cgroup.display(),
            own.display()
        )
    })
}

/// Processes on the host (every numeric entry of /proc).
fn process_count(proc: &Path) -> usize {
    std::fs::read_dir(proc).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .count()
    })
}

/// fault's own cgroup directory, from the cgroup2 line of /proc/self/cgroup (`0::/path`).
pub fn own_cgroup(mount: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read fault's own cgroup from /proc/self/cgroup: {e}"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("fault itself is in no cgroup2 cgroup (/proc/self/cgroup has no 0:: line)")?;
    Ok(normal(&mount.join(rel.trim_start_matches('/'))))
}

/// The path with symbolic links resolved where it exists, and `.` and `..` taken out
/// either way, so that two spellings of one cgroup compare equal.
pub fn normal(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_fault_s_own_cgroup_and_its_ancestors_hold_fault() {
        let (mount, own) = (Path::new("/cg"), Path::new("/cg/a/b"));
        assert!(holds_fault(Path::new("/cg"), mount, own)
            .unwrap()
            .contains("cgroup2 root"));
        assert!(holds_fault(Path::new("/cg/a/b"), mount, own)
            .unwrap()
            .contains("own cgroup"));
        assert!(holds_fault(Path::new("/cg/a"), mount, own)
            .unwrap()
            .contains("holds fault's"));
        assert_eq!(holds_fault(Path::new("/cg/a/c"), mount, own), None);
        assert_eq!(holds_fault(Path::new("/cg/a/b/c"), mount, own), None);
    }

    #[test]
    fn the_host_has_processes_and_this_one_is_no_kernel_thread() {
        assert!(process_count(Path::new("/proc")) >= 1);
        assert_eq!(check_pid(std::process::id(), false), Ok(()));
    }
}
