//! `fault schema` against an independent validator, check-jsonschema: every example policy
//! and every policy in README.md passes it, and malformed policies are refused by it and by
//! `fault check` alike. Also `fault completions` and `fault man` as the binary prints them.
//!
//! check-jsonschema (PyPI) is installed by `cargo xtask setup`; without it these tests fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const FAULT: &str = env!("CARGO_BIN_EXE_fault");

/// A directory of its own for one test, removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fault-schema-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// `fault schema`, written here.
    fn schema(&self) -> PathBuf {
        let out = run(Command::new(FAULT).arg("schema"));
        assert!(out.status.success(), "fault schema: {}", shown(&out));
        let text = String::from_utf8(out.stdout).expect("UTF-8 JSON");
        serde_json::from_str::<serde_json::Value>(&text).expect("fault schema prints JSON");
        self.write("fault.schema.json", &text)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn shown(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// check-jsonschema on PATH, or where pip puts it; a test that needs it fails without it.
fn check_jsonschema() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/bin"));
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/local/bin")])
        .chain(home)
        .map(|dir| dir.join("check-jsonschema"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "check-jsonschema is not installed (looked on PATH, in /usr/local/bin and \
                 ~/.local/bin): run `cargo xtask setup`"
            )
        })
}

fn check_against(schema: &Path, files: &[PathBuf]) -> Command {
    let mut command = Command::new(check_jsonschema());
    command.arg("--schemafile").arg(schema).args(files);
    command
}

/// One check-jsonschema run over all `files`: it succeeds when every one of them passes.
fn validate(schema: &Path, files: &[PathBuf]) -> Output {
    run(&mut check_against(schema, files))
}

/// One check-jsonschema run per file, a few at a time (each run is mostly Python starting).
fn validate_each(schema: &Path, files: &[PathBuf]) -> Vec<Output> {
    let at_once = std::thread::available_parallelism().map_or(2, |n| n.get() * 4);
    let mut outputs = Vec::new();
    for chunk in files.chunks(at_once) {
        let children: Vec<_> = chunk
            .iter()
            .map(|file| {
                let mut command = check_against(schema, std::slice::from_ref(file));
                command.stdout(Stdio::piped()).stderr(Stdio::piped());
                command
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
            })
            .collect();
        outputs.extend(children.into_iter().map(|child| {
            child
                .wait_with_output()
                .unwrap_or_else(|e| panic!("check-jsonschema: {e}"))
        }));
    }
    outputs
}

/// The YAML blocks of README.md as policies: whole documents as they are, fragments of
/// `spec` inside a minimal policy, as the unit test readme_examples_parse reads them.
fn readme_policies() -> Vec<String> {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("README.md next to fault-user");
    let mut blocks = Vec::new();
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("a closed code block");
        blocks.push(match body.starts_with("apiVersion") {
            true => body[..end].to_owned(),
            false => format!(
                "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {{name: readme}}\nspec:\n  \
                 duration: 1m\n  targets: [{{cgroup: /}}]\n{}",
                &body[..end]
            ),
        });
        rest = &body[end + 3..];
    }
    blocks
}

#[test]
fn every_example_and_readme_policy_matches_the_schema() {
    let scratch = Scratch::new("examples");
    let schema = scratch.schema();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    let examples = files.len();
    assert!(
        examples >= 9,
        "expected the example policies, found {examples}"
    );
    let readme = readme_policies();
    assert!(
        readme.len() >= 3,
        "expected README's examples, found {}",
        readme.len()
    );
    for (i, text) in readme.iter().enumerate() {
        files.push(scratch.write(&format!("readme-{i}.yaml"), text));
    }
    let out = validate(&schema, &files);
    assert!(
        out.status.success(),
        "{examples} files of policies/ and {} README examples against the schema: {}",
        readme.len(),
        shown(&out)
    );
}

/// A valid policy with one rule of each kind, for the mistakes below to break.
const POLICY: &str = r#"apiVersion: fault/v1
kind: FaultPolicy
metadata:
  name: lossy-replica-link
