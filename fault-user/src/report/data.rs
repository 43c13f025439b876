//! From event records to what the page draws: seconds on the run's timeline, step bars,
//! counter rates, probe latencies and the moments worth marking.
//!
//! Nothing here draws or formats HTML; `charts` and `page` take a [`Run`] as it is.

use crate::observe::event::{
    Applied, Event, ProbeCounts, Reason, Record, RuleCounts, RuleInfo, Sample, TargetInfo,
};

/// A run, as the page shows it.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// The `applied` event, when the run got that far.
    pub applied: Option<Applied>,
    /// Wall time of the timeline's zero (the `applied` event, else the first record).
    pub start_wall: String,
    /// Seconds from zero to the last record.
    pub last_s: f64,
    /// The `reverted` event, when the log has one.
    pub end: Option<End>,
    /// One bar per step (or one for a whole policy), in the order they were planned.
    pub bars: Vec<StepBar>,
    /// Per rule and counter, the rates that are non-zero somewhere.
    pub rates: Vec<Series>,
    /// One entry per probe, in the order `applied` names them.
    pub probes: Vec<ProbeSeries>,
    /// When a stop condition was met.
    pub abort: Option<Abort>,
    /// The counters at the end (the `reverted` event's, else the last sample's).
    pub final_rules: Vec<RuleCounts>,
    pub final_probes: Vec<ProbeCounts>,
    /// Every other event worth a line in the page's log, in order.
    pub notes: Vec<Note>,
}

/// How the run ended.
#[derive(Debug, Clone)]
pub struct End {
    pub at_s: f64,
    pub reason: Reason,
    pub detail: String,
}

/// A step's planned windows and the periods it was actually on, in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct StepBar {
    pub name: String,
    pub planned: Vec<(f64, f64)>,
    pub actual: Vec<(f64, f64)>,
}

/// A named line of `(seconds, value)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A probe's latency over time and when it failed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProbeSeries {
    pub name: String,
    /// `(seconds, latency in ms)` of each sample that carries one.
    pub latency: Vec<(f64, f64)>,
    /// `(seconds, latency in ms)` where checks failed: a sample whose failed count grew, or a
    /// `probe_changed` to failing.
    pub failures: Vec<(f64, f64)>,
    /// `[from, to]` periods between a change to failing and the change back (or the end).
    pub failing: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Abort {
    pub at_s: f64,
    pub probe: String,
    pub why: String,
}

/// One line of the page's event log.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub at_s: f64,
    /// The event's type, as the log spells it.
    pub kind: &'static str,
    pub text: String,
}

/// Reads one counter of a rule.
type Counter = fn(&RuleCounts) -> u64;

/// The counters a rule has, with how the page names their rates.
const COUNTERS: [(&str, Counter); 5] = [
    ("seen/s", |c| c.seen),
    ("dropped/s", |c| c.dropped),
    ("corrupted/s", |c| c.corrupted),
    ("duplicated/s", |c| c.duplicated),
    ("delayed/s", |c| c.delayed),
];

