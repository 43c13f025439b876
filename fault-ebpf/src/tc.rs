//! Egress faults at TC: drop, corrupt and duplicate what the target's sockets send.
//!
//! The same program works under tcx (kernel >= 6.6) and as a cls_bpf filter on clsact (older
//! kernels). "Not ours" returns -1, which is `TCX_NEXT` under tcx and `TC_ACT_UNSPEC` under
//! cls_bpf: both hand the packet on to whatever else is attached, so we never end a chain
//! that another tool (a CNI, say) relies on.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_RECOMPUTE_CSUM},
    helpers::{bpf_get_prandom_u32, bpf_redirect, bpf_skb_cgroup_id},
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use fault_common::{
    delay_bucket, NetRule, RuleCounters, RuleState, CSUM_FIX, DIR_EGRESS, DIR_INGRESS, PROTO_TCP,
    PROTO_UDP,
};

use crate::{
    edt,
    events::{self, Event},
    net::{self, Packet, ETH_P_IP, ETH_P_IPV6},
    resend,
};

/// Per CPU, 1 while `send_copy` is inside `bpf_clone_redirect`: the copy goes through this
/// program again before the helper returns, and this is how it is recognised.
#[map]
static OWN_COPY: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// How a delayed packet is held back: which of the three egress and peer programs this is.
/// fq with the departure time set by `bpf_skb_set_tstamp` (Linux 5.18 and later).
const FQ: u8 = 0;
/// fq with the departure time written into `skb->tstamp` (older kernels, see
/// [`edt::stamp_direct`]).
const FQ_DIRECT: u8 = 1;
/// fault in userspace holds the packet (kernels without sch_fq, see [`fault_tc_resend`]).
const RESEND: u8 = 2;

/// Hand the packet on unchanged (see the module comment).
const TC_NEXT: i32 = -1;
const ETH_HLEN: usize = 14;

