//! Child processes of probes (exec commands, and fault's own `probe-once`): started in a
//! process group of their own, bounded by the check's deadline, killed with everything they
//! started at the deadline, and reaped.

use std::{
    process::{ExitStatus, Stdio},
    sync::Mutex,
    time::Duration,
};

use nix::{sys::signal, unistd::Pid};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _},
    process::Command,
    time::Instant,
};

/// How much of a child's stdout and stderr is kept; the rest is read and dropped, so a
/// chatty command never blocks on a full pipe.
const KEPT: usize = 16 * 1024;

/// How long a child killed at its deadline gets to be reaped before the runtime's orphan
/// reaping takes over (SIGKILL is not refused, but a process in uninterruptible sleep waits).
const REAP_WAIT: Duration = Duration::from_secs(1);

/// The process groups of the children running now, so [`super::Probes::stop`] can kill
/// them at once rather than when the runtime next drops the tasks.
#[derive(Debug, Default)]
pub(super) struct Children(Mutex<Vec<i32>>);

impl Children {
    fn add(&self, pgid: i32) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(pgid);
    }

    fn remove(&self, pgid: i32) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&p| p != pgid);
    }

    /// SIGKILL to every group still registered: their leaders are not reaped yet (see
    /// [`Running`]), so no group id here can belong to anyone else.
    pub fn kill_all(&self) {
        for &pgid in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = signal::killpg(Pid::from_raw(pgid), signal::SIGKILL);
        }
    }
}

/// How a child ended.
#[derive(Debug)]
pub(super) enum Ran {
    Exited {
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
    /// Still running at the deadline: killed (its whole group) and reaped.
    TimedOut,
    /// It could not be started; the reason.
    NotStarted(String),
}

/// A started child's group, registered while its leader is unreaped. Dropped early (the
/// probe task cancelled mid-check), it kills the group; tokio's `kill_on_drop` and orphan
/// reaping take care of the leader.
struct Running<'a> {
    pgid: i32,
    reaped: bool,
    children: &'a Children,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = signal::killpg(Pid::from_raw(self.pgid), signal::SIGKILL);
        }
        self.children.remove(self.pgid);
    }
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) until it exits or `deadline`.
pub(super) async fn run(mut cmd: Command, deadline: Instant, children: &Children) -> Ran {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ran::NotStarted(e.to_string()),
    };
    let Some(pgid) = child.id().map(|p| p as i32) else {
        return Ran::NotStarted("it exited before it could be followed".into());
    };
    children.add(pgid);
    let mut running = Running {
        pgid,
        reaped: false,
        children,
    };
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let ran = tokio::time::timeout_at(deadline, async {
        tokio::join!(child.wait(), keep(out), keep(err))
    })
    .await;
    match ran {
        Ok((Ok(status), stdout, stderr)) => {
            running.reaped = true;
            Ran::Exited {
                status,
                stdout,
                stderr,
            }
        }
        Ok((Err(e), _, _)) => Ran::NotStarted(format!("waiting for it failed: {e}")),
        Err(_) => {
            let _ = signal::killpg(Pid::from_raw(pgid), signal::SIGKILL);
            running.reaped = matches!(
                tokio::time::timeout(REAP_WAIT, child.wait()).await,
                Ok(Ok(_))
            );
            Ran::TimedOut
        }
    }
}

/// Reads `pipe` to its end, keeping the first [`KEPT`] bytes.
async fn keep(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = pipe.read(&mut buf).await {
        let room = KEPT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn soon(ms: u64) -> Instant {
        Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn captures_what_the_child_says() {
        let children = Children::default();
        match run(sh("echo out; echo err >&2; exit 3"), soon(5000), &children).await {
            Ran::Exited {
                status,
                stdout,
                stderr,
            } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!((stdout.as_str(), stderr.as_str()), ("out\n", "err\n"));
            }
            other => panic!("expected an exit, got {other:?}"),
        }
        assert!(children.0.lock().unwrap().is_empty(), "unregistered");
    }

    #[tokio::test]
    async fn kills_the_whole_group_at_the_deadline() {
        let children = Children::default();
        let marker = format!("/tmp/fault-probe-child-test-{}", std::process::id());
        // The grandchild would write the marker after 1 s unless its group dies first.
        let script = format!("(sleep 1; touch {marker}) & sleep 5");
        let begun = std::time::Instant::now();
        let ran = run(sh(&script), soon(200), &children).await;
        let took = begun.elapsed();
        assert!(matches!(ran, Ran::TimedOut), "{ran:?}");
        assert!(took < Duration::from_millis(500), "took {took:?}");
        std::thread::sleep(Duration::from_millis(1200));
        assert!(
            !std::path::Path::new(&marker).exists(),
            "the grandchild was killed with its group"
        );
    }

    #[tokio::test]
    async fn says_why_a_command_does_not_start() {
        let children = Children::default();
        let ran = run(Command::new("/nonexistent/probe"), soon(1000), &children).await;
        assert!(
            matches!(&ran, Ran::NotStarted(e) if e.contains("No such file")),
            "{ran:?}"
        );
    }
}
