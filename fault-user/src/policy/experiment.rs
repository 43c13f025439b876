//! From the experiment document to a checked [`Policy`]: groups become classes, network
//! steps become rules with a window (and a ramp), partitions become cuts between groups,
//! and every reference (a group, a probe) is checked to exist.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use super::document::{ClockRule as RawClockRule, NetworkRule, Probability, Target};
use super::experiment_document::{self as doc, ExperimentDocument};
use super::validate::{self, clock_rule, policy_name, rule, rule_name, target, threshold};
use super::{
    overlap, partition, AbortWhen, Group, Invalid, Policy, ProbeRule, Rule, Step, StepKind,
    TargetSpec,
};
use crate::{
    probe::Check,
    timeline::{Flap, Window},
};

/// The most groups an experiment may name: each is a class in the programs' lookup key.
pub const MAX_GROUPS: usize = 32;
/// The most steps: each switch is a handful of map updates, but a timeline of thousands is
/// a script, not a game day.
const MAX_STEPS: usize = 256;

pub(super) fn experiment(document: ExperimentDocument, file: &Path) -> Result<Policy, Invalid> {
    let name = policy_name(&document.metadata.name)?;
    let spec = document.spec;
    let duration = validate::duration(&spec.duration.0)?;
    let groups = groups(spec.groups)?;
    let probes = probes(spec.probes, &groups)?;
    let aborts = aborts(spec.abort_when, &probes)?;
    if spec.steps.is_empty() {
        return Err(Invalid::new("spec.steps", "expected at least one step"));
    }
    if spec.steps.len() > MAX_STEPS {
        return Err(Invalid::new(
            "spec.steps",
            format!(
                "expected at most {MAX_STEPS} steps, got {}",
                spec.steps.len()
            ),
        ));
    }
    let mut steps = Vec::new();
    let mut rules = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (index, raw) in spec.steps.into_iter().enumerate() {
        let path = format!("spec.steps[{index}]");
        let step = step(raw, index, &path, duration, &groups, &mut rules)?;
        if let Some(first) = names.insert(step.name.clone(), index) {
            return Err(Invalid::new(
                format!("{path}.name"),
                format!(
                    "step name {:?} is already used by spec.steps[{first}]; names must be unique",
                    step.name
                ),
            ));
        }
        steps.push(step);
    }
    overlap::check(&steps, &rules, &groups)?;
    Ok(Policy {
        file: file.to_owned(),
        name,
        duration,
        targets: groups.iter().flat_map(|g| g.targets.clone()).collect(),
        rules,
        clock: Vec::new(),
        seed: spec.seed,
        allow_host_wide: spec.allow_host_wide,
        groups,
        steps,
        probes,
        aborts,
    })
}

fn groups(raw: BTreeMap<String, Vec<Target>>) -> Result<Vec<Group>, Invalid> {
    if raw.is_empty() {
        return Err(Invalid::new("spec.groups", "expected at least one group"));
    }
    if raw.len() > MAX_GROUPS {
        return Err(Invalid::new(
            "spec.groups",
            format!("expected at most {MAX_GROUPS} groups, got {}", raw.len()),
        ));
    }
    let mut groups: Vec<Group> = Vec::new();
    // Target -> the group that has it: a target in two groups would need two classes.
    let mut owners: HashMap<TargetSpec, String> = HashMap::new();
    for (name, targets) in raw {
        let path = format!("spec.groups.{name}");
        rule_name(&name, &path)?;
        if targets.is_empty() {
            return Err(Invalid::new(path, "expected at least one target"));
        }
        let mut checked = Vec::new();
        for (i, t) in targets.into_iter().enumerate() {
            let spec = target(t, &format!("{path}[{i}]"))?;
            if let Some(other) = owners.insert(spec.clone(), name.clone()) {
                return Err(Invalid::new(
                    format!("{path}[{i}]"),
                    format!(
                        "this target is already in group {other:?}; a target belongs to one \
                         group (name a group per side and list both in a step instead)"
                    ),
                ));
            }
            checked.push(spec);
        }
        groups.push(Group {
            name,
            targets: checked,
        });
    }
    Ok(groups)
}