/// Delays by departure time, for fq (the root qdisc fault installs).
#[classifier]
pub fn fault_tc_egress(ctx: TcContext) -> i32 {
    match try_egress::<FQ>(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// Delays by handing packets to fault in userspace, for kernels without sch_fq. A separate
/// program, so that the helpers it needs are asked of those kernels only.
#[classifier]
pub fn fault_tc_resend(ctx: TcContext) -> i32 {
    match try_egress::<RESEND>(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// [`fault_tc_egress`] for kernels before 5.18, which lack `bpf_skb_set_tstamp`.
#[classifier]
pub fn fault_tc_egress_dt(ctx: TcContext) -> i32 {
    match try_egress::<FQ_DIRECT>(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// Ingress delay for a target with a network namespace of its own: attached to the egress of
/// the far end of the target's veth, where every packet is on its way into the target's
/// namespace. It applies the delay, jitter, rate and reordering of ingress rules (drops stay
/// with the cgroup_skb program, at the target's sockets).
#[classifier]
pub fn fault_tc_peer(ctx: TcContext) -> i32 {
    match try_peer::<FQ>(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// [`fault_tc_peer`] for kernels without sch_fq (see [`fault_tc_resend`]).
#[classifier]
pub fn fault_tc_peer_rs(ctx: TcContext) -> i32 {
    match try_peer::<RESEND>(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

/// [`fault_tc_peer`] for kernels before 5.18 (see [`fault_tc_egress_dt`]).
#[classifier]
pub fn fault_tc_peer_dt(ctx: TcContext) -> i32 {
    match try_peer::<FQ_DIRECT>(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

#[inline(always)]
fn try_peer<const PATH: u8>(ctx: &TcContext) -> Result<i32, i32> {
    let skb = unsafe { &mut *ctx.skb.skb };
    if own_copy() || (PATH == RESEND && resend::from_packet_socket(skb)) {
        return Ok(TC_NEXT);
    }
    let pkt = net::parse(&ctx.skb, l3_offset(ctx, skb.protocol), skb.protocol).ok_or(TC_NEXT)?;
    // Seen from the target: the peer is the source.
    // The key must be on the stack: the verifier refuses a pointer into the context.
    let ifindex: u32 = skb.ifindex;
    let class = unsafe { net::PEER_CLASS.get(&ifindex) }.map_or(0, |c| *c);
    let index = net::find_rule(DIR_INGRESS, &pkt, skb.ifindex, class).ok_or(TC_NEXT)?;
    let (rule, counters, state) = net::rule_slots(index).ok_or(TC_NEXT)?;
    // Drops on the way in happen at the target's socket (cgroup_skb), which may not clone
    // or rewrite a packet: that happens here, before the packet enters the namespace.
    copy_and_corrupt(ctx, index, rule, counters, &pkt);
    Ok(schedule::<PATH>(ctx, index, rule, counters, state, &pkt))
}

/// Duplication and corruption, as the rule asks; each failure is counted and told once.
#[inline(always)]
fn copy_and_corrupt(
    ctx: &TcContext,
    index: u32,
    rule: &NetRule,
    counters: &mut RuleCounters,
    pkt: &Packet,
) {
    if rule.dup_p != 0 && net::chance(index, rule.dup_p) {
        match send_copy(ctx) {
            true => counters.duplicated += 1,
            false => {
                counters.errors += 1;
                events::tell(ctx, Event::CloneFailed, index);
            }
        }
    }
    if rule.corrupt_p != 0 && net::chance(index, rule.corrupt_p) {
        match corrupt(ctx, rule, pkt) {
            Ok(true) => counters.corrupted += 1,
            Ok(false) => {}
            Err(()) => {
                counters.errors += 1;
                events::tell(ctx, Event::CorruptFailed, index);
            }
        }
    }
}

/// Whether this is our own copy coming round again (see `send_copy`).
#[inline(always)]
fn own_copy() -> bool {
    OWN_COPY.get(0).is_some_and(|sending| *sending != 0)
}

#[inline(always)]
fn try_egress<const PATH: u8>(ctx: &TcContext) -> Result<i32, i32> {
    // SAFETY: ctx.skb.skb is the context pointer the kernel handed us.
    let skb = unsafe { &mut *ctx.skb.skb };
    // Cheapest test first: is the sending socket in a target cgroup at all? (Our own copies
    // come from targeted sockets, so that check can wait.)
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let Some(class) = net::class_of(cgroup) else {
        return Ok(TC_NEXT);
    };
    if own_copy() {
        return Ok(TC_NEXT);
    }
    if PATH == RESEND && resend::from_packet_socket(skb) {
        // fault's resender, in a target cgroup itself: its packets have been delayed already.
        return Ok(TC_NEXT);
    }
    let pkt = net::parse(&ctx.skb, l3_offset(ctx, skb.protocol), skb.protocol).ok_or(TC_NEXT)?;
    let index = net::find_rule(DIR_EGRESS, &pkt, skb.ifindex, class).ok_or(TC_NEXT)?;
    Ok(apply::<PATH>(ctx, index, &pkt))
}

/// Ethernet-like devices (veth, lo, NICs) carry a MAC header at TC, L3 devices (wireguard,
/// tun) do not. With a MAC header the ethertype at offset 12 agrees with skb->protocol and
/// the byte after it holds the IP version.
#[inline(always)]
fn l3_offset(ctx: &TcContext, skb_protocol: u32) -> usize {
    let ethertype = u16::from_be(skb_protocol as u16);
    let version = match ethertype {
        ETH_P_IP => 4,
        ETH_P_IPV6 => 6,
        _ => return ETH_HLEN,
    };
    // The ethertype and the byte after it, in one read.
    match net::bytes::<3>(&ctx.skb, 12) {
        Some(b) if u16::from_be_bytes([b[0], b[1]]) == ethertype && b[2] >> 4 == version => {
            ETH_HLEN
        }
        _ => 0,
    }
}

/// Decides, counts and carries out what rule `index` does to this packet.
#[inline(always)]
fn apply<const PATH: u8>(ctx: &TcContext, index: u32, pkt: &Packet) -> i32 {
    let Some((rule, counters, state)) = net::rule_slots(index) else {
        return TC_NEXT;
    };
    counters.seen += 1;

    if net::should_drop(index, rule, state) {
        counters.dropped += 1;
        return drop_silently();
    }

    copy_and_corrupt(ctx, index, rule, counters, pkt);

    if !edt::wanted(rule) {
        return TC_NEXT;
    }
    schedule::<PATH>(ctx, index, rule, counters, state, pkt)
}

/// Holds the packet until its departure time: in fq (the packet carries the time), or in
/// userspace (RESEND).
#[inline(always)]
fn schedule<const PATH: u8>(
    ctx: &TcContext,
    index: u32,
    rule: &NetRule,
    counters: &mut RuleCounters,
    state: &mut RuleState,
    pkt: &Packet,
) -> i32 {
    if !edt::wanted(rule) {
        return TC_NEXT;
    }
    if PATH == RESEND {
        if !resend::available() {
            return TC_NEXT;
        }
        let (depart, added) = edt::departure(ctx, index, rule, state, pkt);
        if resend::hand_off(ctx, depart, pkt) {
            count_delay(counters, added);
            return drop_silently();
        }
        counters.errors += 1;
        events::tell(ctx, Event::ResendFull, index);
        return TC_NEXT;
    }

    let (depart, added) = edt::departure(ctx, index, rule, state, pkt);
    if PATH == FQ_DIRECT {
        // Before 5.18 a redirect clears skb->tstamp (`__bpf_tx_skb`), so the clone below would
        // leave at once: the packet itself waits in fq, still charged to its socket.
        edt::stamp_direct(ctx, depart);
        count_delay(counters, added);
        return TC_NEXT;
    }
    if !edt::stamp(ctx, depart) {
        counters.errors += 1;
        events::tell(ctx, Event::StampFailed, index);
        return TC_NEXT;
    }
    count_delay(counters, added);
    // While fq holds a packet, it still counts against its socket's send budget (TCP Small
    // Queues allows about 1 ms of data in the qdisc), and a delay much longer than that would
    // cap the flow at a few packets per delay. A clone belongs to no socket, so the clone is
    // what waits in fq and the original is freed at once, as if the link had taken it; netem
    // does the same (skb_orphan_partial on enqueue). A pure rate limit keeps the original, so
    // that the sender is slowed by its socket budget rather than by losses.
    if edt::holds(rule) && send_copy(ctx) {
        return drop_silently();
    }
    TC_NEXT
}

/// Counts a packet given a later departure, and the delay it was given in the histogram
/// (`fault apply --metrics`).
#[inline(always)]
fn count_delay(counters: &mut RuleCounters, added_ns: u64) {
    counters.delayed += 1;
    counters.delay_ns += added_ns;
    if let Some(b) = counters.delay_buckets.get_mut(delay_bucket(added_ns)) {
        *b += 1;
    }
}

/// Sends a clone of the packet out of the same interface. The clone goes through this program
/// again, and must be let through: `bpf_clone_redirect` to an egress transmits it at once, on
/// this CPU, before it returns (`__bpf_tx_skb` calls `dev_queue_xmit`, whose egress hook runs
/// the program; softirqs stay off throughout, so no other packet can come in between):
/// https://elixir.bootlin.com/linux/v6.6/source/net/core/filter.c (`__bpf_tx_skb`)
/// So a per-CPU flag raised around the call marks exactly the clone. Nothing in the packet is
/// used as a marker: a packet that waited in a queue (the neighbour's, while ARP or ND
/// resolves) arrives with whatever the layers above left in `skb->cb`, and any marker there
/// could be matched by chance or inherited by a later clone of the original.
#[inline(always)]
fn send_copy(ctx: &TcContext) -> bool {
    let Some(sending) = OWN_COPY.get_ptr_mut(0) else {
        return false;
    };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a per-CPU slot, and a BPF program is not preempted on its CPU.
    unsafe { *sending = 1 };
    let ok = ctx.clone_redirect(ifindex, 0).is_ok();
    unsafe { *sending = 0 };
    ok
}

/// Drops the packet so that its sender is told it was sent, as real loss is silent. A plain
/// drop is reported to the sending socket (ENOBUFS, and TCP takes it for local congestion);
/// a redirect is reported as sent whatever happens next, and a redirect to ifindex 0, which
/// never exists, is freed by skb_do_redirect:
/// https://elixir.bootlin.com/linux/v6.6/source/net/core/filter.c#L2487
/// https://elixir.bootlin.com/linux/v6.6/source/net/core/dev.c#L4037
#[inline(always)]
fn drop_silently() -> i32 {
    unsafe { bpf_redirect(0, 0) as i32 }
}

/// Flips bits in one 16-bit word of the transport payload. `Ok(false)` when the packet has
/// no payload to corrupt (a bare TCP ACK, say).
#[inline(always)]
fn corrupt(ctx: &TcContext, rule: &NetRule, pkt: &Packet) -> Result<bool, ()> {
    let len = ctx.len();
    if pkt.payload_off == 0 || len < pkt.payload_off + 2 {
        return Ok(false);
    }
    let words = (len - pkt.payload_off) / 2;
    if words == 0 {
        // Ruled out above; written out so the compiler drops its division-by-zero panic,
        // which the verifier would refuse.
        return Ok(false);
    }
    // Headers are a multiple of 4 bytes long, so an even offset into the payload is also
    // even from the L4 header: the checksum update below works on aligned 16-bit words.
    let off = pkt.payload_off + (unsafe { bpf_get_prandom_u32() } % words) * 2;
    let old: u16 = ctx.load(off as usize).map_err(|_| ())?;
    let flip = (unsafe { bpf_get_prandom_u32() } as u16) | 1;
    let new = old ^ flip;
    ctx.store(off as usize, &new, BPF_F_RECOMPUTE_CSUM as u64)
        .map_err(|_| ())?;
    if rule.corrupt_csum == CSUM_FIX {
        let (csum_off, flags) = match pkt.proto {
            PROTO_TCP => (16, 0),
            PROTO_UDP => (6, BPF_F_MARK_MANGLED_0 as u64),
            _ => (2, 0),
        };
        // Under checksum offload (CHECKSUM_PARTIAL) the checksum is computed later over
        // the altered bytes and the helper leaves the field alone, which is right too.
        ctx.l4_csum_replace(
            (pkt.l4_off + csum_off) as usize,
            old as u64,
            new as u64,
            flags | 2,
        )
        .map_err(|_| ())?;
    }
    Ok(true)
}
