//! The process that patches and reverts targets, so that the loader's death cannot leave
//! one half patched.
//!
//! While a process is being patched its threads are stopped under ptrace, and for the few
//! microseconds of each system call fault makes in it, one thread holds registers that are
//! not its own (see `super::inject`). If the tracer dies then, the kernel lets the threads
//! go as they are: that one at a `syscall` instruction with fault's arguments. Anywhere
//! else a dead tracer leaves the threads as they were found, but a patch cut short in the
//! middle is a leftover for `fault stop`. The loader can be SIGKILLed at any moment, so it
//! is not the tracer: it hands each patch and revert to this helper
//! (`fault injector`, started once per run, one JSON line per request and per reply over
//! its stdin and stdout), which finishes every transaction it starts whatever happens to
//! the loader. It runs in a session of its own, ignores SIGINT, SIGTERM, SIGHUP and
//! SIGPIPE, asks the OOM killer to spare it, and exits when its stdin closes, that is when
//! the loader is gone.
//!
//! A patch the helper completes after the loader died does no harm: its parameter page has
//! no lease, so the process reads true time (see `crate::lease`).

use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde::{Deserialize, Serialize};

use super::layout::Plan;
use super::patch::{self, PatchError, Patched, ProcessError};

/// The name of the test hook: the helper sleeps this many milliseconds inside each patch,
/// after its first system call in the target, so a test can kill the loader right there.
pub const HOLD_ENV: &str = "FAULT_TEST_PATCH_HOLD_MS";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Patch {
        pid: u32,
        plan: Vec<u8>,
    },
    Revert {
        pid: u32,
        start_time: u64,
        base: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Patched {
        start_time: u64,
        base: u64,
        adopted: bool,
        stopped_us: u64,
        threads: usize,
    },
    Reverted {
        restored: bool,
    },
    Failed {
        error: String,
    },
}

/// The loader's end of a running helper.
pub struct Injector {
    child: Child,
    to: Option<ChildStdin>,
    from: BufReader<ChildStdout>,
}

impl Injector {
    /// Starts the helper (this same binary, `fault injector`).
    pub fn spawn() -> io::Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("injector")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: setsid is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| match libc::setsid() {
                -1 => Err(io::Error::last_os_error()),
                _ => Ok(()),
            });
        }
        let mut child = cmd.spawn()?;
        let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(io::Error::other("the helper's pipes were not made"));
        };
        Ok(Injector {
            child,
            to: Some(to),
            from: BufReader::new(from),
        })
    }

    /// Patches `pid` for `plan` (see [`patch::patch`]), through the helper.
    pub fn patch(&mut self, pid: u32, plan: &Plan) -> Result<Patched, ProcessError> {
        let request = Request::Patch {
            pid,
            plan: plan.encode(),
        };
        match self.ask(&request).map_err(|e| failed(pid, e))? {
            Reply::Patched {
                start_time,
                base,
                adopted,
                stopped_us,
                threads,
            } => Patched::reopen(pid, start_time, base, adopted, stopped_us, threads),
            Reply::Failed { error } => Err(failed_as(pid, error)),
            Reply::Reverted { .. } => Err(failed(pid, io::Error::other("answered out of turn"))),
        }
    }

    /// Reverts a process this run patched (see [`patch::revert_patched`]), through the
    /// helper; false if there was nothing left to restore.
    pub fn revert(&mut self, p: &Patched) -> Result<bool, ProcessError> {
        // The fault ends at this store, before any thread is stopped.
        p.shared().expire();
        let request = Request::Revert {
            pid: p.pid,
            start_time: p.start_time,
            base: p.base,
        };
        match self.ask(&request).map_err(|e| failed(p.pid, e))? {
            Reply::Reverted { restored } => Ok(restored),
            Reply::Failed { error } => Err(failed_as(p.pid, error)),
            Reply::Patched { .. } => Err(failed(p.pid, io::Error::other("answered out of turn"))),
        }
    }

    fn ask(&mut self, request: &Request) -> io::Result<Reply> {
        let to = self
            .to
            .as_mut()
            .ok_or_else(|| io::Error::other("the helper is closed"))?;
        let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
        line.push(b'\n');
        to.write_all(&line)?;
        to.flush()?;
        let mut answer = String::new();
        if self.from.read_line(&mut answer)? == 0 {
            self.to = None;
            return Err(io::Error::other("the helper exited"));
        }
        serde_json::from_str(&answer).map_err(io::Error::other)
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        // Closing its stdin ends the helper; it has nothing in progress between requests.
        self.to = None;
        let _ = self.child.wait();
    }
}

fn failed(pid: u32, source: io::Error) -> ProcessError {
    ProcessError {
        pid,
        comm: super::inject::comm(pid),
        kind: PatchError::Injector(source),
    }
}

fn failed_as(pid: u32, error: String) -> ProcessError {
    ProcessError {
        pid,
        comm: super::inject::comm(pid),
        kind: PatchError::Relayed(error),
    }
}

/// The helper itself (`fault injector`): answers requests until its stdin closes.
pub fn serve() -> io::Result<()> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: ignoring a signal installs no handler.
        unsafe { signal(sig, SigHandler::SigIgn) }.map_err(io::Error::from)?;
    }
    // Small and short-lived: the OOM killer should take anything else first.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    let mut out = io::stdout().lock();
    for line in io::stdin().lock().lines() {
        let reply = match serde_json::from_str::<Request>(&line?) {
            Ok(request) => answer(request),
            Err(e) => Reply::Failed {
                error: format!("a request fault's injector cannot read: {e}"),
            },
        };
        let mut text = serde_json::to_vec(&reply).map_err(io::Error::other)?;
        text.push(b'\n');
        // A loader that died does not read it: finish, and end at the closed stdin.
        if out.write_all(&text).and_then(|()| out.flush()).is_err() {
            continue;
        }
    }
    Ok(())
}

fn answer(request: Request) -> Reply {
    let text = |e: ProcessError| Reply::Failed {
        error: format!("{:#}", anyhow::Error::from(e.kind)),
    };
    match request {
        Request::Patch { pid, plan } => {
            let Some(plan) = Plan::decode(&plan) else {
                return Reply::Failed {
                    error: "a plan of the wrong size".into(),
                };
            };
            match patch::patch(pid, &plan) {
                Ok(p) => Reply::Patched {
                    start_time: p.start_time,
                    base: p.base,
                    adopted: p.adopted,
                    stopped_us: p.stopped_us,
                    threads: p.threads,
                },
                Err(e) => text(e),
            }
        }
        Request::Revert {
            pid,
            start_time,
            base,
        } => match patch::revert(pid, start_time, base) {
            Ok(restored) => Reply::Reverted { restored },
            Err(e) => text(e),
        },
    }
}

/// How long the test hook holds a patch, if it is set.
pub fn test_hold() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var(HOLD_ENV).ok()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}
