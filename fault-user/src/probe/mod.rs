//! Steady-state probes and the stop conditions they feed, for experiments.
//!
//! A probe checks something the experiment must not break (a TCP port answers, an HTTP
//! endpoint returns its status, a command exits 0) every `every`, each check bounded by its
//! `timeout`. Its results feed the `abort_when` rules; when one is met, [`Probes::abort`]
//! resolves and the engine reverts everything at once.
//!
//! A probe `from` a group runs as a process of its own inside the group's cgroup and the
//! network namespace of a process there, so its sockets are the group's and it meets the
//! group's faults (`inside.rs`): an exec probe is the command itself, a tcp or http probe is
//! fault started again as `fault probe-once` (`once.rs`). Without `from`, tcp and http checks
//! run in fault's process and exec probes are plain children of fault (`child.rs`).
//!
//! Each probe is a task on the loader's tokio runtime (`task.rs`); checks of one probe never
//! overlap, and a check that outlasts `every` delays the next one. Counts and latencies are in
//! `tally.rs`, the stop conditions' maths in `abort.rs`.

mod abort;
mod check;
mod child;
mod inside;
mod once;
mod tally;
mod task;

use std::{
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

pub use check::http_url_supported;
pub use once::{once, OnceArgs};

use self::{child::Children, task::Board};

/// What a probe checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// A TCP connection to this address is established within the timeout.
    Tcp(std::net::SocketAddr),
    /// `GET url` answers with this status within the timeout. Plain `http://` only: fault
    /// carries no TLS stack, and an `https://` URL fails every check saying so (see
    /// [`http_url_supported`]). Redirects are not followed: a 301 is the answer.
    Http { url: String, status: u16 },
    /// The command exits 0 within the timeout; at the timeout it is killed (with any process
    /// it started in its process group) and reaped.
    Exec(Vec<String>),
}

/// One probe, as the engine hands it over.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub name: String,
    pub check: Check,
    /// Run inside this cgroup (absolute directory) and the network namespace of a process
    /// in it, found again at each check since processes come and go; while the cgroup (and
    /// those below it) has no process, each check fails saying so. A target that moves
    /// takes its probes along (see [`Probes::follow`]).
    pub from: Option<PathBuf>,
    pub every: Duration,
    pub timeout: Duration,
}

/// A stop condition over one probe's results.
#[derive(Debug, Clone, PartialEq)]
pub enum AbortRule {
    /// At least `failures` failed checks in a row (an ok resets the count).
    Consecutive { probe: String, failures: u32 },
    /// Failed checks make at least `ratio` (0..=1) of the results of the last `window`.
    /// Judged only once a full window has passed since the probe's first result, so a
    /// failure among the first few checks does not count as 100 %. With `ratio` 0 any
    /// failure in the window meets it.
    Ratio {
        probe: String,
        ratio: f64,
        window: Duration,
    },
}

impl AbortRule {
    pub fn probe(&self) -> &str {
        match self {
            AbortRule::Consecutive { probe, .. } | AbortRule::Ratio { probe, .. } => probe,
        }
    }
}

/// A stop condition met: which probe, and why in words (the last failure included).
#[derive(Debug, Clone)]
pub struct Abort {
    pub probe: String,
    /// `5 failures in a row; last: connect to 10.88.0.5:5432: timed out after 500ms`.
    pub why: String,
}

impl fmt::Display for Abort {
    /// `probe writes: 5 failures in a row (last: connect to ...: timed out after 500ms)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.why.split_once(abort::LAST) {
            Some((what, last)) => write!(f, "probe {}: {what} (last: {last})", self.probe),
            None => write!(f, "probe {}: {}", self.probe, self.why),
        }
    }
}

/// One probe's counters, as the state file and `fault status` keep them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeCount {
    pub name: String,
    pub ok: u64,
    pub failed: u64,
    /// How long the last check took to its answer, ok or not (a timeout's is the timeout).
    pub last_latency_ms: Option<f64>,
    /// The reason of the last failure, kept after later checks succeed.
    pub last_error: Option<String>,
}

/// The running probes of one experiment.
pub struct Probes {
    boards: Vec<Arc<Mutex<Board>>>,
    /// Where each probe runs its checks from, which [`Probes::follow`] moves.
    froms: Vec<Arc<Mutex<Option<PathBuf>>>>,
    tasks: Vec<JoinHandle<()>>,
    aborted: watch::Receiver<Option<Abort>>,
    has_rules: bool,
    children: Arc<Children>,
}