/// The index of group `name`, or an error at `path` listing the groups there are.
pub(super) fn group_index(groups: &[Group], name: &str, path: &str) -> Result<usize, Invalid> {
    groups.iter().position(|g| g.name == name).ok_or_else(|| {
        let known: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        Invalid::new(
            path,
            format!(
                "no group is named {name:?}; spec.groups has {}",
                known.join(", ")
            ),
        )
    })
}

/// A duration that may be zero (a step's `at`).
fn offset(text: &str, path: &str) -> Result<Duration, Invalid> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        Invalid::new(
            path,
            format!("expected a duration like 0s, 500ms, 30s or 2m, got {text:?} ({err})"),
        )
    })
}

/// A duration above zero.
fn positive(text: &str, path: &str) -> Result<Duration, Invalid> {
    match offset(text, path)? {
        d if d.is_zero() => Err(Invalid::new(path, "expected a duration longer than zero")),
        d => Ok(d),
    }
}

fn step(
    raw: doc::Step,
    index: usize,
    path: &str,
    duration: Duration,
    groups: &[Group],
    rules: &mut Vec<Rule>,
) -> Result<Step, Invalid> {
    let name = rule_name(&raw.name, &format!("{path}.name"))?;
    let window = window(&raw, path, duration)?;
    let kinds = [
        raw.network.is_some(),
        raw.partition.is_some(),
        raw.clock.is_some(),
        raw.pause.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(Invalid::new(
            path,
            "expected exactly one of network, partition, clock or pause (a step does one \
             thing; overlap steps to do several at once)",
        ));
    }
    let targets = match (&raw.targets, raw.partition.is_some()) {
        (Some(_), true) => {
            return Err(Invalid::new(
                format!("{path}.targets"),
                "a partition names its groups itself; remove targets",
            ))
        }
        (None, false) => {
            return Err(Invalid::new(
                path,
                "expected targets: the group (or list of groups) the step applies to",
            ))
        }
        (None, true) => Vec::new(),
        (Some(names), false) => step_targets(&names.0, groups, &format!("{path}.targets"))?,
    };
    let kind = if let Some(p) = raw.partition {
        StepKind::Partition(partition::cuts(&p, groups, &format!("{path}.partition"))?)
    } else if let Some(p) = raw.pause {
        pause(&p, &window, path)?
    } else if let Some(c) = raw.clock {
        clock(c, path, window.len)?
    } else {
        let network = raw.network.unwrap_or_default();
        network_rules(network, index, &name, &targets, window, path, groups, rules)?;
        StepKind::Network
    };
    Ok(Step {
        name,
        window,
        groups: targets,
        kind,
    })
}

fn step_targets(names: &[String], groups: &[Group], path: &str) -> Result<Vec<usize>, Invalid> {
    if names.is_empty() {
        return Err(Invalid::new(path, "expected at least one group"));
    }
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let g = group_index(groups, n, &format!("{path}[{i}]"))?;
        if !out.contains(&g) {
            out.push(g);
        }
    }
    Ok(out)
}

fn window(raw: &doc::Step, path: &str, duration: Duration) -> Result<Window, Invalid> {
    let at = offset(&raw.at.0, &format!("{path}.at"))?;
    let len = positive(&raw.len.0, &format!("{path}.for"))?;
    if at + len > duration {
        return Err(Invalid::new(
            path,
            format!(
                "the step runs from {} to {}, past spec.duration ({}); every step must end \
                 within the experiment",
                humantime::format_duration(at),
                humantime::format_duration(at + len),
                humantime::format_duration(duration)
            ),
        ));
    }
    let flap = match &raw.flap {
        None => None,
        Some(f) if raw.pause.is_some() => {
            let _ = f;
            return Err(Invalid::new(
                format!("{path}.flap"),
                "a pause has its own rhythm (for, every); remove flap",
            ));
        }
        Some(f) => Some(Flap {
            on: positive(&f.on.0, &format!("{path}.flap.on"))?,
            off: positive(&f.off.0, &format!("{path}.flap.off"))?,
        }),
    };
    Ok(Window { at, len, flap })
}

