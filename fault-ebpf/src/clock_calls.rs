//! Counting the clock system calls of patched processes that their clock fault cannot reach.
//!
//! The clock fault redirects the vDSO, so reads made as system calls (`syscall(SYS_clock_
//! gettime)` in static programs, runtimes, sandboxes) and the absolute deadlines a process
//! hands the kernel (`clock_nanosleep` with TIMER_ABSTIME, timers with an absolute expiry,
//! realtime futex waits) follow the true clock. Rewriting them needs `bpf_probe_write_user`,
//! which lockdown refuses on many hosts; there this program, at the system calls' entry,
//! counts them per process, so fault can name the processes that read or wait
//! on true time. It counts only processes the loader put in CLOCK_WATCHED (the patched ones)
//! and reads only the registers; a read made by the vDSO itself (its fallback to the system
//! call) comes from inside the process's vDSO and is left out, since the stub skews it.
//! Each program comes twice: for the clock calls' own tracepoints (`syscalls:sys_enter_
//! <name>`, where other system calls pay only the kernel's slow path and a bit test), and
//! for the raw `sys_enter` (kernels before 5.15, where every system call runs it).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext as _,
};
use fault_common::{
    ClockCalls, TimerKey, VdsoRange, CALL_CLOCK_GETTIME, CALL_CLOCK_NANOSLEEP, CALL_FUTEX,
    CALL_GETTIMEOFDAY, CALL_TIME, CALL_TIMERFD_SETTIME, CALL_TIMER_SETTIME, CLOCK_CALLS_MAX,
    TIMER_CLOCKS_MAX, TIMER_POSIX,
};

/// Set by the loader (`fault_common::globals`): bit n for clock id n, the clocks faulted.
#[unsafe(no_mangle)]
static CLOCK_CALLS_MASK: u32 = 0;

#[map]
pub(crate) static CLOCK_WATCHED: HashMap<u32, VdsoRange> =
    HashMap::with_max_entries(CLOCK_CALLS_MAX, 0);
#[map]
static CLOCK_CALLS: HashMap<u32, ClockCalls> = HashMap::with_max_entries(CLOCK_CALLS_MAX, 0);
/// The clock each known timer of a watched process was made on (written by the rewrite's
/// `sys_exit` at its creation, and by the loader from /proc for timers made before).
#[map]
pub(crate) static TIMER_CLOCKS: LruHashMap<TimerKey, u32> =
    LruHashMap::with_max_entries(TIMER_CLOCKS_MAX, 0);

// x86_64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
pub(crate) const NR_DUP: u64 = 32;
pub(crate) const NR_DUP2: u64 = 33;
pub(crate) const NR_FCNTL: u64 = 72;
pub(crate) const NR_GETTIMEOFDAY: u64 = 96;
const NR_TIME: u64 = 201;
pub(crate) const NR_FUTEX: u64 = 202;
pub(crate) const NR_TIMER_CREATE: u64 = 222;
pub(crate) const NR_TIMER_SETTIME: u64 = 223;
pub(crate) const NR_CLOCK_GETTIME: u64 = 228;
pub(crate) const NR_CLOCK_NANOSLEEP: u64 = 230;
pub(crate) const NR_TIMERFD_CREATE: u64 = 283;
pub(crate) const NR_TIMERFD_SETTIME: u64 = 286;
pub(crate) const NR_DUP3: u64 = 292;

/// fcntl's commands that make a new descriptor.
const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

const CLOCK_REALTIME: u64 = 0;
/// TIMER_ABSTIME and TFD_TIMER_ABSTIME.
const ABSTIME: u64 = 1;
const FUTEX_CMD_MASK: u64 = 0x7f;
const FUTEX_WAIT_BITSET: u64 = 9;
const FUTEX_LOCK_PI: u64 = 6;
const FUTEX_CLOCK_REALTIME: u64 = 256;

/// The clock the timer that system call `nr` (`timerfd_settime` or `timer_settime`) arms
/// was made on, if it is known.
#[inline(always)]
pub(crate) fn timer_clock(tgid: u32, nr: u64, r: &pt_regs) -> Option<u64> {
    let id = match nr {
        NR_TIMER_SETTIME => r.rdi as u32 | TIMER_POSIX,
        _ => r.rdi as u32,
    };
    // SAFETY: a plain map read; the value is copied out at once.
    unsafe { TIMER_CLOCKS.get(&TimerKey { tgid, id }) }.map(|&c| c as u64)
}

