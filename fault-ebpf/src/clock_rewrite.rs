//! Rewriting the results of raw clock reads (`syscall(SYS_clock_gettime)`,
//! `gettimeofday` made as a system call) of patched processes, with the fault their vDSO
//! stub applies: the same parameters, read from the process's own parameter page, and the
//! same maths (`fault_common::clock_math`).
//!
//! Both programs come for the clock calls' own tracepoints (`syscalls:sys_enter_<name>`,
//! `sys_exit_<name>`) and, for kernels before 5.15, for the raw `sys_enter` and `sys_exit`.
//! `sys_enter` notes, per thread, a read it can rewrite (the clock id and where the result
//! goes); `sys_exit` reads the true result the kernel wrote, adds the fault and writes it
//! back with `bpf_probe_write_user`. That helper is refused under lockdown, where these
//! programs do not load and `fault_clock_calls` only counts.
//!
//! Absolute waits (`clock_nanosleep` with TIMER_ABSTIME, realtime futex waits, timerfds
//! and POSIX timers armed with an absolute expiry): `sys_enter` moves the caller's deadline
//! to the true time at which the faulted clock reads it, before the kernel reads it, and
//! `sys_exit` puts the caller's value back. A timer's clock is not in the call that arms
//! it: `sys_exit` of `timerfd_create` and `timer_create` records it in TIMER_CLOCKS (the
//! loader adds the timers a process made before it was patched, from /proc), and `sys_exit`
//! of a `dup`, `dup2`, `dup3` or `fcntl(F_DUPFD)` of a known timerfd records the copy. Calls this
//! cannot rewrite (`time`, whose result is the return value; a timer whose clock is not
//! known) are counted as `fault_clock_calls` counts them.
//!
//! Never backwards: for a clamped clock the largest value returned is shared with the stub
//! through the page's `last` line; eBPF cannot update user memory atomically, so two threads
//! racing a stub read and a raw read may each keep their own maximum.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_write_user,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::HashMap,
    programs::{RawTracePointContext, TracePointContext},
};
use fault_common::{
    clock_math::{
        fault_ns, steady_ns, ClockParams, CLOCKS_OFF, CLOCK_SLOTS, FLAG_ACTIVE, FLAG_CLAMP,
        LAST_OFF, MONO_DEADLINE_OFF, STATE_OFF,
    },
    TimerKey, CLOCK_CALLS_MAX, TIMER_POSIX,
};

use crate::clock_calls::{
    count, record_at, seen, seen_tp, timer_clock, Seen, CLOCK_WATCHED, NR_CLOCK_GETTIME,
    NR_CLOCK_NANOSLEEP, NR_DUP, NR_DUP2, NR_DUP3, NR_FCNTL, NR_FUTEX, NR_GETTIMEOFDAY,
    NR_TIMERFD_CREATE, NR_TIMERFD_SETTIME, NR_TIMER_CREATE, NR_TIMER_SETTIME, SYSCALL_NR_OFF,
    TIMER_CLOCKS,
};

const NS: u64 = 1_000_000_000;
/// u = t + BIAS is never negative for any reading: unsigned division then floors.
const BIAS: u64 = NS << 32;

/// What to do at a call's `sys_exit`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub clock: u64,
    /// The caller's timespec (clock_gettime, a wait's deadline) or timeval (gettimeofday);
    /// for [`MADE_TIMER`], where the kernel writes the new timer's id.
    pub ptr: u64,
    /// [`READ_NS`], [`READ_US`], [`RESTORE`], [`RESTORE_ON_ERROR`], [`MADE_TIMERFD`] or
    /// [`MADE_TIMER`].
    pub mode: u64,
    /// For [`RESTORE`]: the deadline as the caller wrote it.
    pub saved: [i64; 2],
}

/// Add the fault to the timespec the kernel wrote.
const READ_NS: u64 = 0;
/// Add the fault to the timeval the kernel wrote.
const READ_US: u64 = 1;
/// Put back the caller's deadline, which `sys_enter` translated to the true clock.
const RESTORE: u64 = 2;
/// Record the clock of the timerfd the call returns.
const MADE_TIMERFD: u64 = 3;
/// Record the clock of the POSIX timer whose id the kernel wrote at `ptr`.
const MADE_TIMER: u64 = 4;
/// [`RESTORE`] only if the call failed: a timer armed with one `itimerspec` as both its new
/// and its old value, which a successful call overwrites with the old value.
const RESTORE_ON_ERROR: u64 = 5;

/// Whether `mode` moves the caller's deadline, to be put back at `sys_exit`.
#[inline(always)]
fn restores(mode: u64) -> bool {
    mode == RESTORE || mode == RESTORE_ON_ERROR
}
/// In an `itimerspec`, where the first expiry (`it_value`) is.
const IT_VALUE_OFF: u64 = 16;

/// Per thread (tid): the read it is making.
#[map]
static CLOCK_PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(CLOCK_CALLS_MAX, 0);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn fault_clock_rewrite_enter(ctx: RawTracePointContext) -> i32 {
    if let Some(s) = seen(&ctx) {
        enter(s);
    }
    0
}