impl Run {
    /// Reads the records in the order they were written (the log's order is the run's).
    pub fn from_records(records: &[Record]) -> Run {
        let zero_ns = records
            .iter()
            .find(|r| matches!(r.event, Event::Applied(_)))
            .or(records.first())
            .map_or(0, |r| r.mono_ns);
        // Signed: a record written before `applied` sits left of zero.
        let at = |r: &Record| (i128::from(r.mono_ns) - i128::from(zero_ns)) as f64 / 1e9;
        let mut run = Run {
            last_s: records.iter().map(at).fold(0.0, f64::max),
            ..Run::default()
        };
        let mut samples: Vec<(f64, &Sample)> = Vec::new();
        let mut steps: Vec<(f64, &str, bool)> = Vec::new();
        let mut changes: Vec<(f64, &str, bool, f64)> = Vec::new();
        let mut end_sample = None;
        for r in records {
            let t = at(r);
            match &r.event {
                Event::Applied(a) if run.applied.is_none() => {
                    run.applied = Some((**a).clone());
                    run.start_wall = r.wall.clone();
                }
                Event::Sample(s) => samples.push((t, s)),
                Event::StepOn { step } => steps.push((t, step, true)),
                Event::StepOff { step } => steps.push((t, step, false)),
                Event::ProbeChanged {
                    probe,
                    ok,
                    latency_ms,
                    ..
                } => changes.push((t, probe, *ok, *latency_ms)),
                Event::Abort { probe, why } if run.abort.is_none() => {
                    run.abort = Some(Abort {
                        at_s: t,
                        probe: probe.clone(),
                        why: why.clone(),
                    });
                }
                Event::Reverted {
                    reason,
                    detail,
                    rules,
                    probes,
                } => {
                    run.end = Some(End {
                        at_s: t,
                        reason: *reason,
                        detail: detail.clone(),
                    });
                    end_sample = Some((
                        t,
                        Sample {
                            rules: rules.clone(),
                            probes: probes.clone(),
                            ..Sample::default()
                        },
                    ));
                }
                _ => {}
            }
            if let Some(note) = note(t, &r.event) {
                run.notes.push(note);
            }
        }
        if run.start_wall.is_empty() {
            run.start_wall = records.first().map(|r| r.wall.clone()).unwrap_or_default();
        }
        let stop_s = run.end.as_ref().map_or(run.last_s, |e| e.at_s);
        if let Some((t, s)) = &end_sample {
            samples.push((*t, s));
        }
        run.bars = step_bars(run.applied.as_ref(), &steps, stop_s);
        run.rates = rates(&samples);
        run.probes = probe_series(run.applied.as_ref(), &samples, &changes, stop_s);
        if let Some((_, last)) = samples.last() {
            run.final_rules = last.rules.clone();
            run.final_probes = last.probes.clone();
        }
        run
    }

    /// The timeline's right edge: the last record, the planned duration or the last planned
    /// window, whichever is latest (at least one second, so an axis has a width).
    pub fn span_s(&self) -> f64 {
        let planned = self.applied.as_ref().map_or(0.0, |a| a.duration_s);
        let windows = self
            .bars
            .iter()
            .flat_map(|b| b.planned.iter().chain(&b.actual))
            .map(|w| w.1)
            .fold(0.0, f64::max);
        self.last_s.max(planned).max(windows).max(1.0)
    }

    /// The rule `name` as `applied` describes it.
    pub fn rule(&self, name: &str) -> Option<&RuleInfo> {
        self.applied
            .as_ref()
            .and_then(|a| a.rules.iter().find(|r| r.name == name))
    }

    pub fn targets(&self) -> &[TargetInfo] {
        self.applied.as_ref().map_or(&[], |a| &a.targets)
    }
}

/// Each step's planned spans and its on-periods from `step_on`/`step_off` (a step still on
/// at the end is closed at `stop_s`). A policy without steps gets one bar, "policy", planned
/// for its duration and on from zero to the end.
fn step_bars(
    applied: Option<&Applied>,
    switches: &[(f64, &str, bool)],
    stop_s: f64,
) -> Vec<StepBar> {
    let Some(applied) = applied else {
        return Vec::new();
    };
    if applied.steps.is_empty() {
        return vec![StepBar {
            name: "policy".into(),
            planned: vec![(0.0, applied.duration_s)],
            actual: vec![(0.0, stop_s)],
        }];
    }
    let mut bars: Vec<StepBar> = applied
        .steps
        .iter()
        .map(|s| StepBar {
            name: s.name.clone(),
            planned: s.spans.iter().map(|w| (w[0], w[1])).collect(),
            actual: Vec::new(),
        })
        .collect();
    let mut on_since: Vec<Option<f64>> = vec![None; bars.len()];
    for &(t, step, on) in switches {
        let Some(i) = bars.iter().position(|b| b.name == step) else {
            continue;
        };
        match (on, on_since[i]) {
            (true, None) => on_since[i] = Some(t),
            (false, Some(from)) => {
                bars[i].actual.push((from, t));
                on_since[i] = None;
            }
            // A repeated on keeps the first; an off without an on has nothing to close.
            _ => {}
        }
    }
    for (bar, since) in bars.iter_mut().zip(on_since) {
        if let Some(from) = since {
            bar.actual.push((from, stop_s.max(from)));
        }
    }
    bars
}

