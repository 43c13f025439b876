//! The absolute waits of fault-probe's `abs-wait`: each waits until "now + interval" by a
//! deadline on CLOCK_REALTIME, "now" read through the vDSO, in one of the four ways a
//! program hands the kernel an absolute time.

use std::io::{self, Write};
use std::time::Duration;

use crate::monotonic_ns;

/// How the probe waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// `clock_nanosleep` with TIMER_ABSTIME.
    Nanosleep,
    /// A realtime futex wait (FUTEX_WAIT_BITSET with FUTEX_CLOCK_REALTIME), as glibc's
    /// `pthread_cond_timedwait` makes it.
    Futex,
    /// A timerfd made once at the start (before any patch, when the probe runs first),
    /// armed with TFD_TIMER_ABSTIME each time and read.
    Timerfd,
    /// A POSIX timer made afresh for each wait (so after a patch), armed with
    /// TIMER_ABSTIME; its signal is blocked and taken with `sigwaitinfo`.
    Timer,
    /// As `Timerfd`, armed with one `itimerspec` as its new and its old value: the kernel
    /// writes the old value (a fired one-shot timer's: zero) over the new one, and the probe
    /// fails if it finds anything else there.
    TimerfdSame,
    /// As `Timerfd`, each wait armed and read through a new copy of the descriptor
    /// (`fcntl(F_DUPFD_CLOEXEC)` to a number no earlier wait used), closed after.
    TimerfdDup,
}

/// Waits over and over, printing how long each wait took by CLOCK_MONOTONIC (ns), until
/// killed.
pub fn run(interval: Duration, via: Via) -> io::Result<String> {
    let mut out = io::stdout().lock();
    let timerfd = match via {
        Via::Timerfd | Via::TimerfdSame | Via::TimerfdDup => Some(Timerfd::new()?),
        _ => None,
    };
    if via == Via::Timer {
        block_signal(libc::SIGUSR1)?;
    }
    for wait in (0..800).cycle() {
        let until = realtime_after(interval);
        let start = monotonic_ns();
        match (via, &timerfd) {
            (Via::Nanosleep, _) => sleep_until(&until)?,
            (Via::Futex, _) => futex_wait_until(&until)?,
            (Via::Timerfd, Some(fd)) => fd.wait_until(until)?,
            (Via::TimerfdSame, Some(fd)) => fd.wait_until_same(until)?,
            (Via::TimerfdDup, Some(fd)) => fd.copy(100 + wait)?.wait_until(until)?,
            _ => timer_wait_until(until)?,
        }
        writeln!(out, "{}", monotonic_ns() - start)?;
        out.flush()?;
    }
    unreachable!("a cycle does not end")
}

fn zero() -> libc::timespec {
    libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// CLOCK_REALTIME (through the vDSO) plus `d`.
fn realtime_after(d: Duration) -> libc::timespec {
    let mut now = zero();
    // SAFETY: a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    let ns = now.tv_nsec as u64 + d.as_nanos() as u64;
    libc::timespec {
        tv_sec: now.tv_sec + (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

fn sleep_until(until: &libc::timespec) -> io::Result<()> {
    // SAFETY: a valid timespec to read; no remainder is asked for an absolute sleep.
    let rc = unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_REALTIME,
            libc::TIMER_ABSTIME,
            until,
            std::ptr::null_mut(),
        )
    };
    match rc {
        0 | libc::EINTR => Ok(()),
        rc => Err(io::Error::from_raw_os_error(rc)),
    }
}

/// Waits on a futex word nobody wakes, until the absolute realtime `until`.
fn futex_wait_until(until: &libc::timespec) -> io::Result<()> {
    let word: u32 = 0;
    let op = libc::FUTEX_WAIT_BITSET | libc::FUTEX_CLOCK_REALTIME | libc::FUTEX_PRIVATE_FLAG;
    // SAFETY: a valid futex word and timespec, both alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            &word as *const u32,
            op,
            0u32,
            until as *const libc::timespec,
            std::ptr::null::<u32>(),
            libc::FUTEX_BITSET_MATCH_ANY,
        )
    };
    let err = io::Error::last_os_error();
    match (rc, err.raw_os_error()) {
        (0, _) | (_, Some(libc::ETIMEDOUT | libc::EINTR)) => Ok(()),
        _ => Err(err),
    }
}

