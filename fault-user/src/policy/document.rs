//! The policy document as written: serde types that mirror the YAML one to one.
//!
//! Serde refuses here what it can see on its own: unknown fields, wrong types and missing
//! fields, with the line where it saw them. Ranges, formats (`5%`, `10.0.0.0/8`, `6000-6100`,
//! `2m`) and combinations (a target naming two kinds, a drop both Bernoulli and
//! Gilbert-Elliott) are left as written and checked by `validate`, which knows the YAML path
//! of each value and so can say exactly where a mistake is.
//!
//! The same types derive `JsonSchema` for `fault schema`; their doc comments are the
//! schema's descriptions, and `schema` describes what is left as text here.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::{schema, Protocol};

/// Just the two fields that say what the rest of the document is, read before anything else
/// so that a policy for another version is reported as such, not as a pile of field errors.
#[derive(Debug, Deserialize)]
#[serde(
    rename_all = "camelCase",
    expecting = "a policy document (a mapping with apiVersion, kind, metadata and spec)"
)]
pub(super) struct Header {
    pub api_version: String,
    pub kind: String,
}

/// `kind: FaultPolicy`: network and clock rules for a set of targets, all on for the whole
/// run.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a policy document (a mapping with apiVersion, kind, metadata and spec)"
)]
#[schemars(rename = "FaultPolicy")]
pub(super) struct Document {
    // Checked through `Header` already; kept here so deny_unknown_fields accepts them.
    #[expect(
        dead_code,
        reason = "validated from Header before the full document is read"
    )]
    #[schemars(extend("const" = super::API_VERSION))]
    pub api_version: String,
    #[expect(
        dead_code,
        reason = "validated from Header before the full document is read"
    )]
    #[schemars(extend("const" = super::KIND))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

/// What the run is called.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with name")]
pub(super) struct Metadata {
    /// The run's name: 1 to 40 characters from a-z, 0-9 and "-". It names the run's
    /// directories (/run/fault/NAME) and is what `fault stop NAME` takes.
    #[schemars(regex(pattern = schema::POLICY_NAME))]
    pub name: String,
}

/// A FaultPolicy's body: how long, who, and at least one network or clock rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with duration, targets, and network and/or clock"
)]
#[schemars(transform = schema::spec_rules)]
pub(super) struct Spec {
    /// How long the faults last (at most 24h); they end then even if fault is killed.
    pub duration: HumanDuration,
    /// Who the rules apply to: the union of these targets.
    #[schemars(length(min = 1))]
    pub targets: Vec<Target>,
    // Both optional for serde so that validation can say "at least one rule" in its own words.
    /// Packet rules; where several match a packet, the first one wins.
    #[serde(default)]
    pub network: Vec<NetworkRule>,
    /// Clock rules; a clock takes one rule.
    #[serde(default)]
    pub clock: Vec<ClockRule>,
    /// Fault targets that reach the whole host (the cgroup2 root, pid 1, kernel threads,
    /// fault's own cgroup or its ancestors, a cgroup with most of the host's processes),
    /// which fault otherwise refuses.
    #[serde(default)]
    pub allow_host_wide: bool,
}

/// A duration as written (`30s`); only strings, because a bare `30` has no unit.
#[derive(Debug)]
pub(super) struct HumanDuration(pub String);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit, like 500ms, 30s, 2m or 1h")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                Ok(HumanDuration(v.to_owned()))
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

/// One target, written as a single-key mapping (`- cgroup: game/app`).
///
/// Not an enum: serde_yaml 0.9 reads externally tagged enums only from YAML tags
/// (`!cgroup game/app`). Validation checks that exactly one field is set; it does so rather
/// than a `try_from` here because serde_yaml would place such an error at the line of the
/// enclosing list, which points at the wrong target.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a target: a mapping with one of cgroup, container, pid, pod or pods"
)]
#[schemars(
    description = "One target, a mapping with exactly one of cgroup, container, pid, pod or pods.",
    transform = schema::target_rules
)]
pub(super) struct Target {
    /// A cgroup v2 path, absolute or relative to the cgroup2 mount, without "..".
    #[schemars(with = "Option<schema::CgroupPath>")]
    pub cgroup: Option<String>,
    /// A podman (or docker) container name or id.
    #[schemars(length(min = 1))]
    pub container: Option<String>,
    /// A process id: the process's cgroup is the target.
    #[schemars(range(min = 1))]
    pub pid: Option<u32>,
    /// A Kubernetes pod on this node, by namespace and name (found through the node's CRI).
    pub pod: Option<PodTarget>,
    /// The Kubernetes pods on this node whose labels match, in one namespace.
    pub pods: Option<PodsTarget>,
}

/// `pod:`: one pod by name; a pod of that name started again later is followed.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a pod: a mapping with namespace and name"
)]
pub(super) struct PodTarget {
    #[schemars(length(min = 1))]
    pub namespace: String,
    #[schemars(length(min = 1))]
    pub name: String,
    /// Only this container of the pod (its name in the pod spec).
    #[schemars(length(min = 1))]
    pub container: Option<String>,
}

