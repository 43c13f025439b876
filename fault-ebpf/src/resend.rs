//! Delay without fq: on a kernel that lacks sch_fq nothing in the kernel will hold a packet
//! until a departure time, so the egress program copies a delayed packet into a ring buffer
//! for fault to send again at that time (fault-user/src/resend.rs) and drops the original
//! silently. This costs a copy and a trip through userspace per delayed packet; the fq path
//! is used wherever the kernel has fq.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_netns_cookie, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_skb_load_bytes,
    },
    macros::map,
    maps::{Array, RingBuf},
    programs::TcContext,
};
use fault_common::{ResendHeader, RESEND_MAX_LEN, RESEND_SLOT_SIZE, RESEND_STALE_NS};

use crate::net::Packet;

const HEADER: usize = core::mem::size_of::<ResendHeader>();

#[map]
static RESEND_RING: RingBuf = RingBuf::with_byte_size(32 << 20, 0);
/// One slot per CPU (the loader sizes it): a TC program runs with migration disabled, so a
/// CPU's slot is never in use twice at once.
#[map]
static RESEND_SLOT: Array<[u8; RESEND_SLOT_SIZE]> = Array::with_max_entries(1, 0);
#[map]
static RESEND_ALIVE: Array<u64> = Array::with_max_entries(1, 0);

/// Whether fault's resender is there to take packets: a loader that died stops refreshing
/// RESEND_ALIVE, and packets then go undelayed instead of into a ring nobody reads.
#[inline(always)]
pub fn available() -> bool {
    match RESEND_ALIVE.get(0) {
        Some(t) => *t + RESEND_STALE_NS > unsafe { bpf_ktime_get_ns() },
        None => false,
    }
}

const AF_PACKET: u32 = 17;

/// Whether a packet socket sent this packet. fault sends delayed packets again through one
/// (see fault-user/src/resend.rs), and the program must let them go; it normally does so
/// because the loader's cgroup is not a target, and this covers a loader that runs inside one.
#[inline(always)]
pub fn from_packet_socket(skb: &__sk_buff) -> bool {
    let sk = unsafe { skb.__bindgen_anon_2.sk };
    !sk.is_null() && unsafe { (*sk).family } == AF_PACKET
}

/// Copies the packet into RESEND_RING with its departure time. False if it does not fit
/// (too large, or the ring is full).
#[inline(always)]
pub fn hand_off(ctx: &TcContext, depart: u64, pkt: &Packet) -> bool {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(slot) = RESEND_SLOT.get_ptr_mut(cpu) else {
        return false;
    };
    let slot = slot as *mut u8;
    let len = ctx.len();
    if len == 0 || len > RESEND_MAX_LEN {
        return false;
    }
    let skb = unsafe { &*ctx.skb.skb };
    let header = ResendHeader {
        depart_ns: depart,
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.skb.skb as *mut c_void) },
        ifindex: skb.ifindex,
        len,
        l3_off: pkt.l3_off as u16,
        l4_off: pkt.l4_off as u16,
        gso_size: skb.gso_size as u16,
        gso_segs: skb.gso_segs as u16,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 6],
    };
    unsafe {
        core::ptr::write_unaligned(slot as *mut ResendHeader, header);
        if bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            0,
            slot.add(HEADER) as *mut c_void,
            len,
        ) != 0
        {
            return false;
        }
        let bytes = core::slice::from_raw_parts(slot, HEADER + len as usize);
        RESEND_RING.output::<[u8]>(bytes, 0).is_ok()
    }
}