fn once_at(until: libc::timespec) -> libc::itimerspec {
    libc::itimerspec {
        it_interval: zero(),
        it_value: until,
    }
}

/// A realtime timerfd, closed on drop.
struct Timerfd(libc::c_int);

impl Timerfd {
    fn new() -> io::Result<Self> {
        // SAFETY: a plain system call.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_CLOEXEC) };
        match fd {
            -1 => Err(io::Error::last_os_error()),
            fd => Ok(Timerfd(fd)),
        }
    }

    fn wait_until(&self, until: libc::timespec) -> io::Result<()> {
        let spec = once_at(until);
        // SAFETY: a valid itimerspec, alive for the call; no old value is asked.
        check(unsafe {
            libc::timerfd_settime(self.0, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
        })?;
        self.take()
    }

    /// A copy of the descriptor, numbered `at` (when that number is free), closed on drop.
    fn copy(&self, at: libc::c_int) -> io::Result<Timerfd> {
        // SAFETY: a plain system call on a descriptor this owns.
        match unsafe { libc::fcntl(self.0, libc::F_DUPFD_CLOEXEC, at) } {
            -1 => Err(io::Error::last_os_error()),
            fd => Ok(Timerfd(fd)),
        }
    }

    /// [`Timerfd::wait_until`] with one `itimerspec` as the new and the old value.
    fn wait_until_same(&self, until: libc::timespec) -> io::Result<()> {
        let mut spec = once_at(until);
        let p: *mut libc::itimerspec = &mut spec;
        // SAFETY: a valid itimerspec, alive for the call, read and then written by it.
        check(unsafe { libc::timerfd_settime(self.0, libc::TFD_TIMER_ABSTIME, p, p) })?;
        let old = (spec.it_value.tv_sec, spec.it_value.tv_nsec);
        if old != (0, 0) {
            return Err(io::Error::other(format!(
                "timerfd_settime left {old:?} as the old value of a timer that had fired \
                 (the kernel wrote zero)"
            )));
        }
        self.take()
    }

    /// Reads the timer's expiry count, waiting for it to fire.
    fn take(&self) -> io::Result<()> {
        let mut ticks = 0u64;
        // SAFETY: reads the 8-byte expiry count into `ticks`.
        let n = unsafe { libc::read(self.0, &mut ticks as *mut u64 as *mut libc::c_void, 8) };
        match n {
            8 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }
}

impl Drop for Timerfd {
    fn drop(&mut self) {
        // SAFETY: the descriptor this owns.
        unsafe { libc::close(self.0) };
    }
}

fn block_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: a signal set built and read on this stack.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(()),
            rc => Err(io::Error::from_raw_os_error(rc)),
        }
    }
}

/// Waits for a signal of `set`. A patch's ptrace interruption ends `sigwaitinfo` with
/// EINTR (it is not restarted): wait again.
fn take_signal(set: &libc::sigset_t) -> io::Result<()> {
    loop {
        // SAFETY: a valid signal set; no siginfo is asked for.
        match unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) } {
            -1 => match io::Error::last_os_error() {
                e if e.raw_os_error() == Some(libc::EINTR) => continue,
                e => return Err(e),
            },
            _ => return Ok(()),
        }
    }
}

/// Makes a realtime POSIX timer that sends the blocked SIGUSR1, arms it for `until` and
/// takes its signal.
fn timer_wait_until(until: libc::timespec) -> io::Result<()> {
    // SAFETY: a sigevent, a timer id and a signal set on this stack, alive for each call;
    // the timer is deleted before returning.
    unsafe {
        let mut ev: libc::sigevent = std::mem::zeroed();
        ev.sigev_notify = libc::SIGEV_SIGNAL;
        ev.sigev_signo = libc::SIGUSR1;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        check(libc::timer_create(
            libc::CLOCK_REALTIME,
            &mut ev,
            &mut timer,
        ))?;
        let spec = once_at(until);
        let armed = check(libc::timer_settime(
            timer,
            libc::TIMER_ABSTIME,
            &spec,
            std::ptr::null_mut(),
        ));
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        let taken = match armed {
            Ok(()) => take_signal(&set),
            Err(e) => Err(e),
        };
        libc::timer_delete(timer);
        taken
    }
}
