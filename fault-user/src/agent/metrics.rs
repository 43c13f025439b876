//! The agent's Prometheus metrics: how many files are in each state, what happened to them,
//! and how long a new or changed file took to be in force.

use std::sync::{Arc, RwLock};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};

use super::slot::{FileState, Happened};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

pub struct AgentMetrics {
    registry: RwLock<Registry>,
    files: Family<StateLabels, Gauge>,
    events: Family<EventLabels, Counter>,
    apply: Histogram,
    scans: Counter,
}

impl AgentMetrics {
    pub fn new() -> Arc<AgentMetrics> {
        let files = Family::<StateLabels, Gauge>::default();
        let events = Family::<EventLabels, Counter>::default();
        let apply = Histogram::new(exponential_buckets(0.05, 2.0, 10));
        let scans = Counter::default();
        let mut r = Registry::with_prefix("fault_agent");
        r.register(
            "files",
            "Policy files in the watched directory, by state",
            files.clone(),
        );
        r.register(
            "events",
            "What happened to the files' experiments",
            events.clone(),
        );
        r.register_with_unit(
            "apply",
            "From a new or changed file being seen to its every fault in place",
            Unit::Seconds,
            apply.clone(),
        );
        r.register("scans", "Reads of the watched directory", scans.clone());
        Arc::new(AgentMetrics {
            registry: RwLock::new(r),
            files,
            events,
            apply,
            scans,
        })
    }

    pub fn scanned(&self) {
        self.scans.inc();
    }

    pub fn happened(&self, h: &Happened) {
        let event = match h {
            Happened::Started { .. } => "started",
            Happened::Applied { took, .. } => {
                self.apply.observe(took.as_secs_f64());
                "applied"
            }
            Happened::Stopping { .. } => "stopping",
            Happened::Reverted { .. } => "reverted",
            Happened::Ended { state, .. } => state.name(),
            Happened::Invalid { .. } => "invalid",
            Happened::StartFailed { .. } => "start_failed",
        };
        self.events
            .get_or_create(&EventLabels {
                event: event.into(),
            })
            .inc();
    }

    /// Sets the per-state counts (every state, so a state that empties reads 0).
    pub fn set_states(&self, states: &[FileState]) {
        for s in FileState::ALL {
            let n = states.iter().filter(|x| **x == s).count();
            self.files
                .get_or_create(&StateLabels {
                    state: s.name().into(),
                })
                .set(n as i64);
        }
    }

    pub fn encode(&self) -> String {
        crate::observe::metrics::encode(&self.registry)
    }
}
