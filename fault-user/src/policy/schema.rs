//! The JSON Schema of policy files (`fault schema`), for editors and validators.
//!
//! It is generated from the serde types that read policies (`document` for `FaultPolicy`,
//! `experiment_document` for `Experiment`), so a field cannot be added to one and forgotten
//! in the other: `deny_unknown_fields` becomes `additionalProperties: false`, optional
//! fields are left out of `required`, and doc comments become descriptions. What serde keeps
//! as text for validation to read (durations, probabilities, ports, addresses, rates) gets a
//! schema here, with a pattern for what validation reads (they part only in odd corners, each
//! noted at its pattern); so do the combinations validation insists on (one kind of target,
//! one kind of step, ...), through the `*_rules` transforms the types name. What needs more than one value at a time, or arithmetic, to check (steps
//! past `duration`, unknown group names, overlapping steps, ranges such as 24h) is left to
//! `fault check`. tests/schema.rs holds both sides of that line to an independent validator.

use std::borrow::Cow;

use schemars::{generate::SchemaSettings, json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Value};

use super::document::{Document, HumanDuration, PortSpec, Probability, Ramp};
use super::experiment::MAX_GROUPS;
use super::experiment_document::{ExperimentDocument, GroupNames};
use super::{ClockId, API_VERSION, KIND, KIND_EXPERIMENT};

/// The schema's `$id`: a name, not a place to download it from (`fault schema` prints it).
pub const SCHEMA_ID: &str = "urn:fault:policy-schema:fault-v1";

/// `metadata.name`, as `validate::policy_name` takes it.
pub(super) const POLICY_NAME: &str = "^[a-z0-9][a-z0-9-]{0,39}$";
/// Names of rules, steps, probes and groups, as `validate::rule_name` takes them.
pub(super) const RULE_NAME: &str = "^[A-Za-z0-9_.-]{1,32}$";
/// The most steps `experiment` takes (its MAX_STEPS).
pub(super) const MAX_STEPS: usize = 256;

/// The schema of both kinds of policy file, as one document.
pub fn policy_schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let policy = generator.subschema_for::<Document>();
    let experiment = generator.subschema_for::<ExperimentDocument>();
    let definitions = generator.take_definitions(true);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": format!("fault policy file ({API_VERSION})"),
        "description": format!(
            "The policy files of fault, the per-cgroup eBPF fault injector: kind {KIND} (rules \
             for the whole run) or kind {KIND_EXPERIMENT} (steps on a timeline). `fault check` \
             validates a file completely; this schema catches what one value at a time shows."
        ),
        // What `policy::parse` reads first (its Header), for a clear error on a wrong kind.
        "type": "object",
        "required": ["apiVersion", "kind"],
        "properties": {
            "apiVersion": {"const": API_VERSION},
            "kind": {"enum": [KIND, KIND_EXPERIMENT]},
        },
        "oneOf": [policy, experiment],
        "$defs": definitions,
    })
}

// ---- the values serde leaves as text --------------------------------------------------------

/// humantime's units, all of them (humantime::parse_duration).
const UNITS: &str = "nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|\
                     minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|\
                     months|month|M|years|year|yrs|yr|y";
/// The units a clock value may take with a decimal humantime does not read (`.5s`).
const CLOCK_UNITS: &str = "ns|us|µs|ms|s|m|min|h|d";

/// One or more humantime spans (`1m 30s`, `1.5s`, `500ms`) whose numbers match `number`.
fn spans(number: &str) -> String {
    format!(r"{number}\s*({UNITS})(\s*{number}\s*({UNITS}))*")
}

/// A humantime duration, `0` included.
fn duration_pattern() -> String {
    format!(r"^\s*(0|{})\s*$", spans(r"[0-9]+(\.[0-9]+)?"))
}

/// A duration that is zero, however written (`0s`, `0ms 0.0s`).
fn zero_duration_pattern() -> String {
    format!(r"^\s*(0|{})\s*$", spans(r"0+(\.0+)?"))
}

