//! Parsing and validation: the documented format, the example policies and each way a policy
//! can be wrong, with the path and file every error must name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fault_common::{
    CSUM_FIX, CSUM_KEEP, DROP_BERNOULLI, DROP_GILBERT_ELLIOTT, DROP_NONE, PROB_ONE,
};

use super::*;

const FILE: &str = "policies/x.yaml";

/// The example from the format's documentation.
const EXAMPLE: &str = r#"
apiVersion: fault/v1
kind: FaultPolicy
metadata:
  name: lossy-replica-link
spec:
  duration: 2m
  targets:
    - cgroup: /sys/fs/cgroup/unified/game/app
    - container: pg-replica
    - pid: 4242
  network:
    - name: replica-loss
      direction: egress
      match:
        protocol: udp
        cidrs: [10.88.0.0/16, "fd00::/8"]
        ports: [5432, "6000-6100"]
      drop: {probability: 5%, correlation: 25%}
      corrupt: {probability: 1%, checksum: fix}
      duplicate: {probability: 1%}
"#;

fn parse_ok(text: &str) -> Policy {
    parse(text, Path::new(FILE)).unwrap_or_else(|err| panic!("expected a valid policy: {err}"))
}

/// Parses a policy that must be refused, and checks the path and that the message names the
/// file; returns the error for further checks.
#[track_caller]
fn parse_err(text: &str, path: &str) -> PolicyError {
    let err = match parse(text, Path::new(FILE)) {
        Ok(policy) => panic!("expected an error at {path}, got {policy:#?}"),
        Err(err) => err,
    };
    let shown = err.to_string();
    assert_eq!(err.path, path, "wrong path in: {shown}");
    assert_eq!(err.file, PathBuf::from(FILE));
    assert!(
        shown.starts_with(&format!("{FILE}: ")),
        "no file name in: {shown}"
    );
    if !path.is_empty() {
        assert!(
            shown.contains(&format!(": {path}: ")),
            "no path in: {shown}"
        );
    }
    err
}

/// A valid policy with one network rule whose body (indented for the list item) is `rule`.
fn with_rule(rule: &str) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: t\nspec:\n  duration: 30s\n  \
         targets:\n    - pid: 1\n  network:\n    - {}\n",
        rule.trim().replace('\n', "\n      ")
    )
}

fn threshold(p: f64) -> u64 {
    (p * PROB_ONE as f64).round() as u64
}

#[test]
fn documented_example_parses() {
    let policy = parse_ok(EXAMPLE);
    assert_eq!(policy.file, PathBuf::from(FILE));
    assert_eq!(policy.name, "lossy-replica-link");
    assert_eq!(policy.duration, Duration::from_secs(120));
    assert_eq!(
        policy.targets,
        [
            TargetSpec::Cgroup("/sys/fs/cgroup/unified/game/app".into()),
            TargetSpec::Container("pg-replica".into()),
            TargetSpec::Pid(4242),
        ]
    );
    assert_eq!(policy.rules.len(), 1);
    let rule = &policy.rules[0];
    assert_eq!(rule.name, "replica-loss");
    assert!(rule.egress && !rule.ingress);
    assert_eq!(rule.protocol, Protocol::Udp);
    assert_eq!(
        rule.cidrs,
        [
            "10.88.0.0/16".parse::<IpNet>().unwrap(),
            "fd00::/8".parse().unwrap()
        ]
    );
    assert_eq!(rule.ports, [(5432, 5432), (6000, 6100)]);
    assert_eq!(
        rule.action,
        NetRule {
            drop_model: DROP_BERNOULLI,
            corrupt_csum: CSUM_FIX,
            drop_p: threshold(0.05),
            drop_corr: PROB_ONE / 4,
            ge_loss_bad: 0,
            ge_loss_good: 0,
            corrupt_p: threshold(0.01),
            dup_p: threshold(0.01),
            ..NetRule::default()
        }
    );
    assert_eq!(
        rule.describe(),
        "egress udp to 10.88.0.0/16,fd00::/8 ports 5432,6000-6100: drop 5% (corr 25%), \
         corrupt 1% (checksum fix), duplicate 1%"
    );
    assert_eq!(lpm_entries(&policy.rules).unwrap().len(), 2 * 102);
}

#[test]
fn example_policy_files_parse() {
    let files = [
        (
            "lossy-replica-link.yaml",
            include_str!("../../../policies/lossy-replica-link.yaml"),
        ),
        (
            "demo-loss.yaml",
            include_str!("../../../policies/demo-loss.yaml"),
        ),
        (
            "partition.yaml",
            include_str!("../../../policies/partition.yaml"),
        ),
        (
            "bursty-loss.yaml",
            include_str!("../../../policies/bursty-loss.yaml"),
        ),
        (
            "clock-skew.yaml",
            include_str!("../../../policies/clock-skew.yaml"),
        ),
        (
            "slow-replica-link.yaml",
            include_str!("../../../policies/slow-replica-link.yaml"),
        ),
        (
            "etcd-peer-cut.yaml",
            include_str!("../../../policies/etcd-peer-cut.yaml"),
        ),
        (
            "demo-gameday.yaml",
            include_str!("../../../policies/demo-gameday.yaml"),
        ),
        (
            "replica-failover.yaml",
            include_str!("../../../policies/replica-failover.yaml"),
        ),
    ];
    // Every file of policies/ is here, so none goes unchecked.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "policies/ and this list");
    for (name, text) in files {
        let policy = parse(text, Path::new(name)).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            format!("{}.yaml", policy.name),
            name,
            "metadata.name matches the file"
        );
        lpm_entries(&policy.rules).unwrap_or_else(|err| panic!("{name}: {err}"));
    }
}

