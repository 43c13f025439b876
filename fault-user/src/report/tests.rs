//! The page from synthetic logs: an experiment with two steps, a probe that fails and an
//! abort; the same without `reverted`; a run that never got to `applied`.

use std::path::PathBuf;

use super::data::Run;
use super::{render, ReportError};
use crate::observe::event::{
    Applied, Event, ProbeCounts, Reason, Record, RuleCounts, RuleInfo, Sample, StepInfo, TargetInfo,
};

const T0: u64 = 5_000_000_000;
const POLICY_TEXT: &str =
    "kind: Experiment\nmetadata:\n  name: <script>alert(\"x\")</script> & co\n";

fn at(s: f64, event: Event) -> Record {
    let ms = (s * 1000.0).round() as u64;
    Record {
        wall: format!("2026-12-02T03:30:{:02}.{:03}Z", ms / 1000, ms % 1000),
        mono_ns: T0 + ms * 1_000_000,
        event,
    }
}

fn rule(name: &str, step: &str, summary: &str) -> RuleInfo {
    RuleInfo {
        name: name.into(),
        summary: summary.into(),
        direction: "egress".into(),
        step: Some(step.into()),
        target: "api".into(),
    }
}

fn applied() -> Applied {
    Applied {
        policy: "gameday".into(),
        kind: "Experiment".into(),
        file: PathBuf::from("/etc/fault/gameday.yaml"),
        text: POLICY_TEXT.into(),
        pid: 4242,
        duration_s: 24.0,
        targets: vec![
            TargetInfo {
                name: "container: api".into(),
                cgroup: "/sys/fs/cgroup/api".into(),
                group: Some("api".into()),
            },
            TargetInfo {
                name: "container: db".into(),
                cgroup: "/sys/fs/cgroup/db".into(),
                group: Some("db".into()),
            },
        ],
        rules: vec![
            rule("cut-db", "partition", "egress to db: drop 100%"),
            rule("slow-api", "latency", "egress to api: delay 200ms"),
        ],
        steps: vec![
            StepInfo {
                name: "partition".into(),
                summary: "api | db".into(),
                kind: "partition".into(),
                spans: vec![[2.0, 8.0]],
            },
            StepInfo {
                name: "latency".into(),
                summary: "delay 200ms".into(),
                kind: "network".into(),
                spans: vec![[10.0, 22.0]],
            },
        ],
        probes: vec!["api".into()],
    }
}

/// Cumulative counters at second `s`: 100 packets a second seen by each rule, all dropped
/// while the partition is on (2..8 s), all delayed while the latency step is on (10 s on).
fn sample(s: u64) -> Sample {
    let on = |from: u64, to: u64| s.clamp(from, to) - from;
    let counts = |rule: &str, dropped: u64, delayed: u64| RuleCounts {
        rule: rule.into(),
        seen: 100 * s,
        dropped,
        delayed,
        ..RuleCounts::default()
    };
    Sample {
        rules: vec![
            counts("cut-db", 100 * on(2, 8), 0),
            counts("slow-api", 0, 100 * on(10, 30)),
        ],
        probes: vec![ProbeCounts {
            probe: "api".into(),
            ok: s.min(12),
            failed: s.saturating_sub(12),
            last_latency_ms: Some(if s >= 12 { 1000.0 } else { 3.0 + s as f64 }),
        }],
        steps_on: Vec::new(),
        ..Sample::default()
    }
}

fn reverted(s: u64) -> Event {
    let last = sample(s);
    Event::Reverted {
        reason: Reason::Aborted,
        detail: "probe api: failed 3 times in a row".into(),
        rules: last.rules,
        probes: last.probes,
    }
}

/// An experiment of 20 s: samples every second, both steps switched, the probe failing from
/// 12 s and the abort at 19.5 s.
fn synthetic_log() -> Vec<Record> {
    let mut log = vec![at(0.0, Event::Applied(Box::new(applied())))];
    let switches = [
        (2.0, "partition", true),
        (8.0, "partition", false),
        (10.0, "latency", true),
    ];
    for s in 1..=19u64 {
        for &(t, step, on) in &switches {
            if t > (s - 1) as f64 && t <= s as f64 {
                let step = step.to_string();
                log.push(at(
                    t,
                    if on {
                        Event::StepOn { step }
                    } else {
                        Event::StepOff { step }
                    },
                ));
            }
        }
        if s == 12 {
            log.push(at(
                11.9,
                Event::ProbeChanged {
                    probe: "api".into(),
                    ok: false,
                    latency_ms: 1000.0,
                    error: "timed out after 1s".into(),
                },
            ));
        }
        log.push(at(s as f64, Event::Sample(sample(s))));
    }
    log.push(at(
        19.5,
        Event::Abort {
            probe: "api".into(),
            why: "failed 3 times in a row".into(),
        },
    ));
    log.push(at(
        19.6,
        Event::StepOff {
            step: "latency".into(),
        },
    ));
    log.push(at(19.7, reverted(19)));
    log
}

/// The HTML of section `id`, up to its end.
fn section<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section {id}"));
    let len = page[start..].find("</section>").expect("section closes");
    &page[start..start + len]
}

