//! Rewriting the results of raw clock reads (`syscall(SYS_clock_gettime)`,
//! `gettimeofday` made as a system call) of patched processes, with the fault their vDSO
//! stub applies: the same parameters, read from the process's own parameter page, and the
//! same maths (`fault_common::clock_math`).
//!
//! `sys_enter` notes, per thread, a read it can rewrite (the clock id and where the result
//! goes); `sys_exit` reads the true result the kernel wrote, adds the fault and writes it
//! back with `bpf_probe_write_user`. That helper is refused under lockdown, where these
//! programs do not load and `fault_clock_calls` only counts. Calls this cannot rewrite
//! (`time`, whose result is the return value, and waits until an absolute time) are
//! counted as `fault_clock_calls` counts them.
//!
//! Never backwards: for a clamped clock the largest value returned is shared with the stub
//! through the page's `last` line; eBPF cannot update user memory atomically, so two threads
//! racing a stub read and a raw read may each keep their own maximum.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_write_user},
    macros::{map, raw_tracepoint},
    maps::HashMap,
    programs::RawTracePointContext,
};
use fault_common::{
    clock_math::{fault_ns, ClockParams, CLOCKS_OFF, CLOCK_SLOTS, FLAG_CLAMP, LAST_OFF, STATE_OFF},
    CLOCK_CALLS_MAX,
};

use crate::clock_calls::{count, seen, CLOCK_WATCHED, NR_CLOCK_GETTIME, NR_GETTIMEOFDAY};

const NS: u64 = 1_000_000_000;
/// u = t + BIAS is never negative for any reading: unsigned division then floors.
const BIAS: u64 = NS << 32;

/// A read to rewrite at its `sys_exit`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub clock: u64,
    /// The caller's timespec (clock_gettime) or timeval (gettimeofday).
    pub ptr: u64,
    pub micros: u64,
}

/// Per thread (tid): the read it is making.
#[map]
static CLOCK_PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(CLOCK_CALLS_MAX, 0);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn fault_clock_rewrite_enter(ctx: RawTracePointContext) -> i32 {
    let Some(s) = seen(&ctx) else {
        return 0;
    };
    let r = &s.regs;
    let read = match s.nr {
        NR_CLOCK_GETTIME if r.rdi < CLOCK_SLOTS as u64 => Some((r.rdi, r.rsi, 0)),
        NR_GETTIMEOFDAY => Some((0, r.rdi, 1)),
        _ => None,
    };
    match read {
        Some((clock, ptr, micros)) if s.watched.page != 0 && ptr != 0 => {
            let tid = bpf_get_current_pid_tgid() as u32;
            let p = Pending { clock, ptr, micros };
            // Full: this read keeps its true result.
            let _ = CLOCK_PENDING.insert(&tid, &p, 0);
        }
        _ => count(s.tgid, s.kind, s.wait),
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn fault_clock_rewrite_exit(ctx: RawTracePointContext) -> i32 {
    let id = bpf_get_current_pid_tgid();
    let tid = id as u32;
    // SAFETY: a plain map read; the value is copied out at once.
    let Some(p) = (unsafe { CLOCK_PENDING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = CLOCK_PENDING.remove(&tid);
    let ret: i64 = ctx.arg(1);
    let tgid = (id >> 32) as u32;
    // SAFETY: as above.
    let page = unsafe { CLOCK_WATCHED.get(&tgid) }.map_or(0, |w| w.page);
    if ret == 0 && page != 0 {
        let _ = rewrite(page, &p);
    }
    0
}

/// Adds the fault to the result at `p.ptr`, by the parameters in the page at `page`.
#[inline(always)]
fn rewrite(page: u64, p: &Pending) -> Result<(), i32> {
    let clock = p.clock & (CLOCK_SLOTS as u64 - 1);
    // SAFETY: user addresses, read with the helper that checks them.
    let expired: u64 = unsafe { bpf_probe_read_user((page + STATE_OFF as u64) as *const u64) }?;
    if expired != 0 {
        return Ok(());
    }
    let at = page + CLOCKS_OFF as u64 + clock * core::mem::size_of::<ClockParams>() as u64;
    // SAFETY: as above.
    let params: ClockParams = unsafe { bpf_probe_read_user(at as *const ClockParams) }?;
    let dst = p.ptr as *mut [i64; 2];
    // SAFETY: as above; the kernel has just written the result there.
    let [sec, frac] = unsafe { bpf_probe_read_user(dst as *const [i64; 2]) }?;
    let nsec = if p.micros != 0 { frac * 1000 } else { frac };
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
    let u = (v as u64).wrapping_add(BIAS);
    let (sec, nsec) = ((u / NS) as i64 - (1 << 32), (u % NS) as i64);
    let out = [sec, if p.micros != 0 { nsec / 1000 } else { nsec }];
    // SAFETY: as above: the caller's own result, in the shape it asked for.
    unsafe { bpf_probe_write_user(dst, &out) }
}
