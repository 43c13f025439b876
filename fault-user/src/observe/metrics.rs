//! The run's Prometheus metrics (prometheus-client): packet counters and the delay
//! histogram read from the pinned per-CPU COUNTERS map at each scrape (so they agree with
//! `fault status --json`, which reads the same map), and the steps, probes and clock
//! processes as the engine and the probe tasks set them.

use std::{path::PathBuf, sync::RwLock, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{text, DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, NoLabelSet},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
        MetricType,
    },
    registry::{Registry, Unit},
};

/// The labels of a network rule's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
    /// `egress`, `ingress` or `both`.
    pub direction: String,
    /// The experiment step it belongs to; empty for a policy's rules.
    pub step: String,
    /// Whom it acts on: the policy's targets, or the step's groups.
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    probe: String,
    /// `ok` or `failed`.
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClockLabels {
    /// `patched` or `refused`.
    state: String,
}

pub struct Metrics {
    registry: RwLock<Registry>,
    steps: Family<StepLabels, Gauge>,
    checks: Family<CheckLabels, Counter>,
    latency: Family<ProbeLabels, Histogram>,
    probe_up: Family<ProbeLabels, Gauge>,
    clock: Family<ClockLabels, Gauge>,
    held: Gauge,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    pub fn new(policy: &str) -> Metrics {
        let labels = [("policy".into(), policy.to_owned().into())];
        let mut registry = Registry::with_prefix_and_labels("fault", labels.into_iter());
        let steps = Family::<StepLabels, Gauge>::default();
        let checks = Family::<CheckLabels, Counter>::default();
        let latency = Family::<ProbeLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let probe_up = Family::<ProbeLabels, Gauge>::default();
        let clock = Family::<ClockLabels, Gauge>::default();
        let held = Gauge::default();
        registry.register(
            "step_active",
            "1 while the experiment step is on",
            steps.clone(),
        );
        registry.register("probe_checks", "Probe checks by result", checks.clone());
        registry.register_with_unit(
            "probe_latency",
            "How long each probe check took to its answer",
            Unit::Seconds,
            latency.clone(),
        );
        registry.register(
            "probe_up",
            "1 while the probe's last check passed",
            probe_up.clone(),
        );
        registry.register(
            "clock_processes",
            "Processes of the targets whose clocks are redirected (patched) or could not be (refused)",
            clock.clone(),
        );
        registry.register(
            "clock_exec_held",
            "Processes held at exec and patched before they ran, since the start",
            held.clone(),
        );
        Metrics {
            registry: RwLock::new(registry),
            steps,
            checks,
            latency,
            probe_up,
            clock,
            held,
        }
    }

    /// Serves the packet counters of the run whose maps are pinned in `pin_dir`.
    pub fn add_packets(&self, pin_dir: PathBuf, rules: Vec<RuleLabels>) {
        let collector = Packets { pin_dir, rules };
        self.registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .register_collector(Box::new(collector));
    }

    /// Every step, on or off.
    pub fn set_step(&self, step: &str, on: bool) {
        let labels = StepLabels { step: step.into() };
        self.steps.get_or_create(&labels).set(on as i64);
    }

    /// One probe check's outcome.
    pub fn probe_check(&self, probe: &str, ok: bool, latency: Duration) {
        let result = if ok { "ok" } else { "failed" };
        let labels = CheckLabels {
            probe: probe.into(),
            result: result.into(),
        };
        self.checks.get_or_create(&labels).inc();
        let p = ProbeLabels {
            probe: probe.into(),
        };
        self.latency
            .get_or_create(&p)
            .observe(latency.as_secs_f64());
        self.probe_up.get_or_create(&p).set(ok as i64);
    }

    /// Declares a probe before its first check, so its series exist from the start.
    pub fn add_probe(&self, probe: &str) {
        for result in ["ok", "failed"] {
            let labels = CheckLabels {
                probe: probe.into(),
                result: result.into(),
            };
            drop(self.checks.get_or_create(&labels));
        }
        drop(self.latency.get_or_create(&ProbeLabels {
            probe: probe.into(),
        }));
    }

    pub fn set_clock(&self, c: &super::event::ClockCounts) {
        for (state, n) in [("patched", c.patched), ("refused", c.refused)] {
            let labels = ClockLabels {
                state: state.into(),
            };
            self.clock.get_or_create(&labels).set(n as i64);
        }
        self.held.set(c.held_at_exec as i64);
    }

    /// The text exposition format, as a scrape gets it.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

/// A registry in the OpenMetrics text format (empty if it cannot be encoded).
pub fn encode(registry: &RwLock<Registry>) -> String {
    let mut out = String::new();
    let registry = registry.read().unwrap_or_else(|e| e.into_inner());
    if text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// The packet counters and delay histogram of every rule, from the pinned map.
#[derive(Debug)]
struct Packets {
    pin_dir: PathBuf,
    rules: Vec<RuleLabels>,
}

type Field = (
    &'static str,
    &'static str,
    fn(&fault_common::RuleCounters) -> u64,
);

const FIELDS: &[Field] = &[
    (
        "packets_seen",
        "Packets a rule matched while it was on",
        |c| c.seen,
    ),
    ("packets_dropped", "Packets a rule dropped", |c| c.dropped),
    ("packets_corrupted", "Packets a rule corrupted", |c| {
        c.corrupted
    }),
    ("packets_duplicated", "Packets a rule duplicated", |c| {
        c.duplicated
    }),
    (
        "packets_delayed",
        "Packets a rule gave a later departure time (delay, jitter, rate)",
        |c| c.delayed,
    ),
    (
        "packet_errors",
        "Packets let through unchanged because a kernel helper failed",
        |c| c.errors,
    ),
];

impl Collector for Packets {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A map that cannot be read (the run is ending) makes a scrape without packets.
        let Ok(counters) = crate::net::loader::pinned_counters(&self.pin_dir, self.rules.len())
        else {
            return Ok(());
        };
        for (name, help, get) in FIELDS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, c) in self.rules.iter().zip(&counters) {
                ConstCounter::new(get(c)).encode(family.encode_family(labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "delay_added",
            "The delay rules gave the packets they delayed",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, c) in self.rules.iter().zip(&counters) {
            let buckets: Vec<(f64, u64)> = c
                .delay_buckets
                .iter()
                .enumerate()
                .map(|(i, n)| (bound_seconds(i), *n))
                .collect();
            family
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(
                    c.delay_ns as f64 / 1e9,
                    c.delayed,
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}

fn bound_seconds(i: usize) -> f64 {
    match fault_common::delay_bucket_bound_ns(i) {
        u64::MAX => f64::INFINITY,
        ns => ns as f64 / 1e9,
    }
}
