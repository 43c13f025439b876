//! Holding every thread of a process still with ptrace, and making system calls in it.
//!
//! [`Stopped::stop`] seizes each thread (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`), listing
//! `/proc/PID/task` again until no new thread shows up. [`Stopped::syscall`] points one
//! thread at a `syscall` instruction with the registers set for the call, runs it between
//! two syscall stops, and puts the thread's own registers back at once. So outside the few
//! microseconds of each call every thread holds its own registers and its own signal mask:
//! fault never changes a mask, and a tracer that died at any moment but inside a call would
//! leave the process exactly as it would after a clean detach. If a thread had been blocked
//! in a system call (nanosleep, futex, read), the kernel restarts that call as it would
//! after any interruption, and the program sees nothing.
//!
//! Signals wait while threads are stopped: a stopped thread takes none, and one that
//! arrives for the thread running the calls stops it before the next call (a
//! signal-delivery stop). It is delivered there on the thread's own registers, as if it
//! had come before the patch; the thread runs its handler, is stopped again where the
//! handler left it, and the call is made from there.
//!
//! Dropping a [`Stopped`] without detaching (an error on the way) restores registers and
//! detaches all the same.

use std::io;
use std::time::{Duration, Instant};

const PTRACE_SEIZE: libc::c_uint = 0x4206;
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
const PTRACE_O_TRACESYSGOOD: libc::c_ulong = 1;
const PTRACE_EVENT_STOP: i32 = 128;
/// How long a thread may take to stop: one in uninterruptible sleep (disk, NFS) waits for
/// its I/O first.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("process {pid} ({comm}) is already traced by pid {tracer} ({tracer_comm}); a process has one tracer, so it was left alone")]
    Traced {
        pid: u32,
        comm: String,
        tracer: u32,
        tracer_comm: String,
    },
    #[error("process {pid} exited")]
    Gone { pid: u32 },
    #[error("{op} on thread {tid} of process {pid}")]
    Ptrace {
        pid: u32,
        tid: i32,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("thread {tid} of process {pid} did not stop within {timeout:?} (state {state})")]
    Timeout {
        pid: u32,
        tid: i32,
        timeout: Duration,
        state: char,
    },
    #[error("thread {tid} of process {pid} stopped unexpectedly ({what}) while fault ran a system call in it")]
    Unexpected { pid: u32, tid: i32, what: String },
}

/// The name of a process, for messages.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// A field of `/proc/PID/status`, like `TracerPid`.
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    })
}

/// The state letter of a thread (`R`, `S`, `D`, `Z`...), `X` when it is gone.
fn thread_state(pid: u32, tid: i32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            rest.trim_start().chars().next()
        })
        .unwrap_or('X')
}

fn tids(pid: u32) -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(tid);
        }
    }
    Ok(out)
}

