//! An experiment's groups on this host: each group's targets resolved (and marked with the
//! group's class), the addresses its network namespaces have, and its partitions turned into
//! drop rules matched by those addresses.

use std::{collections::BTreeSet, net::IpAddr};

use fault_common::{NetRule, DROP_BERNOULLI, PROB_ONE};
use ipnet::IpNet;

use crate::{
    error::Error,
    policy::{Cut, Group, Policy, Protocol, Rule, Step, StepKind},
    sys::netns::in_netns,
    target::{self, Resolved},
};

/// One group as found on the host.
pub struct Found {
    pub name: String,
    pub resolved: Resolved,
    /// The addresses of the group's own network namespaces (loopback and IPv6 link-local
    /// left out); empty when it has none of its own.
    pub addrs: Vec<IpAddr>,
}

/// Resolves every group; the merged result covers all of them, each target carrying its
/// group's class.
pub fn resolve(policy: &Policy) -> Result<(Resolved, Vec<Found>), Error> {
    let mut found = Vec::new();
    for (index, group) in policy.groups.iter().enumerate() {
        let mut resolved = target::resolve(&group.targets).map_err(|source| Error::Target {
            file: policy.file.clone(),
            source: source.in_group(&group.name),
        })?;
        for t in &mut resolved.targets {
            t.class = Group::class(index);
        }
        let addrs = match resolved.empty {
            true => Vec::new(),
            false => addresses(&resolved.netns),
        };
        found.push(Found {
            name: group.name.clone(),
            resolved,
            addrs,
        });
    }
    refuse_shared_cgroups(policy, &found)?;
    Ok((merge(&found), found))
}