fn pause(raw: &doc::Pause, window: &Window, path: &str) -> Result<StepKind, Invalid> {
    let freeze = positive(&raw.freeze.0, &format!("{path}.pause.for"))?;
    let every = positive(&raw.every.0, &format!("{path}.pause.every"))?;
    if freeze > every {
        return Err(Invalid::new(
            format!("{path}.pause.for"),
            format!(
                "expected a pause no longer than its period (every: {}), got {}",
                humantime::format_duration(every),
                humantime::format_duration(freeze)
            ),
        ));
    }
    if freeze > window.len {
        return Err(Invalid::new(
            format!("{path}.pause.for"),
            "expected a pause no longer than the step",
        ));
    }
    Ok(StepKind::Pause { freeze, every })
}

fn clock(raw: Vec<RawClockRule>, path: &str, len: Duration) -> Result<StepKind, Invalid> {
    if raw.is_empty() {
        return Err(Invalid::new(
            format!("{path}.clock"),
            "expected at least one clock rule",
        ));
    }
    let mut out: Vec<super::ClockRule> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let rule = clock_rule(r, i, &format!("{path}.clock[{i}]"), len)?;
        if let Some(c) = rule
            .clocks
            .iter()
            .find(|c| out.iter().any(|o| o.clocks.contains(c)))
        {
            return Err(Invalid::new(
                format!("{path}.clock[{i}]"),
                format!("clock {c} is already faulted by an earlier rule of this step"),
            ));
        }
        out.push(rule);
    }
    Ok(StepKind::Clock(out))
}

/// The step's rules, one per rule and target group (a group is a class of its own), named
/// `step/rule` (and `@group` when the step has several).
#[allow(clippy::too_many_arguments)]
fn network_rules(
    raw: Vec<NetworkRule>,
    step: usize,
    step_name: &str,
    targets: &[usize],
    window: Window,
    path: &str,
    groups: &[Group],
    rules: &mut Vec<Rule>,
) -> Result<(), Invalid> {
    if raw.is_empty() {
        return Err(Invalid::new(
            format!("{path}.network"),
            "expected at least one network rule",
        ));
    }
    for (i, mut r) in raw.into_iter().enumerate() {
        let rpath = format!("{path}.network[{i}]");
        let ramp = take_ramp(&mut r, &rpath)?;
        let checked = rule(r, i, &rpath)?;
        for &g in targets {
            let mut one = checked.clone();
            one.name = match targets.len() {
                1 => format!("{step_name}/{}", checked.name),
                _ => format!("{step_name}/{}@{}", checked.name, groups[g].name),
            };
            one.class = Group::class(g);
            one.window = Some(window);
            one.ramp = ramp;
            one.step = Some(step);
            rules.push(one);
        }
    }
    Ok(())
}

/// Replaces a ramped drop probability by its start and returns (from, to) as thresholds.
fn take_ramp(raw: &mut NetworkRule, path: &str) -> Result<Option<(u64, u64)>, Invalid> {
    let Some(drop) = raw.drop.as_mut() else {
        return Ok(None);
    };
    let Some(Probability::Ramp(ramp)) = drop.probability.clone() else {
        return Ok(None);
    };
    if drop.correlation.is_some() {
        return Err(Invalid::new(
            format!("{path}.drop.correlation"),
            "a ramped drop takes no correlation",
        ));
    }
    let from = threshold(&ramp.from, &format!("{path}.drop.probability.from"))?;
    let to = threshold(&ramp.to, &format!("{path}.drop.probability.to"))?;
    drop.probability = Some(ramp.from.clone());
    Ok(Some((from, to)))
}

