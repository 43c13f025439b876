//! Targets that come back somewhere else. A container removed and started again under the
//! same name (`podman rm -f db; podman run --name db ...`, a unit's container recreated)
//! has a new id, so a new cgroup and a new network namespace: the run looks a container
//! target up again by its name while its cgroup is gone, and follows it to the new one.
//! The kinds then cover it as they cover processes that join a target (see
//! [`crate::engine::Fault::follow`]); the event log tells it as the target leaving and
//! joining again, under its new cgroup.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{plan::Plan, policy::TargetSpec, target::ResolvedTarget};

/// A container is looked up at most this often while it is gone (each look asks podman).
const RETRY: Duration = Duration::from_secs(1);

/// A target found again under another cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub label: String,
    pub from: PathBuf,
    pub to: PathBuf,
}

#[derive(Default)]
pub struct Churn {
    /// When each gone container (by label) was last looked up.
    tried: BTreeMap<String, Instant>,
    /// When the pod targets were last looked up (all at once: one CRI query each).
    pods_at: Option<Instant>,
}

impl Churn {
    /// Looks up again each container target whose cgroup is gone (once a [`RETRY`] each),
    /// and moves the plan's targets, groups included, to where each is now. A cgroup the
    /// blast-radius guards refuse is not followed.
    pub fn follow(&mut self, plan: &mut Plan) -> Vec<Move> {
        let now = Instant::now();
        let mut found = Vec::new();
        for t in &plan.resolved.targets {
            if t.container.is_none() || t.cgroup.exists() {
                self.tried.remove(&t.label);
                continue;
            }
            if self.tried.get(&t.label).is_some_and(|at| now - *at < RETRY) {
                continue;
            }
            self.tried.insert(t.label.clone(), now);
            found.extend(look_up(plan, t));
        }
        if self.pods_at.is_none_or(|at| now - at >= RETRY) {
            self.pods_at = Some(now);
            found.extend(follow_pods(plan));
        }
        for m in &found {
            apply(plan, m);
        }
        if !found.is_empty() {
            readdress(plan);
        }
        found.into_iter().map(|(m, _)| m).collect()
    }
}

/// An experiment's groups read their addresses again after a move; where any changed,
/// the partitions cut by the new ones (the far end's rules too: a peer's egress towards the
/// moved group).
fn readdress(plan: &mut Plan) {
    let mut changed = false;
    for g in plan.groups.iter_mut() {
        if crate::groups::readdress(g) {
            let addrs: Vec<String> = g.addrs.iter().map(ToString::to_string).collect();
            println!(
                "fault: group {} has the addresses {} now; its partitions cut by them",
                g.name,
                addrs.join(" ")
            );
            changed = true;
        }
    }
    if changed {
        if let Err(e) = crate::groups::recut(&mut plan.policy, &plan.groups) {
            eprintln!("fault: warning: the partitions keep the old addresses: {e}");
        }
    }
}

/// Asks the CRI again for every `pod:` and `pods:` target: a pod of a known name under
/// another cgroup (deleted and created again) is a move; a pod not seen before (started,
/// or a replacement under a new name) joins the run, or its group, as a target of its own.
fn follow_pods(plan: &mut Plan) -> Vec<(Move, u64)> {
    let groups = plan.policy.groups.iter().enumerate();
    let selectors: Vec<(Option<usize>, crate::cri::PodSelector)> =
        std::iter::once((None, &plan.policy.targets))
            .chain(groups.map(|(i, g)| (Some(i), &g.targets)))
            .flat_map(|(group, specs)| {
                specs.iter().filter_map(move |s| match s {
                    TargetSpec::Pod(sel) => Some((group, sel.clone())),
                    _ => None,
                })
            })
            .collect();
    // Most runs have no pod target: they neither read the mounts nor ask the CRI.
    if selectors.is_empty() {
        return Vec::new();
    }
    let Ok(mount) = crate::sys::mounts::cgroup2_mount() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (group, sel) in selectors {
        let found = match crate::target::pod_cgroups(&mount, &sel) {
            Ok(f) => f,
            Err((why, _)) => {
                eprintln!("fault: warning: looking up pods: {why}");
                continue;
            }
        };
        for (label, cgroup, id) in found {
            out.extend(pod_change(plan, group, label, cgroup, id));
        }
    }
    out
}

/// What a pod found now changes: nothing, a move, or a new target (added here).
fn pod_change(
    plan: &mut Plan,
    group: Option<usize>,
    label: String,
    cgroup: PathBuf,
    id: u64,
) -> Option<(Move, u64)> {
    let known = plan.resolved.targets.iter().find(|t| t.label == label);
    if known.is_some_and(|t| t.cgroup == cgroup) {
        return None;
    }
    let class = group.map_or(0, crate::policy::Group::class);
    let target = ResolvedTarget {
        label: label.clone(),
        cgroup: cgroup.clone(),
        cgroup_id: id,
        class,
        container: None,
    };
    if let Err(e) = crate::guard::check_targets(&plan.policy, std::slice::from_ref(&target)) {
        eprintln!("fault: warning: not following {label}: {e}");
        return None;
    }
    let from = match known {
        Some(t) => t.cgroup.clone(),
        None => {
            plan.resolved.targets.push(target.clone());
            if let Some(g) = group.and_then(|i| plan.groups.get_mut(i)) {
                g.resolved.targets.push(target);
            }
            PathBuf::new()
        }
    };
    Some((
        Move {
            label,
            from,
            to: cgroup,
        },
        id,
    ))
}

/// Where `t` is now, if it is running again under another cgroup that may be faulted.
fn look_up(plan: &Plan, t: &ResolvedTarget) -> Option<(Move, u64)> {
    let (to, id) = match crate::target::relocate(t) {
        Ok(found) => found?,
        Err(_) => return None, // not running again yet
    };
    if to == t.cgroup {
        return None;
    }
    let moved = ResolvedTarget {
        cgroup: to.clone(),
        cgroup_id: id,
        ..t.clone()
    };
    if let Err(e) = crate::guard::check_targets(&plan.policy, std::slice::from_ref(&moved)) {
        eprintln!("fault: warning: not following {}: {e}", t.label);
        return None;
    }
    Some((
        Move {
            label: t.label.clone(),
            from: t.cgroup.clone(),
            to,
        },
        id,
    ))
}

/// Points every target of the plan that `m` names (in the run and in its groups) at the
/// new cgroup.
fn apply(plan: &mut Plan, (m, id): &(Move, u64)) {
    let groups = plan.groups.iter_mut().map(|g| &mut g.resolved.targets);
    for targets in std::iter::once(&mut plan.resolved.targets).chain(groups) {
        for t in targets
            .iter_mut()
            .filter(|t| t.label == m.label && t.cgroup == m.from)
        {
            t.cgroup = m.to.clone();
            t.cgroup_id = *id;
        }
    }
    if !plan.resolved.cgroup_ids.contains(id) {
        plan.resolved.cgroup_ids.push(*id);
    }
}
