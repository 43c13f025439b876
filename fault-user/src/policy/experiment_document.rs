//! The experiment document as written (`kind: Experiment`): groups of targets, probes, stop
//! conditions and steps on a timeline. Like `document`, serde refuses only what it can see
//! by itself; `experiment` checks the values and the references between them.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::document::{ClockRule, HumanDuration, Metadata, NetworkRule, Target};
use super::schema;

/// `kind: Experiment`: a game day, with groups of targets, steps on a timeline, probes of
/// the steady state and conditions that stop the run.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an experiment document (a mapping with apiVersion, kind, metadata and spec)"
)]
#[schemars(rename = "Experiment")]
pub(super) struct ExperimentDocument {
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
    #[schemars(extend("const" = super::KIND_EXPERIMENT))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ExperimentSpec,
}

/// An Experiment's body: how long, the groups, the steps, and what to watch.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with duration, groups and steps, and optional seed, probes and abort_when"
)]
pub(super) struct ExperimentSpec {
    /// The bound for everything: every step ends within it (at most 24h).
    pub duration: HumanDuration,
    /// Draw the per-packet decisions from this seed, the same on every run.
    pub seed: Option<u64>,
    /// Fault targets that reach the whole host (the cgroup2 root, pid 1, kernel threads,
    /// fault's own cgroup or its ancestors, a cgroup with most of the host's processes),
    /// which fault otherwise refuses.
    #[serde(default)]
    pub allow_host_wide: bool,
    /// Group name -> its targets; sorted by name, which is also the order classes get.
    #[schemars(
        description = "Named sets of targets, by name; a target belongs to one group.",
        transform = schema::groups_rules
    )]
    pub groups: BTreeMap<String, Vec<Target>>,
    /// The steady state, checked for the whole run.
    #[serde(default)]
    pub probes: Vec<Probe>,
    /// Revert everything and exit 3 when one of these holds.
    #[serde(default)]
    pub abort_when: Vec<AbortWhen>,
    /// The timeline: steps may overlap as long as no two give one group's same packets (or
    /// clock, or pause) two faults at once.
    #[schemars(length(min = 1, max = schema::MAX_STEPS))]
    pub steps: Vec<Step>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a step: a mapping with name, at, for, and one of network, partition, clock or pause"
)]
#[schemars(
    description = "One step of the timeline: when, for how long, and exactly one of network, \
                   partition, clock or pause.",
    transform = schema::step_rules
)]
pub(super) struct Step {
    /// Unique among the steps.
    #[schemars(regex(pattern = schema::RULE_NAME))]
    pub name: String,
    /// When the step starts, from the moment everything is in place (0s allowed).
    #[schemars(with = "schema::Offset")]
    pub at: HumanDuration,
    /// How long the step lasts; it must end within spec.duration.
    #[serde(rename = "for")]
    pub len: HumanDuration,
    /// The group, or groups, the step applies to (not for partitions).
    pub targets: Option<GroupNames>,
    /// Network rules, as in a FaultPolicy.
    #[schemars(length(min = 1))]
    pub network: Option<Vec<NetworkRule>>,
    /// Clock rules, as in a FaultPolicy.
    #[schemars(length(min = 1))]
    pub clock: Option<Vec<ClockRule>>,
    pub partition: Option<Partition>,
    pub pause: Option<Pause>,
    pub flap: Option<Flap>,
}

/// `targets: replicas` or `targets: [primary, replicas]`.
#[derive(Debug)]
pub(super) struct GroupNames(pub Vec<String>);

impl<'de> Deserialize<'de> for GroupNames {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NamesVisitor;

        impl<'de> Visitor<'de> for NamesVisitor {
            type Value = GroupNames;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a group name or a list of group names")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<GroupNames, E> {
                Ok(GroupNames(vec![v.to_owned()]))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<GroupNames, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(GroupNames(names))
            }
        }

        deserializer.deserialize_any(NamesVisitor)
    }
}

/// Cut groups apart, by their addresses: exactly one of between, groups, isolate or
/// topology (with of). Traffic inside a group is untouched.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a partition: a mapping with one of between, groups, isolate or topology"
)]
#[schemars(transform = schema::partition_rules)]
pub(super) struct Partition {
    /// Two groups, cut both ways (or a -> b only, with one_way).
    #[schemars(length(min = 2, max = 2))]
    pub between: Option<Vec<String>>,
    /// With between: cut the first group's packets to the second only.
    #[serde(default)]
    pub one_way: bool,
    /// Sides, each a list of groups, each side cut from the others.
    #[schemars(length(min = 2))]
    pub groups: Option<Vec<Vec<String>>>,
    /// One group, cut from all the others.
    pub isolate: Option<String>,
    /// A Jepsen topology over the groups listed in `of`.
    pub topology: Option<Topology>,
    /// The nodes (groups) of the topology.
    pub of: Option<Vec<String>>,
}

/// majorities-ring: each node sees a majority, no two the same; bridge: two halves, and the
/// middle node sees both.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Topology {
    MajoritiesRing,
    Bridge,
}

/// Freeze the targets' cgroups for `for` at the start of every `every`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with for and every")]
pub(super) struct Pause {
    #[serde(rename = "for")]
    pub freeze: HumanDuration,
    pub every: HumanDuration,
}

/// Switch the step on for `on` and off for `off`, over and over, inside its window.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a mapping with on and off")]
pub(super) struct Flap {
    pub on: HumanDuration,
    pub off: HumanDuration,
}

/// A steady-state check: exactly one of tcp, http or exec, run every `every` and given up
/// after `timeout`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a probe: a mapping with name, one of tcp, http or exec, every and timeout"
)]
#[schemars(transform = schema::probe_rules)]
pub(super) struct Probe {
    /// Unique among the probes; abort_when names it.
    #[schemars(regex(pattern = schema::RULE_NAME))]
    pub name: String,
    /// Connect to address:port, like 10.0.0.5:5432 or [fd00::5]:80.
    #[schemars(with = "Option<schema::SocketAddress>")]
    pub tcp: Option<String>,
    pub http: Option<Http>,
    /// A command and its arguments; exit status 0 is a success.
    #[schemars(length(min = 1))]
    pub exec: Option<Vec<String>>,
    /// Run the check inside this group's cgroup and network namespace.
    pub from: Option<String>,
    pub every: HumanDuration,
    /// Required: a check without one could wait forever. At most `every`.
    #[schemars(with = "HumanDuration")]
    pub timeout: Option<HumanDuration>,
}

/// GET the URL and expect the status.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with url and optional status"
)]
pub(super) struct Http {
    /// An http:// URL (https is not supported).
    #[schemars(regex(pattern = "^http://"))]
    pub url: String,
    /// The status that counts as a success (default 200).
    pub status: Option<u16>,
}

/// When to stop: `failures` checks in a row fail, or `failure_ratio` of the checks within
/// `window` do.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a stop condition: {probe, failures} or {probe, failure_ratio, window}"
)]
#[schemars(transform = schema::abort_rules)]
pub(super) struct AbortWhen {
    /// The name of a probe.
    pub probe: String,
    #[schemars(range(min = 1))]
    pub failures: Option<u32>,
    pub failure_ratio: Option<super::document::Probability>,
    pub window: Option<HumanDuration>,
}