/// Rates between consecutive samples, per rule and counter, keeping the series that are
/// non-zero somewhere. Rules are matched by name, so a sample missing a rule only skips it.
fn rates(samples: &[(f64, &Sample)]) -> Vec<Series> {
    let mut rules: Vec<&str> = Vec::new();
    for (_, s) in samples {
        for c in &s.rules {
            if !rules.contains(&c.rule.as_str()) {
                rules.push(&c.rule);
            }
        }
    }
    let mut out = Vec::new();
    for rule in rules {
        let counts: Vec<(f64, &RuleCounts)> = samples
            .iter()
            .filter_map(|(t, s)| s.rules.iter().find(|c| c.rule == rule).map(|c| (*t, c)))
            .collect();
        for (name, get) in COUNTERS {
            let points: Vec<(f64, f64)> = counts
                .windows(2)
                .filter(|w| w[1].0 > w[0].0)
                .map(|w| {
                    let delta = get(w[1].1).saturating_sub(get(w[0].1)) as f64;
                    (w[1].0, delta / (w[1].0 - w[0].0))
                })
                .collect();
            if points.iter().any(|p| p.1 > 0.0) {
                out.push(Series {
                    label: format!("{rule} {name}"),
                    points,
                });
            }
        }
    }
    out
}

/// Latency points and failure marks per probe: the names `applied` lists, then any other
/// probe the samples or changes mention.
fn probe_series(
    applied: Option<&Applied>,
    samples: &[(f64, &Sample)],
    changes: &[(f64, &str, bool, f64)],
    stop_s: f64,
) -> Vec<ProbeSeries> {
    let mut names: Vec<String> = applied.map(|a| a.probes.clone()).unwrap_or_default();
    let mentioned = samples
        .iter()
        .flat_map(|(_, s)| s.probes.iter().map(|p| p.probe.as_str()))
        .chain(changes.iter().map(|c| c.1));
    for name in mentioned {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
        .into_iter()
        .map(|name| {
            let mut series = ProbeSeries {
                name,
                ..ProbeSeries::default()
            };
            let mut failed_before = 0;
            for (t, s) in samples {
                let Some(p) = s.probes.iter().find(|p| p.probe == series.name) else {
                    continue;
                };
                let latency = p.last_latency_ms.unwrap_or(0.0);
                if p.last_latency_ms.is_some() {
                    series.latency.push((*t, latency));
                }
                if p.failed > failed_before {
                    series.failures.push((*t, latency));
                }
                failed_before = p.failed;
            }
            let mut failing_since = None;
            for &(t, _, ok, latency) in changes.iter().filter(|c| c.1 == series.name) {
                match (ok, failing_since) {
                    (false, None) => {
                        series.failures.push((t, latency));
                        failing_since = Some(t);
                    }
                    (true, Some(from)) => {
                        series.failing.push((from, t));
                        failing_since = None;
                    }
                    _ => {}
                }
            }
            if let Some(from) = failing_since {
                series.failing.push((from, stop_s.max(from)));
            }
            series.failures.sort_by(|a, b| a.0.total_cmp(&b.0));
            series
        })
        .collect()
}

/// The log line an event gets on the page; samples and the first and last events (shown in
/// the header) get none.
fn note(at_s: f64, event: &Event) -> Option<Note> {
    let (kind, text) = match event {
        Event::Applied(_) | Event::Sample(_) | Event::Reverted { .. } => return None,
        Event::TargetJoined { target, cgroup } => ("target_joined", format!("{target}: {cgroup}")),
        Event::TargetLeft { target, cgroup } => ("target_left", format!("{target}: {cgroup}")),
        Event::ProcessPatched { pid, comm, at_exec } => (
            "process_patched",
            format!(
                "{comm} (pid {pid}){}",
                if *at_exec { ", held at exec" } else { "" }
            ),
        ),
        Event::ProcessRefused { pid, comm, why } => {
            ("process_refused", format!("{comm} (pid {pid}): {why}"))
        }
        Event::StepOn { step } => ("step_on", step.clone()),
        Event::StepOff { step } => ("step_off", step.clone()),
        Event::ProbeChanged {
            probe,
            ok,
            latency_ms,
            error,
        } => (
            "probe_changed",
            if *ok {
                format!("{probe}: ok ({latency_ms:.1} ms)")
            } else {
                format!("{probe}: failing ({latency_ms:.1} ms): {error}")
            },
        ),
        Event::Abort { probe, why } => ("abort", format!("{probe}: {why}")),
        Event::Warning { message } => ("warning", message.clone()),
    };
    Some(Note { at_s, kind, text })
}