fn probes(raw: Vec<doc::Probe>, groups: &[Group]) -> Result<Vec<ProbeRule>, Invalid> {
    let mut out: Vec<ProbeRule> = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let path = format!("spec.probes[{i}]");
        let name = rule_name(&p.name, &format!("{path}.name"))?;
        if out.iter().any(|o| o.name == name) {
            return Err(Invalid::new(
                format!("{path}.name"),
                format!("probe name {name:?} is used twice; names must be unique"),
            ));
        }
        let check = probe_check(&p, &path)?;
        let from = match &p.from {
            Some(g) => Some(group_index(groups, g, &format!("{path}.from"))?),
            None => None,
        };
        let every = positive(&p.every.0, &format!("{path}.every"))?;
        let Some(timeout) = &p.timeout else {
            return Err(Invalid::new(
                path,
                "expected a timeout (like timeout: 500ms): a probe without one could wait forever",
            ));
        };
        let timeout = positive(&timeout.0, &format!("{path}.timeout"))?;
        if timeout > every {
            return Err(Invalid::new(
                format!("{path}.timeout"),
                "expected a timeout no longer than every (a probe runs one check at a time)",
            ));
        }
        out.push(ProbeRule {
            name,
            check,
            from,
            every,
            timeout,
        });
    }
    Ok(out)
}

fn probe_check(p: &doc::Probe, path: &str) -> Result<Check, Invalid> {
    match (&p.tcp, &p.http, &p.exec) {
        (Some(addr), None, None) => addr.trim().parse().map(Check::Tcp).map_err(|_| {
            Invalid::new(
                format!("{path}.tcp"),
                format!(
                    "expected an address and port like 10.0.0.5:5432 or [fd00::5]:80, got {addr:?}"
                ),
            )
        }),
        (None, Some(h), None) => {
            if !h.url.starts_with("http://") {
                return Err(Invalid::new(
                    format!("{path}.http.url"),
                    format!(
                        "expected an http:// URL (https is not supported), got {:?}",
                        h.url
                    ),
                ));
            }
            Ok(Check::Http {
                url: h.url.clone(),
                status: h.status.unwrap_or(200),
            })
        }
        (None, None, Some(cmd)) if !cmd.is_empty() => Ok(Check::Exec(cmd.clone())),
        (None, None, Some(_)) => Err(Invalid::new(
            format!("{path}.exec"),
            "expected a command and its arguments, like [pg_isready, -h, 10.0.0.5]",
        )),
        _ => Err(Invalid::new(
            path,
            "expected exactly one of tcp, http or exec",
        )),
    }
}

fn aborts(raw: Vec<doc::AbortWhen>, probes: &[ProbeRule]) -> Result<Vec<AbortWhen>, Invalid> {
    let mut out = Vec::new();
    for (i, a) in raw.into_iter().enumerate() {
        let path = format!("spec.abort_when[{i}]");
        if !probes.iter().any(|p| p.name == a.probe) {
            return Err(Invalid::new(
                format!("{path}.probe"),
                format!("no probe is named {:?}", a.probe),
            ));
        }
        let rule = match (a.failures, &a.failure_ratio, &a.window) {
            (Some(0), None, None) => {
                return Err(Invalid::new(
                    format!("{path}.failures"),
                    "expected at least 1 failure",
                ))
            }
            (Some(failures), None, None) => AbortWhen::Consecutive {
                probe: a.probe,
                failures,
            },
            (None, Some(ratio), Some(window)) => {
                let t = threshold(ratio, &format!("{path}.failure_ratio"))?;
                AbortWhen::Ratio {
                    probe: a.probe,
                    ratio: t as f64 / fault_common::PROB_ONE as f64,
                    window: positive(&window.0, &format!("{path}.window"))?,
                }
            }
            _ => {
                return Err(Invalid::new(
                    path,
                    "expected either failures (consecutive) or failure_ratio with window",
                ))
            }
        };
        out.push(rule);
    }
    Ok(out)
}
