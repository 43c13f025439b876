//! Types shared by the eBPF programs and the loader.
//!
//! Everything here crosses into the kernel, so it is `#[repr(C)]`, uses fixed-width integers
//! and explicit padding, and has its size pinned by a const assertion. Enums cross as `u32`
//! codes.
#![no_std]

/// Map names, mirrored here so the loader never spells one twice (at most 15 bytes each).
mod clock_calls;
pub use clock_calls::*;
pub mod clock_math;

pub mod maps {
    /// `HashMap<u64, u32>`: cgroup ids of the policy's targets -> their class (0 for a
    /// policy, group index + 1 for an experiment).
    pub const TARGETS: &str = "TARGETS";
    /// `HashMap<u32, u32>`: far-end ifindex -> class, for ingress timing in experiments.
    pub const PEER_CLASS: &str = "PEER_CLASS";
    /// `LpmTrie<RuleKey, u32>`: (direction, protocol, port, peer address) -> rule index.
    pub const RULE_LPM: &str = "RULE_LPM";
    /// `Array<NetRule>`: what each rule does, indexed by rule index.
    pub const RULES: &str = "RULES";
    /// `PerCpuArray<RuleCounters>`: per-rule counters, indexed by rule index.
    pub const COUNTERS: &str = "COUNTERS";
    /// `PerCpuArray<RuleState>`: loss-model state (correlation, Gilbert-Elliott).
    pub const RULE_STATE: &str = "RULE_STATE";
    /// `Array<Config>` with one entry: the deadline and the lookup summary.
    pub const CONFIG: &str = "CONFIG";
    /// `Array<i32>`: jitter distribution tables, [`DIST_TABLE_LEN`] entries per
    /// distribution, in units of 1/[`DIST_SCALE`] standard deviations.
    pub const DIST_TABLE: &str = "DIST_TABLE";
    /// `Array<u64>`: per rule, the earliest departure time the next packet may have under
    /// the rule's rate limit (CLOCK_MONOTONIC ns).
    pub const RATE_NEXT: &str = "RATE_NEXT";
    /// `LruHashMap<FlowKey, u64>`: the last departure time given to each flow, so jitter
    /// never reorders a flow.
    pub const FLOW_LAST: &str = "FLOW_LAST";
    /// `Array<u64>`: bitmap of (direction, tcp/udp, port) pairs that some rule names, so a
    /// packet to any other port skips the trie (see [`super::port_bit`]).
    pub const PORT_BITS: &str = "PORT_BITS";
    /// `CgroupArray`: the target cgroups (directory fds), [`super::EXEC_MAX_CGROUPS`] slots;
    /// a process that execs in one of them or in a descendant is held until patched.
    pub const EXEC_CGROUPS: &str = "EXEC_CGROUPS";
    /// `HashMap<u32, u64>`: processes the exec program stopped (pid -> CLOCK_MONOTONIC ns
    /// of the stop) and fault has not let go yet. Pinned, so `fault stop` can let them go
    /// after the loader died.
    pub const EXEC_HELD: &str = "EXEC_HELD";
    /// `RingBuf` of [`super::ExecEvent`]: a process was stopped at exec.
    pub const EXEC_EVENTS: &str = "EXEC_EVENTS";
    /// `HashMap<u32, VdsoRange>`: the patched processes (tgid -> their vDSO) whose clock
    /// system calls `fault_clock_calls` counts.
    pub const CLOCK_WATCHED: &str = "CLOCK_WATCHED";
    /// `HashMap<u32, ClockCalls>`: per process (tgid), its counted clock system calls.
    pub const CLOCK_CALLS: &str = "CLOCK_CALLS";
    /// `LruHashMap<TimerKey, u32>`: the clock id each timer of a patched process was made
    /// on, from its creation (the rewrite's `sys_exit`) or from /proc when it is patched.
    pub const TIMER_CLOCKS: &str = "TIMER_CLOCKS";
    /// `RingBuf` of [`ResendHeader`] + packet bytes: packets the userspace-delay program
    /// took off the wire for fault to send again at their departure time.
    pub const RESEND_RING: &str = "RESEND_RING";
    /// `Array<[u8; RESEND_SLOT_SIZE]>`, one slot per CPU: where a packet is assembled before it
    /// goes into RESEND_RING.
    pub const RESEND_SLOT: &str = "RESEND_SLOT";
    /// `Array<u64>` with one entry: CLOCK_MONOTONIC ns of the resender's last sign of life.
    /// A packet is only handed over while that is recent, so a dead loader holds nothing.
    pub const RESEND_ALIVE: &str = "RESEND_ALIVE";
    /// `Array<u64>`: per rule, how many random numbers it has drawn from its seeded stream.
    pub const DRAWS: &str = "DRAWS";
    /// `PerCpuArray<u32>`, one slot: 1 while the egress program sends its own copy of a
    /// packet (a duplicate, or a delayed packet's orphaned copy), so the copy is let through.
    pub const OWN_COPY: &str = "OWN_COPY";
}