/// `pods:`: every pod of a namespace whose labels include these; pods that start later are
/// taken in too.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "pods: a mapping with namespace and labels"
)]
pub(super) struct PodsTarget {
    #[schemars(length(min = 1))]
    pub namespace: String,
    /// Labels every selected pod has (all of them, with these values).
    #[schemars(length(min = 1))]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Only this container of each pod (its name in the pod spec).
    #[schemars(length(min = 1))]
    pub container: Option<String>,
}

/// One network rule: which packets (direction and match), and at least one thing to do to
/// them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a network rule: a mapping with direction, an optional match and actions"
)]
#[schemars(transform = schema::network_rule_rules)]
pub(super) struct NetworkRule {
    /// Unique within the policy; rule-INDEX when left out.
    #[schemars(regex(pattern = schema::RULE_NAME))]
    pub name: Option<String>,
    pub direction: Direction,
    /// Which packets the rule takes; every packet of the targets when left out.
    #[serde(rename = "match", default)]
    pub matches: Match,
    pub drop: Option<DropSpec>,
    pub corrupt: Option<Corrupt>,
    pub duplicate: Option<Duplicate>,
    /// Drop every matched packet (with one direction, a one-way partition).
    #[serde(default)]
    pub partition: bool,
    pub delay: Option<Delay>,
    /// `10mbit`, `1gbit`, `500kbps`: a rate as tc writes it.
    #[schemars(with = "Option<schema::Rate>")]
    pub rate: Option<Scalar>,
    /// Send this share of the packets at once, ahead of the delayed ones (needs a delay).
    pub reorder: Option<Reorder>,
}

/// Hold matched packets for `latency`, plus or minus `jitter`; latency plus 4 x jitter must
/// stay within 10s.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with latency and optional jitter, distribution and correlation"
)]
pub(super) struct Delay {
    #[schemars(with = "schema::Latency")]
    pub latency: Scalar,
    #[schemars(with = "Option<schema::Latency>")]
    pub jitter: Option<Scalar>,
    #[serde(default)]
    pub distribution: Distribution,
    /// How much each packet's jitter follows the previous one's.
    pub correlation: Option<Probability>,
}

/// The shape of the jitter around the latency.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Distribution {
    #[default]
    Uniform,
    Normal,
    Pareto,
    Paretonormal,
}

/// Send some packets at once, ahead of the delayed ones.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with probability")]
pub(super) struct Reorder {
    pub probability: Probability,
}

/// Which way the matched packets travel, seen from the target.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Direction {
    Egress,
    Ingress,
    Both,
}

/// Which packets a rule takes; with several fields, a packet must match all of them.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with protocol, cidrs, ports, local_ports and loopback (all optional)"
)]
#[schemars(transform = schema::match_rules)]
pub(super) struct Match {
    #[serde(default)]
    pub protocol: Protocol,
    /// The peer's addresses: CIDRs or bare addresses, IPv4 or IPv6; any peer when empty.
    #[serde(default)]
    #[schemars(with = "Vec<schema::Cidr>")]
    pub cidrs: Vec<String>,
    /// The peer's ports or port ranges; any port when empty.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    /// The target's own ports (source on egress, destination on ingress).
    #[serde(default)]
    pub local_ports: Vec<PortSpec>,
    /// Also on the loopback device; off by default, so that a target's traffic to itself
    /// (127.0.0.1, ::1, its own addresses) is left alone.
    #[serde(default)]
    pub loopback: bool,
}

/// A port or an inclusive range, as written: `5432` or `"6000-6100"`.
#[derive(Debug)]
pub(super) enum PortSpec {
    // i128 holds every integer YAML can give (negative and past u64 alike) so that validation
    // can echo the value back instead of a serde overflow message.
    Number(i128),
    Text(String),
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;

        impl Visitor<'_> for PortVisitor {
            type Value = PortSpec;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port like 5432 or a range like \"6000-6100\"")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(v.into()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                Ok(PortSpec::Number(v.into()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                Ok(PortSpec::Text(v.to_owned()))
            }
        }

        deserializer.deserialize_any(PortVisitor)
    }
}

/// A probability as written: a number (`0.05`) or text (`"5%"`, `"0.05"`).
#[derive(Debug, Clone)]
pub(super) enum Probability {
    Number(f64),
    Text(String),
    /// `{from: 1%, to: 20%}`: linear over an experiment step (drop probabilities only).
    Ramp(Box<Ramp>),
}

