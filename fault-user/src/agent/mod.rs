//! `fault agent --dir DIR`: keeps the host's faults what a directory of policy files (a
//! mounted ConfigMap) says. A new file is applied, a removed one reverted, a changed one
//! reverted and applied again; a file that is not a valid policy is reported (status file,
//! event log, metrics) and stops nothing else. Each experiment runs as its own `fault
//! apply` (see `loader`), so each keeps the whole fail-safe rule, and each dies with the
//! agent: SIGTERM (a rolling update's) reverts them all, and so does the agent's death.
//!
//! The directory is watched with inotify (the notify crate) and read again every 2 s
//! besides, so a missed event costs at most that.

mod dir;
mod events;
mod loader;
mod metrics;
mod slot;
mod status;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use notify::Watcher as _;

pub use dir::content_hash;
pub use slot::FileState;
pub use status::{remove_if_dead, AgentStatus, FileStatus};

use crate::{
    cli::AgentArgs,
    error::{failed, Error},
};
use dir::Wanted;
use events::AgentLog;
use metrics::AgentMetrics;
use slot::Slot;

/// The backstop to inotify: the directory is read again this often.
const RESCAN: Duration = Duration::from_secs(2);
/// How often loaders are polled (readiness, ends).
const TICK: Duration = Duration::from_millis(100);
/// A burst of events (a ConfigMap's swap is several) is read once, this long after its first.
const SETTLE: Duration = Duration::from_millis(30);

struct Agent {
    dir: PathBuf,
    slots: BTreeMap<PathBuf, Slot>,
    known: HashMap<PathBuf, Wanted>,
    log: AgentLog,
    metrics: Arc<AgentMetrics>,
    status: AgentStatus,
}

pub async fn run(args: AgentArgs) -> Result<(), Error> {
    let mut signals = crate::engine::Signals::install()?;
    join_node_cgroup_namespace();
    if !args.dir.is_dir() {
        return Err(Error::Usage(format!(
            "{}: expected a directory of policy files",
            args.dir.display()
        )));
    }
    if let Some(other) = AgentStatus::of_running_agent() {
        return Err(failed("start the agent")(anyhow::anyhow!(
            "an agent already runs (pid {}) watching {}",
            other.pid,
            other.dir.display()
        )));
    }
    let mut agent = Agent::new(&args.dir).map_err(failed("start the agent"))?;
    let server = match args.metrics {
        Some(addr) => {
            let m = agent.metrics.clone();
            let s = crate::observe::serve::Server::start(addr, Arc::new(move || m.encode()))
                .map_err(failed("serve the agent's metrics"))?;
            eprintln!("fault agent: metrics at http://{}/metrics", s.addr());
            Some(s)
        }
        None => None,
    };
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .map_err(failed("watch the directory"))?;
    watcher
        .watch(&args.dir, notify::RecursiveMode::NonRecursive)
        .map_err(failed("watch the directory"))?;
    eprintln!("fault agent: watching {}", args.dir.display());
    let why = agent.serve(&mut signals, &mut changes).await;
    eprintln!("fault agent: {why}: reverting every experiment");
    drop(watcher);
    agent.stop_all();
    let _ = std::fs::remove_file(status::status_path());
    if let Some(s) = server {
        s.stop();
    }
    eprintln!("fault agent: stopped");
    Ok(())
}

impl Agent {
    fn new(dir: &Path) -> anyhow::Result<Agent> {
        let pid = std::process::id();
        let status = AgentStatus {
            pid,
            pid_start: crate::sys::proc::start_time(pid),
            dir: dir.to_path_buf(),
            generation: 0,
            files: Vec::new(),
        };
        status.write().context("write the agent's status")?;
        Ok(Agent {
            dir: dir.to_path_buf(),
            slots: BTreeMap::new(),
            known: HashMap::new(),
            log: AgentLog::open().context("open the agent's event log")?,
            metrics: AgentMetrics::new(),
            status,
        })
    }