#[test]
fn example_policy_files_say_what_they_should() {
    let policy = parse_ok(include_str!("../../../policies/lossy-replica-link.yaml"));
    assert_eq!(
        policy.targets,
        [
            TargetSpec::Cgroup("game/app".into()),
            TargetSpec::Container("pg-replica".into())
        ]
    );

    let demo = parse_ok(include_str!("../../../policies/demo-loss.yaml"));
    assert_eq!(demo.duration, Duration::from_secs(30));
    assert_eq!(
        demo.targets,
        [TargetSpec::Cgroup("fault-demo/client".into())]
    );
    let descriptions: Vec<String> = demo.rules.iter().map(Rule::describe).collect();
    assert_eq!(
        descriptions,
        [
            "egress icmp to any address: drop 30%",
            "egress udp to any address: corrupt 20% (checksum fix)"
        ]
    );

    let partition = parse_ok(include_str!("../../../policies/partition.yaml"));
    assert_eq!(
        partition.rules[0].describe(),
        "egress ip to 10.200.0.0/24: drop 100%"
    );
    assert_eq!(partition.rules[0].action.drop_p, PROB_ONE);

    let bursty = parse_ok(include_str!("../../../policies/bursty-loss.yaml"));
    let rule = &bursty.rules[0];
    assert!(rule.egress && rule.ingress);
    assert_eq!(rule.protocol, Protocol::Tcp);
    assert_eq!(rule.action.drop_model, DROP_GILBERT_ELLIOTT);
    assert_eq!(
        rule.describe(),
        "egress+ingress tcp to/from any address: drop gilbert-elliott \
         (p 1%, r 30%, loss bad 100%, good 0%)"
    );
}

#[test]
fn probabilities_accept_numbers_and_percentages() {
    for (written, expected) in [
        ("0.05", threshold(0.05)),
        ("\"0.05\"", threshold(0.05)),
        ("5%", threshold(0.05)),
        ("\"5 %\"", threshold(0.05)),
        ("0", 0),
        ("1", PROB_ONE),
        ("1.0", PROB_ONE),
        ("100%", PROB_ONE),
        ("0%", 0),
        ("12.5%", PROB_ONE / 8),
    ] {
        let policy = parse_ok(&with_rule(&format!(
            "direction: egress\nduplicate: {{probability: {written}}}"
        )));
        assert_eq!(policy.rules[0].action.dup_p, expected, "{written}");
    }
}

#[test]
fn defaults_fill_in_what_the_rule_leaves_out() {
    let policy = parse_ok(&with_rule("direction: egress\ncorrupt: {probability: 1%}"));
    let rule = &policy.rules[0];
    assert_eq!(rule.name, "rule-0");
    assert!(rule.egress && !rule.ingress);
    assert_eq!(rule.protocol, Protocol::Any);
    assert!(rule.cidrs.is_empty() && rule.ports.is_empty());
    assert_eq!(rule.action.drop_model, DROP_NONE);
    assert_eq!(rule.action.corrupt_csum, CSUM_FIX);

    let policy = parse_ok(&with_rule(
        "direction: egress\ncorrupt: {probability: 1%, checksum: keep}",
    ));
    assert_eq!(policy.rules[0].action.corrupt_csum, CSUM_KEEP);
    assert_eq!(
        policy.rules[0].describe(),
        "egress ip to any address: corrupt 1% (checksum keep)"
    );

    let policy = parse_ok(&with_rule("direction: both\ndrop: {probability: 1%}"));
    assert!(policy.rules[0].egress && policy.rules[0].ingress);
}

#[test]
fn ingress_rules_may_corrupt_and_duplicate_at_the_far_end() {
    // Whether the target has a far end to do it at is the plan's to say, not the parser's.
    let policy = parse_ok(&with_rule("direction: both\ncorrupt: {probability: 1%}"));
    assert!(policy.rules[0].ingress && policy.rules[0].action.corrupt_p > 0);
    let policy = parse_ok(&with_rule(
        "direction: ingress\nduplicate: {probability: 1%}",
    ));
    assert!(policy.rules[0].ingress && policy.rules[0].action.dup_p > 0);

    let policy = parse_ok(&with_rule(
        "direction: egress\ndrop: {gilbert_elliott: {p: 0.01, r: 0.3}}",
    ));
    let action = policy.rules[0].action;
    assert_eq!(action.drop_model, DROP_GILBERT_ELLIOTT);
    assert_eq!(action.drop_p, threshold(0.01));
    assert_eq!(action.drop_corr, threshold(0.3));
    assert_eq!(action.ge_loss_bad, PROB_ONE, "loss_bad defaults to 100%");
    assert_eq!(action.ge_loss_good, 0, "loss_good defaults to 0%");
}

