//! What a run tells about itself, one JSON object per line (`/run/fault/NAME/events.jsonl`,
//! `--events FILE`, `fault apply --output json`), and what `fault report` draws from.
//!
//! Every line is a [`Record`]: the wall-clock time, CLOCK_MONOTONIC nanoseconds, and the
//! event, whose `type` field names it. Seconds on the run's timeline are
//! `(mono_ns - applied.mono_ns) / 1e9`: the `applied` event is the timeline's zero.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// UTC, RFC 3339 with milliseconds: `2026-12-02T03:30:00.123Z`.
    pub wall: String,
    /// CLOCK_MONOTONIC nanoseconds: orders the events and measures between them.
    pub mono_ns: u64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Every fault is in place (the ready signal); the timeline starts here.
    Applied(Box<Applied>),
    /// A cgroup became one of the targets (a container started, a process joined).
    TargetJoined { target: String, cgroup: String },
    /// A target's cgroup went away.
    TargetLeft { target: String, cgroup: String },
    /// A process's clocks were redirected.
    ProcessPatched {
        pid: u32,
        comm: String,
        /// Held at exec and patched before it ran (rather than found by the rescan).
        at_exec: bool,
    },
    /// A process in a target whose clocks could not be redirected, and why.
    ProcessRefused { pid: u32, comm: String, why: String },
    /// An experiment's step went on.
    StepOn { step: String },
    /// An experiment's step went off.
    StepOff { step: String },
    /// A probe's result changed from ok to failing or back (and its first result).
    ProbeChanged {
        probe: String,
        ok: bool,
        latency_ms: f64,
        /// Why it failed; empty when ok.
        #[serde(default)]
        error: String,
    },
    /// The counters every `--interval`, for rates over time.
    Sample(Sample),
    /// A stop condition was met; a `reverted` event follows.
    Abort { probe: String, why: String },
    /// Something went wrong that did not end the run.
    Warning { message: String },
    /// The run's faults are off: the last event of a run.
    Reverted {
        reason: Reason,
        /// The reason in words: the signal, the probe and its condition, the error.
        detail: String,
        /// The counters at the end.
        rules: Vec<RuleCounts>,
        #[serde(default)]
        probes: Vec<ProbeCounts>,
    },
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `spec.duration` elapsed.
    Deadline,
    /// Ctrl-C, SIGTERM or SIGHUP.
    Signal,
    /// `fault stop` asked.
    Stopped,
    /// A stop condition (`abort_when`) was met.
    Aborted,
    /// Applying failed; what was in place was taken off.
    Failed,
    /// The loader died without reverting; the watchdog or `fault stop` ended the faults.
    LoaderDied,
}

/// What runs, as the `applied` event tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// `metadata.name`.
    pub policy: String,
    /// `FaultPolicy` or `Experiment`.
    pub kind: String,
    pub file: PathBuf,
    /// The policy file as it was read.
    pub text: String,
    /// The loader's pid.
    pub pid: u32,
    /// `spec.duration`, in seconds.
    pub duration_s: f64,
    pub targets: Vec<TargetInfo>,
    /// Every network rule, in counter order (partition cuts of an experiment included).
    pub rules: Vec<RuleInfo>,
    /// An experiment's steps, with the windows they are planned to be on.
    #[serde(default)]
    pub steps: Vec<StepInfo>,
    /// The names of the probes.
    #[serde(default)]
    pub probes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    /// How the policy names it: `container: db`, `cgroup: /sys/fs/cgroup/x`, `pid: 42`.
    pub name: String,
    pub cgroup: String,
    /// The experiment group it belongs to.
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub name: String,
    /// The rule in words: `egress to 10.0.0.0/8: drop 5%`.
    pub summary: String,
    /// `egress` or `ingress`.
    pub direction: String,
    /// The experiment step the rule belongs to (none for a policy's rules).
    #[serde(default)]
    pub step: Option<String>,
    /// Whom it acts on: the targets, or the step's groups.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepInfo {
    pub name: String,
    /// The step in words (`plan::describe_step`).
    pub summary: String,
    /// `partition`, `network`, `clock` or `pause`.
    pub kind: String,
    /// Seconds on the timeline, `[on, off]`, each time the step is planned to be on.
    pub spans: Vec<[f64; 2]>,
}

/// The counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Per network rule, in the order of `applied.rules`.
    pub rules: Vec<RuleCounts>,
    #[serde(default)]
    pub clock: ClockCounts,
    #[serde(default)]
    pub probes: Vec<ProbeCounts>,
    /// The steps on at this moment.
    #[serde(default)]
    pub steps_on: Vec<String>,
}

/// One rule's counters since the start (totals, not rates).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleCounts {
    pub rule: String,
    pub seen: u64,
    pub dropped: u64,
    pub corrupted: u64,
    pub duplicated: u64,
    pub delayed: u64,
}

impl RuleCounts {
    /// The counters of rule `rule` as the programs keep them (summed over CPUs).
    pub fn of(rule: &str, c: &fault_common::RuleCounters) -> RuleCounts {
        RuleCounts {
            rule: rule.to_owned(),
            seen: c.seen,
            dropped: c.dropped,
            corrupted: c.corrupted,
            duplicated: c.duplicated,
            delayed: c.delayed,
        }
    }
}

/// The clock fault's processes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClockCounts {
    /// Processes whose clocks are redirected now.
    pub patched: u64,
    /// Processes that could not be patched.
    pub refused: u64,
    /// Processes held at exec and patched before they ran, since the start.
    pub held_at_exec: u64,
}

/// One probe's counts since the start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeCounts {
    pub probe: String,
    pub ok: u64,
    pub failed: u64,
    /// The last check's latency (a timeout's is the timeout).
    pub last_latency_ms: Option<f64>,
}

/// Reads an event log: one record per non-empty line; a line that does not parse is an
/// error naming its number.
pub fn parse_log(text: &str) -> Result<Vec<Record>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}
