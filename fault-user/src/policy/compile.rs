//! Rules to LPM trie entries.
//!
//! The kernel looks a packet up at most five times, as (protocol, port, local port),
//! (protocol, port, any), (protocol, any, local port), (protocol, any, any) and (any
//! protocol, any, any), and takes the lowest rule index among the hits, so the first
//! matching rule in policy order wins. Each lookup returns only the longest matching prefix,
//! though: if an entry held just its own rule's index, a later rule with a longer prefix
//! would hide an earlier rule with a shorter one. So every entry holds the lowest index of
//! all rules whose prefix covers it within the same (direction, protocol, port, family).

use std::collections::HashMap;
use std::path::Path;

use fault_common::{
    RuleKey, DIR_EGRESS, DIR_INGRESS, FAMILY_V4, FAMILY_V6, PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_TCP, PROTO_UDP, RULE_KEY_FIXED_BITS,
};
use ipnet::IpNet;

use super::{Invalid, PolicyError, Protocol, Rule};

/// The most trie entries a policy may compile to. Every port of a range is an entry of its
/// own, so a careless `1-65535` multiplies quickly; a trie entry costs the kernel on the
/// order of 100 bytes (more with inner nodes), so this bounds it to a few hundred MiB.
pub const MAX_LPM_ENTRIES: usize = 1_000_000;

/// LPM entries for all rules: (prefix length in bits including [`RULE_KEY_FIXED_BITS`], key,
/// rule index), in a stable order (by direction, protocol, port, family, address, prefix).
pub fn lpm_entries(rules: &[Rule]) -> Result<Vec<(u32, RuleKey, u32)>, PolicyError> {
    lpm_entries_of(rules, |_| true)
}

/// LPM entries for the rules `active` says are on (indices stay those of `rules`): what the
/// trie holds at one point of an experiment's timeline.
pub fn lpm_entries_of(
    rules: &[Rule],
    active: impl Fn(usize) -> bool,
) -> Result<Vec<(u32, RuleKey, u32)>, PolicyError> {
    // Rules from `parse` have passed this already; hand-built ones have not, and there is no
    // file to name for them.
    let count = check_size(rules).map_err(|err| err.in_file(Path::new("")))?;
    let on: Vec<bool> = (0..rules.len()).map(active).collect();

    // One entry per port of each slot, with the lowest index among the rules that name
    // exactly this prefix at this port.
    let mut entries: Vec<(Group, Prefix, u32)> = Vec::with_capacity(count);
    for (slot, ranges) in slots(rules, &on) {
        for (first, last, index) in lowest_per_port(&ranges) {
            entries.extend((first..=last).map(|port| {
                let group = Group {
                    dir: slot.dir,
                    proto: slot.proto,
                    port,
                    family: slot.family,
                    loopback: slot.loopback,
                    local_port: slot.local_port,
                    class: slot.class,
                };
                (group, slot.prefix, index)
            }));
        }
    }

    // Sorted by group, then address, then shortest prefix first, every prefix comes after
    // all the prefixes of its group that cover it. Prefixes either nest or are disjoint, so
    // the prefixes covering the current one form a stack, and each element of it can carry
    // the minimum of everything above it down to the next.
    entries.sort_unstable();
    let mut chain: Vec<(Group, Prefix, u32)> = Vec::new();
    for entry in &mut entries {
        let (group, prefix, own_index) = *entry;
        while let Some(&(covering_group, covering, _)) = chain.last() {
            if covering_group == group && covering.covers(prefix) {
                break;
            }
            chain.pop();
        }
        entry.2 = chain
            .last()
            .map_or(own_index, |&(_, _, index)| index.min(own_index));
        chain.push(*entry);
    }

    Ok(entries
        .into_iter()
        .map(|(group, prefix, index)| {
            let key = RuleKey {
                dir: group.dir,
                proto: group.proto,
                port: group.port.to_be_bytes(),
                family: group.family,
                loopback: group.loopback,
                local_port: group.local_port.to_be_bytes(),
                class: group.class,
                _pad: [0; 3],
                addr: prefix.bits.to_be_bytes(),
            };
            (RULE_KEY_FIXED_BITS + u32::from(prefix.len), key, index)
        })
        .collect())
}