/// Load-time globals of the exec program (`EbpfLoader::set_global`).
pub mod globals {
    /// `u64`: CLOCK_MONOTONIC ns after which no process is stopped (0: none).
    pub const EXEC_DEADLINE_NS: &str = "EXEC_DEADLINE_NS";
    /// `u32`: slots of EXEC_CGROUPS in use.
    pub const EXEC_CGROUP_COUNT: &str = "EXEC_CGROUP_COUNT";
    /// `u32`: bit n set when clock id n is faulted, for `fault_clock_calls`.
    pub const CLOCK_CALLS_MASK: &str = "CLOCK_CALLS_MASK";
}

/// Program names (the function names in fault-ebpf).
pub mod progs {
    pub const TC_EGRESS: &str = "fault_tc_egress";
    /// The same egress program for kernels without sch_fq: delayed packets go to userspace.
    pub const TC_EGRESS_RESEND: &str = "fault_tc_resend";
    /// Ingress delay, at the egress of the far end of a target's veth (fq, and resend).
    pub const TC_PEER: &str = "fault_tc_peer";
    pub const TC_PEER_RESEND: &str = "fault_tc_peer_rs";
    /// The fq programs for kernels before 5.18: the departure time is written into
    /// `skb->tstamp` directly, and a delayed packet is not cloned.
    pub const TC_EGRESS_DIRECT: &str = "fault_tc_egress_dt";
    pub const TC_PEER_DIRECT: &str = "fault_tc_peer_dt";
    pub const CGROUP_INGRESS: &str = "fault_cg_ingress";
    /// Certain egress drops at the target's sockets (see fault-ebpf/src/cgroup_skb.rs).
    pub const CGROUP_EGRESS: &str = "fault_cg_egress";
    pub const EXEC: &str = "fault_exec";
    pub const CLOCK_CALLS: &str = "fault_clock_calls";
    /// Loaded, never attached, to learn whether the kernel lets eBPF write user memory.
    pub const WRITE_USER_PROBE: &str = "fault_write_user_probe";
    /// `sys_enter` raw tracepoint: notes the raw clock reads it can rewrite, counts the rest.
    pub const CLOCK_REWRITE_ENTER: &str = "fault_clock_rewrite_enter";
    /// `sys_exit` raw tracepoint: rewrites the noted reads' results with the clock fault.
    pub const CLOCK_REWRITE_EXIT: &str = "fault_clock_rewrite_exit";
    /// [`CLOCK_CALLS`] for the clock calls' own `syscalls:sys_enter_<name>` tracepoints.
    pub const CLOCK_CALLS_TP: &str = "fault_clock_calls_tp";
    /// [`CLOCK_REWRITE_ENTER`] for the `syscalls:sys_enter_<name>` tracepoints.
    pub const CLOCK_REWRITE_ENTER_TP: &str = "fault_clock_rewrite_enter_tp";
    /// [`CLOCK_REWRITE_EXIT`] for the `syscalls:sys_exit_<name>` tracepoints.
    pub const CLOCK_REWRITE_EXIT_TP: &str = "fault_clock_rewrite_exit_tp";
}

/// Slots in EXEC_CGROUPS: a policy's targets beyond this many are covered by the rescan only.
pub const EXEC_MAX_CGROUPS: u32 = 64;
/// Entries in EXEC_HELD: processes held at once; beyond, an exec is not held (fail open).
pub const EXEC_MAX_HELD: u32 = 1024;

/// A process the exec program stopped, for the loader to patch and let go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ExecEvent {
    pub pid: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC ns when it was stopped (`bpf_ktime_get_ns`).
    pub stopped_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ExecEvent>() == 16);

/// Direction codes in [`RuleKey::dir`], seen from the target.
pub const DIR_EGRESS: u8 = 1;
pub const DIR_INGRESS: u8 = 2;

