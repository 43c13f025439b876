//! Test cgroups in the v2 hierarchy, under `<cgroup2 mount>/fault-test/`.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{cgroup2_mount, unique_name};

/// Parent of every cgroup the harness creates; [`crate::leftovers`] looks under it.
pub(crate) const CGROUP_PARENT: &str = "fault-test";

/// How long a drop waits for killed processes to leave, and for rmdir to stop saying EBUSY.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A cgroup v2 directory, emptied (its processes killed) and removed on drop.
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<cgroup2 mount>/fault-test/<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Self {
        let path = cgroup2_mount().join(CGROUP_PARENT).join(unique_name(name));
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path }
    }

    /// Absolute path of the cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path relative to the cgroup2 mount, with a leading `/` (as /proc/PID/cgroup shows it).
    pub fn relative_path(&self) -> PathBuf {
        let rel = self
            .path
            .strip_prefix(cgroup2_mount())
            .expect("cgroup lives under the cgroup2 mount");
        Path::new("/").join(rel)
    }

    /// The id BPF helpers report (`bpf_get_current_cgroup_id`, `bpf_skb_cgroup_id`): the inode
    /// number of the cgroup's directory.
    pub fn id(&self) -> u64 {
        fs::metadata(&self.path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", self.path.display()))
            .ino()
    }

    /// Pids currently in the cgroup.
    pub fn procs(&self) -> Vec<i32> {
        read_procs(&self.path).unwrap_or_else(|e| panic!("reading cgroup.procs: {e}"))
    }

    /// Moves an existing process into the cgroup.
    pub fn add(&self, pid: u32) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.path.display()));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = kill_all(&self.path) {
            eprintln!("cleanup: emptying cgroup {}: {e}", self.path.display());
        }
        if let Err(e) = rmdir_patiently(&self.path) {
            eprintln!("cleanup: removing cgroup {}: {e}", self.path.display());
        }
        // The shared parent goes when the last test cgroup does; another one may still be in
        // use, which is not an error.
        if let Some(parent) = self.path.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

fn read_procs(dir: &Path) -> io::Result<Vec<i32>> {
    Ok(fs::read_to_string(dir.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// Kills every process in the cgroup and waits until none is left.
pub(crate) fn kill_all(dir: &Path) -> io::Result<()> {
    let kill_file = dir.join("cgroup.kill");
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let procs = read_procs(dir)?;
        if procs.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "processes {procs:?} still there after {DRAIN_TIMEOUT:?}"
            )));
        }
        // cgroup.kill (Linux 5.14) also catches processes forking while we kill.
        if kill_file.exists() {
            fs::write(&kill_file, "1")?;
        } else {
            for pid in procs {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// rmdir can report EBUSY briefly while exiting tasks are released.
pub(crate) fn rmdir_patiently(dir: &Path) -> io::Result<()> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Makes `cmd`, when spawned, move itself into the cgroup at `cgroup_dir` before exec, so that
/// everything it does (and every socket it opens) is charged to that cgroup from the start.
pub fn enter_cgroup<'c>(cmd: &'c mut Command, cgroup_dir: &Path) -> &'c mut Command {
    let procs = CString::new(cgroup_dir.join("cgroup.procs").as_os_str().as_bytes())
        .expect("path without NUL");
    let hook = move || {
        // Only raw syscalls between fork and exec (async-signal-safe, no allocation).
        // SAFETY: `procs` is a valid C string owned by the closure.
        let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // "0" means the writing process itself.
        // SAFETY: writing one byte from a static buffer to an open fd.
        let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        let err = io::Error::last_os_error();
        // SAFETY: fd is ours to close.
        unsafe { libc::close(fd) };
        if written != 1 {
            return Err(err);
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls (see above).
    unsafe { cmd.pre_exec(hook) }
}
