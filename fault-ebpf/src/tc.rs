//! Egress faults at TC: drop, corrupt and duplicate what the target's sockets send.
//!
//! The same program works under tcx (kernel >= 6.6) and as a cls_bpf filter on clsact (older
//! kernels). "Not ours" returns -1, which is `TCX_NEXT` under tcx and `TC_ACT_UNSPEC` under
//! cls_bpf: both hand the packet on to whatever else is attached, so we never end a chain
//! that another tool (a CNI, say) relies on.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_RECOMPUTE_CSUM},
    helpers::{bpf_get_prandom_u32, bpf_redirect, bpf_skb_cgroup_id},
    macros::classifier,
    programs::TcContext,
};
use fault_common::{NetRule, CSUM_FIX, DIR_EGRESS, DUP_MARK, PROTO_TCP, PROTO_UDP};

use crate::{
    edt,
    net::{self, Packet, ETH_P_IP, ETH_P_IPV6, TARGETS},
};

/// Hand the packet on unchanged (see the module comment).
const TC_NEXT: i32 = -1;
const ETH_HLEN: usize = 14;

#[classifier]
pub fn fault_tc_egress(ctx: TcContext) -> i32 {
    match try_egress(&ctx) {
        Ok(action) | Err(action) => action,
    }
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Result<i32, i32> {
    // SAFETY: ctx.skb.skb is the context pointer the kernel handed us.
    let skb = unsafe { &*ctx.skb.skb };
    if skb.mark == DUP_MARK {
        // Our own duplicate coming round again: let it go, and give back the mark.
        ctx.set_mark(0);
        return Ok(TC_NEXT);
    }
    // Cheapest test first: is the sending socket in a target cgroup at all?
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    if unsafe { TARGETS.get(cgroup) }.is_none() || net::expired() {
        return Ok(TC_NEXT);
    }
    let pkt = net::parse(&ctx.skb, l3_offset(ctx, skb.protocol), skb.protocol).ok_or(TC_NEXT)?;
    let index =
        net::find_rule(DIR_EGRESS, pkt.family, pkt.proto, pkt.dport, &pkt.daddr).ok_or(TC_NEXT)?;
    Ok(apply(ctx, index, &pkt, skb.mark))
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
    match (ctx.load::<[u8; 2]>(12), ctx.load::<u8>(ETH_HLEN)) {
        (Ok(t), Ok(v)) if u16::from_be_bytes(t) == ethertype && v >> 4 == version => ETH_HLEN,
        _ => 0,
    }
}

/// Decides, counts and carries out what rule `index` does to this packet.
#[inline(always)]
fn apply(ctx: &TcContext, index: u32, pkt: &Packet, mark: u32) -> i32 {
    let Some((rule, counters, state)) = net::rule_slots(index) else {
        return TC_NEXT;
    };
    counters.seen += 1;

    if net::should_drop(rule, state) {
        counters.dropped += 1;
        // Real loss is silent to the sender. A plain drop here is reported to the sending
        // socket (ENOBUFS, and TCP takes it for local congestion), but a redirect is
        // reported as sent whatever happens next, and a redirect to ifindex 0, which never
        // exists, is freed by skb_do_redirect:
        // https://elixir.bootlin.com/linux/v6.6/source/net/core/filter.c#L2487
        // https://elixir.bootlin.com/linux/v6.6/source/net/core/dev.c#L4037
        return unsafe { bpf_redirect(0, 0) as i32 };
    }

    if rule.dup_p != 0 && net::chance(rule.dup_p) {
        // The clone carries DUP_MARK so that, coming through this hook again, it is let
        // through rather than duplicated or dropped in turn.
        ctx.set_mark(DUP_MARK);
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        match ctx.clone_redirect(ifindex, 0) {
            Ok(()) => counters.duplicated += 1,
            Err(_) => counters.errors += 1,
        }
        ctx.set_mark(mark);
    }

    if rule.corrupt_p != 0 && net::chance(rule.corrupt_p) {
        match corrupt(ctx, rule, pkt) {
            Ok(true) => counters.corrupted += 1,
            Ok(false) => {}
            Err(()) => counters.errors += 1,
        }
    }

    if edt::wanted(rule) {
        if edt::schedule(ctx, index, rule, state, pkt) {
            counters.delayed += 1;
        } else {
            counters.errors += 1;
        }
    }
    TC_NEXT
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
