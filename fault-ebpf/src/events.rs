//! The programs' rare events, for `fault apply -v`, through aya-log: a helper that failed
//! or a ring that was full. Each kind is told once per CPU for a run, so a condition that
//! hits every packet costs one message, not one per packet; the rule counters' `errors`
//! count every occurrence.

use aya_ebpf::{macros::map, maps::PerCpuArray, EbpfContext};
use aya_log_ebpf::warn;

/// Which kinds this CPU has told already.
#[map]
static TOLD: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// What went wrong.
#[derive(Clone, Copy)]
pub enum Event {
    /// `bpf_clone_redirect` refused a duplicate or the copy that waits in fq.
    CloneFailed = 1,
    /// Rewriting a payload word or its checksum failed.
    CorruptFailed = 2,
    /// The ring to userspace was full (or its slot missing): the packet left undelayed.
    ResendFull = 4,
    /// Setting the departure time failed: the packet left undelayed.
    StampFailed = 8,
    /// The exec hold could not record or stop a process (a full map or ring, a refused
    /// signal): it runs unheld and the rescan patches it.
    ExecUnheld = 16,
}

/// Tells `event` for rule `index` (or pid, for the exec hold), the first time on this CPU.
#[inline(always)]
pub fn tell<C: EbpfContext>(ctx: &C, event: Event, index: u32) {
    let Some(told) = TOLD.get_ptr_mut(0) else {
        return;
    };
    let bit = event as u32;
    // SAFETY: a per-CPU slot, and a BPF program is not preempted on its CPU.
    unsafe {
        if *told & bit != 0 {
            return;
        }
        *told |= bit;
    }
    match event {
        Event::CloneFailed => warn!(ctx, "rule {}: bpf_clone_redirect failed", index),
        Event::CorruptFailed => warn!(ctx, "rule {}: rewriting the payload failed", index),
        Event::ResendFull => warn!(
            ctx,
            "rule {}: the ring to fault is full; packets leave undelayed", index
        ),
        Event::StampFailed => warn!(ctx, "rule {}: setting the departure time failed", index),
        Event::ExecUnheld => warn!(
            ctx,
            "exec hold: could not hold pid {}; the rescan patches it", index
        ),
    }
}