#[test]
fn bare_addresses_are_hosts_and_host_bits_are_cleared() {
    let policy = parse_ok(&with_rule(
        "direction: egress\nmatch: {cidrs: [10.1.2.3, \"fd00::1\", 10.1.2.3/8]}\npartition: true",
    ));
    let cidrs: Vec<String> = policy.rules[0]
        .cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(cidrs, ["10.1.2.3/32", "fd00::1/128", "10.0.0.0/8"]);
}

#[test]
fn ports_with_protocol_any_mean_tcp_and_udp() {
    let policy = parse_ok(&with_rule(
        "direction: egress\nmatch: {ports: [53]}\ndrop: {probability: 1%}",
    ));
    let protos: Vec<u8> = lpm_entries(&policy.rules)
        .unwrap()
        .iter()
        .map(|(_, key, _)| key.proto)
        .collect();
    assert_eq!(protos, [6, 6, 17, 17], "tcp and udp, IPv4 and IPv6 each");
    assert_eq!(
        policy.rules[0].describe(),
        "egress tcp/udp to any address ports 53: drop 1%"
    );
}

#[test]
fn describe_rounds_percentages_for_people() {
    let policy = parse_ok(&with_rule(
        "direction: egress\nmatch: {protocol: tcp, ports: [80, \"8000-8080\"]}\n\
         drop: {probability: 0.333333}\nduplicate: {probability: 0.0000001}",
    ));
    assert_eq!(
        policy.rules[0].describe(),
        "egress tcp to any address ports 80,8000-8080: drop 33.333%, duplicate <0.001%"
    );
}

#[test]
fn durations_are_human() {
    for (written, expected) in [
        ("500ms", Duration::from_millis(500)),
        ("30s", Duration::from_secs(30)),
        ("1h", Duration::from_secs(3600)),
        ("24h", Duration::from_secs(86400)),
        ("1m 30s", Duration::from_secs(90)),
    ] {
        let text = EXAMPLE.replace("duration: 2m", &format!("duration: {written}"));
        assert_eq!(parse_ok(&text).duration, expected, "{written}");
    }
}

// The error cases, each checked for its path and for the file name in the message.

#[test]
fn unknown_field_is_refused_with_its_line() {
    let text = EXAMPLE.replace("      duplicate:", "      latency: 10ms\n      duplicate:");
    let err = parse_err(&text, "spec.network[0].latency");
    assert!(
        err.message
            .starts_with("unknown field `latency`, expected one of `name`"),
        "{err}"
    );
    // EXAMPLE starts with an empty line, so `latency:` is on line 21.
    assert_eq!(err.line, Some(21), "{err}");
    assert!(err.to_string().ends_with(" (line 21)"), "{err}");
    assert!(!err.message.contains("line"), "position shown twice: {err}");
    assert_eq!(
        err.to_string().matches("spec.network[0]").count(),
        1,
        "path shown twice: {err}"
    );

    let text = EXAMPLE.replace("  name: lossy", "  labels: {}\n  name: lossy");
    parse_err(&text, "metadata.labels");
    let text = EXAMPLE.replace("protocol: udp", "protocol: udp\n        vlan: 3");
    parse_err(&text, "spec.network[0].match.vlan");
    let text = EXAMPLE.replace("{probability: 1%}", "{probability: 1%, delay: 1ms}");
    parse_err(&text, "spec.network[0].duplicate.delay");
    let text = format!("{EXAMPLE}  clock: {{}}\n");
    parse_err(&text, "spec.clock");
    let text = format!("{EXAMPLE}status: {{}}\n");
    parse_err(&text, "status");
}

#[test]
fn probability_out_of_range_is_refused() {
    let text = EXAMPLE.replace("probability: 5%", "probability: 1.5");
    let err = parse_err(&text, "spec.network[0].drop.probability");
    assert_eq!(
        err.to_string(),
        "policies/x.yaml: spec.network[0].drop.probability: expected a probability between 0 \
         and 1 (like 0.05 or \"5%\"), got 1.5"
    );

    let text = EXAMPLE.replace("correlation: 25%", "correlation: -0.1");
    let err = parse_err(&text, "spec.network[0].drop.correlation");
    assert!(err.message.ends_with("got -0.1"), "{err}");
    let text = EXAMPLE.replace("probability: 1%, checksum", "probability: 101%, checksum");
    let err = parse_err(&text, "spec.network[0].corrupt.probability");
    assert!(err.message.ends_with("got \"101%\""), "{err}");
    for bad in ["abc", "\"5%%\"", ".nan", "\"-1%\""] {
        let text = EXAMPLE.replace("{probability: 1%}", &format!("{{probability: {bad}}}"));
        parse_err(&text, "spec.network[0].duplicate.probability");
    }
    let text = with_rule("direction: egress\ndrop: {gilbert_elliott: {p: 2, r: 0.3}}");
    parse_err(&text, "spec.network[0].drop.gilbert_elliott.p");
    let text =
        with_rule("direction: egress\ndrop: {gilbert_elliott: {p: 0.1, r: 0.3, loss_good: 2}}");
    parse_err(&text, "spec.network[0].drop.gilbert_elliott.loss_good");
}

