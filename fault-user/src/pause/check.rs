//! The cgroups a pause must never freeze. Freezing stops every process below the cgroup,
//! fault included if it is one of them, and a frozen fault thaws nothing: neither at the
//! step's end nor at the run's, and its watchdog (in the same cgroup) is frozen with it.

use std::path::{Component, Path, PathBuf};

use crate::sys::mounts;

/// Refuses cgroups that must never be frozen: the cgroup2 root, fault's own cgroup, and any
/// ancestor of fault's own cgroup (freezing it freezes fault). Err(message naming the cgroup
/// and why).
pub fn check_cgroups(cgroups: &[PathBuf]) -> Result<(), String> {
    let mount =
        mounts::cgroup2_mount().map_err(|e| format!("cannot find the cgroup2 mount: {e}"))?;
    let mount = normal(&mount);
    let own = own_cgroup(&mount)?;
    for c in cgroups.iter().map(|c| normal(c)) {
        if let Some(why) = refusal(&c, &mount, &own) {
            return Err(format!("cannot pause cgroup {}: {why}", c.display()));
        }
    }
    Ok(())
}

/// Why `cgroup` must not be frozen, if it must not; all three paths are normal.
fn refusal(cgroup: &Path, mount: &Path, own: &Path) -> Option<String> {
    if cgroup == mount {
        return Some(
            "it is the cgroup2 root, which holds every process on the host (and the kernel \
             cannot freeze it)"
                .into(),
        );
    }
    if cgroup == own {
        return Some(
            "it is fault's own cgroup: fault would freeze itself, and nothing would thaw it".into(),
        );
    }
    own.starts_with(cgroup).then(|| {
        format!(
            "it holds fault's own cgroup {}: fault would freeze itself, and nothing would \
             thaw it",
            own.display()
        )
    })
}

/// fault's own cgroup directory, from the cgroup2 line of /proc/self/cgroup (`0::/path`).
fn own_cgroup(mount: &Path) -> Result<PathBuf, String> {
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
fn normal(path: &Path) -> PathBuf {
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

    const MOUNT: &str = "/sys/fs/cgroup/unified";
    const OWN: &str = "/sys/fs/cgroup/unified/user.slice/session-3.scope";

    fn refused(cgroup: &str) -> Option<String> {
        refusal(Path::new(cgroup), Path::new(MOUNT), Path::new(OWN))
    }

    #[test]
    fn the_root_fault_s_own_cgroup_and_its_ancestors_are_refused() {
        assert!(refused(MOUNT).unwrap().contains("cgroup2 root"));
        assert!(refused(OWN).unwrap().contains("fault's own cgroup"));
        let parent = refused("/sys/fs/cgroup/unified/user.slice").unwrap();
        assert!(
            parent.contains(&format!("holds fault's own cgroup {OWN}")),
            "{parent}"
        );
    }

    #[test]
    fn siblings_and_descendants_may_be_paused() {
        assert_eq!(
            refused("/sys/fs/cgroup/unified/user.slice/session-30.scope"),
            None
        );
        assert_eq!(
            refused("/sys/fs/cgroup/unified/system.slice/pg.service"),
            None
        );
        assert_eq!(refused(&format!("{OWN}/child")), None);
    }

    #[test]
    fn spellings_of_one_cgroup_compare_equal() {
        let spelled = normal(Path::new(
            "/nonexistent/cgroup/./user.slice/../user.slice/session-3.scope",
        ));
        assert_eq!(
            spelled,
            Path::new("/nonexistent/cgroup/user.slice/session-3.scope")
        );
    }
}