/// A probability that moves linearly from `from` to `to` over an experiment step.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a ramp: a mapping with from and to")]
pub(super) struct Ramp {
    pub from: Probability,
    pub to: Probability,
}

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProbabilityVisitor;

        impl<'de> Visitor<'de> for ProbabilityVisitor {
            type Value = Probability;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a probability like 0.05 or \"5%\" (or, in a step, a ramp {from, to})")
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Probability, E> {
                Ok(Probability::Number(v))
            }

            // Integers only matter as 0 and 1; a huge one may round on the way to f64, but
            // it is refused by validation either way.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Probability, E> {
                Ok(Probability::Number(v as f64))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Probability, E> {
                Ok(Probability::Number(v as f64))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Probability, E> {
                Ok(Probability::Text(v.to_owned()))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Probability, A::Error> {
                let ramp = Ramp::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Probability::Ramp(Box::new(ramp)))
            }
        }

        deserializer.deserialize_any(ProbabilityVisitor)
    }
}

/// `drop:` in one of its two forms: Bernoulli (`probability`, optional `correlation`) or
/// `gilbert_elliott`. Validation refuses a mix, for the same reason as [`Target`].
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with probability (and optional correlation), or with gilbert_elliott"
)]
#[schemars(
    description = "Loss: probability (with an optional correlation), or gilbert_elliott.",
    transform = schema::drop_rules
)]
pub(super) struct DropSpec {
    /// The share of matched packets lost (in an experiment step, also a ramp {from, to}).
    #[schemars(with = "Option<schema::ProbabilityOrRamp>")]
    pub probability: Option<Probability>,
    /// How likely a packet's fate repeats the previous one's, so that losses cluster.
    pub correlation: Option<Probability>,
    pub gilbert_elliott: Option<GilbertElliott>,
}

/// Bursty loss from a two-state (good, bad) Markov chain, as netem's gemodel.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with p, r and optional loss_bad and loss_good"
)]
pub(super) struct GilbertElliott {
    /// Chance of moving from the good state to the bad one, per packet.
    pub p: Probability,
    /// Chance of moving from the bad state back to the good one, per packet.
    pub r: Probability,
    /// Loss in the bad state (default 1).
    pub loss_bad: Option<Probability>,
    /// Loss in the good state (default 0).
    pub loss_good: Option<Probability>,
}

/// Flip bits in one 16-bit word of the transport payload.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with probability and optional checksum"
)]
pub(super) struct Corrupt {
    pub probability: Probability,
    #[serde(default)]
    pub checksum: Checksum,
}

/// What to do with the transport checksum of a corrupted packet.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum Checksum {
    /// Recompute it, so the corruption reaches the application instead of being dropped by
    /// the peer's stack: the interesting case for testing application-level integrity checks.
    #[default]
    Fix,
    /// Leave it stale, so the peer's stack discards the packet as a checksum failure.
    Keep,
}

/// Send a second copy of the packet.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with probability")]
pub(super) struct Duplicate {
    pub probability: Probability,
}

/// One clock rule as written. Every value stays text here (`-2s`, `500ppm`) and is read by
/// validation, which knows its path.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a clock rule: a mapping with optional clocks and at least one of offset, \
                 drift, jumps or jitter"
)]
#[schemars(
    description = "One clock rule: which clocks, and at least one of offset, drift, jumps, \
                   strobe or jitter.",
    transform = schema::clock_rule_rules
)]
pub(super) struct ClockRule {
    /// Unique within the policy; clock-INDEX when left out.
    #[schemars(regex(pattern = schema::RULE_NAME))]
    pub name: Option<String>,
    /// The clocks to fault (realtime when left out), or [all].
    #[schemars(with = "Option<Vec<schema::ClockName>>", length(min = 1))]
    #[schemars(extend("uniqueItems" = true))]
    pub clocks: Option<Vec<String>>,
    /// A constant skew from the moment of apply, like -2s.
    #[schemars(with = "Option<schema::SignedDuration>")]
    pub offset: Option<Scalar>,
    /// Run fast (+) or slow (-), like 500ppm; at most 500000ppm either way.
    #[schemars(with = "Option<schema::Ppm>")]
    pub drift: Option<Scalar>,
    /// A step of the clock every interval, like an NTP step.
    pub jumps: Option<Jumps>,
    /// Noise on each read, within plus or minus this amplitude (at most 10s).
    #[schemars(with = "Option<schema::ClockDuration>")]
    pub jitter: Option<Scalar>,
    /// Let monotonic and boottime go backwards (negative offsets and jumps, strobes).
    #[serde(default)]
    pub allow_backwards: bool,
    /// Jepsen's strobe: the clock flips `by` ahead and back every `every`.
    pub strobe: Option<Jumps>,
}

/// A step of `by` every `every`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with every and by")]
pub(super) struct Jumps {
    /// The interval, at least 1ms.
    #[schemars(with = "schema::ClockDuration")]
    pub every: Scalar,
    /// The step, other than 0: negative goes back.
    #[schemars(with = "schema::SignedDuration")]
    pub by: Scalar,
}

/// A scalar kept as the text the user wrote: `-2s` and `500ppm` are strings in YAML, but a
/// bare `0` is a number, and validation should see both the same way.
#[derive(Debug, Clone)]
pub(super) struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;

        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value with a unit, like -2s, 30s, 2ms or 500ppm")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }

        deserializer.deserialize_any(ScalarVisitor)
    }
}