spec:
  duration: 2m
  targets:
    - cgroup: game/app
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
  clock:
    - name: behind
      offset: -2s
      drift: 500ppm
"#;

/// A valid experiment whose step list comes last, for the mistakes below to break.
const EXPERIMENT: &str = r#"apiVersion: fault/v1
kind: Experiment
metadata: {name: game}
spec:
  duration: 1m
  groups:
    a: [{cgroup: ga}]
    b: [{cgroup: gb}]
  probes:
    - {name: up, tcp: "10.0.0.1:80", every: 1s, timeout: 500ms}
  abort_when:
    - {probe: up, failures: 3}
  steps:
    - {name: split, at: 0s, for: 10s, partition: {between: [a, b]}}
    - {name: slow, at: 10s, for: 10s, targets: a, network: [{direction: egress, delay: {latency: 10ms}}]}
"#;

/// `base` with `from` replaced by `to`; `from` must be there.
fn edit(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "{from:?} is not in the base document");
    base.replacen(from, to, 1)
}

/// Structural mistakes, from the unit tests' corpus (policy/tests.rs and experiment_tests.rs):
/// each one a schema can see.
fn malformed() -> Vec<(&'static str, String)> {
    let p = POLICY;
    let e = EXPERIMENT;
    vec![
        // FaultPolicy
        ("unknown-rule-field", edit(p, "      duplicate:", "      latency: 10ms\n      duplicate:")),
        ("unknown-metadata-field", edit(p, "  name: lossy", "  labels: {}\n  name: lossy")),
        ("unknown-top-level-field", format!("{p}status: {{}}\n")),
        ("missing-duration", edit(p, "  duration: 2m\n", "")),
        ("missing-api-version", edit(p, "apiVersion: fault/v1\n", "")),
        ("bad-api-version", edit(p, "fault/v1", "fault/v2")),
        ("bad-kind", edit(p, "kind: FaultPolicy", "kind: Policy")),
        ("duration-not-a-duration", edit(p, "duration: 2m", "duration: soon")),
        ("duration-without-unit", edit(p, "duration: 2m", "duration: 30")),
        ("duration-zero", edit(p, "duration: 2m", "duration: 0s")),
        ("bad-policy-name", edit(p, "name: lossy-replica-link", "name: Lossy")),
        ("bad-rule-name", edit(p, "name: replica-loss", "name: \"has space\"")),
        ("no-targets", edit(p, "    - cgroup: game/app\n    - container: pg-replica\n    - pid: 4242\n", "    []\n")),
        ("two-kinds-of-target", edit(p, "pid: 4242", "{pid: 4242, container: web}")),
        ("empty-target", edit(p, "pid: 4242", "{}")),
        ("unknown-target-kind", edit(p, "pid: 4242", "pod: web")),
        ("pid-zero", edit(p, "pid: 4242", "pid: 0")),
        ("pid-negative", edit(p, "pid: 4242", "pid: -3")),
        ("cgroup-parent", edit(p, "cgroup: game/app", "cgroup: game/../../etc")),
        ("direction-bad-enum", edit(p, "direction: egress", "direction: sideways")),
        ("direction-wrong-type", edit(p, "direction: egress", "direction: [egress]")),
        ("protocol-bad-enum", edit(p, "protocol: udp", "protocol: sctp")),
        ("icmp-with-ports", edit(p, "protocol: udp", "protocol: icmp")),
        ("probability-above-one", edit(p, "probability: 5%", "probability: 1.5")),
        ("percentage-above-100", edit(p, "probability: 1%, checksum", "probability: 101%, checksum")),
        ("probability-negative", edit(p, "correlation: 25%", "correlation: -0.1")),
        ("probability-not-a-number", edit(p, "duplicate: {probability: 1%}", "duplicate: {probability: abc}")),
        ("cidr-prefix-too-long", edit(p, "10.88.0.0/16", "10.0.0.0/33")),
        ("cidr-v6-prefix-too-long", edit(p, "\"fd00::/8\"", "\"fd00::/129\"")),
        ("cidr-a-host-name", edit(p, "10.88.0.0/16", "example.com")),
        ("port-zero", edit(p, "[5432, \"6000-6100\"]", "[0]")),
        ("port-too-high", edit(p, "[5432, \"6000-6100\"]", "[65536]")),
        ("port-range-open", edit(p, "[5432, \"6000-6100\"]", "[80, \"90-\"]")),
        ("port-a-name", edit(p, "[5432, \"6000-6100\"]", "[\"http\"]")),
        ("port-wrong-type", edit(p, "[5432, \"6000-6100\"]", "[true]")),
        ("checksum-bad-enum", edit(p, "checksum: fix", "checksum: recompute")),
        ("drop-two-models", edit(p, "{probability: 5%, correlation: 25%}", "{probability: 1%, gilbert_elliott: {p: 0.1, r: 0.2}}")),
        ("drop-correlation-alone", edit(p, "{probability: 5%, correlation: 25%}", "{correlation: 10%}")),
        ("drop-empty", edit(p, "{probability: 5%, correlation: 25%}", "{}")),
        ("gilbert-elliott-missing-r", edit(p, "{probability: 5%, correlation: 25%}", "{gilbert_elliott: {p: 0.1}}")),
        ("no-action", edit(p, "      drop: {probability: 5%, correlation: 25%}\n      corrupt: {probability: 1%, checksum: fix}\n      duplicate: {probability: 1%}\n", "")),
        ("partition-and-drop", edit(p, "      corrupt:", "      partition: true\n      corrupt:")),
        ("loopback-wrong-type", edit(p, "protocol: udp", "protocol: udp\n        loopback: 1")),
        ("distribution-bad-enum", edit(p, "      duplicate:", "      delay: {latency: 10ms, distribution: gaussian}\n      duplicate:")),
        ("latency-without-unit", edit(p, "      duplicate:", "      delay: {latency: 10}\n      duplicate:")),
        ("rate-not-a-rate", edit(p, "      duplicate:", "      rate: 10 apples\n      duplicate:")),
        ("reorder-without-delay", edit(p, "      duplicate:", "      rate: 1mbit\n      reorder: {probability: 5%}\n      duplicate:")),
        ("clock-unknown-name", edit(p, "      offset: -2s", "      clocks: [realtime, wallclock]\n      offset: -2s")),
        ("clock-listed-twice", edit(p, "      offset: -2s", "      clocks: [tai, tai]\n      offset: -2s")),
        ("clock-all-and-more", edit(p, "      offset: -2s", "      clocks: [all, monotonic]\n      offset: -2s")),
        ("clocks-empty", edit(p, "      offset: -2s", "      clocks: []\n      offset: -2s")),
        ("offset-without-unit", edit(p, "offset: -2s", "offset: 2")),
        ("offset-in-words", edit(p, "offset: -2s", "offset: two seconds")),
        ("drift-without-ppm", edit(p, "drift: 500ppm", "drift: 500")),
        ("jitter-negative", edit(p, "drift: 500ppm", "drift: 500ppm\n      jitter: -1ms")),
        ("jumps-missing-by", edit(p, "drift: 500ppm", "drift: 500ppm\n      jumps: {every: 1s}")),
        ("jumps-and-strobe", edit(p, "drift: 500ppm", "drift: 500ppm\n      jumps: {every: 1s, by: 1s}\n      strobe: {every: 1s, by: 1s}")),
        ("clock-rule-without-fault", edit(p, "      offset: -2s\n      drift: 500ppm\n", "      clocks: [tai]\n")),
        ("unknown-clock-field", edit(p, "drift: 500ppm", "drift: 500ppm\n      skew: 1s")),
        ("no-rules", format!("{}  network: []\n", p.split("  network:").next().unwrap())),
        ("broken-yaml-shape", "- 1\n- 2\n".to_owned()),
        // Experiment
        ("experiment-unknown-step-field", edit(e, "partition: {between: [a, b]}}", "partition: {between: [a, b]}, when: later}")),
        ("experiment-missing-steps", e.split("  steps:").next().unwrap().to_owned()),
        ("experiment-no-steps", format!("{}  steps: []\n", e.split("  steps:").next().unwrap())),
        ("experiment-no-groups", edit(e, "  groups:\n    a: [{cgroup: ga}]\n    b: [{cgroup: gb}]\n", "  groups: {}\n")),
        ("experiment-empty-group", edit(e, "b: [{cgroup: gb}]", "b: []")),
        ("experiment-bad-group-name", edit(e, "b: [{cgroup: gb}]", "\"b c\": [{cgroup: gb}]")),
        ("experiment-seed-negative", edit(e, "  duration: 1m\n", "  duration: 1m\n  seed: -1\n")),
        ("experiment-step-at-not-a-duration", edit(e, "at: 10s", "at: soon")),
        ("experiment-step-for-zero", edit(e, "for: 10s, targets", "for: 0s, targets")),
        ("experiment-step-two-kinds", edit(e, "partition: {between: [a, b]}}", "partition: {between: [a, b]}, pause: {for: 1s, every: 2s}}")),
        ("experiment-step-no-kind", edit(e, ", partition: {between: [a, b]}}", ", targets: a}")),
        ("experiment-step-without-targets", edit(e, "targets: a, network", "network")),
        ("experiment-partition-with-targets", edit(e, "for: 10s, partition", "for: 10s, targets: a, partition")),
        ("experiment-empty-network-step", edit(e, "network: [{direction: egress, delay: {latency: 10ms}}]", "network: []")),
        ("experiment-partition-two-forms", edit(e, "{between: [a, b]}", "{between: [a, b], isolate: a}")),
        ("experiment-partition-between-three", edit(e, "{between: [a, b]}", "{between: [a, b, a]}")),
        ("experiment-topology-bad-enum", edit(e, "{between: [a, b]}", "{topology: star, of: [a, b]}")),
        ("experiment-topology-without-of", edit(e, "{between: [a, b]}", "{topology: bridge}")),
        ("experiment-one-way-without-between", edit(e, "{between: [a, b]}", "{isolate: a, one_way: true}")),
        ("experiment-flap-on-a-pause", edit(e, "partition: {between: [a, b]}}", "targets: b, pause: {for: 1s, every: 2s}, flap: {on: 1s, off: 1s}}")),
        ("experiment-pause-missing-every", edit(e, "partition: {between: [a, b]}}", "targets: b, pause: {for: 1s}}")),
        ("experiment-probe-without-timeout", edit(e, ", timeout: 500ms}", "}")),
        ("experiment-probe-bad-address", edit(e, "tcp: \"10.0.0.1:80\"", "tcp: nowhere")),
        ("experiment-probe-two-checks", edit(e, "tcp: \"10.0.0.1:80\"", "tcp: \"10.0.0.1:80\", exec: [\"true\"]")),
        ("experiment-probe-https", edit(e, "tcp: \"10.0.0.1:80\"", "http: {url: \"https://10.0.0.1/\"}")),
        ("experiment-abort-zero-failures", edit(e, "failures: 3", "failures: 0")),
        ("experiment-abort-ratio-without-window", edit(e, "failures: 3", "failure_ratio: 50%")),
        ("experiment-abort-both-forms", edit(e, "failures: 3", "failures: 3, failure_ratio: 50%, window: 10s")),
        ("experiment-ramp-out-of-range", edit(e, "delay: {latency: 10ms}", "drop: {probability: {from: 1%, to: 120%}}")),
        ("experiment-kind-policy-fields", edit(e, "kind: Experiment", "kind: FaultPolicy")),
    ]
}