fn ptrace(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: every request used here either takes no pointer or points at a live value of
    // the type the kernel expects for it (regs, a sigset of 8 bytes).
    let r = unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// One held thread.
#[derive(Debug)]
pub struct Thread {
    pub tid: i32,
    /// Its registers as they were when it stopped, with any change fault means to keep
    /// (a moved instruction pointer) applied.
    pub regs: libc::user_regs_struct,
    /// `regs` differ from what the thread has now, or must be written back at detach.
    pub dirty: bool,
    /// Stopped and ours to detach (false: seized, but it exited before stopping).
    held: bool,
}

/// The refusal for a process another tracer (a debugger, strace) holds, if one does.
fn traced(pid: u32) -> Option<InjectError> {
    let tracer = status_field(pid, "TracerPid")
        .and_then(|t| t.parse::<u32>().ok())
        .filter(|&t| t != 0)?;
    Some(InjectError::Traced {
        pid,
        comm: comm(pid),
        tracer,
        tracer_comm: comm(tracer),
    })
}

/// What stopped a thread that fault set going into a system call.
enum Next {
    Syscall,
    /// A signal for it (a signal-delivery stop), not yet delivered.
    Signal(i32),
}

/// Every thread of one process, stopped.
#[derive(Debug)]
pub struct Stopped {
    pub pid: u32,
    pub threads: Vec<Thread>,
    detached: bool,
}

impl Stopped {
    /// Seizes and stops every thread of `pid`.
    pub fn stop(pid: u32) -> Result<Self, InjectError> {
        if let Some(e) = traced(pid) {
            return Err(e);
        }
        let mut held = Stopped {
            pid,
            threads: Vec::new(),
            detached: false,
        };
        loop {
            let listed = tids(pid).map_err(|_| InjectError::Gone { pid })?;
            let mut added = 0;
            for tid in listed {
                if held.threads.iter().any(|t| t.tid == tid) {
                    continue;
                }
                match ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACESYSGOOD as usize) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                    // A thread that is exiting refuses to be seized; it needs no stopping.
                    Err(_) if matches!(thread_state(pid, tid), 'Z' | 'X') => continue,
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                        // Someone may have attached since the first look.
                        return Err(
                            traced(pid).unwrap_or_else(|| held.error(tid, "PTRACE_SEIZE", e))
                        );
                    }
                    Err(e) => return Err(held.error(tid, "PTRACE_SEIZE", e)),
                }
                held.threads.push(Thread {
                    tid,
                    // SAFETY: user_regs_struct is plain integers; all zero is a valid value.
                    regs: unsafe { std::mem::zeroed() },
                    dirty: false,
                    held: false,
                });
                if let Err(e) = ptrace(PTRACE_INTERRUPT, tid, 0, 0) {
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        return Err(held.error(tid, "PTRACE_INTERRUPT", e));
                    }
                }
                added += 1;
            }
            for i in 0..held.threads.len() {
                if held.threads[i].held {
                    continue;
                }
                let tid = held.threads[i].tid;
                if !held.wait_stop(tid)? {
                    continue; // exited meanwhile
                }
                held.threads[i].held = true;
                held.read_regs(i)?;
            }
            if added == 0 {
                break;
            }
        }
        if !held.threads.iter().any(|t| t.held) {
            return Err(InjectError::Gone { pid });
        }
        Ok(held)
    }

    fn error(&self, tid: i32, op: &'static str, source: io::Error) -> InjectError {
        InjectError::Ptrace {
            pid: self.pid,
            tid,
            op,
            source,
        }
    }

    /// Waits for the interrupt stop of `tid`; false if the thread exited first.
    fn wait_stop(&self, tid: i32) -> Result<bool, InjectError> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.poll(tid, deadline)? {
                None => return Ok(false),
                Some(status) if status >> 16 == PTRACE_EVENT_STOP => return Ok(true),
                Some(status) => {
                    // A signal arrived first: let it through; the interrupt stop stays pending.
                    let sig = libc::WSTOPSIG(status);
                    ptrace(libc::PTRACE_CONT, tid, 0, sig as usize)
                        .map_err(|e| self.error(tid, "PTRACE_CONT", e))?;
                }
            }
        }
    }

    /// The next stop of `tid` (its wait status), `None` if it exited.
    fn poll(&self, tid: i32, deadline: Instant) -> Result<Option<i32>, InjectError> {
        let mut spins = 0u32;
        loop {
            let mut status = 0;
            // SAFETY: status is a valid out pointer.
            let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ECHILD) {
                    return Ok(None);
                }
                return Err(self.error(tid, "waitpid", e));
            }
            if r == tid {
                if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                    return Ok(None);
                }
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Err(InjectError::Timeout {
                    pid: self.pid,
                    tid,
                    timeout: STOP_TIMEOUT,
                    state: thread_state(self.pid, tid),
                });
            }
            // Most stops arrive within microseconds: spin a little before sleeping.
            spins += 1;
            if spins < 50 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// The thread best suited for system calls: one in user code, else any.
    pub fn pick_thread(&self) -> usize {
        let held = || self.threads.iter().enumerate().filter(|(_, t)| t.held);
        held()
            .find(|(_, t)| (t.regs.orig_rax as i64) < 0)
            .or_else(|| held().next())
            .map(|(i, _)| i)
            .unwrap_or(0)
    }

    /// Runs system call `nr` with `args` in thread `index`, entering the kernel at
    /// `syscall_insn` (the address of a `syscall` instruction in the target); returns what it
    /// returned (a negative errno on failure). The thread has its own registers again when
    /// this returns, whatever it returns.
    pub fn syscall(
        &mut self,
        index: usize,
        syscall_insn: u64,
        nr: i64,
        args: [u64; 6],
    ) -> Result<i64, InjectError> {
        let tid = self.threads[index].tid;
        let begun = Instant::now();
        let result = loop {
            let mut r = self.threads[index].regs;
            r.rax = nr as u64;
            // No syscall is in progress as far as the kernel's restart logic is concerned.
            r.orig_rax = u64::MAX;
            r.rdi = args[0];
            r.rsi = args[1];
            r.rdx = args[2];
            r.r10 = args[3];
            r.r8 = args[4];
            r.r9 = args[5];
            r.rip = syscall_insn;
            // From here on the thread's registers must be put back.
            self.threads[index].dirty = true;
            ptrace(libc::PTRACE_SETREGS, tid, 0, &r as *const _ as usize)
                .map_err(|e| self.error(tid, "PTRACE_SETREGS", e))?;
            ptrace(libc::PTRACE_SYSCALL, tid, 0, 0)
                .map_err(|e| self.error(tid, "PTRACE_SYSCALL", e))?;
            if let Next::Signal(sig) = self.wait_syscall_stop(tid)? {
                if self.raised_by_us(tid, sig) {
                    // Not the program's: it is dropped at detach, as fault's registers are.
                    return Err(InjectError::Unexpected {
                        pid: self.pid,
                        tid,
                        what: format!("signal {sig} from fault's registers"),
                    });
                }
                // Before the call's entry: nothing of it ran.
                self.deliver(index, sig)?;
                if begun.elapsed() > STOP_TIMEOUT {
                    // A flood that leaves no gap for one call: give up on this process.
                    return Err(InjectError::Unexpected {
                        pid: self.pid,
                        tid,
                        what: format!("signals kept arriving for {STOP_TIMEOUT:?}"),
                    });
                }
                continue;
            }
            ptrace(libc::PTRACE_SYSCALL, tid, 0, 0)
                .map_err(|e| self.error(tid, "PTRACE_SYSCALL", e))?;
            if let Next::Signal(sig) = self.wait_syscall_stop(tid)? {
                return Err(InjectError::Unexpected {
                    pid: self.pid,
                    tid,
                    what: format!("signal {sig} inside the call"),
                });
            }
            ptrace(libc::PTRACE_GETREGS, tid, 0, &mut r as *mut _ as usize)
                .map_err(|e| self.error(tid, "PTRACE_GETREGS", e))?;
            break r.rax as i64;
        };
        self.restore(index)?;
        Ok(result)
    }

    /// Whether `sig`, which stopped `tid` on its way to fault's call, is a fault the
    /// kernel raised at fault's registers (a `syscall` instruction that is no longer
    /// there, say, in a process that exec'd meanwhile) rather than a signal sent to it.
    fn raised_by_us(&self, tid: i32, sig: i32) -> bool {
        let synchronous = [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            libc::SIGSYS,
        ];
        if !synchronous.contains(&sig) {
            return false;
        }
        // SAFETY: siginfo_t is plain data; all zero is a valid value to be written over.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // A signal sent by a process (kill, tgkill, sigqueue) has si_code <= 0.
        ptrace(
            libc::PTRACE_GETSIGINFO,
            tid,
            0,
            &mut info as *mut _ as usize,
        )
        .map_or(true, |_| info.si_code > 0)
    }

    /// Reads the registers of thread `index` as they are now.
    fn read_regs(&mut self, index: usize) -> Result<(), InjectError> {
        let t = &mut self.threads[index];
        let (tid, regs) = (t.tid, &mut t.regs as *mut _ as usize);
        t.dirty = false;
        ptrace(libc::PTRACE_GETREGS, tid, 0, regs)
            .map_err(|e| self.error(tid, "PTRACE_GETREGS", e))?;
        Ok(())
    }

    /// Gives thread `index` its own registers back.
    fn restore(&mut self, index: usize) -> Result<(), InjectError> {
        let t = &mut self.threads[index];
        let (tid, regs) = (t.tid, &t.regs as *const _ as usize);
        ptrace(libc::PTRACE_SETREGS, tid, 0, regs)
            .map_err(|e| self.error(tid, "PTRACE_SETREGS", e))?;
        self.threads[index].dirty = false;
        Ok(())
    }

    /// Delivers signal `sig`, which stopped thread `index` before a call of fault's, on the
    /// thread's own registers (so a system call it was blocked in is restarted or fails with
    /// EINTR as the signal's action says), lets it run its handler, and stops it again.
    fn deliver(&mut self, index: usize, sig: i32) -> Result<(), InjectError> {
        self.restore(index)?;
        let tid = self.threads[index].tid;
        ptrace(libc::PTRACE_CONT, tid, 0, sig as usize)
            .map_err(|e| self.error(tid, "PTRACE_CONT", e))?;
        match ptrace(PTRACE_INTERRUPT, tid, 0, 0) {
            Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                return Err(self.error(tid, "PTRACE_INTERRUPT", e))
            }
            _ => {}
        }
        if !self.wait_stop(tid)? {
            // The signal ended the thread (or the process).
            self.threads[index].held = false;
            return Err(InjectError::Gone { pid: self.pid });
        }
        self.read_regs(index)
    }

    /// The next syscall stop of `tid`, or the signal that stopped it first.
    fn wait_syscall_stop(&self, tid: i32) -> Result<Next, InjectError> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let status = self
                .poll(tid, deadline)?
                .ok_or(InjectError::Gone { pid: self.pid })?;
            if libc::WSTOPSIG(status) == libc::SIGTRAP | 0x80 {
                return Ok(Next::Syscall);
            }
            if status >> 16 == PTRACE_EVENT_STOP {
                // A leftover interrupt stop: go on to the syscall stop.
                ptrace(libc::PTRACE_SYSCALL, tid, 0, 0)
                    .map_err(|e| self.error(tid, "PTRACE_SYSCALL", e))?;
                continue;
            }
            return Ok(Next::Signal(libc::WSTOPSIG(status)));
        }
    }

    /// Puts back registers and lets every thread go.
    pub fn detach(mut self) -> Result<(), InjectError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), InjectError> {
        self.detached = true;
        let mut first = None;
        for t in &self.threads {
            if t.held && t.dirty {
                if let Err(e) = ptrace(libc::PTRACE_SETREGS, t.tid, 0, &t.regs as *const _ as usize)
                {
                    first.get_or_insert(self.error(t.tid, "PTRACE_SETREGS", e));
                }
            }
            // Seized but never stopped threads are detached too (ESRCH if they exited).
            if let Err(e) = ptrace(libc::PTRACE_DETACH, t.tid, 0, 0) {
                if t.held && e.raw_os_error() != Some(libc::ESRCH) {
                    first.get_or_insert(self.error(t.tid, "PTRACE_DETACH", e));
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.detached {
            let _ = self.release();
        }
    }
}

/// Reads `len` bytes of the target's memory at `addr`.
pub fn read_mem(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, addr)?;
    Ok(buf)
}

/// Writes into the target's memory, read-only code pages included (the kernel copies such a
/// page for this process only, as it does for a debugger's breakpoint).
pub fn write_mem(pid: u32, addr: u64, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))?;
    f.write_all_at(bytes, addr)
}