/// The same, on each call's own `sys_enter_<name>` tracepoint.
#[tracepoint]
pub fn fault_clock_rewrite_enter_tp(ctx: TracePointContext) -> u32 {
    if let Some(s) = seen_tp(&ctx) {
        enter(s);
    }
    0
}

/// Notes what `sys_exit` does for the call `s`, or counts it when it cannot be rewritten.
#[inline(always)]
fn enter(s: Seen) {
    let r = &s.regs;
    let page = s.watched.page;
    // (clock id, where the time is, mode)
    let call = match (s.nr, s.wait) {
        (NR_CLOCK_GETTIME, false) => Some((r.rdi, r.rsi, READ_NS)),
        (NR_GETTIMEOFDAY, false) => Some((0, r.rdi, READ_US)),
        (NR_CLOCK_NANOSLEEP, true) => Some((r.rdi, r.rdx, RESTORE)),
        // Realtime futex waits: the timeout, an absolute CLOCK_REALTIME time.
        (NR_FUTEX, true) => Some((0, r.r10, RESTORE)),
        (NR_TIMERFD_SETTIME | NR_TIMER_SETTIME, true) => {
            let mode = match r.r10 == r.rdx {
                true => RESTORE_ON_ERROR,
                false => RESTORE,
            };
            timer_clock(s.tgid, s.nr, r)
                .map(|clock| (clock, r.rdx.wrapping_add(IT_VALUE_OFF), mode))
        }
        // The pointer is not used: any non-zero value passes the test below.
        (NR_TIMERFD_CREATE, false) => Some((r.rdi, 1, MADE_TIMERFD)),
        // A copy of a known timerfd's descriptor is a timerfd on the same clock.
        (NR_DUP | NR_DUP2 | NR_DUP3 | NR_FCNTL, false) => {
            timer_clock(s.tgid, NR_TIMERFD_SETTIME, r).map(|clock| (clock, 1, MADE_TIMERFD))
        }
        (NR_TIMER_CREATE, false) => Some((r.rdi, r.rdx, MADE_TIMER)),
        _ => None,
    };
    let handled = match call {
        Some((clock, ptr, mode)) if page != 0 && ptr != 0 && clock < CLOCK_SLOTS as u64 => {
            note(page, clock, ptr, mode)
        }
        _ => false,
    };
    if !handled {
        count(s.tgid, s.kind, s.wait);
    }
}

/// Notes a read for its `sys_exit`, or translates a wait's deadline now (the kernel reads
/// it after this) and notes it for restoring. False when it cannot be done.
#[inline(always)]
fn note(page: u64, clock: u64, ptr: u64, mode: u64) -> bool {
    let mut p = Pending {
        clock,
        ptr,
        mode,
        saved: [0, 0],
    };
    if restores(mode) {
        match translate(page, clock, ptr) {
            Ok(Some(saved)) => p.saved = saved,
            _ => return false,
        }
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    if CLOCK_PENDING.insert(&tid, &p, 0).is_err() {
        // Full: put the deadline back at once; the wait follows the true clock.
        if restores(mode) {
            // SAFETY: the caller's own timespec, as it was.
            let _ = unsafe { bpf_probe_write_user(ptr as *mut [i64; 2], &p.saved) };
        }
        return false;
    }
    true
}

/// Moves the absolute deadline at `ptr` to the true time at which the faulted clock reads
/// it (by the steady fault: offset, drift and jumps, no noise); returns it as it was.
#[inline(always)]
fn translate(page: u64, clock: u64, ptr: u64) -> Result<Option<[i64; 2]>, i32> {
    let Some(params) = params(page, clock)? else {
        return Ok(None);
    };
    let dst = ptr as *mut [i64; 2];
    // SAFETY: user addresses, read and written with the helpers that check them.
    let saved = unsafe { bpf_probe_read_user(dst as *const [i64; 2]) }?;
    let d = saved[0].wrapping_mul(NS as i64).wrapping_add(saved[1]);
    // A timer's expiry of 0 disarms it: nothing to translate, nothing missed.
    if d == 0 {
        return Ok(Some(saved));
    }
    // The page's own deadlines are the loader's lease, a second or so ahead: they say
    // whether the fault holds now, not at the wait's end.
    let lease_at = (page + MONO_DEADLINE_OFF as u64) as *const i64;
    // SAFETY: as above.
    let lease: i64 = unsafe { bpf_probe_read_user(lease_at) }?;
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() } as i64;
    if params.flags & FLAG_ACTIVE == 0 || now >= lease {
        return Ok(None);
    }
    let add = steady_ns(&params, d.wrapping_sub(params.offset_ns));
    let out = split(d.wrapping_sub(add));
    // SAFETY: as above.
    unsafe { bpf_probe_write_user(dst, &out) }?;
    Ok(Some(saved))
}