/// Two groups may not hold the same cgroup: its packets can have one class only.
fn refuse_shared_cgroups(policy: &Policy, found: &[Found]) -> Result<(), Error> {
    for (i, a) in found.iter().enumerate() {
        for b in &found[i + 1..] {
            if let Some(t) = a.resolved.targets.iter().find(|t| {
                b.resolved
                    .targets
                    .iter()
                    .any(|u| u.cgroup_id == t.cgroup_id)
            }) {
                return Err(Error::Refused {
                    file: policy.file.clone(),
                    reason: format!(
                        "groups {} and {} both hold cgroup {}; a cgroup belongs to one group",
                        a.name,
                        b.name,
                        t.cgroup.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

fn merge(found: &[Found]) -> Resolved {
    let mut ids = BTreeSet::new();
    let mut netns = std::collections::BTreeMap::new();
    let mut targets = Vec::new();
    for f in found {
        targets.extend(f.resolved.targets.iter().cloned());
        ids.extend(f.resolved.cgroup_ids.iter().copied());
        if !f.resolved.empty {
            netns.extend(f.resolved.netns.iter().map(|n| (n.inode, n.clone())));
        }
    }
    let empty = netns.is_empty();
    if empty {
        // As for a policy: with no process anywhere yet, attach in our own namespace.
        if let Some(f) = found.first() {
            netns.extend(f.resolved.netns.iter().map(|n| (n.inode, n.clone())));
        }
    }
    Resolved {
        targets,
        cgroup_ids: ids.into_iter().collect(),
        netns: netns.into_values().collect(),
        empty,
    }
}

/// The addresses of the group's namespaces other than fault's own (a group whose
/// processes share the host's namespace has no addresses of its own).
fn addresses(netns: &[target::Netns]) -> Vec<IpAddr> {
    let own = target::Netns::of_pid(std::process::id())
        .map(|n| n.inode)
        .ok();
    let mut out = BTreeSet::new();
    for ns in netns.iter().filter(|n| Some(n.inode) != own) {
        if let Ok(addrs) = in_netns(ns, own_addresses) {
            out.extend(addrs);
        }
    }
    out.into_iter().collect()
}

fn own_addresses() -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if !ip.is_loopback() && !link_local {
            out.push(ip);
        }
    }
    Ok(out)
}

/// Reads a group's addresses again from the namespaces its processes are in now (a
/// container started again under its name may have new ones); true if they changed. A
/// group with no process, or none with an address, keeps the ones it had.
pub fn readdress(found: &mut Found) -> bool {
    let (_, netns) = target::scan(&found.resolved.targets);
    let addrs = addresses(&netns);
    if addrs.is_empty() || addrs == found.addrs {
        return false;
    }
    found.addrs = addrs;
    true
}

/// Compiles the partitions again from the groups' addresses now, into the cut rules
/// [`partition_rules`] put at the head of `policy.rules` (the same rules, in the same
/// order: only the addresses they match change).
pub fn recut(policy: &mut Policy, found: &[Found]) -> Result<(), Error> {
    let cuts = partition_rules(policy, found)?;
    for (rule, cut) in policy.rules.iter_mut().zip(cuts) {
        if rule.name == cut.name {
            rule.cidrs = cut.cidrs;
        }
    }
    Ok(())
}

/// The drop rules of every partition step, in step order. They go before the network steps'
/// rules, so that a cut packet is cut whatever else a step meant for it.
pub fn partition_rules(policy: &Policy, found: &[Found]) -> Result<Vec<Rule>, Error> {
    let mut rules = Vec::new();
    for (index, step) in policy.steps.iter().enumerate() {
        let StepKind::Partition(cuts) = &step.kind else {
            continue;
        };
        for c in cuts {
            for g in [c.from, c.to] {
                if found[g].addrs.is_empty() {
                    return Err(Error::Refused {
                        file: policy.file.clone(),
                        reason: format!(
                            "step {}: group {} has no addresses of its own to cut by (its \
                             processes are in fault's own network namespace, or there are none \
                             yet); a partition needs groups with network namespaces of their own",
                            step.name, found[g].name
                        ),
                    });
                }
            }
        }
        rules.extend(step_rules(index, step, cuts, found));
    }
    Ok(rules)
}

/// Per group of the step: one egress rule towards the groups it may not reach, and one
/// ingress rule from the groups that may not reach it.
fn step_rules(index: usize, step: &Step, cuts: &[Cut], found: &[Found]) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (g, group) in found.iter().enumerate() {
        let to: Vec<usize> = cuts.iter().filter(|c| c.from == g).map(|c| c.to).collect();
        let from: Vec<usize> = cuts.iter().filter(|c| c.to == g).map(|c| c.from).collect();
        for (peers, egress, dir) in [(to, true, "to"), (from, false, "from")] {
            if peers.is_empty() {
                continue;
            }
            let cidrs: Vec<IpNet> = peers
                .iter()
                .flat_map(|&p| &found[p].addrs)
                .map(|&a| IpNet::from(a))
                .collect();
            let names: Vec<&str> = peers.iter().map(|&p| found[p].name.as_str()).collect();
            rules.push(Rule {
                name: format!("{}/cut-{dir}-{}@{}", step.name, names.join("+"), group.name),
                egress,
                ingress: !egress,
                cidrs,
                class: Group::class(g),
                window: Some(step.window),
                step: Some(index),
                ..cut_rule()
            });
        }
    }
    rules
}

/// A certain drop of any protocol; the caller says whose, which way and to whom.
fn cut_rule() -> Rule {
    Rule {
        name: String::new(),
        egress: false,
        ingress: false,
        protocol: Protocol::Any,
        cidrs: Vec::new(),
        ports: Vec::new(),
        local_ports: Vec::new(),
        loopback: false,
        action: NetRule {
            drop_model: DROP_BERNOULLI,
            drop_p: PROB_ONE,
            ..NetRule::default()
        },
        class: 0,
        window: None,
        ramp: None,
        step: None,
    }
}

/// One line per group, for `--dry-run` and the banner.
pub fn describe(found: &[Found]) -> Vec<String> {
    found
        .iter()
        .map(|f| {
            let addrs: Vec<String> = f.addrs.iter().map(ToString::to_string).collect();
            format!(
                "group {} (class {}): {} target(s), {} cgroup id(s), addresses {}",
                f.name,
                f.resolved.targets.first().map_or(0, |t| t.class),
                f.resolved.targets.len(),
                f.resolved.cgroup_ids.len(),
                match addrs.is_empty() {
                    true => "none of its own".to_owned(),
                    false => addrs.join(" "),
                }
            )
        })
        .collect()
}