/// A clock value's magnitude, as `validate::signed_duration` reads it after the sign.
fn clock_magnitude() -> String {
    format!(
        r"(0|{}|([0-9]+\.?[0-9]*|\.[0-9]+)\s*({CLOCK_UNITS}))",
        spans(r"[0-9]+(\.[0-9]+)?")
    )
}

/// A probability written as text: `0.05`, `"5%"`, `"5 %"`, in [0, 1]. Exponents (`5e-2`) are
/// let through whatever their value; a negative zero (`-0`), which validation takes, is not.
fn probability_pattern() -> String {
    let fraction = r"0*(1(\.0*)?|0(\.[0-9]*)?|\.[0-9]+)";
    let percent = r"0*(100(\.0*)?|[0-9]{1,2}(\.[0-9]*)?|\.[0-9]+)";
    let exponent = r"([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+";
    format!(r"^\s*\+?({fraction}|{exponent})\s*$|^\s*\+?({percent}|{exponent})\s*%\s*$")
}

/// A port, 1 to 65535, as `validate::port_range` reads each end.
const PORT_NUMBER: &str =
    r"\+?0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";
/// 0 to 255 without leading zeros, as std's parser reads an IPv4 address.
const OCTET: &str = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
/// 0 to 255 in up to three digits, as ipnet reads the address of an IPv4 prefix (`010.0.0.0/8`).
const PREFIX_OCTET: &str = r"(25[0-5]|2[0-4][0-9]|[01]?[0-9]{1,2})";

fn ipv4() -> String {
    format!(r"{OCTET}(\.{OCTET}){{3}}")
}

/// An IPv4 prefix as ipnet reads it: the length in up to two digits (`/08`), at most 32.
fn ipv4_prefix() -> String {
    format!(r"{PREFIX_OCTET}(\.{PREFIX_OCTET}){{3}}/(3[0-2]|[0-2]?[0-9])")
}

/// Hex groups and colons, maybe ending in an IPv4 address: what std's parser checks in
/// full is only roughly checked here.
fn ipv6() -> String {
    format!(
        r"([0-9A-Fa-f]{{0,4}}:){{2,7}}([0-9A-Fa-f]{{0,4}}|{})",
        ipv4()
    )
}