/// The clock's parameters in the page at `page`, or `None` once the fault has expired.
#[inline(always)]
fn params(page: u64, clock: u64) -> Result<Option<ClockParams>, i32> {
    let clock = clock & (CLOCK_SLOTS as u64 - 1);
    // SAFETY: user addresses, read with the helper that checks them.
    let expired: u64 = unsafe { bpf_probe_read_user((page + STATE_OFF as u64) as *const u64) }?;
    if expired != 0 {
        return Ok(None);
    }
    let at = page + CLOCKS_OFF as u64 + clock * core::mem::size_of::<ClockParams>() as u64;
    // SAFETY: as above.
    unsafe { bpf_probe_read_user(at as *const ClockParams) }.map(Some)
}

/// ns -> (seconds, nanoseconds in [0, 10^9)), flooring.
#[inline(always)]
fn split(v: i64) -> [i64; 2] {
    let u = (v as u64).wrapping_add(BIAS);
    [(u / NS) as i64 - (1 << 32), (u % NS) as i64]
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn fault_clock_rewrite_exit(ctx: RawTracePointContext) -> i32 {
    exit(ctx.arg(1));
    0
}

/// The same, on each call's own `sys_exit_<name>` tracepoint, whose record holds the
/// return value at offset 16.
#[tracepoint]
pub fn fault_clock_rewrite_exit_tp(ctx: TracePointContext) -> u32 {
    exit(record_at::<i64>(&ctx, SYSCALL_NR_OFF + 8));
    0
}

/// Finishes the call this thread noted at `sys_enter`, which returned `ret`.
#[inline(always)]
fn exit(ret: i64) {
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    // SAFETY: a plain map read; the value is copied out at once.
    let Some(p) = (unsafe { CLOCK_PENDING.get(&tid) }).copied() else {
        return;
    };
    let _ = CLOCK_PENDING.remove(&tid);
    let tgid = (id >> 32) as u32;
    match p.mode {
        // The kernel wrote the old value over the caller's new one: it is theirs to see.
        RESTORE_ON_ERROR if ret == 0 => return,
        RESTORE | RESTORE_ON_ERROR => {
            // SAFETY: the caller's own timespec, as it was.
            let _ = unsafe { bpf_probe_write_user(p.ptr as *mut [i64; 2], &p.saved) };
            return;
        }
        MADE_TIMERFD | MADE_TIMER => {
            let _ = made_timer(tgid, &p, ret);
            return;
        }
        _ => {}
    }
    // SAFETY: as above.
    let page = unsafe { CLOCK_WATCHED.get(&tgid) }.map_or(0, |w| w.page);
    if ret == 0 && page != 0 {
        let _ = rewrite(page, &p);
    }
}

/// Records the clock of the timer a successful `timerfd_create` or `timer_create` made.
#[inline(always)]
fn made_timer(tgid: u32, p: &Pending, ret: i64) -> Result<(), i32> {
    let id = match p.mode {
        MADE_TIMERFD if ret >= 0 => ret as u32,
        MADE_TIMER if ret == 0 => {
            // SAFETY: the caller's own timer id, which the kernel has just written.
            let id: i32 = unsafe { bpf_probe_read_user(p.ptr as *const i32) }?;
            id as u32 | TIMER_POSIX
        }
        _ => return Ok(()),
    };
    let clock = p.clock as u32;
    TIMER_CLOCKS
        .insert(&TimerKey { tgid, id }, &clock, 0)
        .map_err(|e| e as i32)
}

/// Adds the fault to the result at `p.ptr`, by the parameters in the page at `page`.
#[inline(always)]
fn rewrite(page: u64, p: &Pending) -> Result<(), i32> {
    let clock = p.clock & (CLOCK_SLOTS as u64 - 1);
    let Some(params) = params(page, clock)? else {
        return Ok(());
    };
    let micros = p.mode == READ_US;
    let dst = p.ptr as *mut [i64; 2];
    // SAFETY: user addresses, read and written with the helpers that check them; the
    // kernel has just written the result there.
    let [sec, frac] = unsafe { bpf_probe_read_user(dst as *const [i64; 2]) }?;
    let nsec = if micros { frac * 1000 } else { frac };
    let t = sec.wrapping_mul(NS as i64).wrapping_add(nsec);
    let Some(add) = fault_ns(&params, t, nsec as u64, true) else {
        return Ok(());
    };
    let mut v = t.wrapping_add(add);
    if params.flags & FLAG_CLAMP != 0 {
        let last_at = (page + LAST_OFF as u64 + clock * 64) as *mut i64;
        // SAFETY: as above; the line is the process's own writable state.
        let last: i64 = unsafe { bpf_probe_read_user(last_at as *const i64) }?;
        if v <= last {
            v = last;
        } else {
            // SAFETY: as above.
            unsafe { bpf_probe_write_user(last_at, &v) }?;
        }
    }
    let [sec, nsec] = split(v);
    let out = [sec, if micros { nsec / 1000 } else { nsec }];
    // SAFETY: as above: the caller's own result, in the shape it asked for.
    unsafe { bpf_probe_write_user(dst, &out) }
}