impl Probes {
    /// Starts every probe on its schedule as tasks on the current tokio runtime; the first
    /// check of each runs at once. Refuses rules that name no probe, and probes that could
    /// never check anything (a zero `every` or `timeout`, an empty command).
    pub fn start(
        specs: Vec<ProbeSpec>,
        rules: Vec<AbortRule>,
        observer: &crate::observe::Shared,
    ) -> anyhow::Result<Probes> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("probes run on a tokio runtime, and there is none")?;
        validate(&specs, &rules)?;
        let (tx, aborted) = watch::channel(None);
        let tx = Arc::new(tx);
        let children = Arc::new(Children::default());
        let started = Instant::now();
        let mut boards = Vec::new();
        let mut tasks = Vec::new();
        let mut froms = Vec::new();
        for spec in specs {
            let mine: Vec<AbortRule> = rules
                .iter()
                .filter(|r| r.probe() == spec.name)
                .cloned()
                .collect();
            let board = Arc::new(Mutex::new(Board::new(&spec.name, &mine)));
            observer.metrics.add_probe(&spec.name);
            let from = Arc::new(Mutex::new(spec.from.clone()));
            froms.push(from.clone());
            let task = task::Task {
                from,
                spec,
                rules: mine,
                board: board.clone(),
                abort: tx.clone(),
                started,
                children: children.clone(),
                observer: observer.clone(),
            };
            tasks.push(runtime.spawn(task.run()));
            boards.push(board);
        }
        Ok(Probes {
            boards,
            froms,
            tasks,
            aborted,
            has_rules: !rules.is_empty(),
            children,
        })
    }

    /// Moves the probes that run from a target's cgroup to where the target went (a
    /// container started again under its name): their next check runs there.
    pub fn follow(&self, moved: &[crate::churn::Move]) {
        for from in &self.froms {
            let mut from = from.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(m) = moved.iter().find(|m| from.as_ref() == Some(&m.from)) {
                *from = Some(m.to.clone());
            }
        }
    }

    /// Resolves when a stop condition is met (at once if one was met already); pending
    /// forever when there are no rules. Cancel-safe: it only waits on a watch channel the
    /// probe tasks set, so dropping it in a `select!` loses nothing.
    pub async fn abort(&mut self) -> Abort {
        if !self.has_rules {
            return std::future::pending().await;
        }
        match self.aborted.wait_for(Option::is_some).await {
            Ok(met) => met.clone().expect("waited for Some"),
            // The sender lives in every task; with all of them gone nothing can be met.
            Err(_) => std::future::pending().await,
        }
    }

    /// Live-view lines, one per probe: ok or failing, counts, last latency, p50 and max.
    pub fn live(&self) -> Vec<String> {
        tally::live_lines(&self.tallies())
    }

    /// Lines for the revert summary: counts, failure share, latency figures, last error.
    pub fn summary(&self) -> Vec<String> {
        tally::summary_lines(&self.tallies())
    }

    /// Per-probe counters for the state file and `fault status`.
    pub fn counts(&self) -> Vec<ProbeCount> {
        self.tallies().iter().map(tally::Tally::count).collect()
    }

    /// Stops every probe task and kills the exec children still running (fault's own
    /// `probe-once` children too); the runtime reaps them.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.children.kill_all();
    }

    fn tallies(&self) -> Vec<tally::Tally> {
        self.boards
            .iter()
            .map(|b| b.lock().unwrap_or_else(|p| p.into_inner()).tally.clone())
            .collect()
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What start refuses: the policy's validation says the same with the YAML path; this keeps
/// a caller that skipped it from running probes that cannot mean anything.
fn validate(specs: &[ProbeSpec], rules: &[AbortRule]) -> anyhow::Result<()> {
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.name == s.name) {
            bail!("probe {}: the name is used twice", s.name);
        }
        if s.every.is_zero() || s.timeout.is_zero() {
            bail!("probe {}: every and timeout must be above zero", s.name);
        }
        if matches!(&s.check, Check::Exec(argv) if argv.is_empty()) {
            bail!("probe {}: exec needs a command", s.name);
        }
    }
    for r in rules {
        if !specs.iter().any(|s| s.name == r.probe()) {
            bail!("abort_when: no probe is named {}", r.probe());
        }
        match r {
            AbortRule::Consecutive { failures: 0, .. } => {
                bail!("abort_when on {}: failures must be at least 1", r.probe())
            }
            AbortRule::Ratio { ratio, window, .. }
                if !(0.0..=1.0).contains(ratio) || window.is_zero() =>
            {
                bail!(
                    "abort_when on {}: expected a ratio within 0..=1 and a window above zero",
                    r.probe()
                )
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> crate::observe::Shared {
        crate::observe::Observer::none("probe-tests")
    }

    fn spec(name: &str, check: Check, every_ms: u64) -> ProbeSpec {
        ProbeSpec {
            name: name.into(),
            check,
            from: None,
            every: Duration::from_millis(every_ms),
            timeout: Duration::from_millis(200),
        }
    }

    fn closed_port() -> std::net::SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn abort_survives_being_dropped_in_a_select_loop() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let up = spec("up", Check::Tcp(listener.local_addr().unwrap()), 10);
        let down = spec("down", Check::Tcp(closed_port()), 30);
        let rule = AbortRule::Consecutive {
            probe: "down".into(),
            failures: 3,
        };
        let mut probes = Probes::start(vec![up, down], vec![rule], &none()).unwrap();
        let begun = Instant::now();
        let mut polls = 0;
        // The engine's shape: abort() raced against a faster branch, dropped each time.
        let met = loop {
            tokio::select! {
                a = probes.abort() => break a,
                _ = tokio::time::sleep(Duration::from_millis(5)) => polls += 1,
            }
        };
        let took = begun.elapsed();
        assert!(polls > 5, "the future was dropped {polls} times");
        assert_eq!(met.probe, "down");
        assert!(
            took >= Duration::from_millis(60) && took < Duration::from_millis(300),
            "3 checks 30 ms apart, the first at once: {took:?}"
        );
        let shown = met.to_string();
        assert!(
            shown.starts_with("probe down: 3 failures in a row (last: connect to 127.0.0.1:"),
            "{shown}"
        );
        assert!(shown.ends_with(')'), "{shown}");
        let again = probes.abort().await;
        assert_eq!(again.why, met.why, "a met condition stays met");
        let counts = probes.counts();
        assert_eq!(counts[1].failed, 3, "{counts:?}");
        assert!(counts[0].ok >= 3 && counts[0].failed == 0, "{counts:?}");
        assert!(probes.live()[1].contains("FAILING"), "{:?}", probes.live());
        assert!(
            probes.summary()[0].contains(" 0 failed (0.0%)"),
            "{:?}",
            probes.summary()
        );
        probes.stop();
    }

    #[tokio::test]
    async fn without_rules_abort_never_resolves() {
        let down = spec("down", Check::Tcp(closed_port()), 10);
        let mut probes = Probes::start(vec![down], vec![], &none()).unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(100), probes.abort()).await;
        assert!(
            waited.is_err(),
            "resolved: {:?}",
            waited.map(|a| a.to_string())
        );
        assert!(probes.counts()[0].failed >= 3, "the probe ran all the same");
    }

    #[tokio::test]
    async fn stop_kills_a_running_exec_probe() {
        let marker = std::env::temp_dir().join(format!("fault-probe-stop-{}", std::process::id()));
        let script = format!("sleep 0.3; touch {}", marker.display());
        let mut slow = spec(
            "slow",
            Check::Exec(vec!["sh".into(), "-c".into(), script]),
            1000,
        );
        slow.timeout = Duration::from_secs(5);
        let mut probes = Probes::start(vec![slow], vec![], &none()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        probes.stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !marker.exists(),
            "the command was killed before it finished"
        );
        assert_eq!(probes.counts()[0].ok + probes.counts()[0].failed, 0);
    }

    #[test]
    fn start_refuses_rules_without_their_probe() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _in = runtime.enter();
        let rule = AbortRule::Ratio {
            probe: "nope".into(),
            ratio: 0.5,
            window: Duration::from_secs(10),
        };
        let up = spec("up", Check::Tcp(closed_port()), 1000);
        let e = Probes::start(vec![up.clone()], vec![rule], &none())
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "abort_when: no probe is named nope");
        let e = Probes::start(vec![up.clone(), up], vec![], &none())
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "probe up: the name is used twice");
    }

    #[test]
    fn an_abort_without_a_last_failure_reads_plainly() {
        let a = Abort {
            probe: "p".into(),
            why: "stopped".into(),
        };
        assert_eq!(a.to_string(), "probe p: stopped");
    }
}
