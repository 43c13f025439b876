//! How a policy's network rules go on this host: decided, and refused where they cannot,
//! before anything is attached.

use std::collections::BTreeSet;

use super::{peer::Peer, DelayPath, Direction, TcMode};
use crate::{
    error::Error,
    plan::Options,
    policy::Policy,
    target::{self, Netns, Resolved},
};

pub struct NetPlan {
    pub tc: TcMode,
    pub directions: Vec<Direction>,
    /// How delays are held, when a rule delays or limits the rate.
    pub delay_path: Option<DelayPath>,
    /// Whether ingress rules delay, corrupt or duplicate (the far ends of the targets'
    /// veths get a program).
    pub at_peer: bool,
    /// The far ends of the targets' veths, for ingress delay.
    pub peers: Vec<Peer>,
    /// Warnings to show before applying.
    pub warnings: Vec<String>,
    /// Whether the egress program goes on loopback too.
    pub loopback: bool,
    /// Whether an egress rule drops for certain (a partition, 100 %): then the target
    /// cgroups also get the egress cgroup program, which covers a target's first packets in
    /// a namespace the TC program is not attached to yet.
    pub certain_egress_drop: bool,
}

impl NetPlan {
    pub fn build(policy: &Policy, resolved: &Resolved, options: &Options) -> Result<Self, Error> {
        let mut directions = Vec::new();
        if policy.rules.iter().any(|r| r.egress) {
            directions.push(Direction::Egress);
        }
        if policy.rules.iter().any(|r| r.ingress) {
            directions.push(Direction::Ingress);
        }
        // Delays and rates are departure times: fq holds packets until then where the kernel
        // has it, fault itself (crate::net::resend) where it does not.
        let timing = policy.rules.iter().any(|r| r.action.schedules());
        let at_peer = policy
            .rules
            .iter()
            .any(|r| r.ingress && at_far_end(&r.action));
        let mut warnings = Vec::new();
        let peers = match at_peer {
            true => find_peers(policy, resolved, &mut warnings)?,
            false => Vec::new(),
        };
        Ok(NetPlan {
            tc: TcMode::choose(options.tc_mode),
            directions,
            delay_path: timing.then(|| DelayPath::choose(options.delay_path)),
            at_peer,
            peers,
            warnings,
            loopback: crate::policy::wants_loopback(policy),
            certain_egress_drop: policy
                .rules
                .iter()
                .any(|r| r.egress && r.action.certain_drop()),
        })
    }

    /// Lines for the dry run.
    pub fn describe(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .delay_path
            .iter()
            .map(|p| format!("delay: {}", p.describe()))
            .collect();
        lines.extend(self.peers.iter().map(|p| {
            format!(
                "ingress delay: at {} (netns {}), the far end of {} in the target's namespace {}",
                p.ifname, p.netns.inode, p.target_ifname, p.target_netns
            )
        }));
        lines.extend(self.warnings.iter().map(|w| format!("warning: {w}")));
        lines
    }

    /// Where fq goes: every interface of `netns`, and the far end of each of `peers`.
    pub fn fq_places(netns: &[Netns], peers: &[Peer]) -> Vec<(Netns, Option<String>)> {
        let mut on: Vec<_> = netns.iter().map(|n| (n.clone(), None)).collect();
        on.extend(
            peers
                .iter()
                .map(|p| (p.netns.clone(), Some(p.ifname.clone()))),
        );
        on
    }
}

/// Whether an ingress rule does something only the far end of the target's veth can:
/// hold packets (delay, rate, reorder), rewrite them or send them twice.
fn at_far_end(action: &fault_common::NetRule) -> bool {
    action.schedules() || action.corrupt_p > 0 || action.dup_p > 0
}

/// The far ends of the targets' veths, for ingress delay. A target in fault's own network
/// namespace (the host's) cannot have it: the far end of a host veth carries other traffic.
/// The same holds for ingress corruption and duplication, which happen there too.
fn find_peers(
    policy: &Policy,
    resolved: &Resolved,
    warnings: &mut Vec<String>,
) -> Result<Vec<Peer>, Error> {
    let refused = |reason: String| Error::Refused {
        file: policy.file.clone(),
        reason,
    };
    let own = Netns::of_pid(std::process::id())
        .map_err(|e| refused(format!("cannot read fault's own network namespace: {e}")))?;
    for t in &resolved.targets {
        let shares = resolved
            .netns
            .iter()
            .any(|n| n.inode == own.inode && target::scan(std::slice::from_ref(t)).1.contains(n));
        if shares {
            return Err(refused(format!(
                "target {} has processes in the host's network namespace; ingress delay, \
                 rate, reorder, corrupt and duplicate need a target in a network namespace of \
                 its own (a container, a pod), because they act at the far end of its veth",
                t.label
            )));
        }
    }
    // No process yet: the namespace fault stands in with is its own, whose veths lead to
    // others; the far ends are found when a target's namespace appears.
    if resolved.empty {
        return Ok(Vec::new());
    }
    warnings.extend(shared_namespaces(resolved));
    super::peer::find(&resolved.netns).map_err(|e| refused(format!("ingress delay: {e:#}")))
}

/// Everything entering a target's namespace is delayed: a warning for each namespace that
/// processes outside the targets share.
fn shared_namespaces(resolved: &Resolved) -> Vec<String> {
    let targeted: BTreeSet<u32> = target::pids(&resolved.targets).into_iter().collect();
    let mut warnings = Vec::new();
    for ns in &resolved.netns {
        let others: Vec<u32> = target::netns_paths()
            .map(|(pid, _)| pid)
            .filter(|pid| *pid != 0 && !targeted.contains(pid))
            .filter(|pid| Netns::of_pid(*pid).is_ok_and(|n| n.inode == ns.inode))
            .collect();
        if let Some(pid) = others.first() {
            warnings.push(format!(
                "ingress delay holds everything entering network namespace {}, which {} \
                 process(es) outside the targets share (pid {pid} among them)",
                ns.inode,
                others.len()
            ));
        }
    }
    warnings
}
