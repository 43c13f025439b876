//! Fault policies: the YAML a user writes, checked and compiled into what the kernel reads.
//!
//! Handling is two steps, so that every mistake names the file, the YAML path and what was
//! expected:
//! 1. `document` deserializes the text into types that mirror the YAML, refusing unknown
//!    fields, wrong types and missing fields;
//! 2. `validate` checks every value and combination and builds a [`Policy`], whose rules
//!    carry the [`NetRule`] the kernel applies.
//!
//! `compile` then turns the rules into LPM trie entries ([`lpm_entries`]). Clock rules
//! ([`ClockRule`]) are compiled by `crate::clock` into the parameter page its stub reads.
//! `schema` describes the documents of step 1 as a JSON Schema ([`policy_schema`]).

mod bounds;
mod compile;
mod document;
mod experiment;
mod experiment_document;
mod overlap;
mod partition;
mod schema;
mod validate;

#[cfg(test)]
mod experiment_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fault_common::{NetRule, CSUM_KEEP, DROP_BERNOULLI, DROP_GILBERT_ELLIOTT, PROB_ONE};
use ipnet::IpNet;
use serde::Deserialize;

pub use compile::{lpm_entries, lpm_entries_of, MAX_LPM_ENTRIES};
pub use partition::Cut;
pub use schema::{policy_schema, SCHEMA_ID};

use crate::timeline::Window;

/// The only `apiVersion` this build understands.
pub const API_VERSION: &str = "fault/v1";
/// The kind of a static policy: every rule on for the whole duration.
pub const KIND: &str = "FaultPolicy";
/// The kind of a game day: groups, steps on a timeline, probes and stop conditions.
pub const KIND_EXPERIMENT: &str = "Experiment";

/// A checked policy, ready to be applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The file it was read from, for messages.
    pub file: PathBuf,
    /// `metadata.name`: safe to use as a directory name.
    pub name: String,
    /// How long faults are injected; more than zero and at most a day.
    pub duration: Duration,
    pub targets: Vec<TargetSpec>,
    /// In policy order: where several rules match a packet, the first one wins.
    pub rules: Vec<Rule>,
    /// Clock faults; no two rules name the same clock.
    pub clock: Vec<ClockRule>,
    /// Experiments only: per-packet decisions drawn from this seed, reproducible run to run.
    pub seed: Option<u64>,
    /// `spec.allow_host_wide`: the blast-radius guards (`crate::guard`) let host-wide targets
    /// through.
    pub allow_host_wide: bool,
    /// Experiments only: named sets of targets. Group `i`'s packets carry class `i + 1` (a
    /// policy's targets share class 0).
    pub groups: Vec<Group>,
    /// Experiments only: the timeline. Network steps' rules are in `rules` (with their
    /// class and window); the other kinds are described here.
    pub steps: Vec<Step>,
    pub probes: Vec<ProbeRule>,
    pub aborts: Vec<AbortWhen>,
}

impl Policy {
    pub fn is_experiment(&self) -> bool {
        !self.steps.is_empty()
    }
}

/// A named set of targets of an experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub targets: Vec<TargetSpec>,
}

impl Group {
    /// The class its packets are looked up with.
    pub fn class(index: usize) -> u8 {
        u8::try_from(index + 1).expect("at most MAX_GROUPS groups")
    }
}

/// One step of an experiment, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub window: Window,
    /// Indices into `Policy::groups` of the step's targets (empty for partitions, which name
    /// their groups themselves).
    pub groups: Vec<usize>,
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// Its rules are in `Policy::rules`, with `step` set to this step.
    Network,
    /// Directed cuts between groups, compiled into drop rules once the groups' addresses are
    /// known.
    Partition(Vec<Cut>),
    Clock(Vec<ClockRule>),
    /// Freeze the targets for `freeze` at the start of every `every`.
    Pause {
        freeze: Duration,
        every: Duration,
    },
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Network => "network",
            StepKind::Partition(_) => "partition",
            StepKind::Clock(_) => "clock",
            StepKind::Pause { .. } => "pause",
        }
    }
}

