//! Drops at the target's sockets: ingress loss, and certain drops on egress.
//!
//! At TC ingress a packet has no socket yet, and TC programs may not read a looked-up
//! socket's cgroup (`bpf_sk_cgroup_id` is refused for sched_cls). A cgroup_skb program
//! attached to the target cgroup runs exactly for packets delivered to the target's sockets
//! (and its descendants'), just before the socket takes them: dropping there is loss the
//! receiving stack never saw, and the sender's TCP recovers by retransmission.

use aya_ebpf::{helpers::bpf_skb_cgroup_id, macros::cgroup_skb, programs::SkBuffContext};
use fault_common::{DIR_EGRESS, DIR_INGRESS};

use crate::net;

const PASS: i32 = 1;
const DROP: i32 = 0;
/// Egress only: drop, and tell the stack it was congestion (NET_XMIT_DROP), which UDP
/// senders do not see and TCP takes as a lost segment; a plain drop would be EPERM.
const DROP_CN: i32 = 2;

/// The class of the socket's cgroup. The program is linked to the target cgroups and acts on
/// their descendants too; a descendant made since the last rescan is not in TARGETS yet and
/// counts as class 0 (a policy's class, which experiments leave empty).
#[inline(always)]
fn class(ctx: &SkBuffContext) -> u32 {
    // SAFETY: the context pointer the kernel handed us.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    net::class_of(cgroup).unwrap_or(0)
}

#[cgroup_skb(ingress)]
pub fn fault_cg_ingress(ctx: SkBuffContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

#[inline(always)]
fn try_ingress(ctx: &SkBuffContext) -> Result<i32, i32> {
    // SAFETY: ctx.skb.skb is the context pointer the kernel handed us.
    let (protocol, ifindex) = unsafe { ((*ctx.skb.skb).protocol, (*ctx.skb.skb).ifindex) };
    // cgroup_skb sees the packet from its network header on.
    let pkt = net::parse(&ctx.skb, 0, protocol).ok_or(PASS)?;
    // On the loopback device this is the device the packet came in on (skb->dev).
    let index = net::find_rule(DIR_INGRESS, &pkt, ifindex, class(ctx)).ok_or(PASS)?;
    let (rule, counters, state) = net::rule_slots(index).ok_or(PASS)?;
    counters.seen += 1;
    if net::should_drop(index, rule, state) {
        counters.dropped += 1;
        return Ok(DROP);
    }
    Ok(PASS)
}

/// Egress, at the target's sockets, for the drops that are certain (a partition, 100 %).
/// The TC program judges a packet only once it reaches an interface fault has attached to,
/// and a target process that starts in a network namespace of its own sends before the
/// rescan can attach there: this program, linked to the target cgroups, is in place before
/// the process exists, so not even that first SYN crosses a partition. Judging twice is
/// harmless for a certain drop, and the TC program never sees the packets dropped here.
#[cgroup_skb(egress)]
pub fn fault_cg_egress(ctx: SkBuffContext) -> i32 {
    match try_egress(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

#[inline(always)]
fn try_egress(ctx: &SkBuffContext) -> Result<i32, i32> {
    // SAFETY: ctx.skb.skb is the context pointer the kernel handed us.
    let (protocol, ifindex) = unsafe { ((*ctx.skb.skb).protocol, (*ctx.skb.skb).ifindex) };
    let pkt = net::parse(&ctx.skb, 0, protocol).ok_or(PASS)?;
    // The device the packet is about to leave by (skb->dev), as at TC.
    let index = net::find_rule(DIR_EGRESS, &pkt, ifindex, class(ctx)).ok_or(PASS)?;
    let (rule, counters, _) = net::rule_slots(index).ok_or(PASS)?;
    if !rule.certain_drop() {
        return Ok(PASS);
    }
    counters.seen += 1;
    counters.dropped += 1;
    Ok(DROP_CN)
}