    /// Reconciles until a signal says stop; returns which.
    async fn serve(
        &mut self,
        signals: &mut crate::engine::Signals,
        changes: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
    ) -> &'static str {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_scan = Instant::now();
        loop {
            if Instant::now() >= next_scan {
                self.scan();
                next_scan = Instant::now() + RESCAN;
            }
            self.step();
            tokio::select! {
                why = signals.next() => return why,
                Some(()) = changes.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while changes.try_recv().is_ok() {}
                    next_scan = Instant::now();
                }
                _ = tick.tick() => {}
            }
        }
    }

    /// Reads the directory and hands each slot what its file now asks for.
    fn scan(&mut self) {
        self.metrics.scanned();
        let wanted = match dir::scan(&self.dir, &self.known) {
            Ok(w) => w,
            // The directory itself gone: it asks for nothing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                eprintln!(
                    "fault agent: warning: cannot read {}: {e}; what runs is left as it is",
                    self.dir.display()
                );
                return;
            }
        };
        self.known = wanted.iter().map(|w| (w.file.clone(), w.clone())).collect();
        for w in wanted {
            self.slots
                .entry(w.file.clone())
                .or_insert_with(|| Slot::new(w.file));
        }
        for slot in self.slots.values_mut() {
            let now = self.known.get(&slot.file).cloned();
            if let Some(h) = slot.set_want(now) {
                self.log.write(&slot.file, &h);
                self.metrics.happened(&h);
            }
        }
    }

    /// One reconcile step of every file, then the status file if anything changed.
    fn step(&mut self) {
        let now = Instant::now();
        for slot in self.slots.values_mut() {
            for h in slot.step(now) {
                self.log.write(&slot.file, &h);
                self.metrics.happened(&h);
            }
        }
        self.slots.retain(|_, s| !s.is_done());
        self.write_status();
    }

    fn write_status(&mut self) {
        let files: Vec<FileStatus> = self.slots.values().filter_map(file_status).collect();
        if files == self.status.files {
            return;
        }
        self.metrics
            .set_states(&files.iter().map(|f| f.state).collect::<Vec<_>>());
        self.status.files = files;
        self.status.generation += 1;
        if let Err(e) = self.status.write() {
            eprintln!("fault agent: warning: {e:#}");
        }
    }

    /// Stops every loader and waits for each to revert.
    fn stop_all(&mut self) {
        for slot in self.slots.values_mut() {
            slot.set_want(None);
        }
        while !self.slots.is_empty() {
            self.step();
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An agent in a pod has a cgroup namespace of its own (containerd gives one to every
/// container on a cgroup2 node), where `/proc/PID/cgroup` reads relative to the pod. With
/// the node's pids in view (hostPID), it takes the node's namespace, pid 1's, so that its
/// loaders find every target's cgroup where the cgroup2 mount shows it.
fn join_node_cgroup_namespace() {
    use std::os::unix::fs::MetadataExt as _;
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
    let (own, node) = (ino("/proc/self/ns/cgroup"), ino("/proc/1/ns/cgroup"));
    if own.is_none() || own == node {
        return;
    }
    let joined = std::fs::File::open("/proc/1/ns/cgroup").and_then(|f| {
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(std::io::Error::from)
    });
    match joined {
        Ok(()) => eprintln!("fault agent: joined the node's cgroup namespace (pid 1's)"),
        Err(e) => eprintln!(
            "fault agent: warning: cannot join the node's cgroup namespace ({e}): pid and \
             pod targets may not resolve"
        ),
    }
}

fn file_status(slot: &Slot) -> Option<FileStatus> {
    let (state, why) = slot.state()?;
    let hash = slot
        .want
        .as_ref()
        .map(|w| w.hash)
        .or(slot.loader.as_ref().map(|l| l.hash))?;
    Some(FileStatus {
        file: slot.file.clone(),
        name: slot.name().map(str::to_owned),
        state,
        content: format!("{hash:016x}"),
        loader_pid: slot.loader.as_ref().map(|l| l.pid()),
        why,
    })
}