#[test]
fn renders_every_section_with_inline_charts() {
    let page = render(&synthetic_log()).expect("renders");
    for id in ["timeline", "counters", "probes", "targets", "policy"] {
        assert!(
            page.contains(&format!("id=\"{id}\"")),
            "section {id} missing"
        );
    }
    for id in ["timeline", "counters", "probes"] {
        assert!(section(&page, id).contains("<svg"), "no chart in {id}");
    }
    assert!(
        section(&page, "timeline").contains("<rect"),
        "timeline has no bars"
    );
    assert!(section(&page, "targets").contains("/sys/fs/cgroup/db"));
    assert!(page.contains("aborted: probe api: failed 3 times in a row"));
}

#[test]
fn is_self_contained() {
    let page = render(&synthetic_log()).expect("renders");
    assert!(
        !page.to_lowercase().contains("<script"),
        "the page has a script"
    );
    let rest = page.replace("http://www.w3.org/2000/svg", "");
    assert!(!rest.contains("http://"), "the page links out over http");
    assert!(!rest.contains("https://"), "the page links out over https");
    assert!(!rest.contains("<link") && !rest.contains("<img"));
}

#[test]
fn escapes_the_policy_text() {
    let page = render(&synthetic_log()).expect("renders");
    let policy = section(&page, "policy");
    assert!(
        policy.contains("name: &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co"),
        "policy text not escaped: {policy}"
    );
    assert!(policy.contains("<pre>"));
}

#[test]
fn says_when_the_log_has_no_reverted_event() {
    let mut log = synthetic_log();
    log.retain(|r| !matches!(r.event, Event::Reverted { .. }));
    let page = render(&log).expect("renders");
    assert!(page.contains("no reverted event: the loader may have been killed"));
    let complete = render(&synthetic_log()).expect("renders");
    assert!(!complete.contains("no reverted event"));
}

#[test]
fn renders_what_it_can_without_applied() {
    let log = vec![
        at(
            0.0,
            Event::Warning {
                message: "cgroup /x is gone".into(),
            },
        ),
        at(
            0.2,
            Event::Reverted {
                reason: Reason::Failed,
                detail: "attach tc: permission denied".into(),
                rules: Vec::new(),
                probes: Vec::new(),
            },
        ),
    ];
    let page = render(&log).expect("renders without applied");
    assert!(page.contains("no applied event"));
    assert!(page.contains("failed: attach tc: permission denied"));
    assert!(page.contains("cgroup /x is gone"));
    for id in ["timeline", "counters", "probes", "targets", "policy"] {
        assert!(
            page.contains(&format!("id=\"{id}\"")),
            "section {id} missing"
        );
    }
}

#[test]
fn refuses_an_empty_log() {
    assert!(matches!(render(&[]), Err(ReportError::Empty)));
}

#[test]
fn steps_are_on_between_their_switches() {
    let run = Run::from_records(&synthetic_log());
    let bars: Vec<_> = run
        .bars
        .iter()
        .map(|b| (b.name.as_str(), b.actual.clone()))
        .collect();
    assert_eq!(
        bars,
        [
            ("partition", vec![(2.0, 8.0)]),
            ("latency", vec![(10.0, 19.6)])
        ]
    );
    assert_eq!(run.bars[1].planned, [(10.0, 22.0)]);
    let abort = run.abort.expect("abort kept");
    assert!((abort.at_s - 19.5).abs() < 1e-9, "abort at {}", abort.at_s);
}

#[test]
fn a_step_still_on_is_closed_at_the_end() {
    let mut log = synthetic_log();
    log.retain(|r| !matches!(&r.event, Event::StepOff { step } if step == "latency"));
    let run = Run::from_records(&log);
    assert_eq!(run.bars[1].actual, [(10.0, 19.7)]);
}

#[test]
fn a_policy_without_steps_is_one_bar() {
    let mut a = applied();
    a.kind = "FaultPolicy".into();
    a.steps.clear();
    a.duration_s = 30.0;
    let log = vec![
        at(0.0, Event::Applied(Box::new(a))),
        at(1.0, Event::Sample(sample(1))),
        at(5.0, reverted(1)),
    ];
    let run = Run::from_records(&log);
    assert_eq!(run.bars.len(), 1);
    assert_eq!(run.bars[0].name, "policy");
    assert_eq!(run.bars[0].planned, [(0.0, 30.0)]);
    assert_eq!(run.bars[0].actual, [(0.0, 5.0)]);
    assert!(render(&log).expect("renders").contains("<rect"));
}

#[test]
fn rates_are_differences_over_time_for_counters_that_move() {
    let run = Run::from_records(&synthetic_log());
    let labels: Vec<&str> = run.rates.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "cut-db seen/s",
            "cut-db dropped/s",
            "slow-api seen/s",
            "slow-api delayed/s"
        ]
    );
    let dropped = &run.rates[1].points;
    let at_5 = dropped.iter().find(|p| p.0 == 5.0).expect("a point at 5 s");
    assert!(
        (at_5.1 - 100.0).abs() < 1e-6,
        "dropped/s at 5 s: {}",
        at_5.1
    );
    let at_9 = dropped.iter().find(|p| p.0 == 9.0).expect("a point at 9 s");
    assert_eq!(at_9.1, 0.0);
}

#[test]
fn probe_failures_are_marked() {
    let run = Run::from_records(&synthetic_log());
    let api = &run.probes[0];
    assert_eq!(api.name, "api");
    assert_eq!(api.latency.len(), 20, "19 samples and the final counts");
    assert_eq!(api.failures.first().map(|f| f.0), Some(11.9));
    assert!(api.failures.iter().any(|f| f.0 == 13.0));
    assert_eq!(api.failing, [(11.9, 19.7)]);
}