/// A named schema kept in `$defs`: `name`, and what `schema` builds.
macro_rules! defined {
    ($type:ty, $name:literal, $generator:ident => $schema:expr) => {
        impl JsonSchema for $type {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }

            fn schema_id() -> Cow<'static, str> {
                Cow::Borrowed(concat!(module_path!(), "::", $name))
            }

            #[allow(unused_variables)]
            fn json_schema($generator: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

/// `at`: a duration that may be zero.
pub(super) struct Offset;
/// `delay.latency` and `delay.jitter`: a duration that may be zero, or a bare 0.
pub(super) struct Latency;
/// A clock offset or jump: a duration with an optional sign, or 0.
pub(super) struct SignedDuration;
/// A clock jitter or jump interval: a duration without a minus sign, or 0 (`-0s`, which
/// validation takes, is refused).
pub(super) struct ClockDuration;
/// A clock drift in parts per million.
pub(super) struct Ppm;
/// A rate in tc's notation.
pub(super) struct Rate;
/// A peer address or prefix.
pub(super) struct Cidr;
/// A cgroup path.
pub(super) struct CgroupPath;
/// One of the clocks a rule can fault.
pub(super) struct ClockName;
/// A probe's address and port.
pub(super) struct SocketAddress;
/// A drop probability, which an experiment step may ramp.
pub(super) struct ProbabilityOrRamp;

defined!(HumanDuration, "Duration", g => json_schema!({
    "description": "A duration longer than zero, like 500ms, 30s, 2m, 1h or 1m 30s.",
    "type": "string",
    "pattern": duration_pattern(),
    // Typed, so that a number is refused only for not being text.
    "not": {"type": "string", "pattern": zero_duration_pattern()},
}));

defined!(Offset, "Offset", g => json_schema!({
    "description": "A duration from the start, like 0s, 30s or 1m 30s.",
    "type": "string",
    "pattern": duration_pattern(),
}));

defined!(Latency, "Latency", g => json_schema!({
    "description": "A duration like 100ms or 1s (or 0).",
    "anyOf": [
        {"type": "string", "pattern": duration_pattern()},
        {"const": 0},
    ],
}));

defined!(SignedDuration, "SignedDuration", g => json_schema!({
    "description": "A duration with an optional sign, like -2s, +1.5s or 500ms (or 0).",
    "anyOf": [
        {"type": "string", "pattern": format!(r"^\s*[-+]?\s*{}\s*$", clock_magnitude())},
        {"const": 0},
    ],
}));

defined!(ClockDuration, "ClockDuration", g => json_schema!({
    "description": "A duration like 2ms, 1.5s or 30s (or 0).",
    "anyOf": [
        {"type": "string", "pattern": format!(r"^\s*\+?\s*{}\s*$", clock_magnitude())},
        {"const": 0},
    ],
}));

defined!(Ppm, "Ppm", g => json_schema!({
    "description": "Parts per million, like 500ppm or -20ppm (or 0); positive runs fast.",
    "anyOf": [
        {
            "type": "string",
            "pattern": r"^\s*(0|[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*ppm)\s*$",
        },
        {"const": 0},
    ],
}));

defined!(Rate, "Rate", g => json_schema!({
    "description": "A rate as tc writes it: bit, kbit, mbit, gbit (bits per second) or bps, \
                    kbps, mbps, gbps (bytes), like 10mbit or 500kbps.",
    "type": "string",
    "pattern": r"^\s*([0-9]+\.?[0-9]*|\.[0-9]+)([kKmMgG]?[bB][iI][tT]|[kKmMgG]?[bB][pP][sS])\s*$",
}));

defined!(Cidr, "Cidr", g => json_schema!({
    "description": "An IPv4 or IPv6 address or CIDR, like 10.88.0.0/16, 10.0.0.5 or fd00::/8.",
    "type": "string",
    "pattern": format!(
        r"^\s*({}|{}|{}(/(12[0-8]|1[01][0-9]|0?[0-9]{{1,2}}))?)\s*$",
        ipv4(),
        ipv4_prefix(),
        ipv6()
    ),
}));

defined!(CgroupPath, "CgroupPath", g => json_schema!({
    "description": "A cgroup v2 path, absolute or relative to the cgroup2 mount, without \"..\".",
    "type": "string",
    "pattern": r"\S",
    "not": {"type": "string", "pattern": r"(^|/)\.\.(/|$)"},
}));

defined!(ClockName, "ClockName", g => {
    let names: Vec<&str> = ClockId::ALL.iter().map(|c| c.name()).collect();
    json_schema!({
        "description": "A clock, or all of them.",
        "type": "string",
        "pattern": format!(r"^\s*({}|all)\s*$", names.join("|")),
    })
});

defined!(SocketAddress, "SocketAddress", g => json_schema!({
    "description": "An address and port, like 10.0.0.5:5432 or [fd00::5]:80.",
    "type": "string",
    "pattern": format!(r"^\s*({}|\[{}(%[0-9A-Za-z]+)?\]):[0-9]{{1,5}}\s*$", ipv4(), ipv6()),
}));

defined!(Probability, "Probability", g => json_schema!({
    "description": "A probability: a number from 0 to 1 (0.05) or a percentage (\"5%\").",
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": 1},
        {"type": "string", "pattern": probability_pattern()},
    ],
}));

defined!(ProbabilityOrRamp, "ProbabilityOrRamp", g => json_schema!({
    "description": "A probability, or (in an experiment step only) a ramp {from, to}.",
    "anyOf": [g.subschema_for::<Probability>(), g.subschema_for::<Ramp>()],
}));

defined!(PortSpec, "Port", g => json_schema!({
    "description": "A port, 1 to 65535, or an inclusive range from low to high like \
                    \"6000-6100\".",
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": 65535},
        {"type": "string", "pattern": format!(r"^\s*{PORT_NUMBER}\s*(-\s*{PORT_NUMBER}\s*)?$")},
    ],
}));

defined!(GroupNames, "GroupNames", g => json_schema!({
    "description": "A group name, or a list of group names.",
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
    ],
}));

// ---- the combinations validation insists on -------------------------------------------------

