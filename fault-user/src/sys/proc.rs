//! Processes as /proc shows them. A pid alone is no identity: pids are reused, so wherever
//! fault remembers a process it remembers its start time too.

/// The start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the command: state is field 3, starttime field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that started at `start`.
pub fn is_same(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// Whether `pid` is still the process that started at `start` and has not exited: a zombie
/// (exited, not reaped by its parent yet) runs no more.
pub fn is_running(pid: u32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next();
    let started = fields.nth(18).and_then(|s| s.parse::<u64>().ok());
    started == Some(start) && !matches!(state, Some("Z" | "X"))
}

/// Whether `pid` was started before `monotonic_ns` (CLOCK_MONOTONIC, the clock BPF programs
/// stamp events with): a process that got the pid of one recorded at that time was started
/// after it. Start times count in clock ticks of CLOCK_BOOTTIME, hence the conversion and the
/// one-tick allowance.
pub fn started_before(pid: u32, monotonic_ns: u64) -> bool {
    let Some(ticks) = start_time(pid) else {
        return false;
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let tick_ns = 1_000_000_000 / hz;
    let boot = |id| {
        nix::time::clock_gettime(id)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0)
    };
    let asleep = boot(nix::time::ClockId::CLOCK_BOOTTIME)
        .saturating_sub(boot(nix::time::ClockId::CLOCK_MONOTONIC));
    let started = (ticks * tick_ns).saturating_sub(asleep);
    started <= monotonic_ns + tick_ns
}

/// The state letter of `pid` (`R`, `S`, `T`, ...), from /proc/PID/stat.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}