/// A steady-state probe, checked; what it checks is in the prober's own terms.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRule {
    pub name: String,
    pub check: crate::probe::Check,
    /// Index into `Policy::groups`: run inside that group.
    pub from: Option<usize>,
    pub every: Duration,
    pub timeout: Duration,
}

/// A stop condition, checked (the probe it names exists).
pub use crate::probe::AbortRule as AbortWhen;

/// A clock a rule can fault, by its policy name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClockId {
    /// `CLOCK_REALTIME`, and `gettimeofday` and `time`, which read the same clock.
    Realtime,
    RealtimeCoarse,
    Tai,
    Monotonic,
    MonotonicCoarse,
    MonotonicRaw,
    Boottime,
}

impl ClockId {
    /// Every clock, in the order `all` expands to.
    pub const ALL: [ClockId; 7] = [
        ClockId::Realtime,
        ClockId::RealtimeCoarse,
        ClockId::Tai,
        ClockId::Monotonic,
        ClockId::MonotonicCoarse,
        ClockId::MonotonicRaw,
        ClockId::Boottime,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ClockId::Realtime => "realtime",
            ClockId::RealtimeCoarse => "realtime_coarse",
            ClockId::Tai => "tai",
            ClockId::Monotonic => "monotonic",
            ClockId::MonotonicCoarse => "monotonic_coarse",
            ClockId::MonotonicRaw => "monotonic_raw",
            ClockId::Boottime => "boottime",
        }
    }

    /// The `clockid_t` the kernel and the vDSO know it by.
    pub fn linux_id(self) -> u32 {
        let id = match self {
            ClockId::Realtime => libc::CLOCK_REALTIME,
            ClockId::RealtimeCoarse => libc::CLOCK_REALTIME_COARSE,
            ClockId::Tai => libc::CLOCK_TAI,
            ClockId::Monotonic => libc::CLOCK_MONOTONIC,
            ClockId::MonotonicCoarse => libc::CLOCK_MONOTONIC_COARSE,
            ClockId::MonotonicRaw => libc::CLOCK_MONOTONIC_RAW,
            ClockId::Boottime => libc::CLOCK_BOOTTIME,
        };
        id as u32
    }

    /// Whether readers rely on it never going backwards (the monotonic family and boottime).
    pub fn never_backwards(self) -> bool {
        !matches!(
            self,
            ClockId::Realtime | ClockId::RealtimeCoarse | ClockId::Tai
        )
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for ClockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A step of the clock every `every_ns`, by `by_ns` (negative: back), like an NTP step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockJumps {
    pub every_ns: u64,
    pub by_ns: i64,
    /// Jepsen's strobe: the clock is `by` off during every other interval and true in
    /// between, flipping ahead and back, instead of the steps adding up.
    pub strobe: bool,
}

/// One clock rule, checked. The fault a reader sees `e` ns after apply is
/// `offset + drift_ppm * e / 10^6 + floor(e / every) * by + noise`, where the noise lies in
/// `[-jitter, +jitter]`, or in `[-jitter, 0]` for a clock that must not go backwards.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockRule {
    /// Unique within the policy; `clock-<index>` when the policy gives none.
    pub name: String,
    /// Not empty, no clock twice.
    pub clocks: Vec<ClockId>,
    pub offset_ns: i64,
    /// Parts per million: positive runs fast.
    pub drift_ppm: f64,
    pub jumps: Option<ClockJumps>,
    pub jitter_ns: u64,
    /// Lets monotonic and boottime go back (negative offsets and jumps, symmetric jitter).
    pub allow_backwards: bool,
}