#[test]
fn bad_cidr_is_refused() {
    let text = EXAMPLE.replace("10.88.0.0/16", "10.0.0.0/33");
    let err = parse_err(&text, "spec.network[0].match.cidrs[0]");
    assert!(err.message.contains("got \"10.0.0.0/33\""), "{err}");
    let text = EXAMPLE.replace("\"fd00::/8\"", "\"fd00::/129\"");
    parse_err(&text, "spec.network[0].match.cidrs[1]");
    let text = EXAMPLE.replace("10.88.0.0/16", "example.com");
    parse_err(&text, "spec.network[0].match.cidrs[0]");
}

#[test]
fn missing_duration_is_refused() {
    let text = EXAMPLE.replace("  duration: 2m\n", "");
    let err = parse_err(&text, "spec");
    assert!(err.message.contains("missing field `duration`"), "{err}");
}

#[test]
fn bad_durations_are_refused() {
    for bad in ["0s", "25h", "soon", "30"] {
        let text = EXAMPLE.replace("duration: 2m", &format!("duration: {bad}"));
        parse_err(&text, "spec.duration");
    }
}

#[test]
fn cgroup_with_parent_component_is_refused() {
    let text = EXAMPLE.replace("/sys/fs/cgroup/unified/game/app", "game/../../etc");
    let err = parse_err(&text, "spec.targets[0].cgroup");
    assert!(err.message.contains("\"..\""), "{err}");
}

#[test]
fn ports_with_icmp_are_refused() {
    let text = EXAMPLE.replace("protocol: udp", "protocol: icmp");
    let err = parse_err(&text, "spec.network[0].match.ports");
    assert!(err.message.contains("icmp has no ports"), "{err}");
}

#[test]
fn bad_api_version_and_kind_are_refused() {
    let text = EXAMPLE.replace("fault/v1", "fault/v2");
    let err = parse_err(&text, "apiVersion");
    assert_eq!(err.message, "expected fault/v1, got \"fault/v2\"");

    // Reported even when the rest would not parse as this version.
    let text = EXAMPLE
        .replace("fault/v1", "fault/v2")
        .replace("duration: 2m", "lifetime: 2m");
    parse_err(&text, "apiVersion");

    let text = EXAMPLE.replace("kind: FaultPolicy", "kind: Policy");
    parse_err(&text, "kind");
    let text = EXAMPLE.replace("apiVersion: fault/v1\n", "");
    let err = parse_err(&text, "");
    assert!(err.message.contains("missing field `apiVersion`"), "{err}");
}

#[test]
fn bad_ports_are_refused() {
    for (bad, index) in [
        ("[0]", 0),
        ("[65536]", 0),
        ("[-1]", 0),
        ("[80, \"100-90\"]", 1),
        ("[80, \"90-\"]", 1),
        ("[\"http\"]", 0),
    ] {
        let text = EXAMPLE.replace("[5432, \"6000-6100\"]", bad);
        parse_err(&text, &format!("spec.network[0].match.ports[{index}]"));
    }
    let text = EXAMPLE.replace("[5432, \"6000-6100\"]", "[true]");
    parse_err(&text, "spec.network[0].match.ports[0]");
}

#[test]
fn bad_names_are_refused() {
    for bad in [
        "Lossy",
        "lossy_link",
        "",
        "a-very-long-policy-name-that-goes-past-forty",
    ] {
        let text = EXAMPLE.replace("name: lossy-replica-link", &format!("name: \"{bad}\""));
        parse_err(&text, "metadata.name");
    }
    for bad in ["has space", "", "x/y", "this-rule-name-is-longer-than-32c"] {
        let text = EXAMPLE.replace("name: replica-loss", &format!("name: \"{bad}\""));
        parse_err(&text, "spec.network[0].name");
    }
    // Unique, including against a default name.
    let text = with_rule("direction: egress\npartition: true")
        + "    - {name: rule-0, direction: ingress, partition: true}\n";
    let err = parse_err(&text, "spec.network[1].name");
    assert!(err.message.contains("spec.network[0]"), "{err}");
}

#[test]
fn bad_targets_are_refused() {
    let text = EXAMPLE.replace("container: pg-replica", "container: \"\"");
    parse_err(&text, "spec.targets[1].container");
    let text = EXAMPLE.replace("pid: 4242", "pid: 0");
    parse_err(&text, "spec.targets[2].pid");
    let text = EXAMPLE.replace("pid: 4242", "pid: -3");
    parse_err(&text, "spec.targets[2].pid");
    let text = EXAMPLE.replace("pid: 4242", "pods: web");
    let err = parse_err(&text, "spec.targets[2].pods");
    assert!(err.message.contains("expected pods: a mapping"), "{err}");
    let text = EXAMPLE.replace("pid: 4242", "vm: web");
    let err = parse_err(&text, "spec.targets[2].vm");
    assert!(err.message.contains("unknown field `vm`"), "{err}");
    let text = EXAMPLE.replace("pid: 4242", "{pid: 4242, container: web}");
    let err = parse_err(&text, "spec.targets[2]");
    assert_eq!(
        err.line, None,
        "the list's line would point at another target: {err}"
    );
    let text = EXAMPLE.replace("pid: 4242", "{}");
    parse_err(&text, "spec.targets[2]");
    let text = EXAMPLE.replace(
        "    - cgroup: /sys/fs/cgroup/unified/game/app\n    - container: pg-replica\n    - pid: 4242\n",
        "    []\n",
    );
    parse_err(&text, "spec.targets");
}

