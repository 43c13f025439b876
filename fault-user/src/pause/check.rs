//! The cgroups a pause must never freeze. Freezing stops every process below the cgroup,
//! fault included if it is one of them, and a frozen fault thaws nothing: neither at the
//! step's end nor at the run's, and its watchdog (in the same cgroup) is frozen with it.

use std::path::{Path, PathBuf};

use crate::{
    guard::{holds_fault, normal, own_cgroup},
    sys::mounts,
};

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
    holds_fault(cgroup, mount, own).map(|why| {
        format!("{why}: a frozen fault thaws nothing, neither at the step's end nor at the run's")
    })
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
