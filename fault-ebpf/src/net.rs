//! What the network programs share: the policy's maps, packet parsing, rule lookup and the
//! loss models.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::map,
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
    programs::sk_buff::SkBuff,
};
use fault_common::{
    local_port_bit, port_bit, seeded_draw, wild_bit, Config, NetRule, RuleCounters, RuleKey,
    RuleState, DIR_EGRESS, DROP_BERNOULLI, DROP_GILBERT_ELLIOTT, FAMILY_V4, FAMILY_V6,
    LOOPBACK_IFINDEX, PORT_BITS_WORDS, PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
    RULE_KEY_FIXED_BITS, WILD_LOCAL_PORTS, WILD_LOOPBACK,
};

// Sizes here are defaults; the loader sets each map's real size before loading.
#[map]
pub static TARGETS: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);
/// The class of the packets leaving by a far end of a target's veth (ingress timing), by the
/// far end's ifindex; absent for a policy, whose targets are all class 0.
#[map]
pub static PEER_CLASS: HashMap<u32, u32> = HashMap::with_max_entries(1024, 0);
#[map]
pub static RULE_LPM: LpmTrie<RuleKey, u32> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static RULES: Array<NetRule> = Array::with_max_entries(64, 0);
#[map]
pub static COUNTERS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(64, 0);
#[map]
pub static RULE_STATE: PerCpuArray<RuleState> = PerCpuArray::with_max_entries(64, 0);
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
pub static DRAWS: Array<u64> = Array::with_max_entries(64, 0);
#[map]
pub static PORT_BITS: Array<u64> = Array::with_max_entries(PORT_BITS_WORDS, 0);

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// What the classifier needs from a packet, addresses and ports as they sit on the wire.
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// Offset of the L4 header, and of its payload (0 when the payload cannot be reached).
    pub l4_off: u32,
    /// Offset of the IP header (0 on L3 devices, 14 after an Ethernet header).
    pub l3_off: u32,
    pub payload_off: u32,
}

/// Whether injection is over: past the in-kernel deadline nothing is injected, whatever
/// became of the loader.
#[inline(always)]
pub fn expired() -> bool {
    match CONFIG.get(0) {
        Some(c) => c.deadline_ns != 0 && unsafe { bpf_ktime_get_ns() } >= c.deadline_ns,
        None => true,
    }
}

/// `N` bytes at `off`: straight from the packet's linear data where they lie there (direct
/// packet access, no helper call: headers of packets sent by local sockets always do), else
/// through `bpf_skb_load_bytes`.
#[inline(always)]
pub fn bytes<const N: usize>(skb: &SkBuff, off: usize) -> Option<[u8; N]> {
    // SAFETY: plain reads of the context the kernel handed us.
    let (start, end) = unsafe { ((*skb.skb).data as usize, (*skb.skb).data_end as usize) };
    let at = start + off;
    if at + N <= end {
        let mut out = [0u8; N];
        // Word by word: one load instruction each rather than one per byte (x86 and arm64
        // let BPF read packet data unaligned; the verifier checked the bounds above).
        let mut i = 0;
        while i + 4 <= N {
            // SAFETY: [at + i, at + i + 4) lies within [at, at + N), checked above.
            let w = unsafe { core::ptr::read((at + i) as *const u32) };
            out[i..i + 4].copy_from_slice(&w.to_ne_bytes());
            i += 4;
        }
        while i < N {
            // SAFETY: as above, one byte.
            out[i] = unsafe { core::ptr::read((at + i) as *const u8) };
            i += 1;
        }
        return Some(out);
    }
    skb.load(off).ok()
}

