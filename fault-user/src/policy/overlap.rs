//! Steps that would give one target contradictory faults at the same time: two network
//! rules for the same packets (only the first would act, silently), two pauses of one group,
//! or two faults of one clock. Partitions overlap anything: a cut packet is gone whatever
//! else was meant for it.

use ipnet::IpNet;

use super::{Group, Invalid, Protocol, Rule, Step, StepKind};
use crate::timeline::Window;

pub(super) fn check(steps: &[Step], rules: &[Rule], groups: &[Group]) -> Result<(), Invalid> {
    for (i, a) in rules.iter().enumerate() {
        for b in &rules[i + 1..] {
            let (Some(sa), Some(sb)) = (a.step, b.step) else {
                continue;
            };
            if sa == sb || a.class != b.class || !overlap(&steps[sa].window, &steps[sb].window) {
                continue;
            }
            if same_packets(a, b) {
                let group = &groups[usize::from(a.class) - 1].name;
                return Err(clash(
                    steps,
                    sb,
                    sa,
                    &format!(
                    "rule {} and rule {} of step {:?} match the same packets of group {group:?} \
                     while both steps are on, and only the first would act",
                    b.name, a.name, steps[sa].name
                ),
                ));
            }
        }
    }
    for (i, a) in steps.iter().enumerate() {
        for (j, b) in steps.iter().enumerate().skip(i + 1) {
            if !overlap(&a.window, &b.window) {
                continue;
            }
            let Some(g) = a.groups.iter().find(|g| b.groups.contains(g)) else {
                continue;
            };
            let group = &groups[*g].name;
            let why = match (&a.kind, &b.kind) {
                (StepKind::Pause { .. }, StepKind::Pause { .. }) => Some(format!(
                    "it pauses group {group:?} while step {:?} does",
                    a.name
                )),
                (StepKind::Clock(x), StepKind::Clock(y)) => x
                    .iter()
                    .flat_map(|r| &r.clocks)
                    .find(|c| y.iter().any(|r| r.clocks.contains(c)))
                    .map(|c| {
                        format!(
                            "it faults clock {c} of group {group:?} while step {:?} does",
                            a.name
                        )
                    }),
                _ => None,
            };
            if let Some(why) = why {
                return Err(clash(steps, j, i, &why));
            }
        }
    }
    Ok(())
}

fn clash(steps: &[Step], later: usize, _earlier: usize, why: &str) -> Invalid {
    Invalid::new(
        format!("spec.steps[{later}]"),
        format!(
            "step {:?} contradicts an earlier one: {why}; move one in time or give it other targets",
            steps[later].name
        ),
    )
}

fn overlap(a: &Window, b: &Window) -> bool {
    a.at < b.end() && b.at < a.end()
}

/// Whether some packet matches both rules.
fn same_packets(a: &Rule, b: &Rule) -> bool {
    let direction = (a.egress && b.egress) || (a.ingress && b.ingress);
    direction
        && protocols_meet(a, b)
        && nets_meet(&a.cidrs, &b.cidrs)
        && ranges_meet(&a.ports, &b.ports)
        && ranges_meet(&a.local_ports, &b.local_ports)
}

fn protocols_meet(a: &Rule, b: &Rule) -> bool {
    let ported = |r: &Rule| !r.ports.is_empty() || !r.local_ports.is_empty();
    match (a.protocol, b.protocol) {
        (x, y) if x == y => true,
        (Protocol::Any, Protocol::Icmp) => !ported(a),
        (Protocol::Icmp, Protocol::Any) => !ported(b),
        (Protocol::Any, _) | (_, Protocol::Any) => true,
        _ => false,
    }
}

fn nets_meet(a: &[IpNet], b: &[IpNet]) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.iter().any(|x| {
            b.iter()
                .any(|y| x.contains(&y.network()) || y.contains(&x.network()))
        })
}

fn ranges_meet(a: &[(u16, u16)], b: &[(u16, u16)]) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.iter()
            .any(|&(x0, x1)| b.iter().any(|&(y0, y1)| x0 <= y1 && y0 <= x1))
}
