//! Starting a probe's process inside a group: in its cgroup, so the process's sockets carry
//! the group's cgroup id (a socket belongs to the cgroup of the process that creates it),
//! and in the network namespace of a process of the group, so it leaves through the group's
//! interfaces. Both are found again for every check: processes come and go.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::process::Command;

use crate::target::{self, ResolvedTarget};

/// A cgroup to join and a network namespace to enter, opened in fault so the child only
/// makes two system calls on descriptors it inherits.
#[derive(Debug, Clone)]
pub(super) struct Place {
    cgroup: PathBuf,
    /// `cgroup.procs` of the cgroup, open for writing.
    procs: Arc<File>,
    /// `/proc/PID/ns/net` of a process of the group.
    netns: Arc<File>,
    /// That process, and its namespace's inode, for messages.
    pid: u32,
    netns_inode: u64,
}

impl Place {
    /// The cgroup, and the namespace of its first process (by pid, descendant cgroups
    /// included) whose namespace opens. Fails, saying why, when there is none.
    pub fn find(cgroup: &Path) -> Result<Place, String> {
        let procs = File::options()
            .write(true)
            .open(cgroup.join("cgroup.procs"))
            .map_err(|e| format!("cannot join cgroup {}: {e}", cgroup.display()))?;
        // `target::pids` walks a cgroup and those below it; id and class are not needed here.
        let group = ResolvedTarget {
            label: String::new(),
            cgroup: cgroup.to_path_buf(),
            cgroup_id: 0,
            class: 0,
            container: None,
        };
        let (pid, netns) = target::pids(&[group])
            .into_iter()
            .find_map(|pid| Some((pid, File::open(format!("/proc/{pid}/ns/net")).ok()?)))
            .ok_or_else(|| {
                format!(
                    "cgroup {} has no process, so no network namespace to probe from",
                    cgroup.display()
                )
            })?;
        let netns_inode = netns.metadata().map(|m| m.ino()).unwrap_or(0);
        Ok(Place {
            cgroup: cgroup.to_path_buf(),
            procs: Arc::new(procs),
            netns: Arc::new(netns),
            pid,
            netns_inode,
        })
    }

    /// `cgroup /sys/fs/cgroup/app, netns 4026532288 (of pid 4242)`.
    pub fn describe(&self) -> String {
        format!(
            "cgroup {}, netns {} (of pid {})",
            self.cgroup.display(),
            self.netns_inode,
            self.pid
        )
    }

    /// Makes `cmd`, between fork and exec, join the cgroup and then the namespace (cgroup
    /// first, so nothing it does in the group's namespace is charged to fault's cgroup). A
    /// failure of either fails the spawn with its errno.
    pub fn enter(&self, cmd: &mut Command) {
        // The descriptors stay open as long as the command (and so this hook) exists.
        let (procs, netns) = (self.procs.clone(), self.netns.clone());
        let hook = move || {
            // Only raw system calls between fork and exec: no allocation, no lock.
            // SAFETY: writing one byte from a static buffer to a descriptor we hold open.
            // "0" moves the writing process itself.
            if unsafe { libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: setns on a namespace descriptor we hold open; it only changes the child.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the hook makes only async-signal-safe system calls (see above).
        unsafe { cmd.pre_exec(hook) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_that_is_not_there_is_a_reason_not_a_panic() {
        let e = Place::find(Path::new("/nonexistent/cgroup")).unwrap_err();
        assert!(
            e.starts_with("cannot join cgroup /nonexistent/cgroup: "),
            "{e}"
        );
    }
}