/// Reads the network and transport headers, the network header starting at `l3`. `None` for
/// anything that is not IPv4/IPv6. Each header is read at once (the network header's fixed
/// part, then the transport header's first bytes), directly where it can be: on a targeted
/// packet that no rule matches, reading is most of the program's cost.
#[inline(always)]
pub fn parse(skb: &SkBuff, l3: usize, skb_protocol: u32) -> Option<Packet> {
    let ethertype = u16::from_be(skb_protocol as u16);
    let mut pkt = Packet {
        family: 0,
        proto: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: [0; 2],
        dport: [0; 2],
        l4_off: 0,
        l3_off: l3 as u32,
        payload_off: 0,
    };
    let l4: usize;
    match ethertype {
        ETH_P_IP => {
            let h: [u8; 20] = bytes(skb, l3)?;
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            if ihl < 20 {
                return None;
            }
            pkt.family = FAMILY_V4;
            pkt.proto = h[9];
            pkt.saddr[..4].copy_from_slice(&h[12..16]);
            pkt.daddr[..4].copy_from_slice(&h[16..20]);
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                // A later fragment: no transport header, so it matches on address only.
                return Some(pkt);
            }
            l4 = l3 + ihl;
        }
        ETH_P_IPV6 => {
            let h: [u8; 40] = bytes(skb, l3)?;
            pkt.family = FAMILY_V6;
            pkt.proto = h[6];
            pkt.saddr.copy_from_slice(&h[8..24]);
            pkt.daddr.copy_from_slice(&h[24..40]);
            l4 = l3 + 40;
        }
        _ => return None,
    }
    pkt.l4_off = l4 as u32;
    let header_len: usize = match pkt.proto {
        PROTO_TCP => {
            // Ports, sequence and acknowledgement numbers, and the data offset.
            let t: [u8; 13] = bytes(skb, l4)?;
            pkt.sport = [t[0], t[1]];
            pkt.dport = [t[2], t[3]];
            ((t[12] >> 4) as usize) * 4
        }
        PROTO_UDP => {
            let u: [u8; 4] = bytes(skb, l4)?;
            pkt.sport = [u[0], u[1]];
            pkt.dport = [u[2], u[3]];
            8
        }
        PROTO_ICMP | PROTO_ICMPV6 => 8,
        _ => return Some(pkt),
    };
    pkt.payload_off = (l4 + header_len) as u32;
    Some(pkt)
}

/// The first rule (lowest index) that matches `pkt` going in `dir` (seen from the target:
/// on egress the peer is the destination, on ingress the source), in at most five trie
/// lookups: (peer port, local port), (peer port, any), (any, local port), the protocol with
/// any port, and any protocol. The loader stores in every trie entry the lowest index among
/// all rules covering that prefix, so a longest-prefix hit is enough. A lookup that no rule
/// could answer is skipped: PORT_BITS and `Config::wild` say which. A packet on the loopback
/// device (`ifindex`) finds only rules that ask for loopback. `class` says whose packet it is
/// (see [`RuleKey::class`]).
#[inline(always)]
pub fn find_rule(dir: u8, pkt: &Packet, ifindex: u32, class: u32) -> Option<u32> {
    let wild = CONFIG.get(0)?.wild;
    let loopback = ifindex == LOOPBACK_IFINDEX;
    if loopback && wild & WILD_LOOPBACK == 0 {
        return None;
    }
    let (port, local, addr) = match dir {
        DIR_EGRESS => (pkt.dport, pkt.sport, &pkt.daddr),
        _ => (pkt.sport, pkt.dport, &pkt.saddr),
    };
    let proto = pkt.proto;
    let by_port = named(port_bit(dir, proto, u16::from_be_bytes(port)), port);
    let by_local = wild & WILD_LOCAL_PORTS != 0
        && named(local_port_bit(dir, proto, u16::from_be_bytes(local)), local);
    let by_proto = wild & wild_bit(dir, proto) != 0;
    let by_any = wild & wild_bit(dir, PROTO_ANY) != 0;
    if !(by_port || by_local || by_proto || by_any) {
        return None;
    }
    let prefix = RULE_KEY_FIXED_BITS + if pkt.family == FAMILY_V4 { 32 } else { 128 };
    let mut key = Key::new(
        prefix,
        RuleKey {
            dir,
            proto,
            port,
            family: pkt.family,
            loopback: loopback as u8,
            local_port: local,
            class: class as u8,
            _pad: [0; 3],
            addr: *addr,
        },
    );
    let mut best = u32::MAX;
    let mut look = |key: &Key<RuleKey>| {
        if let Some(i) = RULE_LPM.get(key) {
            best = best.min(*i);
        }
    };
    if by_port && by_local {
        look(&key);
    }
    key.data.local_port = [0, 0];
    if by_port {
        look(&key);
    }
    key.data.port = [0, 0];
    if by_local {
        key.data.local_port = local;
        look(&key);
        key.data.local_port = [0, 0];
    }
    if by_proto {
        look(&key);
    }
    key.data.proto = PROTO_ANY;
    if by_any {
        look(&key);
    }
    (best != u32::MAX).then_some(best)
}

