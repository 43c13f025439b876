//! One experiment's loader: `fault apply FILE` as a child of the agent, with everything a
//! run has (its own heartbeat, watchdog and deadline), so the fail-safe rule holds per
//! experiment. The child dies with the agent (SIGTERM at the agent's death, which reverts
//! it), logs to `/run/fault/NAME/log` (`fault logs NAME`), and says "ready" on a pipe once
//! every fault is in place.

use std::{
    fs::File,
    io::Read as _,
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::fcntl::OFlag;

use crate::{observe, sys::private};

/// How long a loader asked to stop may take to revert before it is killed (its watchdog
/// then reverts what it held).
const STOP_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started; not every fault is in place yet.
    Starting,
    /// Every fault is in place.
    Active,
    /// Asked to revert (SIGTERM) at this moment.
    Stopping(Instant),
}

pub struct Loader {
    child: Child,
    ready: File,
    said: Vec<u8>,
    pub name: String,
    pub hash: u64,
    pub phase: Phase,
}

/// How a loader ended, as its exit status and log tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// Its exit code; `None` when a signal killed it.
    pub code: Option<i32>,
    /// Whether every fault had been in place.
    pub was_active: bool,
    /// What it last said (its "fault: …" line), or how it died.
    pub why: String,
}

impl Loader {
    pub fn start(file: &Path, name: &str, hash: u64) -> anyhow::Result<Loader> {
        let log = log_file(name)?;
        let (ready_r, ready_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).context("make a pipe")?;
        let mut cmd = Command::new(std::env::current_exe().context("find fault")?);
        cmd.arg("apply")
            .arg(file)
            .arg("--ready-fd")
            .arg(ready_w.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("open the log")?)
            .stderr(log);
        tie_to_agent(&mut cmd, &ready_w);
        let child = cmd
            .spawn()
            .with_context(|| format!("start fault apply {}", file.display()))?;
        drop(ready_w);
        Ok(Loader {
            child,
            ready: File::from(ready_r),
            said: Vec::new(),
            name: name.into(),
            hash,
            phase: Phase::Starting,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Takes what happened since the last poll: readiness, or the end.
    pub fn poll(&mut self) -> Option<Ended> {
        if self.phase == Phase::Starting && self.heard_ready() {
            self.phase = Phase::Active;
        }
        if let Phase::Stopping(since) = self.phase {
            if since.elapsed() > STOP_GRACE {
                let _ = self.child.kill();
            }
        }
        let status = self.child.try_wait().ok().flatten()?;
        Some(Ended {
            code: status.code(),
            was_active: self.phase != Phase::Starting || self.heard_ready(),
            why: last_word(&self.name, status),
        })
    }

    /// Asks it to revert (once).
    pub fn stop(&mut self) {
        if matches!(self.phase, Phase::Stopping(_)) {
            return;
        }
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.phase = Phase::Stopping(Instant::now());
    }

    fn heard_ready(&mut self) -> bool {
        let mut buf = [0u8; 16];
        while let Ok(n @ 1..) = self.ready.read(&mut buf) {
            self.said.extend_from_slice(&buf[..n]);
        }
        self.said.starts_with(b"ready")
    }
}

/// The child: its own session (no terminal's signals), SIGTERM when the agent dies, and the
/// ready pipe's write end kept across exec (every other descriptor of the agent is
/// close-on-exec).
fn tie_to_agent(cmd: &mut Command, ready_w: &OwnedFd) {
    let fd = ready_w.as_raw_fd();
    let agent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (setsid, prctl, getppid, fcntl) between fork
    // and exec, touching no memory of the parent's.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The agent died before the line above: nothing would tell this child.
            if libc::getppid() != agent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `/run/fault/NAME/log`, emptied: as a `--detach` run's, so `fault logs NAME` shows it.
fn log_file(name: &str) -> anyhow::Result<File> {
    let path = log_path(name);
    private::dir(&observe::run_dir(name))?;
    private::create(&path)
}

pub fn log_path(name: &str) -> PathBuf {
    observe::run_dir(name).join("log")
}

/// What the loader last said of its end, else how it ended.
fn last_word(name: &str, status: ExitStatus) -> String {
    let text = std::fs::read_to_string(log_path(name)).unwrap_or_default();
    let said = text
        .lines()
        .rev()
        .find(|l| l.starts_with("fault: ") && !l.contains(" ready: "))
        .map(|l| l.trim_start_matches("fault: ").to_owned());
    match (said, status.signal()) {
        (_, Some(sig)) => format!("killed by signal {sig}"),
        (Some(s), None) => s,
        (None, None) => format!("exited with {status}"),
    }
}