/// Protocol codes in [`RuleKey::proto`]: IP protocol numbers, 0 for "any".
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Bits of the LPM key before the peer address: dir, proto, port (2), family, loopback,
/// local port (2), class, pad (3).
pub const RULE_KEY_FIXED_BITS: u32 = 96;

/// The data part of an LPM key (the trie adds the prefix length in front).
///
/// Only the address is matched by prefix; the 8 bytes in front are always matched in full.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RuleKey {
    pub dir: u8,
    pub proto: u8,
    /// Peer port in network byte order; 0 when the rule names no port.
    pub port: [u8; 2],
    pub family: u8,
    /// 1 in the entries of rules that apply on the loopback device too, and in the lookups of
    /// packets on it: a packet on `lo` finds only those rules.
    pub loopback: u8,
    /// The target's own port in network byte order (source on egress, destination on
    /// ingress); 0 when the rule names no local port.
    pub local_port: [u8; 2],
    /// Whose packet it is: the value TARGETS holds for the sending (or receiving) cgroup. 0
    /// for a policy's targets; an experiment's group `i` is class `i + 1`.
    pub class: u8,
    pub _pad: [u8; 3],
    /// Peer address; IPv4 uses the first 4 bytes.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<RuleKey>() == 28);

/// `NetRule::drop_model` codes.
pub const DROP_NONE: u32 = 0;
pub const DROP_BERNOULLI: u32 = 1;
pub const DROP_GILBERT_ELLIOTT: u32 = 2;

/// `NetRule::corrupt_csum` codes.
pub const CSUM_FIX: u32 = 0;
pub const CSUM_KEEP: u32 = 1;

/// Probabilities cross as thresholds out of 2^32: an event happens when a 32-bit random
/// number is below the threshold, so 1 << 32 means always and 0 never.
pub const PROB_ONE: u64 = 1 << 32;

/// What a rule does to the packets it matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NetRule {
    pub drop_model: u32,
    pub corrupt_csum: u32,
    /// Bernoulli: loss probability. Gilbert-Elliott: p, good -> bad.
    pub drop_p: u64,
    /// Bernoulli: probability of repeating the previous decision. Gilbert-Elliott: r, bad -> good.
    pub drop_corr: u64,
    /// Gilbert-Elliott: loss probability in the bad state.
    pub ge_loss_bad: u64,
    /// Gilbert-Elliott: loss probability in the good state.
    pub ge_loss_good: u64,
    pub corrupt_p: u64,
    pub dup_p: u64,
    /// Added delay (EDT, `skb->tstamp`): base latency and jitter amplitude, in ns.
    pub delay_ns: u64,
    pub jitter_ns: u64,
    /// `DIST_*` code of the jitter's distribution.
    pub jitter_dist: u32,
    pub _pad: u32,
    /// Correlation of successive jitter draws (a threshold out of 2^32, like probabilities).
    pub jitter_corr: u64,
    /// Rate limit in bytes per second; 0 for none.
    pub rate_bytes: u64,
    /// Probability that a delayed packet is sent at once instead, overtaking its flow.
    pub reorder_p: u64,
}
const _: () = assert!(core::mem::size_of::<NetRule>() == 104);

impl NetRule {
    /// Whether the rule gives packets a departure time (delay, jitter or rate).
    #[inline(always)]
    pub fn schedules(&self) -> bool {
        self.delay_ns != 0 || self.jitter_ns != 0 || self.rate_bytes != 0
    }

    /// Whether the rule drops every packet it matches: a partition, or a 100 % loss.
    #[inline(always)]
    pub fn certain_drop(&self) -> bool {
        self.drop_model == DROP_BERNOULLI && self.drop_p >= PROB_ONE
    }
}

/// `NetRule::jitter_dist` codes. Uniform needs no table; the others index DIST_TABLE.
pub const DIST_UNIFORM: u32 = 0;
pub const DIST_NORMAL: u32 = 1;
pub const DIST_PARETO: u32 = 2;
pub const DIST_PARETONORMAL: u32 = 3;
/// Entries per distribution in DIST_TABLE, and the scale of its values.
pub const DIST_TABLE_LEN: u32 = 4096;
pub const DIST_SCALE: i64 = 8192;