/// Refuses rules that would compile to more than [`MAX_LPM_ENTRIES`] entries; otherwise
/// returns the exact count (identical entries merge), found without expanding port ranges.
pub(super) fn check_size(rules: &[Rule]) -> Result<usize, Invalid> {
    let count: usize = slots(rules, &vec![true; rules.len()])
        .values()
        .flat_map(|ranges| lowest_per_port(ranges))
        .map(|(first, last, _)| usize::from(last - first) + 1)
        .sum();
    if count > MAX_LPM_ENTRIES {
        return Err(Invalid::new(
            "spec.network",
            format!(
                "the rules compile to {count} lookup entries, more than the limit of \
                 {MAX_LPM_ENTRIES}; each port of a range is an entry per direction, protocol \
                 and cidr, so match fewer ports or cidrs"
            ),
        ));
    }
    Ok(count)
}

/// Everything of an entry but its peer port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Slot {
    dir: u8,
    proto: u8,
    family: u8,
    loopback: u8,
    /// One of the rule's local ports, or 0 for a rule without them.
    local_port: u16,
    class: u8,
    prefix: Prefix,
}

/// A port range a rule puts in a slot: (first, last, rule index), inclusive. A rule without
/// ports puts (0, 0): port 0 is the trie's "no port", and validation keeps it out of ranges.
type PortRun = (u16, u16, u32);

/// Every slot the rules that are `on` occupy, with the port ranges each rule puts there.
fn slots(rules: &[Rule], on: &[bool]) -> HashMap<Slot, Vec<PortRun>> {
    // A rule without cidrs matches every peer of both families.
    let everything = [
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ];
    let mut slots: HashMap<Slot, Vec<PortRun>> = HashMap::new();
    for (index, rule) in rules.iter().enumerate().filter(|(i, _)| on[*i]) {
        let index = u32::try_from(index).expect("fewer than 2^32 rules");
        let runs: Vec<PortRun> = if rule.ports.is_empty() {
            vec![(0, 0, index)]
        } else {
            rule.ports
                .iter()
                .map(|&(first, last)| (first, last, index))
                .collect()
        };
        let nets = if rule.cidrs.is_empty() {
            &everything[..]
        } else {
            &rule.cidrs[..]
        };
        let dirs = [(rule.egress, DIR_EGRESS), (rule.ingress, DIR_INGRESS)];
        // Packets on the loopback device look up loopback 1, which only rules that ask for
        // it occupy; they occupy loopback 0 as well, for every other device.
        let devices: &[u8] = if rule.loopback { &[0, 1] } else { &[0] };
        // Every local port is a group of its own in the trie; 0 is "any".
        let locals: Vec<u16> = match rule.local_ports.is_empty() {
            true => vec![0],
            false => rule.local_ports.iter().flat_map(|&(a, b)| a..=b).collect(),
        };
        for &(_, dir) in dirs.iter().filter(|(wanted, _)| *wanted) {
            for net in nets {
                let (family, prefix) = Prefix::of(&net.trunc());
                for &proto in protocols(rule, family) {
                    for &loopback in devices {
                        for &local_port in &locals {
                            let slot = Slot {
                                dir,
                                proto,
                                family,
                                loopback,
                                local_port,
                                class: rule.class,
                                prefix,
                            };
                            slots.entry(slot).or_default().extend_from_slice(&runs);
                        }
                    }
                }
            }
        }
    }
    slots
}