/// Whether system call `nr` copies descriptor `rdi` of a known timerfd: `dup`, `dup2`,
/// `dup3`, and `fcntl` with F_DUPFD or F_DUPFD_CLOEXEC. The copy is the same timer, on the
/// same clock.
#[inline(always)]
fn dups_a_timerfd(tgid: u32, nr: u64, r: &pt_regs) -> bool {
    let dup = match nr {
        NR_DUP | NR_DUP2 | NR_DUP3 => true,
        NR_FCNTL => r.rsi == F_DUPFD || r.rsi == F_DUPFD_CLOEXEC,
        _ => false,
    };
    dup && timer_clock(tgid, NR_TIMERFD_SETTIME, r).is_some()
}

/// What a call is, by its number and registers: (kind bit, an absolute wait?), or `None`
/// when it is not a clock call the fault misses. The creation of a timer, and the copy of
/// a known timerfd's descriptor, are kind 0: not counted, only noted by the rewrite.
#[inline(always)]
fn classify(tgid: u32, nr: u64, r: &pt_regs, mask: u32) -> Option<(u32, bool)> {
    let faulted = |clock: u64| clock < 32 && mask & (1 << clock) != 0;
    // A timer on a clock the fault leaves alone is no concern; an unknown one counts.
    let timer = |kind: u32| match timer_clock(tgid, nr, r) {
        Some(clock) if !faulted(clock) => None,
        _ => Some((kind, true)),
    };
    match nr {
        NR_CLOCK_GETTIME if faulted(r.rdi) => Some((CALL_CLOCK_GETTIME, false)),
        NR_GETTIMEOFDAY if faulted(CLOCK_REALTIME) => Some((CALL_GETTIMEOFDAY, false)),
        NR_TIME if faulted(CLOCK_REALTIME) => Some((CALL_TIME, false)),
        NR_CLOCK_NANOSLEEP if faulted(r.rdi) && r.rsi & ABSTIME != 0 => {
            Some((CALL_CLOCK_NANOSLEEP, true))
        }
        NR_TIMERFD_SETTIME if r.rsi & ABSTIME != 0 => timer(CALL_TIMERFD_SETTIME),
        NR_TIMER_SETTIME if r.rsi & ABSTIME != 0 => timer(CALL_TIMER_SETTIME),
        NR_TIMERFD_CREATE | NR_TIMER_CREATE => Some((0, false)),
        NR_DUP | NR_DUP2 | NR_DUP3 | NR_FCNTL => dups_a_timerfd(tgid, nr, r).then_some((0, false)),
        NR_FUTEX if faulted(CLOCK_REALTIME) && r.r10 != 0 => {
            let cmd = r.rsi & FUTEX_CMD_MASK;
            let realtime_bitset = cmd == FUTEX_WAIT_BITSET && r.rsi & FUTEX_CLOCK_REALTIME != 0;
            // FUTEX_LOCK_PI's timeout is an absolute CLOCK_REALTIME time.
            (realtime_bitset || cmd == FUTEX_LOCK_PI).then_some((CALL_FUTEX, true))
        }
        _ => None,
    }
}

/// A clock call of a watched process that its fault misses, as `sys_enter` sees it.
pub(crate) struct Seen {
    pub tgid: u32,
    pub watched: VdsoRange,
    pub nr: u64,
    pub regs: pt_regs,
    pub kind: u32,
    pub wait: bool,
}

/// The call at this raw `sys_enter`, if it is one to count or rewrite.
#[inline(always)]
pub(crate) fn seen(ctx: &RawTracePointContext) -> Option<Seen> {
    let nr: u64 = ctx.arg(1);
    // SAFETY: the tracepoint's first argument is the task's saved user registers.
    seen_at(nr, || ctx.arg(0))
}

/// The call at this `syscalls:sys_enter_<name>` tracepoint, if it is one to count or
/// rewrite. The record holds the number at offset 8, after the common fields; the user
/// registers are the task's own (`bpf_task_pt_regs`, Linux 5.15 and later).
#[inline(always)]
pub(crate) fn seen_tp(ctx: &TracePointContext) -> Option<Seen> {
    let nr = record_at::<i32>(ctx, SYSCALL_NR_OFF) as u64;
    // SAFETY: helpers without preconditions; the current task is always valid.
    seen_at(nr, || unsafe {
        bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs
    })
}

