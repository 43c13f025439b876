//! Loading fault-ebpf with a policy's maps filled in, and reading its counters back.

use std::path::Path;

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::{CgroupSkb, SchedClassifier},
    Ebpf, EbpfLoader,
};
use fault_common::{
    local_port_bit, maps, port_bit, progs, wild_bit, Config, NetRule, RuleCounters, RuleKey,
    PORT_BITS_WORDS, WILD_LOCAL_PORTS, WILD_LOOPBACK,
};

/// The compiled eBPF object (see build.rs).
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fault-ebpf"));

/// The resend ring where packets go through userspace: 32 MiB, as the object declares it,
/// holds about 40 ms of a 10 Gbit/s flow's full-size packets.
const RESEND_RING_BYTES: u32 = 32 << 20;

/// Everything the kernel side needs for one policy.
pub struct Tables<'a> {
    /// Target cgroup ids and their classes.
    pub classes: &'a [(u64, u8)],
    /// The entries of every rule: what the trie is sized for and PORT_BITS summarises.
    pub lpm: &'a [(u32, RuleKey, u32)],
    /// The entries of the rules on at the start (all of them for a policy).
    pub initial: &'a [(u32, RuleKey, u32)],
    pub rules: &'a [NetRule],
    /// CLOCK_MONOTONIC nanoseconds after which nothing is injected.
    pub deadline_ns: u64,
    /// Delay through userspace (kernels without sch_fq, see `crate::net::resend`) rather than fq.
    pub resend: bool,
    /// Load the ingress-delay program too (see `crate::net::peer`).
    pub peer: bool,
    /// The experiment's seed for per-packet decisions (0: none).
    pub seed: u64,
}

/// The egress and ingress-delay programs for a delay path on this kernel: the resend pair
/// (no sch_fq), the pair that writes `skb->tstamp` itself (before 5.18, which added
/// `bpf_skb_set_tstamp`), or the usual fq pair.
pub fn classifiers(resend: bool) -> (&'static str, &'static str) {
    if resend {
        (progs::TC_EGRESS_RESEND, progs::TC_PEER_RESEND)
    } else if before_set_tstamp() {
        (progs::TC_EGRESS_DIRECT, progs::TC_PEER_DIRECT)
    } else {
        (progs::TC_EGRESS, progs::TC_PEER)
    }
}

/// Whether this kernel predates `bpf_skb_set_tstamp` (5.18). Debian does not backport it;
/// an unreadable version is taken as new enough, and the load then says what is missing.
pub fn before_set_tstamp() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v < aya::util::KernelVersion::new(5, 18, 0))
}

/// The ingress-delay program `load` loaded.
pub fn peer_program(ebpf: &Ebpf) -> &'static str {
    let egress = egress_program(ebpf);
    [
        (progs::TC_EGRESS_RESEND, progs::TC_PEER_RESEND),
        (progs::TC_EGRESS_DIRECT, progs::TC_PEER_DIRECT),
    ]
    .into_iter()
    .find_map(|(e, p)| (e == egress).then_some(p))
    .unwrap_or(progs::TC_PEER)
}

/// The egress program `load` loaded: the resend variant, the direct-stamp one or the fq one.
pub fn egress_program(ebpf: &Ebpf) -> &'static str {
    let loaded = |name: &&str| {
        ebpf.program(name)
            .is_some_and(|p: &aya::programs::Program| p.fd().is_ok())
    };
    [progs::TC_EGRESS_RESEND, progs::TC_EGRESS_DIRECT]
        .into_iter()
        .find(loaded)
        .unwrap_or(progs::TC_EGRESS)
}