impl ClockRule {
    /// A one-line summary, like `realtime: offset -2s, drift +500ppm, jumps -1s every 30s`.
    pub fn describe(&self) -> String {
        let clocks = join(self.clocks.iter().map(ToString::to_string));
        let mut parts = Vec::new();
        if self.offset_ns != 0 {
            parts.push(format!("offset {}", signed_ns(self.offset_ns)));
        }
        if self.drift_ppm != 0.0 {
            parts.push(format!("drift {:+}ppm", self.drift_ppm));
        }
        if let Some(j) = self.jumps {
            parts.push(format!(
                "{} {} every {}",
                if j.strobe { "strobe" } else { "jumps" },
                signed_ns(j.by_ns),
                humantime::format_duration(Duration::from_nanos(j.every_ns))
            ));
        }
        if self.jitter_ns != 0 {
            parts.push(format!(
                "jitter {}",
                humantime::format_duration(Duration::from_nanos(self.jitter_ns))
            ));
        }
        if self.allow_backwards {
            parts.push("backwards allowed".to_owned());
        }
        format!("{clocks}: {}", parts.join(", "))
    }
}

/// `-2s`, `+1s 500ms`: a signed duration as people write it.
pub fn signed_ns(ns: i64) -> String {
    let sign = if ns < 0 { '-' } else { '+' };
    format!(
        "{sign}{}",
        humantime::format_duration(Duration::from_nanos(ns.unsigned_abs()))
    )
}

/// A target as named in the policy; resolving it to cgroups happens elsewhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetSpec {
    /// Absolute, or relative to the cgroup2 mount; never contains `..`.
    Cgroup(PathBuf),
    /// A container name or id, non-empty.
    Container(String),
    /// A process id, above zero.
    Pid(u32),
    /// Kubernetes pods on this node (`pod:` by name, `pods:` by labels), from the CRI.
    Pod(crate::cri::PodSelector),
}

/// The transport a rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Any IP packet; with ports, TCP and UDP.
    #[default]
    Any,
    Tcp,
    Udp,
    /// ICMP for IPv4 peers, ICMPv6 for IPv6 peers.
    Icmp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Any => "any",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One network rule, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Unique within the policy; `rule-<index>` when the policy gives none.
    pub name: String,
    pub egress: bool,
    pub ingress: bool,
    pub protocol: Protocol,
    /// Peer prefixes with host bits cleared; empty means every IPv4 and IPv6 peer.
    pub cidrs: Vec<IpNet>,
    /// Peer port ranges, inclusive, as written; empty means any port (and any protocol
    /// without ports).
    pub ports: Vec<(u16, u16)>,
    /// The target's own port ranges (its source port on egress, its destination port on
    /// ingress), inclusive; empty means any. With `ports` as well, both must match.
    pub local_ports: Vec<(u16, u16)>,
    /// Whether the rule applies on the loopback device too (`match.loopback`); otherwise
    /// packets on `lo` never match it.
    pub loopback: bool,
    /// What happens to matching packets, in the kernel's encoding.
    pub action: NetRule,
    /// Whose packets it applies to: 0 for a policy's targets, `i + 1` for an experiment's
    /// group `i`.
    pub class: u8,
    /// When it is on; `None`: for the whole run.
    pub window: Option<Window>,
    /// A drop probability that moves linearly over the window: (from, to) thresholds.
    pub ramp: Option<(u64, u64)>,
    /// The experiment step it belongs to (index into `Policy::steps`).
    pub step: Option<usize>,
}

impl Rule {
    /// A one-line summary for `--dry-run`, like
    /// `egress udp to 10.88.0.0/16 ports 5432,6000-6100: drop 5% (corr 25%), corrupt 1% (checksum fix)`.
    pub fn describe(&self) -> String {
        let (direction, preposition) = match (self.egress, self.ingress) {
            (true, false) => ("egress", "to"),
            (false, true) => ("ingress", "from"),
            _ => ("egress+ingress", "to/from"),
        };
        let protocol = match self.protocol {
            Protocol::Any if self.ports.is_empty() && self.local_ports.is_empty() => "ip",
            Protocol::Any => "tcp/udp",
            other => other.as_str(),
        };
        let peers = if self.cidrs.is_empty() {
            "any address".to_owned()
        } else {
            join(self.cidrs.iter().map(ToString::to_string))
        };
        let mut out = format!("{direction} {protocol} {preposition} {peers}");
        for (label, ranges) in [
            (" ports ", &self.ports),
            (" local ports ", &self.local_ports),
        ] {
            if ranges.is_empty() {
                continue;
            }
            out.push_str(label);
            out.push_str(&join(ranges.iter().map(|&(first, last)| {
                if first == last {
                    first.to_string()
                } else {
                    format!("{first}-{last}")
                }
            })));
        }
        if self.loopback {
            out.push_str(", loopback too");
        }
        out.push_str(": ");
        out.push_str(&describe_action(&self.action));
        out
    }
}