#[test]
fn malformed_policies_are_refused_by_the_schema_and_by_fault_check() {
    let scratch = Scratch::new("malformed");
    let schema = scratch.schema();
    let corpus = malformed();
    assert!(corpus.len() >= 12, "a corpus of {}", corpus.len());
    let files: Vec<PathBuf> = corpus
        .iter()
        .map(|(name, text)| scratch.write(&format!("{name}.yaml"), text))
        .collect();
    let mut problems = Vec::new();
    let verdicts = validate_each(&schema, &files);
    for (((name, text), file), schema_says) in corpus.iter().zip(&files).zip(verdicts) {
        if schema_says.status.success() {
            problems.push(format!("{name}: the schema accepts it:\n{text}"));
        }
        let check = run(Command::new(FAULT).arg("check").arg(file));
        if check.status.code() != Some(2) {
            problems.push(format!(
                "{name}: fault check should exit 2: {}",
                shown(&check)
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} cases:\n{}",
        problems.len(),
        corpus.len(),
        problems.join("\n\n")
    );
}

/// Valid documents written in the less common ways validation accepts, which the schema's
/// patterns must accept as well.
fn unusual_but_valid() -> Vec<(&'static str, String)> {
    let p = POLICY;
    let e = EXPERIMENT;
    vec![
        ("policy-as-is", p.to_owned()),
        ("experiment-as-is", e.to_owned()),
        ("duration-spaced-and-fractional", edit(p, "duration: 2m", "duration: 1m 30.5s")),
        ("duration-long-units", edit(p, "duration: 2m", "duration: 2 minutes")),
        ("probability-forms", edit(p, "{probability: 5%, correlation: 25%}", "{probability: \"5 %\", correlation: \"0.25\"}")),
        ("probability-bounds", edit(p, "corrupt: {probability: 1%", "corrupt: {probability: 1").replace("duplicate: {probability: 1%}", "duplicate: {probability: 0}")),
        ("probability-exponent", edit(p, "probability: 5%", "probability: \"5e-2\"")),
        ("ports-spaced", edit(p, "[5432, \"6000-6100\"]", "[\" 80 \", \"1000 - 1010\", 65535]")),
        ("bare-addresses", edit(p, "[10.88.0.0/16, \"fd00::/8\"]", "[10.0.0.5, \"::1\", \"::ffff:10.0.0.1/128\", 0.0.0.0/0, 010.0.0.0/08, \"fd00::/008\"]")),
        ("null-fields", edit(p, "- name: replica-loss", "- name: ~\n      reorder: ~")),
        ("gilbert-elliott", edit(p, "{probability: 5%, correlation: 25%}", "{gilbert_elliott: {p: 1%, r: 30%, loss_bad: 0.5}}")),
        ("timing", edit(p, "      duplicate:", "      delay: {latency: 0, jitter: 1.5ms, distribution: paretonormal}\n      rate: 1.5Gbit\n      reorder: {probability: 1%}\n      duplicate:")),
        ("clock-forms", edit(p, "      offset: -2s\n      drift: 500ppm\n", "      clocks: [\" realtime \", tai]\n      offset: \"+ 1.5s\"\n      drift: -1.5e2 ppm\n      jitter: .5ms\n      jumps: {every: 30s, by: -1s}\n")),
        ("clock-all-and-strobe", edit(p, "      offset: -2s\n      drift: 500ppm\n", "      clocks: [all]\n      strobe: {every: 200ms, by: 5s}\n      allow_backwards: true\n")),
        ("experiment-forms", edit(e, "partition: {between: [a, b]}}", "partition: {groups: [[a], [b]]}}").replace("targets: a,", "targets: [a, b],")),
        ("experiment-probes", edit(e, "{name: up, tcp: \"10.0.0.1:80\", every: 1s, timeout: 500ms}", "{name: up, http: {url: \"http://10.0.0.1/\", status: 204}, from: b, every: 1s, timeout: 1s}\n    - {name: ok, exec: [\"true\"], every: 2s, timeout: 1s}\n    - {name: v6, tcp: \"[fd00::5]:80\", every: 2s, timeout: 1s}").replace("{probe: up, failures: 3}", "{probe: up, failure_ratio: 0.5, window: 10s}")),
    ]
}

#[test]
fn unusual_but_valid_policies_pass_the_schema_and_fault_check() {
    let scratch = Scratch::new("valid");
    let schema = scratch.schema();
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for (name, text) in unusual_but_valid() {
        let file = scratch.write(&format!("{name}.yaml"), &text);
        let check = run(Command::new(FAULT).arg("check").arg(&file));
        if !check.status.success() {
            problems.push(format!("{name}: fault check refuses it: {}", shown(&check)));
        }
        files.push(file);
    }
    let schema_says = validate(&schema, &files);
    if !schema_says.status.success() {
        problems.push(format!("the schema refuses some: {}", shown(&schema_says)));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// What only `fault check` can see: ranges past a pattern and references between values.
/// Kept here so that the line between the two is written down and stays where it is.
fn semantic() -> Vec<(&'static str, String)> {
    let p = POLICY;
    let e = EXPERIMENT;
    vec![
        ("duration-past-a-day", edit(p, "duration: 2m", "duration: 25h")),
        ("port-range-backwards", edit(p, "\"6000-6100\"", "\"100-90\"")),
        ("duplicate-rule-names", edit(p, "- name: behind", "- name: replica-loss")),
        ("drift-too-fast", edit(p, "drift: 500ppm", "drift: 600000ppm")),
        ("delay-past-fq-horizon", edit(p, "      duplicate:", "      delay: {latency: 9s, jitter: 1s}\n      duplicate:")),
        ("monotonic-backwards", edit(p, "      offset: -2s", "      clocks: [monotonic]\n      offset: -2s")),
        ("ramp-in-a-policy", edit(p, "probability: 5%, correlation: 25%", "probability: {from: 1%, to: 2%}")),
        ("step-past-duration", edit(e, "at: 10s, for: 10s", "at: 50s, for: 20s")),
        ("unknown-group", edit(e, "between: [a, b]", "between: [a, zz]")),
        ("unknown-probe", edit(e, "{probe: up, failures: 3}", "{probe: down, failures: 3}")),
        ("target-in-two-groups", edit(e, "b: [{cgroup: gb}]", "b: [{cgroup: ga}]")),
        ("timeout-past-every", edit(e, "timeout: 500ms", "timeout: 2s")),
        // NaN is a number to JSON Schema, and every comparison with it is false.
        ("probability-nan", edit(p, "duplicate: {probability: 1%}", "duplicate: {probability: .nan}")),
        ("overlapping-steps", format!("{e}    - {{name: lossy, at: 15s, for: 10s, targets: a, network: [{{direction: egress, drop: {{probability: 5%}}}}]}}\n")),
    ]
}

#[test]
fn semantic_mistakes_are_left_to_fault_check() {
    let scratch = Scratch::new("semantic");
    let schema = scratch.schema();
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for (name, text) in semantic() {
        let file = scratch.write(&format!("{name}.yaml"), &text);
        let check = run(Command::new(FAULT).arg("check").arg(&file));
        if check.status.code() != Some(2) {
            problems.push(format!(
                "{name}: fault check should exit 2: {}",
                shown(&check)
            ));
        }
        files.push(file);
    }
    let schema_says = validate(&schema, &files);
    if !schema_says.status.success() {
        problems.push(format!(
            "the schema refuses some (move them to malformed()): {}",
            shown(&schema_says)
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

#[test]
fn completions_and_man_page_describe_the_command_line() {
    let out = run(Command::new(FAULT).args(["completions", "bash"]));
    assert!(
        out.status.success(),
        "fault completions bash: {}",
        shown(&out)
    );
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(script.contains("apply"), "no apply in:\n{script}");

    let out = run(Command::new(FAULT).arg("man"));
    assert!(out.status.success(), "fault man: {}", shown(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    let title = page
        .lines()
        .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
        .unwrap_or_default();
    assert!(title.starts_with(".TH fault 1"), "not a man page:\n{page}");
}