/// Sizes the network maps at their smallest, for a copy of the object that loads another
/// program (the exec hold, the clock-call count): the maps are created all the same.
pub fn smallest_network_maps(loader: &mut EbpfLoader) {
    // The resend ring is sized in pages, not entries.
    loader.map_max_entries(maps::RESEND_RING, 4096);
    for name in [
        maps::RESEND_SLOT,
        maps::TARGETS,
        maps::RULE_LPM,
        maps::RULES,
        maps::COUNTERS,
        maps::RULE_STATE,
        maps::RATE_NEXT,
        maps::FLOW_LAST,
        maps::DIST_TABLE,
        maps::PORT_BITS,
    ] {
        loader.map_max_entries(name, 1);
    }
}

/// Loads both programs and fills the maps. Nothing is attached yet.
pub fn load(t: &Tables) -> anyhow::Result<Ebpf> {
    let n = |len: usize| (len.max(1)) as u32;
    let mut ebpf = EbpfLoader::new()
        // Room for child cgroups created while the policy runs (see `add_targets`).
        .map_max_entries(maps::TARGETS, n(t.classes.len()).max(4096))
        // A cap, not memory (a trie allocates per entry): room for the entries of partitions
        // cut again by a moved group's new addresses beside the old ones (see
        // `switch::Switch::rematch`, which writes the new before removing the old).
        .map_max_entries(maps::RULE_LPM, n(t.lpm.len()).saturating_mul(2).max(256))
        .map_max_entries(maps::RULES, n(t.rules.len()))
        .map_max_entries(maps::COUNTERS, n(t.rules.len()))
        .map_max_entries(maps::RULE_STATE, n(t.rules.len()))
        .map_max_entries(maps::RATE_NEXT, n(t.rules.len()))
        .map_max_entries(maps::DRAWS, n(t.rules.len()))
        // The ring and the per-CPU slots cost memory only where packets go through userspace.
        .map_max_entries(
            maps::RESEND_RING,
            if t.resend { RESEND_RING_BYTES } else { 4096 },
        )
        .map_max_entries(
            maps::RESEND_SLOT,
            match t.resend {
                true => {
                    aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))? as u32
                }
                false => 1,
            },
        )
        .load(OBJECT)
        .context("load the eBPF object")?;

    let mut targets: HashMap<_, u64, u32> = map(&mut ebpf, maps::TARGETS)?.try_into()?;
    for &(id, class) in t.classes {
        targets
            .insert(id, u32::from(class), 0)
            .context("fill TARGETS")?;
    }
    let mut lpm: LpmTrie<_, RuleKey, u32> = map(&mut ebpf, maps::RULE_LPM)?.try_into()?;
    for (prefix, key, index) in t.initial {
        lpm.insert(&aya::maps::lpm_trie::Key::new(*prefix, *key), index, 0)
            .context("fill RULE_LPM")?;
    }
    let mut rules: Array<_, NetRule> = map(&mut ebpf, maps::RULES)?.try_into()?;
    for (i, r) in t.rules.iter().enumerate() {
        rules.set(i as u32, r, 0).context("fill RULES")?;
    }
    let mut dist: Array<_, i32> = map(&mut ebpf, maps::DIST_TABLE)?.try_into()?;
    for (i, v) in crate::dist::tables().iter().enumerate() {
        dist.set(i as u32, v, 0).context("fill DIST_TABLE")?;
    }
    let (words, wild) = lookup_summary(t.lpm);
    let mut port_bits: Array<_, u64> = map(&mut ebpf, maps::PORT_BITS)?.try_into()?;
    for (i, w) in words.iter().enumerate().filter(|(_, w)| **w != 0) {
        port_bits.set(i as u32, w, 0).context("fill PORT_BITS")?;
    }
    set_config(
        map(&mut ebpf, maps::CONFIG)?,
        Config {
            deadline_ns: t.deadline_ns,
            rule_count: t.rules.len() as u32,
            wild,
            seed: t.seed,
        },
    )?;

    // The verifier's log is part of the error's Display, so a rejection shows it.
    let (egress, peer) = classifiers(t.resend);
    let mut names = vec![egress];
    if t.peer {
        names.push(peer);
    }
    for name in names {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        let loaded = prog.load();
        if t.resend && loaded.is_err() {
            loaded.with_context(|| {
                format!(
                    "load program {name}: this kernel has no sch_fq, so fault would hold delayed \
                     packets itself, which needs bpf_get_netns_cookie in TC programs (Linux \
                     6.15 and later); neither way to delay is available here"
                )
            })?;
        } else {
            loaded.with_context(|| format!("load program {name}"))?;
        }
    }
    for name in [progs::CGROUP_INGRESS, progs::CGROUP_EGRESS] {
        let prog: &mut CgroupSkb = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("load program {name}"))?;
    }
    Ok(ebpf)
}

