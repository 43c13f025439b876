//! Experiments: the documented shape parses into groups, steps, rules with windows and
//! ramps, cuts, probes and stop conditions; each refusal `fault check` promises names the
//! path and says why.

use std::path::Path;
use std::time::Duration;

use fault_common::PROB_ONE;

use super::*;

const FILE: &str = "policies/game.yaml";

/// The experiment from the issue that asked for experiments, as written there.
const ISSUE: &str = include_str!("../../../policies/replica-failover.yaml");

fn parse_ok(text: &str) -> Policy {
    parse(text, Path::new(FILE)).unwrap_or_else(|e| panic!("expected a valid experiment: {e}"))
}

#[track_caller]
fn parse_err(text: &str, path: &str) -> String {
    match parse(text, Path::new(FILE)) {
        Ok(p) => panic!("expected an error at {path}, got {p:#?}"),
        Err(e) => {
            assert_eq!(e.path, path, "wrong path in: {e}");
            assert!(e.to_string().starts_with(FILE), "no file in: {e}");
            e.message
        }
    }
}

/// An experiment with groups a, b (and c) and the given steps (a YAML list, indented two).
fn with_steps(steps: &str) -> String {
    format!(
        "apiVersion: fault/v1\nkind: Experiment\nmetadata: {{name: t}}\nspec:\n  duration: 1m\n  \
         groups:\n    a: [{{cgroup: ga}}]\n    b: [{{cgroup: gb}}]\n    c: [{{cgroup: gc}}]\n  \
         steps:\n{steps}"
    )
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn the_documented_experiment_parses_into_its_timeline() {
    let p = parse_ok(ISSUE);
    assert!(p.is_experiment());
    assert_eq!(p.seed, Some(42));
    let names: Vec<&str> = p.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["clients", "primary", "replicas"]);
    assert_eq!(p.targets.len(), 4);
    let steps: Vec<(&str, &str)> = p
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.kind.name()))
        .collect();
    assert_eq!(
        steps,
        [
            ("split-brain", "partition"),
            ("slow-replicas", "network"),
            ("skewed-primary", "clock"),
            ("gc-pauses", "pause"),
            ("rising-loss", "network")
        ]
    );
    // split-brain cuts primary (1) and replicas (2) both ways.
    assert_eq!(
        p.steps[0].kind,
        StepKind::Partition(vec![Cut { from: 1, to: 2 }, Cut { from: 2, to: 1 }])
    );
    let slow = &p.rules[0];
    assert_eq!(slow.name, "slow-replicas/rule-0");
    assert_eq!(slow.class, 3);
    let w = slow.window.expect("a window");
    assert_eq!((w.at, w.len), (s(30), s(120)));
    assert_eq!(w.flap.map(|f| (f.on, f.off)), Some((s(5), s(10))));
    let ramp = &p.rules[1];
    assert_eq!(ramp.class, 2);
    let (from, to) = ramp.ramp.expect("a ramp");
    assert_eq!(from, (0.01 * PROB_ONE as f64).round() as u64);
    assert_eq!(to, (0.20 * PROB_ONE as f64).round() as u64);
    assert_eq!(ramp.action.drop_p, from);
    assert_eq!(p.probes[0].from, Some(0));
    assert_eq!(p.probes[0].timeout, Duration::from_millis(500));
    assert_eq!(
        p.aborts,
        [AbortWhen::Consecutive {
            probe: "writes".into(),
            failures: 5
        }]
    );
}

#[test]
fn a_step_past_the_duration_is_refused() {
    let m = parse_err(
        &with_steps("    - {name: late, at: 50s, for: 20s, partition: {between: [a, b]}}\n"),
        "spec.steps[0]",
    );
    assert!(m.contains("past spec.duration"), "{m}");
}

#[test]
fn an_unknown_group_is_refused_where_it_is_named() {
    let m = parse_err(
        &with_steps("    - {name: x, at: 0s, for: 5s, partition: {between: [a, zz]}}\n"),
        "spec.steps[0].partition.between[1]",
    );
    assert!(m.contains("\"zz\"") && m.contains("a, b, c"), "{m}");
    parse_err(
        &with_steps(
            "    - {name: x, at: 0s, for: 5s, targets: [b, q], pause: {for: 1s, every: 2s}}\n",
        ),
        "spec.steps[0].targets[1]",
    );
}

#[test]
fn contradictory_network_steps_are_refused_naming_both() {
    let two = "    - {name: lossy, at: 0s, for: 30s, targets: a, network: [{direction: egress, drop: {probability: 5%}}]}\n    \
               - {name: slow, at: 20s, for: 30s, targets: [a, b], network: [{direction: egress, delay: {latency: 10ms}}]}\n";
    let m = parse_err(&with_steps(two), "spec.steps[1]");
    assert!(
        m.contains("\"slow\"") && m.contains("\"lossy\"") && m.contains("\"a\""),
        "{m}"
    );
    // Apart in time, other packets, or another group: no contradiction.
    for ok in [
        two.replace("at: 20s", "at: 30s"),
        two.replace("direction: egress, delay", "direction: ingress, delay"),
        two.replace("targets: [a, b]", "targets: b"),
        two.replace(
            "drop: {probability: 5%}",
            "match: {protocol: udp, ports: [53]}, drop: {probability: 5%}",
        )
        .replace(
            "delay: {latency: 10ms}",
            "match: {protocol: tcp}, delay: {latency: 10ms}",
        ),
    ] {
        parse_ok(&with_steps(&ok));
    }
}