/// A flow, for FLOW_LAST: addresses and ports as they sit on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Per-rule, per-CPU counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleCounters {
    /// Packets that matched the rule while it was active.
    pub seen: u64,
    pub dropped: u64,
    pub corrupted: u64,
    pub duplicated: u64,
    /// Packets given a later departure time (delay, jitter, rate).
    pub delayed: u64,
    /// Helper failures; the packet was let through (fail open).
    pub errors: u64,
    /// The delay given to the `delayed` packets, summed (ns): later departure than the
    /// packet would have had without the rule.
    pub delay_ns: u64,
    /// The same delays by size: bucket i counts those up to [`delay_bucket_bound_ns`]`(i)`,
    /// the last one those above every bound.
    pub delay_buckets: [u64; DELAY_BUCKETS],
}
const _: () = assert!(core::mem::size_of::<RuleCounters>() == 56 + 8 * DELAY_BUCKETS);

/// Buckets of the delay histogram: doubling bounds from 250 us to 4.096 s, and one for longer.
pub const DELAY_BUCKETS: usize = 16;
const DELAY_BUCKET_FIRST_NS: u64 = 250_000;

/// The upper bound of delay bucket `i` (ns); the last bucket has none (`u64::MAX`).
pub const fn delay_bucket_bound_ns(i: usize) -> u64 {
    if i + 1 >= DELAY_BUCKETS {
        u64::MAX
    } else {
        DELAY_BUCKET_FIRST_NS << i
    }
}

/// The bucket a delay of `ns` falls in (a bounded loop the verifier takes in full).
#[inline(always)]
pub fn delay_bucket(ns: u64) -> usize {
    let mut i = 0;
    while i + 1 < DELAY_BUCKETS && ns > DELAY_BUCKET_FIRST_NS << i {
        i += 1;
    }
    i
}

/// Per-rule, per-CPU loss-model state.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleState {
    /// 1 when the previous Bernoulli decision was a drop.
    pub last_drop: u32,
    /// 1 while the Gilbert-Elliott chain is in the bad state.
    pub ge_bad: u32,
    /// The previous jitter draw (a 32-bit uniform number), for correlated jitter.
    pub jitter_last: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<RuleState>() == 16);

/// Words in the PORT_BITS map: 2 directions x 2 protocols x 65,536 ports / 64.
pub const PORT_BITS_WORDS: u32 = 8 * 1024;

/// Where (direction, protocol, port) lives in PORT_BITS: (word index, bit mask). `None` for
/// protocols other than TCP and UDP, which have no ports.
#[inline(always)]
pub fn port_bit(dir: u8, proto: u8, port: u16) -> Option<(u32, u64)> {
    let slot = match proto {
        PROTO_TCP => 0,
        PROTO_UDP => 1,
        _ => return None,
    } + if dir == DIR_INGRESS { 2 } else { 0 };
    Some((slot * 1024 + (port as u32 >> 6), 1u64 << (port & 63)))
}

/// Where (direction, protocol, local port) lives in PORT_BITS: after the peer ports.
#[inline(always)]
pub fn local_port_bit(dir: u8, proto: u8, port: u16) -> Option<(u32, u64)> {
    port_bit(dir, proto, port).map(|(word, bit)| (word + 4 * 1024, bit))
}

/// Bits of [`Config::wild`]: some rule matches (direction, protocol class) whatever the port,
/// so the trie must be consulted without a port.
#[inline(always)]
pub fn wild_bit(dir: u8, proto: u8) -> u32 {
    let class = match proto {
        PROTO_TCP => 0,
        PROTO_UDP => 1,
        PROTO_ICMP | PROTO_ICMPV6 => 2,
        PROTO_ANY => 3,
        // Other protocols can only be matched by "any protocol" rules.
        _ => return 0,
    };
    1 << (class + if dir == DIR_INGRESS { 4 } else { 0 })
}

/// [`Config::wild`] bit: some rule applies on the loopback device. Without it a packet on `lo`
/// is let through before any lookup.
pub const WILD_LOOPBACK: u32 = 1 << 8;

/// [`Config::wild`] bit: some rule names local ports, so lookups with the packet's local
/// port are worth making (PORT_BITS then says for which ports).
pub const WILD_LOCAL_PORTS: u32 = 1 << 9;

/// The loopback device's ifindex, the same in every network namespace (`LOOPBACK_IFINDEX` in
/// include/net/flow.h).
pub const LOOPBACK_IFINDEX: u32 = 1;