/// Adds cgroup ids to an active policy (a target's new child cgroups), with their classes.
pub fn add_targets(ebpf: &mut Ebpf, ids: &[(u64, u8)]) -> anyhow::Result<()> {
    let mut targets: HashMap<_, u64, u32> = map(ebpf, maps::TARGETS)?.try_into()?;
    for &(id, class) in ids {
        targets
            .insert(id, u32::from(class), 0)
            .context("add to TARGETS")?;
    }
    Ok(())
}

/// Tells the ingress-delay program whose packets leave by the far end `ifindex`.
pub fn set_peer_class(ebpf: &mut Ebpf, ifindex: u32, class: u8) -> anyhow::Result<()> {
    let mut peers: HashMap<_, u32, u32> = map(ebpf, maps::PEER_CLASS)?.try_into()?;
    peers
        .insert(ifindex, u32::from(class), 0)
        .context("fill PEER_CLASS")
}

/// What lets the programs skip trie lookups that cannot hit: bitmaps of the peer ports and
/// the local ports rules name, the `wild` bits of (direction, protocol) pairs that have
/// entries with neither, whether any entry names a local port, and whether any entry is for
/// the loopback device.
fn lookup_summary(lpm: &[(u32, RuleKey, u32)]) -> (Vec<u64>, u32) {
    let mut words = vec![0u64; PORT_BITS_WORDS as usize];
    let mut wild = 0;
    for (_, key, _) in lpm {
        if key.loopback != 0 {
            wild |= WILD_LOOPBACK;
        }
        let port = u16::from_be_bytes(key.port);
        let local = u16::from_be_bytes(key.local_port);
        if let (Some((word, bit)), true) = (port_bit(key.dir, key.proto, port), port != 0) {
            words[word as usize] |= bit;
        }
        if let (Some((word, bit)), true) = (local_port_bit(key.dir, key.proto, local), local != 0) {
            words[word as usize] |= bit;
            wild |= WILD_LOCAL_PORTS;
        }
        if port == 0 && local == 0 {
            wild |= wild_bit(key.dir, key.proto);
        }
    }
    (words, wild)
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("map {name} missing from the object"))
}

fn set_config(m: &mut Map, c: Config) -> anyhow::Result<()> {
    let mut config: Array<_, Config> = m.try_into()?;
    config.set(0, c, 0).context("write CONFIG")
}

/// Pins the maps that `fault status` and `fault stop` need into `dir`.
pub fn pin(ebpf: &Ebpf, dir: &Path) -> anyhow::Result<()> {
    crate::state::create_pin_dir(dir)?;
    for name in [maps::COUNTERS, maps::CONFIG] {
        ebpf.map(name)
            .with_context(|| format!("map {name} missing"))?
            .pin(dir.join(name))
            .with_context(|| format!("pin {name} in {}", dir.display()))?;
    }
    Ok(())
}

/// Per-rule counters summed over CPUs.
pub fn counters(m: &Map, rules: usize) -> anyhow::Result<Vec<RuleCounters>> {
    let arr: PerCpuArray<&MapData, RuleCounters> = m.try_into()?;
    (0..rules as u32)
        .map(|i| {
            let per_cpu = arr.get(&i, 0).context("read COUNTERS")?;
            Ok(per_cpu.iter().fold(RuleCounters::default(), |mut a, c| {
                a.add(c);
                a
            }))
        })
        .collect()
}