/// The field is given, and not null (serde reads a null as left out).
fn present(field: &str) -> Value {
    json!({"required": [field], "properties": {field: {"not": {"type": "null"}}}})
}

/// The field is left out (or null).
fn absent(field: &str) -> Value {
    json!({"properties": {field: {"type": "null"}}})
}

/// The boolean field is given as true.
fn is_true(field: &str) -> Value {
    json!({"required": [field], "properties": {field: {"const": true}}})
}

fn exactly_one(fields: &[&str]) -> Value {
    json!({"oneOf": fields.iter().map(|f| present(f)).collect::<Vec<_>>()})
}

fn at_least_one(cases: Vec<Value>) -> Value {
    json!({"anyOf": cases})
}

/// Adds `rules` to those the schema's value must all satisfy.
fn add_rules(schema: &mut Schema, rules: impl IntoIterator<Item = Value>) {
    let all = schema
        .ensure_object()
        .entry("allOf")
        .or_insert_with(|| json!([]));
    if let Value::Array(all) = all {
        all.extend(rules);
    }
}

/// `validate::policy`: at least one rule, under network or clock.
pub(super) fn spec_rules(schema: &mut Schema) {
    let some = |field: &str| json!({"required": [field], "properties": {field: {"minItems": 1}}});
    add_rules(schema, [at_least_one(vec![some("network"), some("clock")])]);
}

/// `validate::target`: exactly one of cgroup, container or pid.
pub(super) fn target_rules(schema: &mut Schema) {
    add_rules(
        schema,
        [exactly_one(&["cgroup", "container", "pid", "pod", "pods"])],
    );
}

/// `validate::action` and `timing`: something to do, partition or drop, reorder with a delay.
pub(super) fn network_rule_rules(schema: &mut Schema) {
    let actions = at_least_one(vec![
        present("drop"),
        present("corrupt"),
        present("duplicate"),
        is_true("partition"),
        present("delay"),
        present("rate"),
    ]);
    add_rules(
        schema,
        [
            actions,
            json!({"not": {"allOf": [is_true("partition"), present("drop")]}}),
            json!({"if": present("reorder"), "then": present("delay")}),
        ],
    );
}

/// `validate::rule`: icmp has no ports.
pub(super) fn match_rules(schema: &mut Schema) {
    add_rules(
        schema,
        [json!({
            "if": {"required": ["protocol"], "properties": {"protocol": {"const": "icmp"}}},
            "then": {"properties": {"ports": {"maxItems": 0}, "local_ports": {"maxItems": 0}}},
        })],
    );
}

/// `validate::action`: Bernoulli (probability, maybe correlation) or Gilbert-Elliott.
pub(super) fn drop_rules(schema: &mut Schema) {
    let bernoulli = json!({"allOf": [present("probability"), absent("gilbert_elliott")]});
    let gilbert_elliott = json!({"allOf": [
        present("gilbert_elliott"),
        absent("probability"),
        absent("correlation"),
    ]});
    add_rules(schema, [json!({"oneOf": [bernoulli, gilbert_elliott]})]);
}

/// `validate::clock_rule` and `clock_list`: a fault to apply, jumps or strobe, `all` alone.
pub(super) fn clock_rule_rules(schema: &mut Schema) {
    let faults = ["offset", "drift", "jumps", "strobe", "jitter"];
    add_rules(
        schema,
        [
            at_least_one(faults.iter().map(|f| present(f)).collect()),
            json!({"not": {"allOf": [present("jumps"), present("strobe")]}}),
            json!({
                "if": {
                    "required": ["clocks"],
                    "properties": {"clocks": {
                        "type": "array",
                        "contains": {"pattern": r"^\s*all\s*$"},
                    }},
                },
                "then": {"properties": {"clocks": {"maxItems": 1}}},
            }),
        ],
    );
}

/// `experiment::groups`: 1 to MAX_GROUPS groups, each named like a rule, none empty.
pub(super) fn groups_rules(schema: &mut Schema) {
    schema.insert("minProperties".into(), json!(1));
    schema.insert("maxProperties".into(), json!(MAX_GROUPS));
    schema.insert("propertyNames".into(), json!({"pattern": RULE_NAME}));
    if let Some(Value::Object(targets)) = schema.get_mut("additionalProperties") {
        targets.insert("minItems".into(), json!(1));
    }
}