/// The ports the runs of one slot cover, as disjoint runs carrying the lowest rule index at
/// each port.
fn lowest_per_port(runs: &[PortRun]) -> Vec<PortRun> {
    // A sweep over the ports: each run starts at `first` and ends before `last + 1` (u32,
    // because 65535 + 1 does not fit a u16). Between two consecutive event positions the
    // set of runs that cover a port does not change, so each such piece takes the lowest
    // index of the set: O(n log n) in the runs, where testing every run for every piece
    // was quadratic (65,535 single ports took seconds).
    let mut events: Vec<(u32, bool, u32)> = runs
        .iter()
        .flat_map(|&(first, last, index)| {
            [
                (u32::from(first), true, index),
                (u32::from(last) + 1, false, index),
            ]
        })
        .collect();
    events.sort_unstable();
    // The indices of the runs covering the current piece, each with how many runs carry it.
    let mut covering: std::collections::BTreeMap<u32, usize> = std::collections::BTreeMap::new();
    let mut pieces: Vec<PortRun> = Vec::new();
    let mut i = 0;
    while i < events.len() {
        let start = events[i].0;
        while let Some(&(_, begins, index)) = events.get(i).filter(|e| e.0 == start) {
            if begins {
                *covering.entry(index).or_default() += 1;
            } else if let Some(n) = covering.get_mut(&index) {
                *n -= 1;
                if *n == 0 {
                    covering.remove(&index);
                }
            }
            i += 1;
        }
        let (Some(&(end, _, _)), Some((&index, _))) = (events.get(i), covering.first_key_value())
        else {
            continue;
        };
        // Both fit: start < end <= 65536.
        let (first, last) = (start as u16, (end - 1) as u16);
        match pieces.last_mut() {
            Some(previous) if previous.2 == index && u32::from(previous.1) + 1 == start => {
                previous.1 = last;
            }
            _ => pieces.push((first, last, index)),
        }
    }
    pieces
}

/// The fields of a key that the trie matches in full: entries of different groups never
/// cover one another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Group {
    dir: u8,
    proto: u8,
    port: u16,
    family: u8,
    loopback: u8,
    local_port: u16,
    class: u8,
}

/// A peer prefix: the top `len` bits of `bits`. IPv4 sits in the top 32 bits, which is where
/// the key's address bytes put it, so one type and one mask serve both families.
///
/// Field order matters: the derived `Ord` sorts by address, then shortest first, which puts
/// a prefix after every prefix that covers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Prefix {
    bits: u128,
    len: u8,
}

impl Prefix {
    fn of(net: &IpNet) -> (u8, Prefix) {
        match net {
            IpNet::V4(net) => (
                FAMILY_V4,
                Prefix {
                    len: net.prefix_len(),
                    bits: u128::from(u32::from(net.network())) << 96,
                },
            ),
            IpNet::V6(net) => (
                FAMILY_V6,
                Prefix {
                    len: net.prefix_len(),
                    bits: u128::from(net.network()),
                },
            ),
        }
    }

    /// Whether every address of `other` is in this prefix.
    fn covers(self, other: Prefix) -> bool {
        let mask = match self.len {
            0 => 0,
            len => u128::MAX << (128 - u32::from(len)),
        };
        self.len <= other.len && other.bits & mask == self.bits
    }
}