/// A 64-bit mix (splitmix64's finaliser) of a seeded stream's position: the seeded random
/// numbers, the same in the programs and in tests.
#[inline(always)]
pub fn seeded_draw(seed: u64, rule: u32, n: u64) -> u32 {
    let mut z = (seed ^ ((rule as u64) << 40)).wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 32) as u32
}

/// Policy-wide settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// CLOCK_MONOTONIC time (as `bpf_ktime_get_ns` reads it) after which nothing is injected.
    pub deadline_ns: u64,
    /// Number of rules in use (for bounds).
    pub rule_count: u32,
    /// [`wild_bit`]s of the trie's port-less entries, and [`WILD_LOOPBACK`].
    pub wild: u32,
    /// Non-zero: every random decision of rule `i` is the `n`th draw of a stream fixed by
    /// this seed and `i` (see DRAWS), so a run repeats another on the same packets. 0: the
    /// kernel's random numbers.
    pub seed: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 24);

/// What precedes a packet in RESEND_RING.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ResendHeader {
    /// CLOCK_MONOTONIC ns at which the packet may leave.
    pub depart_ns: u64,
    /// The network namespace it was sent in (`bpf_get_netns_cookie`).
    pub netns_cookie: u64,
    pub ifindex: u32,
    /// Bytes of packet that follow, from the MAC header on.
    pub len: u32,
    /// Offsets of the IP and L4 headers (l4_off 0 if unknown), for the checksum and
    /// segmentation offloads.
    pub l3_off: u16,
    pub l4_off: u16,
    /// For a GSO packet, the segment size and count (both 0 otherwise).
    pub gso_size: u16,
    pub gso_segs: u16,
    /// IP protocol number and family (`FAMILY_V4`/`FAMILY_V6`).
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<ResendHeader>() == 40);

/// Largest packet (a GSO super-packet included) that can be delayed in userspace; a larger
/// one is let through undelayed and counted as an error.
pub const RESEND_MAX_LEN: u32 = 65536 + 256;
/// Size of a `maps::RESEND_SLOT` entry.
pub const RESEND_SLOT_SIZE: usize = core::mem::size_of::<ResendHeader>() + RESEND_MAX_LEN as usize;
/// How long the resender may stay silent before the program stops handing it packets.
pub const RESEND_STALE_NS: u64 = 1_000_000_000;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), plain integers, with explicit padding.
    unsafe impl aya::Pod for super::RuleKey {}
    unsafe impl aya::Pod for super::NetRule {}
    unsafe impl aya::Pod for super::RuleCounters {}
    unsafe impl aya::Pod for super::RuleState {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::ResendHeader {}
    unsafe impl aya::Pod for super::VdsoRange {}
    unsafe impl aya::Pod for super::ClockCalls {}
    unsafe impl aya::Pod for super::TimerKey {}
}

impl RuleCounters {
    /// Adds another CPU's counters to these.
    pub fn add(&mut self, o: &RuleCounters) {
        self.seen += o.seen;
        self.dropped += o.dropped;
        self.corrupted += o.corrupted;
        self.duplicated += o.duplicated;
        self.delayed += o.delayed;
        self.errors += o.errors;
        self.delay_ns += o.delay_ns;
        for (b, ob) in self.delay_buckets.iter_mut().zip(&o.delay_buckets) {
            *b += ob;
        }
    }
}

#[cfg(test)]
mod delay_bucket_tests {
    use super::*;

    #[test]
    fn bounds_double_and_the_last_bucket_takes_the_rest() {
        assert_eq!(delay_bucket(0), 0);
        assert_eq!(delay_bucket(250_000), 0);
        assert_eq!(delay_bucket(250_001), 1);
        assert_eq!(delay_bucket(100_000_000), 9); // 100 ms <= 128 ms
        assert_eq!(delay_bucket_bound_ns(9), 128_000_000);
        assert_eq!(delay_bucket(4_096_000_000), 14);
        assert_eq!(delay_bucket(u64::MAX), DELAY_BUCKETS - 1);
        assert_eq!(delay_bucket_bound_ns(DELAY_BUCKETS - 1), u64::MAX);
        for ns in [1, 999_999, 77_000_000, 5_000_000_000] {
            let i = delay_bucket(ns);
            assert!(ns <= delay_bucket_bound_ns(i));
            assert!(i == 0 || ns > delay_bucket_bound_ns(i - 1));
        }
    }
}
