//! What the `fault_clock_calls` program (fault-ebpf/src/clock_calls.rs) shares with the
//! loader: the clock system calls of patched processes that their clock fault cannot reach.

/// Processes counted at once; a process beyond them is not counted.
pub const CLOCK_CALLS_MAX: u32 = 4096;

/// A patched process's vDSO, `[start, end)`: the system calls made from there are the
/// vDSO's own fallback, which the stub skews. `page` is where its clock parameter page is
/// mapped in it (see `clock_math`), which the system-call rewrite reads; 0 leaves the
/// process's calls counted only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VdsoRange {
    pub start: u64,
    pub end: u64,
    pub page: u64,
}
const _: () = assert!(core::mem::size_of::<VdsoRange>() == 24);

/// One process's counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClockCalls {
    /// Reads of a faulted clock made as system calls (not through the vDSO): true time.
    pub raw_reads: u64,
    /// Waits until an absolute time: they end by the true clock, not the skewed one.
    pub abs_waits: u64,
    /// Which calls were seen, a `CALL_*` bit each.
    pub kinds: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ClockCalls>() == 24);

pub const CALL_CLOCK_GETTIME: u32 = 1 << 0;
pub const CALL_GETTIMEOFDAY: u32 = 1 << 1;
pub const CALL_TIME: u32 = 1 << 2;
/// `clock_nanosleep` with TIMER_ABSTIME.
pub const CALL_CLOCK_NANOSLEEP: u32 = 1 << 3;
/// `timerfd_settime` with TFD_TIMER_ABSTIME.
pub const CALL_TIMERFD_SETTIME: u32 = 1 << 4;
/// `timer_settime` with TIMER_ABSTIME.
pub const CALL_TIMER_SETTIME: u32 = 1 << 5;
/// `futex` waits with an absolute CLOCK_REALTIME timeout (FUTEX_WAIT_BITSET with
/// FUTEX_CLOCK_REALTIME, as glibc's `pthread_cond_timedwait` and `sem_timedwait` make
/// them, and FUTEX_LOCK_PI).
pub const CALL_FUTEX: u32 = 1 << 6;

/// Each `CALL_*` bit with the call's name, for messages.
pub const CALL_NAMES: [(u32, &str); 7] = [
    (CALL_CLOCK_GETTIME, "clock_gettime"),
    (CALL_GETTIMEOFDAY, "gettimeofday"),
    (CALL_TIME, "time"),
    (CALL_CLOCK_NANOSLEEP, "clock_nanosleep(TIMER_ABSTIME)"),
    (CALL_TIMERFD_SETTIME, "timerfd_settime(TFD_TIMER_ABSTIME)"),
    (CALL_TIMER_SETTIME, "timer_settime(TIMER_ABSTIME)"),
    (CALL_FUTEX, "futex(FUTEX_CLOCK_REALTIME)"),
];

/// Timers whose clock is known at once; beyond, the least recently used is forgotten.
pub const TIMER_CLOCKS_MAX: u32 = 16384;
/// Set in [`TimerKey::id`] for a POSIX timer (`timer_create`); clear for a timerfd.
pub const TIMER_POSIX: u32 = 1 << 31;

/// A timer of a patched process: a timerfd by its descriptor, a POSIX timer by its id
/// with [`TIMER_POSIX`]. An absolute expiry (`timerfd_settime`, `timer_settime`) does not
/// name its clock, so the clock each timer was made on is kept by this key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TimerKey {
    pub tgid: u32,
    pub id: u32,
}
const _: () = assert!(core::mem::size_of::<TimerKey>() == 8);
