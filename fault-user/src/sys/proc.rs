//! Processes as /proc shows them. A pid alone is no identity: pids are reused, so wherever
//! fault remembers a process it remembers its start time too.

/// What fault reads of a process's /proc/PID/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (field 3): `R`, `S`, `Z` (exited, not reaped), `X` (dying), ...
    pub state: char,
    /// The kernel's per-task flags (field 9).
    pub flags: u64,
    /// The start time in clock ticks since boot (field 22).
    pub start: u64,
}

impl Stat {
    /// Exited or exiting: it runs no more.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// `pid`'s stat, if it is there. The command (field 2) may hold spaces and parentheses, so
/// the fields are counted from its last `)`.
pub fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        flags: fields.get(6)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// The start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start)
}

/// Whether `pid` is still the process that started at `start`.
pub fn is_same(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// Whether `pid` is still the process that started at `start` and has not exited: a zombie
/// (exited, not reaped by its parent yet) runs no more.
pub fn is_running(pid: u32, start: u64) -> bool {
    stat(pid).is_some_and(|s| s.start == start && !s.is_dead())
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