/// Whether some rule applies on the loopback device, so the egress program must be attached
/// to `lo` in the targets' namespaces too (and only then).
pub fn wants_loopback(policy: &Policy) -> bool {
    policy.rules.iter().any(|r| r.loopback)
}

fn describe_action(action: &NetRule) -> String {
    let mut parts = Vec::new();
    if action.delay_ns != 0 || action.jitter_ns != 0 {
        let mut d = format!(
            "delay {}",
            humantime::format_duration(Duration::from_nanos(action.delay_ns))
        );
        if action.jitter_ns != 0 {
            let dist = match action.jitter_dist {
                fault_common::DIST_NORMAL => "normal",
                fault_common::DIST_PARETO => "pareto",
                fault_common::DIST_PARETONORMAL => "paretonormal",
                _ => "uniform",
            };
            d.push_str(&format!(
                " ± {} {dist}",
                humantime::format_duration(Duration::from_nanos(action.jitter_ns))
            ));
            if action.jitter_corr != 0 {
                d.push_str(&format!(" (corr {})", percent(action.jitter_corr)));
            }
        }
        parts.push(d);
    }
    if action.rate_bytes != 0 {
        parts.push(format!("rate {} kbit/s", action.rate_bytes * 8 / 1000));
    }
    if action.reorder_p != 0 {
        parts.push(format!("reorder {}", percent(action.reorder_p)));
    }
    match action.drop_model {
        DROP_BERNOULLI if action.drop_corr == 0 => {
            parts.push(format!("drop {}", percent(action.drop_p)));
        }
        DROP_BERNOULLI => parts.push(format!(
            "drop {} (corr {})",
            percent(action.drop_p),
            percent(action.drop_corr)
        )),
        DROP_GILBERT_ELLIOTT => parts.push(format!(
            "drop gilbert-elliott (p {}, r {}, loss bad {}, good {})",
            percent(action.drop_p),
            percent(action.drop_corr),
            percent(action.ge_loss_bad),
            percent(action.ge_loss_good)
        )),
        _ => {}
    }
    if action.corrupt_p > 0 {
        let checksum = if action.corrupt_csum == CSUM_KEEP {
            "keep"
        } else {
            "fix"
        };
        parts.push(format!(
            "corrupt {} (checksum {checksum})",
            percent(action.corrupt_p)
        ));
    }
    if action.dup_p > 0 {
        parts.push(format!("duplicate {}", percent(action.dup_p)));
    }
    if parts.is_empty() {
        // Validation never lets this through, but a hand-built rule can get here.
        parts.push("nothing".to_owned());
    }
    parts.join(", ")
}

/// A kernel threshold as a percentage with at most three decimals: `5%`, `0.5%`, `33.333%`.
fn percent(threshold: u64) -> String {
    let value = threshold as f64 / PROB_ONE as f64 * 100.0;
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "0" && threshold > 0 {
        // Rare but not never: "0%" would read as if the action were off.
        return "<0.001%".to_owned();
    }
    format!("{text}%")
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(",")
}