/// The class of a targeted cgroup's packets; `None` for a cgroup that is not a target.
#[inline(always)]
pub fn class_of(cgroup: u64) -> Option<u32> {
    // SAFETY: a plain map read; the value is copied out at once.
    unsafe { TARGETS.get(&cgroup) }.copied()
}

/// Whether a port (network byte order, 0 for none) is one that PORT_BITS marks at `bit`.
#[inline(always)]
fn named(bit: Option<(u32, u64)>, port: [u8; 2]) -> bool {
    match bit {
        Some((word, bit)) if u16::from_ne_bytes(port) != 0 => {
            PORT_BITS.get(word).is_some_and(|w| w & bit != 0)
        }
        _ => false,
    }
}

/// A random number for rule `index`: from its seeded stream when the experiment has a
/// seed, else the kernel's. The stream's position is shared by all CPUs and not atomic: a
/// single sender's packets pass one at a time, which is what reproducing a run needs.
#[inline(always)]
pub fn random(index: u32) -> u32 {
    let seed = CONFIG.get(0).map_or(0, |c| c.seed);
    if seed != 0 {
        if let Some(n) = DRAWS.get_ptr_mut(index) {
            // SAFETY: a plain read and write of an array value the verifier bounds-checked.
            let count = unsafe { *n };
            unsafe { *n = count + 1 };
            return seeded_draw(seed, index, count);
        }
    }
    unsafe { bpf_get_prandom_u32() }
}

#[inline(always)]
pub fn chance(index: u32, threshold: u64) -> bool {
    (random(index) as u64) < threshold
}

#[inline(always)]
pub fn should_drop(index: u32, rule: &NetRule, state: &mut RuleState) -> bool {
    // Certain: also the first packet, which a correlation would otherwise let through by
    // "repeating" the decision before any was made.
    if rule.certain_drop() {
        return true;
    }
    match rule.drop_model {
        DROP_BERNOULLI => {
            // With probability `drop_corr` repeat the previous decision, else draw afresh:
            // the loss rate stays `drop_p` while losses cluster as asked.
            let drop = if rule.drop_corr != 0 && chance(index, rule.drop_corr) {
                state.last_drop != 0
            } else {
                chance(index, rule.drop_p)
            };
            state.last_drop = drop as u32;
            drop
        }
        DROP_GILBERT_ELLIOTT => {
            // Loss by the current state, then the transition, as netem's gemodel does.
            if state.ge_bad != 0 {
                let drop = chance(index, rule.ge_loss_bad);
                if chance(index, rule.drop_corr) {
                    state.ge_bad = 0;
                }
                drop
            } else {
                let drop = chance(index, rule.ge_loss_good);
                if chance(index, rule.drop_p) {
                    state.ge_bad = 1;
                }
                drop
            }
        }
        _ => false,
    }
}

/// The rule's action state, counters first: `None` if the policy is over (its deadline, or
/// the loader's lease, has passed) or the index is out of range. The deadline is checked
/// here, once a rule matched, so that packets no rule matches never pay for a clock read.
#[inline(always)]
pub fn rule_slots(
    index: u32,
) -> Option<(
    &'static NetRule,
    &'static mut RuleCounters,
    &'static mut RuleState,
)> {
    if expired() {
        return None;
    }
    let rule = RULES.get(index)?;
    let counters = COUNTERS.get_ptr_mut(index)?;
    let state = RULE_STATE.get_ptr_mut(index)?;
    // SAFETY: per-CPU values, and a BPF program is not preempted on its CPU.
    Some((rule, unsafe { &mut *counters }, unsafe { &mut *state }))
}