#[test]
fn bad_action_combinations_are_refused() {
    let text = with_rule("direction: egress");
    let err = parse_err(&text, "spec.network[0]");
    assert!(err.message.contains("at least one of"), "{err}");
    let text = with_rule("direction: egress\npartition: false");
    parse_err(&text, "spec.network[0]");

    let text = with_rule("direction: egress\npartition: true\ndrop: {probability: 1%}");
    parse_err(&text, "spec.network[0].partition");

    for (drop, path, message) in [
        (
            "{probability: 1%, gilbert_elliott: {p: 0.1, r: 0.2}}",
            "spec.network[0].drop",
            "cannot be combined",
        ),
        (
            "{correlation: 10%}",
            "spec.network[0].drop",
            "correlation needs a probability",
        ),
        ("{}", "spec.network[0].drop", "expected probability"),
        (
            "{gilbert_elliott: {p: 0.1}}",
            "spec.network[0].drop.gilbert_elliott",
            "missing field `r`",
        ),
        (
            "{gilbert_elliott: {p: 0.1, r: 0.2, k: 0.5}}",
            "spec.network[0].drop.gilbert_elliott.k",
            "unknown field `k`",
        ),
    ] {
        let text = with_rule(&format!("direction: egress\ndrop: {drop}"));
        let err = parse_err(&text, path);
        assert!(err.message.contains(message), "{drop}: {err}");
    }
}

#[test]
fn direction_is_required_and_checked() {
    let text = with_rule("name: x\npartition: true");
    let err = parse_err(&text, "spec.network[0]");
    assert!(err.message.contains("missing field `direction`"), "{err}");
    let text = with_rule("direction: sideways\npartition: true");
    let err = parse_err(&text, "spec.network[0].direction");
    assert!(err.message.contains("unknown variant `sideways`"), "{err}");
}

#[test]
fn a_policy_needs_network_or_clock_rules() {
    let text = EXAMPLE.split("  network:").next().unwrap().to_owned();
    let err = parse_err(&text, "spec");
    assert!(err.message.contains("network or clock"), "{err}");
    parse_err(&(text.clone() + "  network: []\n"), "spec");
    parse_err(&(text + "  network: []\n  clock: []\n"), "spec");
}

// ---- clock rules ----------------------------------------------------------------------------

/// The example from issue 4.
const CLOCK_EXAMPLE: &str = r#"
apiVersion: fault/v1
kind: FaultPolicy
metadata:
  name: replica-clock
spec:
  duration: 5m
  targets: [{container: replica}]
  clock:
    - name: replica-behind
      clocks: [realtime]        # realtime (default), monotonic, boottime, and their _coarse/_raw forms, or all
      offset: -2s               # constant skew from the moment of apply
      drift: 500ppm             # the clock runs fast (+) or slow (-) from the moment of apply
      jumps: {every: 30s, by: -1s}   # a step every interval, like an NTP step
      jitter: 2ms               # random noise on each read
"#;

/// A valid policy with one clock rule whose body is `rule`.
fn with_clock(rule: &str) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: t\nspec:\n  duration: 30s\n  \
         targets:\n    - pid: 1\n  clock:\n    - {}\n",
        rule.trim().replace('\n', "\n      ")
    )
}

#[test]
fn the_clock_example_parses() {
    let policy = parse_ok(CLOCK_EXAMPLE);
    assert!(policy.rules.is_empty(), "clock rules alone make a policy");
    assert_eq!(
        policy.clock,
        [ClockRule {
            name: "replica-behind".into(),
            clocks: vec![ClockId::Realtime],
            offset_ns: -2_000_000_000,
            drift_ppm: 500.0,
            jumps: Some(ClockJumps {
                strobe: false,
                every_ns: 30_000_000_000,
                by_ns: -1_000_000_000,
            }),
            jitter_ns: 2_000_000,
            allow_backwards: false,
        }]
    );
    assert_eq!(
        policy.clock[0].describe(),
        "realtime: offset -2s, drift +500ppm, jumps -1s every 30s, jitter 2ms"
    );
}

#[test]
fn network_and_clock_rules_share_a_policy() {
    let text =
        format!("{EXAMPLE}  clock:\n    - offset: 1.5s\n      clocks: [realtime_coarse, tai]\n");
    let policy = parse_ok(&text);
    assert_eq!(policy.rules.len(), 1);
    assert_eq!(policy.clock[0].name, "clock-0");
    assert_eq!(policy.clock[0].offset_ns, 1_500_000_000);
    assert_eq!(
        policy.clock[0].clocks,
        [ClockId::RealtimeCoarse, ClockId::Tai]
    );
    let clash = format!("{EXAMPLE}  clock:\n    - name: replica-loss\n      offset: 1s\n");
    let err = parse_err(&clash, "spec.clock[0].name");
    assert!(err.message.contains("spec.network[0]"), "{err}");
}

