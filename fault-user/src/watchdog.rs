//! A small process that outlives the loader: when the loader dies without reverting, it
//! thaws the cgroups a pause may have frozen (no lease ends a freeze), lets go of the
//! processes the exec hold had stopped (BPF cannot continue a process) and ends the network
//! faults at once through the pinned CONFIG, rather than within the lease.
//! What is left (inert filters, expired clock pages, the record) is `fault stop`'s to
//! remove, and `fault status` shows it meanwhile.

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
};

use crate::{
    clock,
    net::loader,
    pause,
    state::{self, State},
    sys::proc,
};

/// When the watchdog looks at the exec hold's entries again.
const LATE: std::time::Duration = std::time::Duration::from_millis(50);

/// Starts the watchdog of the run `name` whose loader is this process. It runs in a session
/// of its own, so the terminal's signals (Ctrl-C, a hang-up) reach the loader only.
pub fn spawn(name: &str) -> std::io::Result<()> {
    let pid = std::process::id();
    let start = proc::start_time(pid).unwrap_or(0);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["watchdog", name, &pid.to_string(), &start.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| match libc::setsid() {
            -1 => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    cmd.spawn().map(drop)
}

/// The watchdog itself: waits for the loader `pid` (started at `start`) to end, then acts if
/// it left its record behind.
pub fn watch(name: &str, pid: u32, start: u64) -> std::io::Result<()> {
    wait_for_exit(pid, start)?;
    let Ok(s) = State::read(&state::state_path(name)) else {
        return Ok(()); // reverted: nothing to do
    };
    if s.pid != pid || s.pid_start.is_some_and(|st| st != start) {
        return Ok(()); // a later run's record
    }
    // First: the processes of a frozen cgroup stay stopped until someone thaws them.
    let problems = pause::thaw_recorded(&s);
    for p in &problems {
        eprintln!("fault: watchdog: warning: {p}");
    }
    let dir = state::pin_dir(name).map_err(std::io::Error::other)?;
    let _ = loader::expire_pinned(&dir);
    let mut released = clock::exec::release_pinned(&dir);
    // The program's link went with the loader's files, before the exit this saw; a run of
    // it still under way on another CPU then may add an entry: a second look lets it go.
    std::thread::sleep(LATE);
    released.extend(clock::exec::release_pinned(&dir));
    end_log(&s, &dir);
    eprintln!(
        "fault: watchdog: the loader of {name} (pid {pid}) died; its faults are off{}{}; \
         `fault stop {name}` removes what is left",
        match s.frozen.is_empty() {
            true => String::new(),
            false => format!(", {} cgroup(s) thawed", s.frozen.len() - problems.len()),
        },
        match released.is_empty() {
            true => String::new(),
            false => format!(", and {released:?} held at exec go on"),
        }
    );
    Ok(())
}

/// Ends the run's event log with the counters the loader left pinned.
fn end_log(s: &State, pins: &std::path::Path) {
    let counters = loader::pinned_counters(pins, s.rules.len()).unwrap_or_default();
    let rules = s
        .rules
        .iter()
        .zip(&counters)
        .map(|(r, c)| crate::observe::event::RuleCounts::of(&r.name, c))
        .collect();
    crate::observe::append_end(
        &s.name,
        crate::observe::Reason::LoaderDied,
        format!(
            "the loader (pid {}) died without reverting; the watchdog ended its faults",
            s.pid
        ),
        rules,
    );
}

/// Blocks until `pid`, started at `start`, has exited (a pidfd turns readable then).
fn wait_for_exit(pid: u32, start: u64) -> std::io::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Ok(()); // gone already
    }
    // SAFETY: a descriptor just returned to us, owned from here on.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    if !proc::is_same(pid, start) {
        return Ok(()); // the pid is someone else's now
    }
    let mut poll = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut poll, 1, -1) } {
            -1 if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            -1 => return Err(std::io::Error::last_os_error()),
            _ => return Ok(()),
        }
    }
}
