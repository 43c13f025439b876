//! What a run shows of itself while it runs and after: the event log (`event`, written by
//! `log`), the Prometheus metrics (`metrics`, served by `serve`), and what the engine feeds
//! them each turn (`steps`, `targets`).
//!
//! None of it touches the packet path: the packet counters are the per-CPU maps the
//! programs keep anyway, read when a scrape or a sample asks.

mod applied;
pub mod event;
mod exposition;
pub mod live;
mod log;
pub mod metrics;
pub mod serve;
pub mod steps;
pub mod targets;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

pub use applied::{applied, rule_labels};
pub use event::{Event, Reason, Record};
pub use log::{append_end, events_path, run_dir, stop_marker};
pub use metrics::Metrics;

/// Where the events of a run go, and its metrics: shared by the engine, the kinds and the
/// probe tasks.
pub struct Observer {
    log: Mutex<log::EventLog>,
    pub metrics: Metrics,
    /// The metrics endpoint, while it serves.
    server: Mutex<Option<serve::Server>>,
}

pub type Shared = Arc<Observer>;

/// How a run is observed, as the command line says.
#[derive(Debug, Clone, Default)]
pub struct Sinks {
    /// `--events FILE`, beside the run directory's own log.
    pub events: Option<PathBuf>,
    /// `--output json`: the events on stdout, in place of the live view.
    pub stdout: bool,
    /// `--metrics ADDR`.
    pub metrics: Option<std::net::SocketAddr>,
}

impl Observer {
    /// Starts the run's event log (replacing the previous run's of the same name) and, if
    /// asked, the metrics endpoint.
    pub fn open(policy: &str, sinks: &Sinks) -> anyhow::Result<Shared> {
        let log = log::EventLog::open(policy, sinks.events.as_deref(), sinks.stdout)?;
        let observer = Arc::new(Observer {
            log: Mutex::new(log),
            metrics: Metrics::new(policy),
            server: Mutex::new(None),
        });
        if let Some(addr) = sinks.metrics {
            let o = observer.clone();
            let server = serve::Server::start(addr, Arc::new(move || o.metrics.encode()))?;
            *observer.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
        }
        Ok(observer)
    }

    /// An observer that writes nowhere (`--dry-run`, tests).
    pub fn none(policy: &str) -> Shared {
        Arc::new(Observer {
            log: Mutex::new(log::EventLog::nowhere()),
            metrics: Metrics::new(policy),
            server: Mutex::new(None),
        })
    }

    /// Writes one event, stamped now.
    pub fn emit(&self, event: Event) {
        let record = Record::now(event);
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(&record);
    }

    /// The address the metrics endpoint listens on.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(serve::Server::addr)
    }

    /// Stops serving metrics (at the end of the run).
    pub fn close(&self) {
        if let Some(s) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            s.stop();
        }
    }
}

impl Record {
    /// `event`, stamped with the wall clock and CLOCK_MONOTONIC now.
    pub fn now(event: Event) -> Record {
        Record {
            wall: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            mono_ns: crate::sys::time::monotonic_ns(),
            event,
        }
    }
}

/// The event log of `run`: a run's directory (`/run/fault/NAME`), or the events file itself.
pub fn events_of(run: &Path) -> PathBuf {
    if run.is_dir() {
        run.join(log::EVENTS_FILE)
    } else {
        run.to_path_buf()
    }
}
