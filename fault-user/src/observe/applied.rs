//! The `applied` event and the metrics' rule labels, from the plan.

use super::{
    event::{Applied, RuleInfo, StepInfo, TargetInfo},
    metrics::RuleLabels,
    steps::planned_spans,
};
use crate::{plan::Plan, policy::Policy};

/// What runs, for the first event of the timeline.
pub fn applied(plan: &Plan) -> Applied {
    let p = &plan.policy;
    let text = std::fs::read_to_string(&p.file).unwrap_or_default();
    Applied {
        policy: p.name.clone(),
        kind: match p.is_experiment() {
            true => crate::policy::KIND_EXPERIMENT,
            false => crate::policy::KIND,
        }
        .into(),
        file: p.file.clone(),
        text,
        pid: std::process::id(),
        duration_s: p.duration.as_secs_f64(),
        targets: plan
            .resolved
            .targets
            .iter()
            .map(|t| TargetInfo {
                name: t.label.clone(),
                cgroup: t.cgroup.display().to_string(),
                group: group_of(p, t.class),
            })
            .collect(),
        rules: rule_labels(plan)
            .into_iter()
            .zip(&p.rules)
            .map(|(l, r)| RuleInfo {
                name: l.rule,
                summary: r.describe(),
                direction: l.direction,
                step: (!l.step.is_empty()).then_some(l.step),
                target: l.target,
            })
            .collect(),
        steps: p
            .steps
            .iter()
            .map(|s| StepInfo {
                name: s.name.clone(),
                summary: crate::plan::describe_step(s, p),
                kind: s.kind.name().into(),
                spans: planned_spans(&s.window, p.duration),
            })
            .collect(),
        probes: p.probes.iter().map(|r| r.name.clone()).collect(),
    }
}

fn group_of(p: &Policy, class: u8) -> Option<String> {
    let i = usize::from(class).checked_sub(1)?;
    p.groups.get(i).map(|g| g.name.clone())
}

/// The labels of each network rule's series, in counter order.
pub fn rule_labels(plan: &Plan) -> Vec<RuleLabels> {
    let p = &plan.policy;
    let everyone: Vec<&str> = plan
        .resolved
        .targets
        .iter()
        .map(|t| t.label.as_str())
        .collect();
    p.rules
        .iter()
        .map(|r| RuleLabels {
            rule: r.name.clone(),
            direction: match (r.egress, r.ingress) {
                (true, true) => "both",
                (false, true) => "ingress",
                _ => "egress",
            }
            .into(),
            step: r
                .step
                .and_then(|i| p.steps.get(i))
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            target: group_of(p, r.class).unwrap_or_else(|| everyone.join(", ")),
        })
        .collect()
}
