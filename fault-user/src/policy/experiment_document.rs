//! The experiment document as written (`kind: Experiment`): groups of targets, probes, stop
//! conditions and steps on a timeline. Like `document`, serde refuses only what it can see
//! by itself; `experiment` checks the values and the references between them.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::document::{ClockRule, HumanDuration, Metadata, NetworkRule, Target};

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an experiment document (a mapping with apiVersion, kind, metadata and spec)"
)]
pub(super) struct ExperimentDocument {
    #[expect(
        dead_code,
        reason = "validated from Header before the full document is read"
    )]
    pub api_version: String,
    #[expect(
        dead_code,
        reason = "validated from Header before the full document is read"
    )]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ExperimentSpec,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with duration, groups and steps, and optional seed, probes and abort_when"
)]
pub(super) struct ExperimentSpec {
    pub duration: HumanDuration,
    pub seed: Option<u64>,
    /// Group name -> its targets; sorted by name, which is also the order classes get.
    pub groups: BTreeMap<String, Vec<Target>>,
    #[serde(default)]
    pub probes: Vec<Probe>,
    #[serde(default)]
    pub abort_when: Vec<AbortWhen>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a step: a mapping with name, at, for, and one of network, partition, clock or pause"
)]
pub(super) struct Step {
    pub name: String,
    pub at: HumanDuration,
    #[serde(rename = "for")]
    pub len: HumanDuration,
    pub targets: Option<GroupNames>,
    pub network: Option<Vec<NetworkRule>>,
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

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a partition: a mapping with one of between, groups, isolate or topology"
)]
pub(super) struct Partition {
    pub between: Option<Vec<String>>,
    #[serde(default)]
    pub one_way: bool,
    pub groups: Option<Vec<Vec<String>>>,
    pub isolate: Option<String>,
    pub topology: Option<Topology>,
    pub of: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Topology {
    MajoritiesRing,
    Bridge,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with for and every")]
pub(super) struct Pause {
    #[serde(rename = "for")]
    pub freeze: HumanDuration,
    pub every: HumanDuration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping with on and off")]
pub(super) struct Flap {
    pub on: HumanDuration,
    pub off: HumanDuration,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a probe: a mapping with name, one of tcp, http or exec, every and timeout"
)]
pub(super) struct Probe {
    pub name: String,
    pub tcp: Option<String>,
    pub http: Option<Http>,
    pub exec: Option<Vec<String>>,
    pub from: Option<String>,
    pub every: HumanDuration,
    pub timeout: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with url and optional status"
)]
pub(super) struct Http {
    pub url: String,
    pub status: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a stop condition: {probe, failures} or {probe, failure_ratio, window}"
)]
pub(super) struct AbortWhen {
    pub probe: String,
    pub failures: Option<u32>,
    pub failure_ratio: Option<super::document::Probability>,
    pub window: Option<HumanDuration>,
}
