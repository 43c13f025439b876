//! Delay, jitter, rate and reordering by Earliest Departure Time: the program writes the
//! time a packet may leave into `skb->tstamp`, and the fq qdisc (root of the interface)
//! holds it until then. Nothing is queued in BPF, so there is no queue limit to cap
//! throughput, and untargeted packets on the same interface are not delayed.
//!
//! fq orders each flow's packets by departure time, so a later packet with an earlier time
//! would overtake: to keep jitter from reordering a flow, a flow's times never decrease
//! (FLOW_LAST), unless the rule asks for reordering.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_set_tstamp},
    macros::map,
    maps::{Array, LruHashMap},
    programs::TcContext,
};
use fault_common::{
    FlowKey, NetRule, RuleState, DIST_SCALE, DIST_TABLE_LEN, DIST_UNIFORM, PROB_ONE,
};

use crate::net::{self, Packet};

/// `BPF_SKB_TSTAMP_DELIVERY_MONO` (include/uapi/linux/bpf.h, Linux 5.18): the time is a
/// CLOCK_MONOTONIC departure time, which is what fq expects.
const TSTAMP_DELIVERY_MONO: u32 = 1;

#[map]
static DIST_TABLE: Array<i32> = Array::with_max_entries(4 * DIST_TABLE_LEN, 0);
#[map]
static RATE_NEXT: Array<u64> = Array::with_max_entries(64, 0);
#[map]
static FLOW_LAST: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(65536, 0);

/// Whether the rule delays or paces at all.
#[inline(always)]
pub fn wanted(rule: &NetRule) -> bool {
    rule.schedules()
}

/// Whether the rule holds packets back for a while (as opposed to pacing them only). Such
/// packets leave their socket's accounting, see [`crate::tc`].
#[inline(always)]
pub fn holds(rule: &NetRule) -> bool {
    rule.delay_ns != 0 || rule.jitter_ns != 0
}

/// Writes a departure time into the packet, for fq. Returns false if the helper refused.
#[inline(always)]
pub fn stamp(ctx: &TcContext, depart: u64) -> bool {
    unsafe { bpf_skb_set_tstamp(ctx.skb.skb, depart, TSTAMP_DELIVERY_MONO) == 0 }
}

/// Writes a departure time into `skb->tstamp` itself, for kernels without
/// `bpf_skb_set_tstamp` (before 5.18). There the field has no clock of its own: fq reads
/// it as CLOCK_MONOTONIC, which is what is written, and nothing between this hook and the
/// qdisc on the same interface clears it.
#[inline(always)]
pub fn stamp_direct(ctx: &TcContext, depart: u64) {
    unsafe { (*ctx.skb.skb).tstamp = depart };
}

/// The packet's departure time (CLOCK_MONOTONIC ns) under the rule's delay, jitter, rate and
/// reordering.
#[inline(always)]
pub fn departure(
    ctx: &TcContext,
    index: u32,
    rule: &NetRule,
    state: &mut RuleState,
    pkt: &Packet,
) -> (u64, u64) {
    let now = unsafe { bpf_ktime_get_ns() };
    // TCP paces by EDT itself: never send earlier than the stack asked.
    let skb_tstamp = unsafe { (*ctx.skb.skb).tstamp };
    let mut depart = if skb_tstamp > now { skb_tstamp } else { now };
    let base = depart;

    // A link of the given rate: the packet leaves when the previous one has been sent.
    // (checked_div: no rate, no pacing, and no division-by-zero path for the verifier.)
    // A GSO super-packet leaves as gso_segs packets, each with its own headers: count the
    // bytes the wire carries, as the kernel's qdiscs do (qdisc_pkt_len_init).
    let segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    let wire = ctx.len() as u64 + segs.saturating_sub(1) * pkt.payload_off as u64;
    if let Some(cost) = (wire * 1_000_000_000).checked_div(rule.rate_bytes) {
        // The slot is shared by all CPUs; a lost update between two CPUs lets one packet
        // through a little early, which is within the rate's tolerance.
        if let Some(next) = RATE_NEXT.get_ptr_mut(index) {
            let next = unsafe { &mut *next };
            if *next > depart {
                depart = *next;
            }
            *next = depart + cost;
        }
    }

    let mut reorder = false;
    if holds(rule) {
        if rule.reorder_p != 0 && net::chance(index, rule.reorder_p) {
            // Sent as soon as the rate allows: it overtakes the delayed packets before it.
            reorder = true;
        } else {
            depart += delay(index, rule, state);
        }
    }

    if !reorder {
        let flow = FlowKey {
            saddr: pkt.saddr,
            daddr: pkt.daddr,
            sport: pkt.sport,
            dport: pkt.dport,
            proto: pkt.proto,
            _pad: [0; 3],
        };
        if let Some(last) = FLOW_LAST.get_ptr_mut(flow) {
            let last = unsafe { &mut *last };
            if *last > depart {
                depart = *last;
            }
            *last = depart;
        } else {
            let _ = FLOW_LAST.insert(flow, depart, 0);
        }
    }

    (depart, depart - base)
}

/// Latency plus a jitter draw from the rule's distribution, never below zero.
#[inline(always)]
fn delay(index: u32, rule: &NetRule, state: &mut RuleState) -> u64 {
    if rule.jitter_ns == 0 {
        return rule.delay_ns;
    }
    // Correlated draws as netem makes them: a weighted mean of a fresh uniform number and
    // the previous draw, with the correlation as the previous draw's weight.
    let fresh = net::random(index) as u64;
    let rho = rule.jitter_corr;
    let u = ((fresh * (PROB_ONE - rho) + state.jitter_last as u64 * rho) >> 32) as u32;
    state.jitter_last = u;

    // Jitter in units of 1/DIST_SCALE of its amplitude.
    let units: i64 = if rule.jitter_dist == DIST_UNIFORM {
        // Uniform over [-jitter, +jitter].
        (u as i64 >> 16) * 2 * DIST_SCALE / 65536 - DIST_SCALE
    } else {
        let slot = (rule.jitter_dist - 1) * DIST_TABLE_LEN + (u % DIST_TABLE_LEN);
        match DIST_TABLE.get(slot) {
            Some(v) => *v as i64,
            None => 0,
        }
    };
    let d = rule.delay_ns as i64 + rule.jitter_ns as i64 * units / DIST_SCALE;
    if d < 0 {
        0
    } else {
        d as u64
    }
}