#[test]
fn clocks_default_to_realtime_and_all_names_every_clock() {
    assert_eq!(
        parse_ok(&with_clock("offset: 1s")).clock[0].clocks,
        [ClockId::Realtime]
    );
    let all = parse_ok(&with_clock("clocks: [all]\njitter: 1ms"));
    assert_eq!(all.clock[0].clocks, ClockId::ALL);
    let ids: Vec<u32> = ClockId::ALL.iter().map(|c| c.linux_id()).collect();
    assert_eq!(ids, [0, 5, 11, 1, 6, 4, 7]);
    let text =
        with_clock("clocks: [monotonic, monotonic_coarse, monotonic_raw, boottime]\ndrift: -20ppm");
    assert_eq!(parse_ok(&text).clock[0].drift_ppm, -20.0);
}

#[test]
fn monotonic_clocks_may_not_go_backwards_unless_allowed() {
    let err = parse_err(
        &with_clock("clocks: [monotonic]\noffset: -1s"),
        "spec.clock[0].offset",
    );
    assert!(err.message.contains("allow_backwards"), "{err}");
    let err = parse_err(
        &with_clock("clocks: [realtime, boottime]\njumps: {every: 10s, by: -5ms}"),
        "spec.clock[0].jumps.by",
    );
    assert!(err.message.contains("boottime"), "{err}");
    // Allowed when asked for, and fine for realtime; running slow is not going back.
    parse_ok(&with_clock(
        "clocks: [monotonic]\noffset: -1s\nallow_backwards: true",
    ));
    parse_ok(&with_clock(
        "clocks: [realtime]\noffset: -1s\njumps: {every: 1s, by: -1s}",
    ));
    parse_ok(&with_clock(
        "clocks: [monotonic]\ndrift: -500ppm\njitter: 1ms",
    ));
}

#[test]
fn bad_clock_rules_are_refused() {
    for (rule, path) in [
        (
            "clocks: [realtime, wallclock]\noffset: 1s",
            "spec.clock[0].clocks[1]",
        ),
        (
            "clocks: [realtime, realtime]\noffset: 1s",
            "spec.clock[0].clocks[1]",
        ),
        (
            "clocks: [all, monotonic]\njitter: 1ms",
            "spec.clock[0].clocks[0]",
        ),
        ("clocks: []\noffset: 1s", "spec.clock[0].clocks"),
        ("offset: 2", "spec.clock[0].offset"),
        ("offset: two seconds", "spec.clock[0].offset"),
        ("offset: 11y", "spec.clock[0].offset"),
        ("drift: 500", "spec.clock[0].drift"),
        ("drift: 600000ppm", "spec.clock[0].drift"),
        ("jitter: -1ms", "spec.clock[0].jitter"),
        ("jitter: 1m", "spec.clock[0].jitter"),
        ("jumps: {every: 100us, by: 1s}", "spec.clock[0].jumps.every"),
        ("jumps: {every: 1s, by: 0}", "spec.clock[0].jumps.by"),
        ("jumps: {every: 1ms, by: 1d}", "spec.clock[0].jumps.by"),
        ("jumps: {every: 1s}", "spec.clock[0].jumps"),
        ("offset: 0", "spec.clock[0]"),
        ("name: \"a b\"\noffset: 1s", "spec.clock[0].name"),
        ("offset: 1s\nskew: 1s", "spec.clock[0].skew"),
    ] {
        parse_err(&with_clock(rule), path);
    }
}

#[test]
fn a_clock_takes_one_rule() {
    let text =
        with_clock("offset: 1s") + "    - clocks: [monotonic, realtime]\n      jitter: 1ms\n";
    let err = parse_err(&text, "spec.clock[1].clocks[1]");
    assert!(err.message.contains("spec.clock[0]"), "{err}");
    let text = with_clock("name: a\noffset: 1s")
        + "    - name: a\n      clocks: [tai]\n      offset: 1s\n";
    parse_err(&text, "spec.clock[1].name");
}

#[test]
fn wrong_types_and_broken_yaml_are_refused() {
    let text = EXAMPLE.replace("direction: egress", "direction: [egress]");
    parse_err(&text, "spec.network[0].direction");
    // Bad indentation: a syntax error, reported where the parser was.
    let text = EXAMPLE.replace("    - container: pg-replica", "   - container: pg-replica");
    let err = parse_err(&text, "spec");
    assert!(
        err.message.starts_with("did not find expected key"),
        "{err}"
    );
    assert_eq!(err.line, Some(10), "{err}");
    parse_err("", "");
    parse_err("- 1\n- 2\n", "");
}

#[test]
fn oversized_policies_are_refused_on_parse() {
    // 65535 ports x tcp+udp x 2 directions x 4 cidrs.
    let text = with_rule(
        "direction: both\nmatch: {cidrs: [10.0.0.0/8, 10.1.0.0/16, 10.2.0.0/16, 10.3.0.0/16], \
         ports: [\"1-65535\"]}\npartition: true",
    );
    let err = parse_err(&text, "spec.network");
    assert!(err.message.contains("1048560"), "{err}");
}

