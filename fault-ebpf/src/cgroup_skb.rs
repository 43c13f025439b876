//! Ingress faults: drop packets on their way to the target's sockets.
//!
//! At TC ingress a packet has no socket yet, and TC programs may not read a looked-up
//! socket's cgroup (`bpf_sk_cgroup_id` is refused for sched_cls). A cgroup_skb program
//! attached to the target cgroup runs exactly for packets delivered to the target's sockets
//! (and its descendants'), just before the socket takes them: dropping there is loss the
//! receiving stack never saw, and the sender's TCP recovers by retransmission.

use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use fault_common::DIR_INGRESS;

use crate::net;

const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(ingress)]
pub fn fault_cg_ingress(ctx: SkBuffContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

#[inline(always)]
fn try_ingress(ctx: &SkBuffContext) -> Result<i32, i32> {
    if net::expired() {
        return Ok(PASS);
    }
    // SAFETY: ctx.skb.skb is the context pointer the kernel handed us.
    let (protocol, ifindex) = unsafe { ((*ctx.skb.skb).protocol, (*ctx.skb.skb).ifindex) };
    // cgroup_skb sees the packet from its network header on.
    let pkt = net::parse(&ctx.skb, 0, protocol).ok_or(PASS)?;
    // On the loopback device this is the device the packet came in on (skb->dev).
    let index = net::find_rule(
        DIR_INGRESS,
        pkt.family,
        pkt.proto,
        pkt.sport,
        &pkt.saddr,
        ifindex,
    )
    .ok_or(PASS)?;
    let (rule, counters, state) = net::rule_slots(index).ok_or(PASS)?;
    counters.seen += 1;
    if net::should_drop(rule, state) {
        counters.dropped += 1;
        return Ok(DROP);
    }
    Ok(PASS)
}