/// Why a policy was refused. Every one means "invalid policy"; the fields say where.
#[derive(Debug, thiserror::Error)]
#[error("{}{}{}{}", FilePrefix(.file), PathPrefix(.path), bounds::shorten(.message), LineSuffix(*.line))]
pub struct PolicyError {
    /// The policy file; empty when the rules did not come from a file.
    pub file: PathBuf,
    /// Where in the document, like `spec.network[0].match.cidrs[1]`; empty for the whole file.
    pub path: String,
    /// 1-based line, when the YAML parser knows it (serde-level errors only).
    pub line: Option<usize>,
    /// What was expected, and what was found.
    pub message: String,
}

struct FilePrefix<'a>(&'a Path);

impl fmt::Display for FilePrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.as_os_str().is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0.display())
        }
    }
}

struct PathPrefix<'a>(&'a str);

impl fmt::Display for PathPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

struct LineSuffix(Option<usize>);

impl fmt::Display for LineSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(line) => write!(f, " (line {line})"),
            None => Ok(()),
        }
    }
}

/// A validation failure before the file name is attached.
#[derive(Debug)]
struct Invalid {
    path: String,
    message: String,
}

impl Invalid {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    fn in_file(self, file: &Path) -> PolicyError {
        PolicyError {
            file: file.to_owned(),
            path: self.path,
            line: None,
            message: self.message,
        }
    }
}

/// Reads and checks a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = bounds::read(path)?;
    parse(&text, path)
}

/// Whether `name` could be a policy's `metadata.name` (for the commands that take one):
/// the reason when it could not.
pub fn check_name(name: &str) -> Result<(), String> {
    validate::policy_name(name).map(drop).map_err(|e| e.message)
}

/// Checks a policy given as text; `file` is only used in messages and kept in the result.
pub fn parse(text: &str, file: &Path) -> Result<Policy, PolicyError> {
    // Editors on some systems start a UTF-8 file with a byte-order mark; YAML allows it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    bounds::check_depth(text, file)?;
    // The header first: a policy for another apiVersion would otherwise fail on the first
    // field this version does not know, which hides the real problem.
    let header: document::Header = deserialize(text, file)?;
    validate::header(&header).map_err(|err| err.in_file(file))?;
    let policy = match header.kind.as_str() {
        KIND_EXPERIMENT => {
            let document: experiment_document::ExperimentDocument = deserialize(text, file)?;
            experiment::experiment(document, file)
        }
        _ => {
            let document: document::Document = deserialize(text, file)?;
            validate::policy(document, file)
        }
    }
    .map_err(|err| err.in_file(file))?;
    // Checked here as well as in lpm_entries so that an oversized policy is refused when it
    // is read (with its file name), not halfway through being applied.
    compile::check_size(&policy.rules).map_err(|err| err.in_file(file))?;
    Ok(policy)
}

/// Runs serde over the YAML, keeping the path of the value that failed.
fn deserialize<'de, T: Deserialize<'de>>(text: &'de str, file: &Path) -> Result<T, PolicyError> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = match err.path().to_string() {
            // serde_path_to_error's name for the document itself.
            root if root == "." => String::new(),
            path => path,
        };
        let inner = err.into_inner();
        let line = inner.location().map(|location| location.line());
        PolicyError {
            file: file.to_owned(),
            message: yaml_message(&inner, &path),
            path,
            line,
        }
    })
}

/// serde_yaml's message without the parts [`PolicyError`] already shows: the position behind
/// (`... at line 3 column 5`) and its own copy of the path in front. serde_yaml's path can stop
/// short of ours (it names the mapping where serde_path_to_error names the unknown key in it),
/// so any leading part of ours is removed.
fn yaml_message(err: &serde_yaml::Error, path: &str) -> String {
    let mut message = err.to_string();
    if let Some(location) = err.location() {
        let position = format!(" at line {} column {}", location.line(), location.column());
        message = message.replacen(&position, "", 1);
    }
    if let Some((head, rest)) = message.split_once(": ") {
        let leads_path = path
            .strip_prefix(head)
            .is_some_and(|tail| tail.is_empty() || tail.starts_with(['.', '[']));
        if leads_path {
            message = rest.to_owned();
        }
    }
    message
}