pub fn live_counters(ebpf: &Ebpf, rules: usize) -> anyhow::Result<Vec<RuleCounters>> {
    counters(ebpf.map(maps::COUNTERS).context("COUNTERS missing")?, rules)
}

/// Counters of a policy applied by another process, from its pins.
pub fn pinned_counters(dir: &Path, rules: usize) -> anyhow::Result<Vec<RuleCounters>> {
    let data = MapData::from_pin(dir.join(maps::COUNTERS))
        .with_context(|| format!("open {}", dir.join(maps::COUNTERS).display()))?;
    counters(&Map::PerCpuArray(data), rules)
}

/// The heartbeat's hold on a policy's pinned CONFIG (see `crate::lease`).
pub fn config_lease(dir: &Path, deadline_ns: u64) -> anyhow::Result<crate::lease::ConfigLease> {
    let data = MapData::from_pin(dir.join(maps::CONFIG))
        .with_context(|| format!("open {}", dir.join(maps::CONFIG).display()))?;
    Ok(crate::lease::ConfigLease {
        config: Array::try_from(Map::Array(data))?,
        deadline_ns,
    })
}

/// Ends a policy's injection now through its pinned CONFIG, whatever holds its programs.
pub fn expire_pinned(dir: &Path) -> anyhow::Result<()> {
    let data = MapData::from_pin(dir.join(maps::CONFIG))
        .with_context(|| format!("open {}", dir.join(maps::CONFIG).display()))?;
    let mut m = Map::Array(data);
    let config: Array<&mut MapData, Config> = (&mut m).try_into()?;
    let mut c = config.get(&0, 0)?;
    // 1 ns after boot: long past, and non-zero (0 means "no deadline").
    c.deadline_ns = 1;
    let mut config: Array<&mut MapData, Config> = (&mut m).try_into()?;
    config.set(0, c, 0).context("write CONFIG")
}

pub use crate::sys::time::monotonic_ns;

#[cfg(test)]
mod tests {
    use super::*;
    use fault_common::{DIR_EGRESS, DIR_INGRESS, PROTO_ANY, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

    fn key(dir: u8, proto: u8, port: u16) -> (u32, RuleKey, u32) {
        let k = RuleKey {
            dir,
            proto,
            port: port.to_be_bytes(),
            ..RuleKey::default()
        };
        (96, k, 0)
    }

    #[test]
    fn summary_marks_named_ports_and_portless_entries() {
        let (words, wild) = lookup_summary(&[
            key(DIR_EGRESS, PROTO_TCP, 5432),
            key(DIR_INGRESS, PROTO_UDP, 53),
            key(DIR_EGRESS, PROTO_ICMP, 0),
            key(DIR_INGRESS, PROTO_ANY, 0),
        ]);
        let (w, b) = port_bit(DIR_EGRESS, PROTO_TCP, 5432).unwrap();
        assert_ne!(words[w as usize] & b, 0);
        let (w, b) = port_bit(DIR_INGRESS, PROTO_UDP, 53).unwrap();
        assert_ne!(words[w as usize] & b, 0);
        let (w, b) = port_bit(DIR_EGRESS, PROTO_UDP, 5432).unwrap();
        assert_eq!(words[w as usize] & b, 0, "udp 5432 was not named");
        assert_eq!(words.iter().map(|w| w.count_ones()).sum::<u32>(), 2);
        assert_eq!(
            wild,
            wild_bit(DIR_EGRESS, PROTO_ICMP) | wild_bit(DIR_INGRESS, PROTO_ANY)
        );
        let mut on_lo = key(DIR_EGRESS, PROTO_ANY, 0);
        on_lo.1.loopback = 1;
        let (_, wild) = lookup_summary(&[on_lo]);
        assert_eq!(wild, wild_bit(DIR_EGRESS, PROTO_ANY) | WILD_LOOPBACK);
    }
}