/// The protocol codes a rule occupies for peers of one family.
fn protocols(rule: &Rule, family: u8) -> &'static [u8] {
    match rule.protocol {
        Protocol::Any if rule.ports.is_empty() && rule.local_ports.is_empty() => &[PROTO_ANY],
        // Only TCP and UDP have ports.
        Protocol::Any => &[PROTO_TCP, PROTO_UDP],
        Protocol::Tcp => &[PROTO_TCP],
        Protocol::Udp => &[PROTO_UDP],
        // The packet's IP protocol is what the kernel looks up, and ICMP has a different
        // number under IPv6.
        Protocol::Icmp if family == FAMILY_V4 => &[PROTO_ICMP],
        Protocol::Icmp => &[PROTO_ICMPV6],
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use fault_common::NetRule;

    use super::*;

    fn rule(dirs: (bool, bool), protocol: Protocol, cidrs: &[&str], ports: &[(u16, u16)]) -> Rule {
        Rule {
            class: 0,
            window: None,
            ramp: None,
            step: None,
            name: "r".to_owned(),
            egress: dirs.0,
            ingress: dirs.1,
            protocol,
            cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            ports: ports.to_vec(),
            local_ports: Vec::new(),
            loopback: false,
            action: NetRule::default(),
        }
    }

    const EGRESS: (bool, bool) = (true, false);
    const BOTH: (bool, bool) = (true, true);

    /// A packet as the classifier sees it.
    #[derive(Clone, Copy, Debug)]
    struct Packet {
        dir: u8,
        proto: u8,
        port: u16,
        local: u16,
        addr: IpAddr,
    }

    fn packet(dir: u8, proto: u8, port: u16, addr: &str) -> Packet {
        Packet {
            dir,
            proto,
            port,
            local: 0,
            addr: addr.parse().unwrap(),
        }
    }

    fn family_and_bits(addr: IpAddr) -> (u8, [u8; 16]) {
        match addr {
            IpAddr::V4(v4) => {
                let mut bytes = [0; 16];
                bytes[..4].copy_from_slice(&v4.octets());
                (FAMILY_V4, bytes)
            }
            IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
        }
    }

    /// The kernel's longest-prefix match over the entries, for one full-length key.
    fn trie_lookup(entries: &[(u32, RuleKey, u32)], key: &RuleKey) -> Option<u32> {
        let full = RULE_KEY_FIXED_BITS + if key.family == FAMILY_V4 { 32 } else { 128 };
        let key_bits = u128::from_be_bytes(key.addr);
        entries
            .iter()
            .filter(|(prefix, entry, _)| {
                let len = prefix - RULE_KEY_FIXED_BITS;
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                *prefix <= full
                    && entry.dir == key.dir
                    && entry.proto == key.proto
                    && entry.port == key.port
                    && entry.family == key.family
                    && entry.loopback == key.loopback
                    && entry.local_port == key.local_port
                    && u128::from_be_bytes(entry.addr) & mask == key_bits & mask
            })
            .max_by_key(|(prefix, _, _)| *prefix)
            .map(|&(_, _, index)| index)
    }

    /// What fault-ebpf's find_rule does: up to five lookups, lowest index wins.
    fn classify(entries: &[(u32, RuleKey, u32)], packet: Packet) -> Option<u32> {
        let (family, addr) = family_and_bits(packet.addr);
        let key = |proto: u8, port: u16, local: u16| RuleKey {
            dir: packet.dir,
            proto,
            port: port.to_be_bytes(),
            family,
            loopback: 0,
            local_port: local.to_be_bytes(),
            class: 0,
            _pad: [0; 3],
            addr,
        };
        let mut lookups = vec![key(packet.proto, 0, 0), key(PROTO_ANY, 0, 0)];
        if packet.port != 0 {
            lookups.push(key(packet.proto, packet.port, 0));
        }
        if packet.local != 0 {
            lookups.push(key(packet.proto, 0, packet.local));
        }
        if packet.port != 0 && packet.local != 0 {
            lookups.push(key(packet.proto, packet.port, packet.local));
        }
        lookups
            .iter()
            .filter_map(|key| trie_lookup(entries, key))
            .min()
    }

    /// What the policy means: the first rule, in order, that matches the packet.
    fn first_match(rules: &[Rule], packet: Packet) -> Option<u32> {
        let is_v4 = packet.addr.is_ipv4();
        let matches = |rule: &Rule| {
            let dir = match packet.dir {
                DIR_EGRESS => rule.egress,
                _ => rule.ingress,
            };
            let proto = match rule.protocol {
                Protocol::Any => {
                    (rule.ports.is_empty() && rule.local_ports.is_empty())
                        || matches!(packet.proto, PROTO_TCP | PROTO_UDP)
                }
                Protocol::Tcp => packet.proto == PROTO_TCP,
                Protocol::Udp => packet.proto == PROTO_UDP,
                Protocol::Icmp => packet.proto == if is_v4 { PROTO_ICMP } else { PROTO_ICMPV6 },
            };
            let addr = rule.cidrs.is_empty() || rule.cidrs.iter().any(|c| c.contains(&packet.addr));
            let within = |ranges: &[(u16, u16)], port: u16| {
                ranges.is_empty() || ranges.iter().any(|&(a, b)| (a..=b).contains(&port))
            };
            let port = within(&rule.ports, packet.port);
            let local = within(&rule.local_ports, packet.local);
            dir && proto && addr && port && local
        };
        rules
            .iter()
            .position(matches)
            .map(|i| u32::try_from(i).unwrap())
    }

    fn entry_for(
        entries: &[(u32, RuleKey, u32)],
        dir: u8,
        proto: u8,
        port: u16,
        cidr: &str,
    ) -> Option<u32> {
        let net: IpNet = cidr.parse().unwrap();
        let (family, addr) = family_and_bits(net.network());
        let prefix = RULE_KEY_FIXED_BITS + u32::from(net.prefix_len());
        let key = RuleKey {
            dir,
            proto,
            port: port.to_be_bytes(),
            family,
            loopback: 0,
            local_port: [0; 2],
            class: 0,
            _pad: [0; 3],
            addr,
        };
        entries
            .iter()
            .find(|(p, k, _)| *p == prefix && *k == key)
            .map(|&(_, _, index)| index)
    }

    #[test]
    fn example_rule_expands_every_port_of_every_cidr() {
        let rules = [rule(
            EGRESS,
            Protocol::Udp,
            &["10.88.0.0/16", "fd00::/8"],
            &[(5432, 5432), (6000, 6100)],
        )];
        let entries = lpm_entries(&rules).unwrap();
        assert_eq!(entries.len(), 2 * 102, "2 cidrs x 102 ports");
        assert_eq!(
            entry_for(&entries, DIR_EGRESS, PROTO_UDP, 5432, "10.88.0.0/16"),
            Some(0)
        );
        assert_eq!(
            entry_for(&entries, DIR_EGRESS, PROTO_UDP, 6100, "fd00::/8"),
            Some(0)
        );
        let (prefix, key, _) = entries
            .iter()
            .find(|(_, k, _)| k.family == FAMILY_V4 && k.port == 5432u16.to_be_bytes())
            .unwrap();
        assert_eq!(*prefix, RULE_KEY_FIXED_BITS + 16);
        assert_eq!(key.port, [0x15, 0x38], "5432 in network byte order");
        assert_eq!(key.addr[..4], [10, 88, 0, 0]);
        assert_eq!(key.addr[4..], [0; 12]);
        assert_eq!(key.local_port, [0; 2]);
        assert_eq!(
            check_size(&rules).unwrap(),
            entries.len(),
            "check_size counts exactly what lpm_entries emits"
        );
    }

    #[test]
    fn earlier_rule_with_shorter_prefix_wins_across_lookups() {
        // rule 0: 10.0.0.0/8 port 80 (tcp and udp); rule 1: 10.1.0.0/16, any port.
        let rules = [
            rule(EGRESS, Protocol::Any, &["10.0.0.0/8"], &[(80, 80)]),
            rule(EGRESS, Protocol::Any, &["10.1.0.0/16"], &[]),
        ];
        let entries = lpm_entries(&rules).unwrap();
        assert_eq!(
            entries.len(),
            3,
            "tcp:80 and udp:80 for rule 0, any for rule 1"
        );
        let cases = [
            (packet(DIR_EGRESS, PROTO_TCP, 80, "10.1.2.3"), Some(0)),
            (packet(DIR_EGRESS, PROTO_UDP, 80, "10.1.2.3"), Some(0)),
            (packet(DIR_EGRESS, PROTO_TCP, 81, "10.1.2.3"), Some(1)),
            (packet(DIR_EGRESS, PROTO_ICMP, 0, "10.1.2.3"), Some(1)),
            (packet(DIR_EGRESS, PROTO_TCP, 80, "10.2.0.1"), Some(0)),
            (packet(DIR_EGRESS, PROTO_TCP, 81, "10.2.0.1"), None),
            (packet(DIR_INGRESS, PROTO_TCP, 80, "10.1.2.3"), None),
        ];
        for (packet, expected) in cases {
            assert_eq!(classify(&entries, packet), expected, "{packet:?}");
            assert_eq!(first_match(&rules, packet), expected, "{packet:?}");
        }
    }

    #[test]
    fn longer_prefix_entry_carries_the_covering_rules_minimum() {
        // The same group (egress, any protocol, no port): 10.1.0.0/16 of rule 1 must store 0,
        // or a lookup for 10.1.x.x would stop at it and never see rule 0.
        let rules = [
            rule(EGRESS, Protocol::Any, &["10.0.0.0/8"], &[]),
            rule(EGRESS, Protocol::Any, &["10.1.0.0/16"], &[]),
            rule(EGRESS, Protocol::Any, &["10.1.2.0/24"], &[]),
        ];
        let entries = lpm_entries(&rules).unwrap();
        for cidr in ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24"] {
            assert_eq!(
                entry_for(&entries, DIR_EGRESS, PROTO_ANY, 0, cidr),
                Some(0),
                "{cidr}"
            );
        }

        // In the other order each prefix keeps its own rule outside the more specific ones.
        let rules = [
            rule(EGRESS, Protocol::Any, &["10.1.2.0/24"], &[]),
            rule(EGRESS, Protocol::Any, &["10.1.0.0/16"], &[]),
            rule(EGRESS, Protocol::Any, &["10.0.0.0/8"], &[]),
        ];
        let entries = lpm_entries(&rules).unwrap();
        for (cidr, index) in [("10.1.2.0/24", 0), ("10.1.0.0/16", 1), ("10.0.0.0/8", 2)] {
            assert_eq!(
                entry_for(&entries, DIR_EGRESS, PROTO_ANY, 0, cidr),
                Some(index),
                "{cidr}"
            );
        }
        for (addr, index) in [("10.1.2.9", 0), ("10.1.9.9", 1), ("10.9.9.9", 2)] {
            let p = packet(DIR_EGRESS, PROTO_UDP, 53, addr);
            assert_eq!(classify(&entries, p), Some(index), "{addr}");
        }
    }

    #[test]
    fn covering_only_applies_within_the_same_port_and_family() {
        let rules = [
            rule(EGRESS, Protocol::Tcp, &["10.0.0.0/8"], &[(80, 80)]),
            rule(EGRESS, Protocol::Tcp, &["10.1.0.0/16"], &[(443, 443)]),
            rule(EGRESS, Protocol::Tcp, &["::/0"], &[(443, 443)]),
        ];
        let entries = lpm_entries(&rules).unwrap();
        assert_eq!(
            entry_for(&entries, DIR_EGRESS, PROTO_TCP, 443, "10.1.0.0/16"),
            Some(1)
        );
        assert_eq!(
            entry_for(&entries, DIR_EGRESS, PROTO_TCP, 443, "::/0"),
            Some(2)
        );
    }

    #[test]
    fn identical_entries_merge_to_the_lowest_index() {
        let rules = [
            rule(EGRESS, Protocol::Udp, &["10.0.0.1/8"], &[(53, 53)]),
            rule(EGRESS, Protocol::Udp, &["10.0.0.0/8"], &[(50, 60)]),
        ];
        let entries = lpm_entries(&rules).unwrap();
        assert_eq!(entries.len(), 11, "ports 50..=60 once each");
        assert_eq!(
            entry_for(&entries, DIR_EGRESS, PROTO_UDP, 53, "10.0.0.0/8"),
            Some(0),
            "host bits are masked, so both rules name the same prefix"
        );
        assert_eq!(
            entry_for(&entries, DIR_EGRESS, PROTO_UDP, 54, "10.0.0.0/8"),
            Some(1)
        );
        assert_eq!(check_size(&rules).unwrap(), 11);
    }

    #[test]
    fn no_cidrs_means_both_families_and_icmp_follows_the_family() {
        let rules = [rule(BOTH, Protocol::Icmp, &[], &[])];
        let entries = lpm_entries(&rules).unwrap();
        assert_eq!(entries.len(), 4, "2 directions x (icmp /0 + icmpv6 ::/0)");
        for dir in [DIR_EGRESS, DIR_INGRESS] {
            assert_eq!(
                entry_for(&entries, dir, PROTO_ICMP, 0, "0.0.0.0/0"),
                Some(0)
            );
            assert_eq!(entry_for(&entries, dir, PROTO_ICMPV6, 0, "::/0"), Some(0));
        }
        assert!(entries
            .iter()
            .all(|(prefix, _, _)| *prefix == RULE_KEY_FIXED_BITS));

        let rules = [rule(EGRESS, Protocol::Any, &[], &[])];
        let entries = lpm_entries(&rules).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entry_for(&entries, DIR_EGRESS, PROTO_ANY, 0, "0.0.0.0/0"),
            Some(0)
        );
        assert_eq!(
            entry_for(&entries, DIR_EGRESS, PROTO_ANY, 0, "::/0"),
            Some(0)
        );
    }

    #[test]
    fn only_rules_that_ask_for_loopback_have_loopback_entries() {
        let mut on_lo = rule(EGRESS, Protocol::Any, &["10.0.0.0/8"], &[]);
        on_lo.loopback = true;
        let rules = [rule(EGRESS, Protocol::Udp, &[], &[]), on_lo];
        let entries = lpm_entries(&rules).unwrap();
        assert_eq!(
            entries.len(),
            2 + 2,
            "udp for both families on other devices, 10/8 on other devices and on lo"
        );
        let on_loopback: Vec<u32> = entries
            .iter()
            .filter(|(_, k, _)| k.loopback == 1)
            .map(|&(_, _, index)| index)
            .collect();
        assert_eq!(on_loopback, [1], "only rule 1 is found on lo");
        assert_eq!(check_size(&rules).unwrap(), entries.len());
    }

    #[test]
    fn too_many_entries_are_refused_with_the_count() {
        // 65535 ports x tcp+udp x 2 directions x 4 cidrs = 1,048,560.
        let rules = [rule(
            BOTH,
            Protocol::Any,
            &["10.0.0.0/8", "10.1.0.0/16", "fd00::/8", "192.168.0.0/16"],
            &[(1, 65535)],
        )];
        let err = lpm_entries(&rules).unwrap_err();
        assert_eq!(err.path, "spec.network");
        assert!(err.message.contains("1048560"), "{err}");
        assert!(err.message.contains("1000000"), "{err}");

        // Duplicated ranges merge, so they do not count twice: 2 x 65535 x 2 x 3 = 786,420.
        let rules = [
            rule(
                BOTH,
                Protocol::Any,
                &["10.0.0.0/8", "10.1.0.0/16", "fd00::/8"],
                &[(1, 65535)],
            ),
            rule(
                BOTH,
                Protocol::Any,
                &["10.0.0.0/8", "10.1.0.0/16", "fd00::/8"],
                &[(1, 40000)],
            ),
        ];
        assert_eq!(check_size(&rules).unwrap(), 786_420);
    }

    /// Against the definition, port by port: random overlapping runs (a fixed LCG).
    #[test]
    fn lowest_per_port_agrees_with_a_port_by_port_minimum() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |m: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        for _ in 0..200 {
            let runs: Vec<PortRun> = (0..next(12))
                .map(|_| {
                    let first = next(60) as u16;
                    (first, first + next(20) as u16, next(6) as u32)
                })
                .collect();
            let mut want: Vec<Option<u32>> = vec![None; 100];
            for &(first, last, index) in &runs {
                for p in first..=last {
                    let w = &mut want[usize::from(p)];
                    *w = Some(w.map_or(index, |v| v.min(index)));
                }
            }
            let mut got: Vec<Option<u32>> = vec![None; 100];
            for (first, last, index) in lowest_per_port(&runs) {
                for p in first..=last {
                    assert_eq!(got[usize::from(p)], None, "pieces overlap: {runs:?}");
                    got[usize::from(p)] = Some(index);
                }
            }
            assert_eq!(got, want, "{runs:?}");
        }
    }

    #[test]
    fn lowest_per_port_splits_overlaps_and_keeps_the_lowest_index() {
        assert_eq!(lowest_per_port(&[]), []);
        assert_eq!(lowest_per_port(&[(0, 0, 3)]), [(0, 0, 3)]);
        assert_eq!(
            lowest_per_port(&[(5, 10, 1), (1, 3, 2), (8, 12, 0), (12, 12, 4)]),
            [(1, 3, 2), (5, 7, 1), (8, 12, 0)]
        );
        assert_eq!(
            lowest_per_port(&[(1, 65535, 1), (65535, 65535, 0)]),
            [(1, 65534, 1), (65535, 65535, 0)]
        );
        assert_eq!(lowest_per_port(&[(1, 5, 0), (3, 9, 0)]), [(1, 9, 0)]);
        assert_eq!(
            lowest_per_port(&[(1, 5, 0), (6, 9, 0), (20, 20, 0)]),
            [(1, 9, 0), (20, 20, 0)]
        );
    }

    /// A small xorshift so the randomized test needs no dependency and is reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    #[test]
    fn trie_lookups_agree_with_first_match_on_random_policies() {
        // Nested prefixes and overlapping ranges, so that covering and merging are exercised.
        let cidrs = [
            "0.0.0.0/0",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.3/32",
            "192.168.0.0/16",
            "::/0",
            "fd00::/8",
            "fd00:1::/32",
            "fd00:1::1/128",
        ];
        let port_ranges = [(80, 80), (80, 90), (443, 443), (1, 100), (85, 85)];
        let protocols = [Protocol::Any, Protocol::Tcp, Protocol::Udp, Protocol::Icmp];
        let addrs = [
            "10.1.2.3",
            "10.1.2.4",
            "10.1.3.1",
            "10.2.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "fd00:1::1",
            "fd00:1::2",
            "fd00:2::1",
            "2001:db8::1",
        ];
        let packet_protos = [PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6, 47];
        let packet_ports = [80, 85, 90, 91, 443, 50, 1000];

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let rule_count = 1 + rng.next() % 6;
            let rules: Vec<Rule> = (0..rule_count)
                .map(|_| {
                    let dirs = rng.pick(&[(true, false), (false, true), (true, true)]);
                    let protocol = rng.pick(&protocols);
                    let picked: Vec<&str> = (0..rng.next() % 3).map(|_| rng.pick(&cidrs)).collect();
                    let ports: Vec<(u16, u16)> = if protocol == Protocol::Icmp {
                        Vec::new()
                    } else {
                        (0..rng.next() % 3)
                            .map(|_| rng.pick(&port_ranges))
                            .collect()
                    };
                    let mut r = rule(dirs, protocol, &picked, &ports);
                    if protocol != Protocol::Icmp && rng.next().is_multiple_of(3) {
                        r.local_ports = vec![rng.pick(&port_ranges)];
                    }
                    r
                })
                .collect();
            let entries = lpm_entries(&rules).unwrap();
            for _ in 0..40 {
                let proto = rng.pick(&packet_protos);
                let port = if matches!(proto, PROTO_TCP | PROTO_UDP) {
                    rng.pick(&packet_ports)
                } else {
                    0
                };
                let dir = rng.pick(&[DIR_EGRESS, DIR_INGRESS]);
                let mut p = packet(dir, proto, port, rng.pick(&addrs));
                if port != 0 {
                    p.local = rng.pick(&packet_ports);
                }
                assert_eq!(
                    classify(&entries, p),
                    first_match(&rules, p),
                    "round {round}: {p:?} against {rules:#?}"
                );
            }
        }
    }

    /// "Cut the traffic between these hosts on 2380" must catch connections the peers opened
    /// to the target's own 2380: the target's port is the local one.
    #[test]
    fn local_ports_match_the_targets_own_port() {
        let mut cut = rule(BOTH, Protocol::Tcp, &["10.0.0.0/8"], &[]);
        cut.local_ports = vec![(2380, 2380)];
        let rules = [
            rule(BOTH, Protocol::Tcp, &["10.0.0.0/8"], &[(2380, 2380)]),
            cut,
        ];
        let entries = lpm_entries(&rules).unwrap();
        let mut to_us = packet(DIR_INGRESS, PROTO_TCP, 40000, "10.1.2.3");
        to_us.local = 2380;
        assert_eq!(
            classify(&entries, to_us),
            Some(1),
            "a peer's connection to our 2380"
        );
        let mut from_us = packet(DIR_EGRESS, PROTO_TCP, 2380, "10.1.2.3");
        from_us.local = 40000;
        assert_eq!(
            classify(&entries, from_us),
            Some(0),
            "our connection to a peer's 2380"
        );
        let mut neither = packet(DIR_EGRESS, PROTO_TCP, 40001, "10.1.2.3");
        neither.local = 40000;
        assert_eq!(classify(&entries, neither), None);
    }
}