/// The field at `off` of this tracepoint's record: a plain load, which the verifier checks
/// against the record's bounds (a helper call costs more, on a path every watched call
/// takes).
#[inline(always)]
pub(crate) fn record_at<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    // SAFETY: the verifier admits only aligned loads within the record.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(off) as *const T) }
}

/// Where the system call number is in a syscall event's record (`int` at 8 since Linux
/// 6.x, `unsigned long` before: the same low bytes).
pub(crate) const SYSCALL_NR_OFF: usize = 8;

/// The call `nr`, if it is one to count or rewrite; `regs` finds the task's saved user
/// registers, and is only called for a watched process.
#[inline(always)]
fn seen_at(nr: u64, regs: impl FnOnce() -> *const pt_regs) -> Option<Seen> {
    // The cheap test first: on the raw tracepoint every system call of every process
    // passes here.
    if !matches!(
        nr,
        NR_GETTIMEOFDAY
            | NR_TIME
            | NR_FUTEX
            | NR_TIMER_SETTIME
            | NR_CLOCK_GETTIME
            | NR_CLOCK_NANOSLEEP
            | NR_TIMERFD_SETTIME
            | NR_TIMER_CREATE
            | NR_TIMERFD_CREATE
            | NR_DUP
            | NR_DUP2
            | NR_DUP3
            | NR_FCNTL
    ) {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: a plain map read; the value is copied out at once.
    let watched = (unsafe { CLOCK_WATCHED.get(&tgid) }).copied()?;
    // SAFETY: `regs` points at the task's saved user registers.
    let regs = unsafe { bpf_probe_read_kernel(regs()) }.ok()?;
    // SAFETY: a plain load of a global the loader set before loading the program.
    let mask = unsafe { core::ptr::read_volatile(&CLOCK_CALLS_MASK) };
    let (kind, wait) = classify(tgid, nr, &regs, mask)?;
    // The vDSO's own fallback to the system call: its result goes through the stub.
    if !wait && (watched.start..watched.end).contains(&regs.rip) {
        return None;
    }
    Some(Seen {
        tgid,
        watched,
        nr,
        regs,
        kind,
        wait,
    })
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn fault_clock_calls(ctx: RawTracePointContext) -> i32 {
    if let Some(s) = seen(&ctx) {
        count(s.tgid, s.kind, s.wait);
    }
    0
}

/// The same count, attached to each clock call's own `sys_enter_<name>` tracepoint: other
/// system calls then skip it (the kernel tests a bit per call), where the raw tracepoint
/// runs a program for every one.
#[tracepoint]
pub fn fault_clock_calls_tp(ctx: TracePointContext) -> u32 {
    if let Some(s) = seen_tp(&ctx) {
        count(s.tgid, s.kind, s.wait);
    }
    0
}

/// Adds one call of `kind` to the process's counts (created at its first).
#[inline(always)]
pub(crate) fn count(tgid: u32, kind: u32, wait: bool) {
    if kind == 0 {
        return;
    }
    if let Some(c) = CLOCK_CALLS.get_ptr_mut(&tgid) {
        // SAFETY: a map value; a lost update between two threads of one process costs one
        // count, which is all it is.
        let c = unsafe { &mut *c };
        match wait {
            true => c.abs_waits += 1,
            false => c.raw_reads += 1,
        }
        c.kinds |= kind;
        return;
    }
    let first = ClockCalls {
        raw_reads: (!wait) as u64,
        abs_waits: wait as u64,
        kinds: kind,
        _pad: 0,
    };
    let _ = CLOCK_CALLS.insert(&tgid, &first, 0);
}

/// Never attached: whether the kernel loads it tells whether eBPF may write user memory
/// here (lockdown refuses `bpf_probe_write_user` at load time).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn fault_write_user_probe(_ctx: RawTracePointContext) -> i32 {
    let zero: u64 = 0;
    // SAFETY: never runs; a write to address 0 would fail with EFAULT if it did.
    let _ = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_write_user(
            core::ptr::null_mut(),
            &zero as *const u64 as *const core::ffi::c_void,
            8,
        )
    };
    0
}