#[test]
fn two_pauses_of_one_group_at_once_are_refused() {
    let m = parse_err(
        &with_steps(
            "    - {name: p1, at: 0s, for: 10s, targets: a, pause: {for: 1s, every: 2s}}\n    \
             - {name: p2, at: 5s, for: 10s, targets: [c, a], pause: {for: 1s, every: 3s}}\n",
        ),
        "spec.steps[1]",
    );
    assert!(m.contains("pauses group \"a\""), "{m}");
}

#[test]
fn a_probe_needs_a_timeout_and_a_stop_condition_a_known_probe() {
    let text = |probe: &str, abort: &str| {
        with_steps("    - {name: x, at: 0s, for: 5s, targets: a, pause: {for: 1s, every: 2s}}\n")
            .replace(
                "  steps:",
                &format!("  probes:\n    - {probe}\n  abort_when:\n    - {abort}\n  steps:"),
            )
    };
    let m = parse_err(
        &text(
            "{name: up, tcp: 10.0.0.1:80, every: 1s}",
            "{probe: up, failures: 3}",
        ),
        "spec.probes[0]",
    );
    assert!(m.contains("timeout"), "{m}");
    parse_err(
        &text(
            "{name: up, tcp: 10.0.0.1:80, every: 1s, timeout: 1s}",
            "{probe: down, failures: 3}",
        ),
        "spec.abort_when[0].probe",
    );
    parse_err(
        &text(
            "{name: up, tcp: nowhere, every: 1s, timeout: 1s}",
            "{probe: up, failures: 3}",
        ),
        "spec.probes[0].tcp",
    );
    let p = parse_ok(&text(
        "{name: up, http: {url: \"http://10.0.0.1/\"}, from: b, every: 1s, timeout: 300ms}",
        "{probe: up, failure_ratio: 50%, window: 10s}",
    ));
    assert_eq!(p.probes[0].from, Some(1));
    assert_eq!(
        p.aborts,
        [AbortWhen::Ratio {
            probe: "up".into(),
            ratio: 0.5,
            window: s(10)
        }]
    );
}

#[test]
fn partitions_become_the_cuts_of_their_topology() {
    let cuts = |partition: &str| -> Vec<(usize, usize)> {
        let p = parse_ok(&with_steps(&format!(
            "    - {{name: x, at: 0s, for: 5s, partition: {partition}}}\n"
        )));
        match &p.steps[0].kind {
            StepKind::Partition(c) => c.iter().map(|c| (c.from, c.to)).collect(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(cuts("{between: [a, b], one_way: true}"), [(0, 1)]);
    assert_eq!(cuts("{isolate: c}"), [(0, 2), (1, 2), (2, 0), (2, 1)]);
    assert_eq!(
        cuts("{groups: [[a], [b, c]]}"),
        [(0, 1), (0, 2), (1, 0), (2, 0)]
    );
    // Three nodes in a majorities ring: each hears itself and one more.
    assert_eq!(cuts("{topology: majorities-ring, of: [a, b, c]}").len(), 3);
}

#[test]
fn a_ramp_outside_a_step_is_refused_and_a_strobe_flips_back() {
    let policy = "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {name: t}\nspec:\n  duration: 1m\n  \
                  targets: [{pid: 1}]\n  network:\n    - {direction: egress, drop: {probability: {from: 1%, to: 2%}}}\n";
    let e = parse(policy, Path::new(FILE)).expect_err("a ramp in a policy");
    assert!(e.message.contains("only allowed"), "{e}");
    let p = parse_ok(&with_steps(
        "    - {name: x, at: 0s, for: 5s, targets: a, clock: [{strobe: {by: 5s, every: 200ms}}]}\n",
    ));
    let StepKind::Clock(rules) = &p.steps[0].kind else {
        panic!("a clock step")
    };
    let j = rules[0].jumps.expect("a strobe is jumps that flip back");
    assert!(j.strobe && j.by_ns == 5_000_000_000 && j.every_ns == 200_000_000);
    let m = parse_err(
        &with_steps(
            "    - {name: x, at: 0s, for: 5s, targets: a, clock: [{clocks: [monotonic], strobe: {by: 5s, every: 200ms}}]}\n",
        ),
        "spec.steps[0].clock[0].strobe",
    );
    assert!(m.contains("backwards"), "{m}");
}

#[test]
fn a_target_in_two_groups_is_refused() {
    let text = with_steps("    - {name: x, at: 0s, for: 5s, partition: {between: [a, b]}}\n")
        .replace("c: [{cgroup: gc}]", "c: [{cgroup: ga}]");
    let m = parse_err(&text, "spec.groups.c[0]");
    assert!(m.contains("already in group \"a\""), "{m}");
}