#[test]
fn load_names_the_file_it_cannot_read() {
    let err = load(Path::new("/nonexistent/policy.yaml")).unwrap_err();
    assert_eq!(err.path, "");
    assert!(
        err.to_string()
            .starts_with("/nonexistent/policy.yaml: cannot read the policy: "),
        "{err}"
    );
}

#[test]
fn delay_rate_and_reorder_compile_to_departure_times() {
    let policy = parse_ok(&with_rule(
        "direction: egress\nmatch: {protocol: tcp, ports: [5432]}\n\
         delay: {latency: 100ms, jitter: 20ms, distribution: normal, correlation: 25%}\n\
         rate: 10mbit\nreorder: {probability: 5%}",
    ));
    let a = policy.rules[0].action;
    assert_eq!(a.delay_ns, 100_000_000);
    assert_eq!(a.jitter_ns, 20_000_000);
    assert_eq!(a.jitter_dist, fault_common::DIST_NORMAL);
    assert_eq!(a.jitter_corr, PROB_ONE / 4);
    assert_eq!(a.rate_bytes, 1_250_000);
    assert_eq!(a.reorder_p, threshold(0.05));
    assert_eq!(
        policy.rules[0].describe(),
        "egress tcp to any address ports 5432: delay 100ms ± 20ms normal (corr 25%), \
         rate 10000 kbit/s, reorder 5%"
    );
    let policy = parse_ok(&with_rule("direction: egress\nrate: 500kbps"));
    assert_eq!(policy.rules[0].action.rate_bytes, 500_000);
}

#[test]
fn bad_timing_is_refused_with_its_limit() {
    let err = parse_err(
        &with_rule("direction: egress\ndelay: {latency: 9s, jitter: 1s}"),
        "spec.network[0].delay",
    );
    assert!(err.message.contains("horizon of 10s"), "{err}");
    let err = parse_err(
        &with_rule("direction: egress\nrate: 10 apples"),
        "spec.network[0].rate",
    );
    assert!(err.message.contains("10mbit"), "{err}");
    // An absurd rate is refused, not cut to what a u64 holds.
    for absurd in ["1001gbit", "99999999999999999999999999999gbit"] {
        let err = parse_err(
            &with_rule(&format!("direction: egress\nrate: {absurd}")),
            "spec.network[0].rate",
        );
        assert!(err.message.contains("limit of 1000gbit"), "{err}");
    }
    let policy = parse_ok(&with_rule("direction: egress\nrate: 1000gbit"));
    assert_eq!(policy.rules[0].action.rate_bytes, 125_000_000_000);
    let err = parse_err(
        &with_rule("direction: egress\nrate: 1mbit\nreorder: {probability: 5%}"),
        "spec.network[0].reorder",
    );
    assert!(err.message.contains("needs a delay"), "{err}");
    // The issue's own example: delay, rate and reorder both ways.
    let policy = parse_ok(&with_rule(
        "direction: both\nmatch: {protocol: tcp, ports: [5432]}\n\
         delay: {latency: 100ms, jitter: 20ms, distribution: normal, correlation: 25%}\n\
         rate: 10mbit\nreorder: {probability: 5%}",
    ));
    assert!(policy.rules[0].egress && policy.rules[0].ingress);
    assert_eq!(policy.rules[0].action.delay_ns, 100_000_000);
    parse_err(
        &with_rule("direction: egress\ndelay: {latency: 10ms, distribution: gaussian}"),
        "spec.network[0].delay.distribution",
    );
}

#[test]
fn loopback_is_off_unless_a_rule_asks_for_it() {
    let plain = parse_ok(&with_rule("direction: egress\ndrop: {probability: 1%}"));
    assert!(!plain.rules[0].loopback);
    assert!(!wants_loopback(&plain));
    let on_lo = parse_ok(&with_rule(
        "direction: egress\nmatch: {protocol: udp, loopback: true}\ndrop: {probability: 2%}",
    ));
    assert!(on_lo.rules[0].loopback);
    assert!(wants_loopback(&on_lo));
    assert_eq!(
        on_lo.rules[0].describe(),
        "egress udp to any address, loopback too: drop 2%"
    );
    parse_err(
        &with_rule("direction: egress\nmatch: {loopback: 1}\ndrop: {probability: 2%}"),
        "spec.network[0].match.loopback",
    );
}

/// Every YAML example in README.md parses: whole policies as they are, fragments of `spec`
/// (indented by two) inside a minimal policy.
#[test]
fn readme_examples_parse() {
    let readme = include_str!("../../../README.md");
    let mut blocks = Vec::new();
    let mut rest = readme;
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("a closed code block");
        blocks.push(&body[..end]);
        rest = &body[end + 3..];
    }
    assert!(
        blocks.len() >= 3,
        "README has its examples: {}",
        blocks.len()
    );
    for block in blocks {
        let text = match block.starts_with("apiVersion") {
            true => block.to_owned(),
            false => format!(
                "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {{name: readme}}\nspec:\n  \
                 duration: 1m\n  targets: [{{cgroup: /}}]\n{block}"
            ),
        };
        let policy = parse(&text, Path::new("README.md"))
            .unwrap_or_else(|err| panic!("README example does not parse: {err}\n{text}"));
        lpm_entries(&policy.rules).unwrap_or_else(|err| panic!("{err}"));
    }
}