/// `experiment::step` and `window`: one kind per step; targets except for a partition,
/// which names its groups; no flap on a pause, which has its own rhythm.
pub(super) fn step_rules(schema: &mut Schema) {
    add_rules(
        schema,
        [
            exactly_one(&["network", "partition", "clock", "pause"]),
            json!({
                "if": present("partition"),
                "then": absent("targets"),
                "else": present("targets"),
            }),
            json!({"if": present("pause"), "then": absent("flap")}),
        ],
    );
}

/// `partition::cuts`: one form; one_way with between; topology and of together.
pub(super) fn partition_rules(schema: &mut Schema) {
    add_rules(
        schema,
        [
            exactly_one(&["between", "groups", "isolate", "topology"]),
            json!({"if": is_true("one_way"), "then": present("between")}),
            json!({"if": present("topology"), "then": present("of"), "else": absent("of")}),
        ],
    );
}

/// `experiment::probe_check`: one kind of check.
pub(super) fn probe_rules(schema: &mut Schema) {
    add_rules(schema, [exactly_one(&["tcp", "http", "exec"])]);
}

/// `experiment::aborts`: failures in a row, or a failure ratio over a window.
pub(super) fn abort_rules(schema: &mut Schema) {
    let in_a_row = json!({"allOf": [
        present("failures"),
        absent("failure_ratio"),
        absent("window"),
    ]});
    let ratio = json!({"allOf": [
        present("failure_ratio"),
        present("window"),
        absent("failures"),
    ]});
    add_rules(schema, [json!({"oneOf": [in_a_row, ratio]})]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition<'a>(schema: &'a Value, name: &str) -> &'a Value {
        schema
            .pointer(&format!("/$defs/{name}"))
            .unwrap_or_else(|| panic!("no $defs/{name} in the schema"))
    }

    #[test]
    fn both_kinds_are_described_and_told_apart_by_kind() {
        let schema = policy_schema();
        assert_eq!(schema["$id"], SCHEMA_ID);
        assert_eq!(
            schema["oneOf"],
            json!([{"$ref": "#/$defs/FaultPolicy"}, {"$ref": "#/$defs/Experiment"}])
        );
        for (name, kind) in [("FaultPolicy", KIND), ("Experiment", KIND_EXPERIMENT)] {
            let document = definition(&schema, name);
            assert_eq!(document["properties"]["kind"]["const"], kind, "{name}");
            assert_eq!(
                document["properties"]["apiVersion"]["const"], API_VERSION,
                "{name}"
            );
            assert_eq!(
                document["required"],
                json!(["apiVersion", "kind", "metadata", "spec"]),
                "{name}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused_where_serde_refuses_them() {
        let schema = policy_schema();
        let structs = [
            "FaultPolicy",
            "Experiment",
            "Metadata",
            "Spec",
            "ExperimentSpec",
            "Target",
            "NetworkRule",
            "Match",
            "DropSpec",
            "GilbertElliott",
            "Delay",
            "ClockRule",
            "Jumps",
            "Step",
            "Partition",
            "Probe",
            "AbortWhen",
            "Ramp",
        ];
        for name in structs {
            assert_eq!(
                definition(&schema, name)["additionalProperties"],
                json!(false),
                "{name}"
            );
        }
    }

    #[test]
    fn values_serde_keeps_as_text_have_their_own_schemas() {
        let schema = policy_schema();
        let spec = definition(&schema, "Spec");
        assert_eq!(spec["properties"]["duration"]["$ref"], "#/$defs/Duration");
        let rule = definition(&schema, "NetworkRule");
        assert_eq!(
            rule["properties"]["rate"]["anyOf"][0]["$ref"],
            "#/$defs/Rate"
        );
        let pattern = definition(&schema, "ClockName")["pattern"]
            .as_str()
            .expect("a pattern");
        for clock in ClockId::ALL {
            assert!(pattern.contains(clock.name()), "{clock} in {pattern}");
        }
    }
}
