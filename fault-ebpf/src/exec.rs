//! Holding a process that execs inside a target until fault has patched its clocks.
//!
//! An exec drops the vDSO redirection (the new program gets a fresh vDSO), so a process
//! that execs in a target would read true time until the next rescan. This raw tracepoint
//! runs in the exec'ing task right after the new image is in place and before its first
//! instruction (`sched_process_exec`, fired from `exec_binprm`:
//! https://elixir.bootlin.com/linux/v6.18/source/fs/exec.c#L1759). For a task under a
//! target cgroup it records the pid in EXEC_HELD (pinned, so `fault stop` can let it go if
//! the loader dies), queues an event and sends the process SIGSTOP, which takes effect on
//! its way back to user space. The loader patches it and sends SIGCONT.
//!
//! Every failure lets the process run unheld (fail open): the rescan patches it later.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_send_signal},
    macros::{map, raw_tracepoint},
    maps::{CgroupArray, HashMap, RingBuf},
    programs::RawTracePointContext,
};
use fault_common::{ExecEvent, EXEC_MAX_CGROUPS, EXEC_MAX_HELD};

use crate::events::{self, Event};

const SIGSTOP: u32 = 19;

/// Set by the loader (`fault_common::globals`).
#[unsafe(no_mangle)]
static EXEC_DEADLINE_NS: u64 = 0;
#[unsafe(no_mangle)]
static EXEC_CGROUP_COUNT: u32 = 0;

#[map]
static EXEC_CGROUPS: CgroupArray = CgroupArray::with_max_entries(EXEC_MAX_CGROUPS, 0);
#[map]
static EXEC_HELD: HashMap<u32, u64> = HashMap::with_max_entries(EXEC_MAX_HELD, 0);
#[map]
static EXEC_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn fault_exec(ctx: RawTracePointContext) -> i32 {
    if let Err(pid) = try_exec() {
        events::tell(&ctx, Event::ExecUnheld, pid);
    }
    0
}

/// `Err(pid)` when a target's process could not be held.
#[inline(always)]
fn try_exec() -> Result<(), u32> {
    // SAFETY: plain loads of globals the loader set before loading the program.
    let deadline = unsafe { core::ptr::read_volatile(&EXEC_DEADLINE_NS) };
    let count = unsafe { core::ptr::read_volatile(&EXEC_CGROUP_COUNT) };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if deadline != 0 && now >= deadline {
        return Ok(());
    }
    // The loader's heartbeat (its lease on CONFIG): stale once the loader is gone, and then
    // nobody would patch and continue the process.
    if crate::net::expired() {
        return Ok(());
    }
    if !under_a_target(count) {
        return Ok(());
    }
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    EXEC_HELD.insert(pid, now, 0).map_err(|_| pid)?;
    let Some(mut entry) = EXEC_EVENTS.reserve::<ExecEvent>(0) else {
        let _ = EXEC_HELD.remove(pid);
        return Err(pid);
    };
    entry.write(ExecEvent {
        pid,
        _pad: 0,
        stopped_ns: now,
    });
    // SAFETY: no preconditions; it signals the current process (all of it: at exec it is a
    // single thread).
    if unsafe { bpf_send_signal(SIGSTOP) } != 0 {
        entry.discard(0);
        let _ = EXEC_HELD.remove(pid);
        return Err(pid);
    }
    entry.submit(0);
    Ok(())
}

/// Whether the current task is in one of the first `count` cgroups or below.
#[inline(always)]
fn under_a_target(count: u32) -> bool {
    for i in 0..EXEC_MAX_CGROUPS {
        if i >= count {
            break;
        }
        if EXEC_CGROUPS.current_task_under_cgroup(i) == Ok(true) {
            return true;
        }
    }
    false
}