const SMALL: &str = "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {name: NAME}\nspec:\n  \
                     duration: 1m\n  targets: [TARGET]\n  network: [{direction: egress, drop: \
                     {probability: 1%}}]\n";

fn small(name: &str, target: &str) -> String {
    SMALL.replace("NAME", name).replace("TARGET", target)
}

#[test]
fn a_byte_order_mark_does_not_make_a_valid_policy_fail() {
    let text = format!("\u{feff}{}", small("bom", "{cgroup: app}"));
    assert_eq!(parse_ok(&text).name, "bom");
}

#[test]
fn names_that_read_as_options_are_refused() {
    for name in ["-", "--all", "-f"] {
        let e = parse_err(
            &small(&format!("\"{name}\""), "{cgroup: app}"),
            "metadata.name",
        );
        assert!(e.message.contains("not starting with \"-\""), "{name}: {e}");
        assert!(check_name(name).is_err(), "{name}");
    }
    assert!(check_name("..").is_err() && check_name("a/b").is_err());
    assert_eq!(check_name("db-1"), Ok(()));
}

#[test]
fn a_container_name_that_reads_as_an_option_is_refused() {
    let e = parse_err(
        &small("c", "{container: \"--latest\"}"),
        "spec.targets[0].container",
    );
    assert!(e.message.contains("never starts with \"-\""), "{e}");
}

#[test]
fn host_wide_targets_are_allowed_only_when_the_policy_says_so() {
    assert!(!parse_ok(&small("a", "{cgroup: app}")).allow_host_wide);
    let text =
        small("a", "{cgroup: app}").replace("  duration:", "  allow_host_wide: true\n  duration:");
    assert!(parse_ok(&text).allow_host_wide);
}

/// Eight rules of 65,535 single ports each (3.6 MB of YAML, under the 4 MiB limit) parse and
/// compile in one pass: the piece-by-run search this replaced was quadratic (one such rule
/// took 11.7 s, ten 56 s). The time is printed, not asserted.
#[test]
fn sixty_five_thousand_single_ports_in_eight_rules_compile_linearly() {
    let ports: Vec<String> = (1..=65535u32).map(|p| p.to_string()).collect();
    let ports = ports.join(", ");
    let rules: String = (0..8)
        .map(|i| {
            format!(
                "    - direction: egress\n      match: {{protocol: udp, ports: [{ports}]}}\n      drop: {{probability: {}%}}\n",
                i + 1
            )
        })
        .collect();
    let text = format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: t\nspec:\n  duration: 30s\n  \
         targets:\n    - pid: 1\n  network:\n{rules}"
    );
    assert!(text.len() < 4 << 20, "{} bytes", text.len());
    let begun = std::time::Instant::now();
    let policy = parse_ok(&text);
    let entries = lpm_entries(&policy.rules).expect("compiles");
    eprintln!(
        "{} bytes, {} rules: parsed and compiled to {} entries in {:?}",
        text.len(),
        policy.rules.len(),
        entries.len(),
        begun.elapsed()
    );
    // The first rule covers every port, so every entry is its.
    assert!(entries.iter().all(|(_, _, index)| *index == 0));
    assert_eq!(entries.len() % 65535, 0, "one entry per port and direction");
}

fn with_targets(targets: &str) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: t\nspec:\n  duration: 30s\n  \
         targets:\n{targets}  network:\n    - direction: egress\n      drop: {{probability: 5%}}\n"
    )
}

#[test]
fn pod_targets_name_a_pod_or_select_pods_by_labels() {
    let policy = parse_ok(&with_targets(
        "    - pod: {namespace: db, name: pg-0}\n    \
         - pods: {namespace: db, labels: {app: pg, tier: replica}, container: postgres}\n",
    ));
    let sel = |name: Option<&str>, labels: &[(&str, &str)], container: Option<&str>| {
        TargetSpec::Pod(crate::cri::PodSelector {
            namespace: "db".into(),
            name: name.map(Into::into),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            container: container.map(Into::into),
        })
    };
    assert_eq!(
        policy.targets,
        [
            sel(Some("pg-0"), &[], None),
            sel(
                None,
                &[("app", "pg"), ("tier", "replica")],
                Some("postgres")
            ),
        ]
    );
}

#[test]
fn pod_targets_refuse_what_names_no_pod() {
    parse_err(
        &with_targets("    - pods: {namespace: db, labels: {}}\n"),
        "spec.targets[0].pods.labels",
    );
    parse_err(
        &with_targets("    - pod: {namespace: '', name: pg-0}\n"),
        "spec.targets[0].pod.namespace",
    );
    parse_err(
        &with_targets("    - pod: {namespace: db}\n"),
        "spec.targets[0].pod",
    );
    let e = parse_err(
        &with_targets("    - {pod: {namespace: db, name: a}, pid: 3}\n"),
        "spec.targets[0]",
    );
    assert!(e.to_string().contains("not several"), "{e}");
}
