//! One probe's task: a check every `every` (the first at once), each in the right place and
//! bounded by the timeout, its result counted and judged against the probe's rules.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::{sync::watch, time::MissedTickBehavior};

use super::{
    abort::{History, LAST},
    check,
    child::{self, Children, Ran},
    inside::Place,
    once,
    tally::{Outcome, Tally},
    Abort, AbortRule, Check, ProbeSpec,
};

/// What a probe's task shares with [`super::Probes`].
#[derive(Debug)]
pub(super) struct Board {
    pub tally: Tally,
    history: History,
}

impl Board {
    pub fn new(name: &str, rules: &[AbortRule]) -> Board {
        Board {
            tally: Tally::new(name),
            history: History::new(rules),
        }
    }
}

pub(super) struct Task {
    pub spec: ProbeSpec,
    /// The cgroup the checks run from (`spec.from`, or where its target moved since).
    pub from: Arc<Mutex<Option<std::path::PathBuf>>>,
    pub rules: Vec<AbortRule>,
    pub board: Arc<Mutex<Board>>,
    /// Set once, by the first rule met among all probes.
    pub abort: Arc<watch::Sender<Option<Abort>>>,
    /// When the probes started: results are timed from here.
    pub started: Instant,
    pub children: Arc<Children>,
    /// Each result goes to the metrics, each change of result to the event log.
    pub observer: crate::observe::Shared,
}

impl Task {
    pub async fn run(self) {
        let mut every = tokio::time::interval(self.spec.every);
        // A check that outlasts `every` delays the next rather than causing a burst.
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let outcome = self.check_once().await;
            if let Some(met) = self.record(&outcome) {
                self.abort.send_if_modified(|a| match a {
                    Some(_) => false,
                    None => {
                        *a = Some(met);
                        true
                    }
                });
            }
        }
    }

    /// Counts the outcome and judges the rules; the first one met, if any.
    fn record(&self, outcome: &Outcome) -> Option<Abort> {
        let at = self.started.elapsed();
        let mut board = self.board.lock().unwrap_or_else(|p| p.into_inner());
        let was_ok = (board.tally.ok + board.tally.failed > 0).then_some(board.tally.streak == 0);
        board.tally.record(outcome);
        self.observe(outcome, was_ok);
        board.history.record(at, outcome.error.is_none());
        let found = self.rules.iter().find_map(|r| board.history.judge(r, at))?;
        let last = board.tally.last_error.as_deref().unwrap_or("none");
        Some(Abort {
            probe: self.spec.name.clone(),
            why: format!("{found}{LAST}{last}"),
        })
    }

    /// Tells the metrics of the check, and the event log when the result changed (or is
    /// the first).
    fn observe(&self, outcome: &Outcome, was_ok: Option<bool>) {
        let ok = outcome.error.is_none();
        let o = &self.observer;
        o.metrics.probe_check(&self.spec.name, ok, outcome.latency);
        if was_ok != Some(ok) {
            o.emit(crate::observe::Event::ProbeChanged {
                probe: self.spec.name.clone(),
                ok,
                latency_ms: outcome.latency.as_secs_f64() * 1e3,
                error: outcome.error.clone().unwrap_or_default(),
            });
        }
    }

    /// One check, bounded by the timeout from its start, spawning included.
    async fn check_once(&self) -> Outcome {
        let begun = Instant::now();
        let deadline = tokio::time::Instant::from_std(begun + self.spec.timeout);
        let (check, timeout) = (&self.spec.check, self.spec.timeout);
        let from = self.from.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let place = match &from {
            None => None,
            Some(cgroup) => match Place::find(cgroup) {
                Ok(p) => Some(p),
                Err(e) => return failed(begun, format!("{}: {e}", check::describe(check))),
            },
        };
        let result = match (check, &place) {
            (Check::Tcp(addr), None) => check::tcp(*addr, timeout).await,
            (Check::Http { url, status }, None) => check::http(url, *status, timeout).await,
            (Check::Exec(argv), place) => self.exec(argv, place.as_ref(), deadline).await,
            (_, Some(place)) => return self.once_inside(place, deadline, begun).await,
        };
        Outcome {
            latency: begun.elapsed(),
            error: result.err(),
        }
    }

    /// An exec probe: the command exits 0 in time.
    async fn exec(
        &self,
        argv: &[String],
        place: Option<&Place>,
        deadline: tokio::time::Instant,
    ) -> Result<(), String> {
        let what = check::describe(&self.spec.check);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        if let Some(place) = place {
            place.enter(&mut cmd);
        }
        match child::run(cmd, deadline, &self.children).await {
            Ran::Exited { status, .. } if status.success() => Ok(()),
            Ran::Exited { status, stderr, .. } => Err(match stderr.lines().last() {
                Some(line) => format!("{what}: {status}: {line}"),
                None => format!("{what}: {status}"),
            }),
            Ran::TimedOut => Err(check::timed_out(&self.spec.check, self.spec.timeout)),
            Ran::NotStarted(e) => Err(match place {
                Some(p) => format!("{what} did not start in {}: {e}", p.describe()),
                None => format!("{what} did not start: {e}"),
            }),
        }
    }

    /// A tcp or http probe from a group: `fault probe-once` started inside it, with the
    /// latency it measured there.
    async fn once_inside(
        &self,
        place: &Place,
        deadline: tokio::time::Instant,
        begun: Instant,
    ) -> Outcome {
        let what = check::describe(&self.spec.check);
        let mut cmd = match once::command(&self.spec.check, self.spec.timeout) {
            Ok(c) => c,
            Err(e) => return failed(begun, format!("{what}: {e}")),
        };
        place.enter(&mut cmd);
        match child::run(cmd, deadline, &self.children).await {
            Ran::Exited { stdout, stderr, .. } => once::decode(&stdout).unwrap_or_else(|| {
                let said = stderr.lines().last().unwrap_or("nothing");
                failed(begun, format!("{what}: fault probe-once said {said}"))
            }),
            Ran::TimedOut => failed(begun, check::timed_out(&self.spec.check, self.spec.timeout)),
            Ran::NotStarted(e) => failed(
                begun,
                format!("{what}: could not start in {}: {e}", place.describe()),
            ),
        }
    }
}

fn failed(begun: Instant, why: String) -> Outcome {
    Outcome {
        latency: begun.elapsed(),
        error: Some(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn task(
        check: Check,
        timeout_ms: u64,
        rules: Vec<AbortRule>,
    ) -> (Task, watch::Receiver<Option<Abort>>) {
        let spec = ProbeSpec {
            name: "p".into(),
            check,
            from: None,
            every: Duration::from_millis(20),
            timeout: Duration::from_millis(timeout_ms),
        };
        let (tx, rx) = watch::channel(None);
        let board = Arc::new(Mutex::new(Board::new("p", &rules)));
        let t = Task {
            from: Arc::new(Mutex::new(spec.from.clone())),
            spec,
            rules,
            board,
            abort: Arc::new(tx),
            started: Instant::now(),
            children: Arc::default(),
            observer: crate::observe::Observer::none("task-tests"),
        };
        (t, rx)
    }

    fn exec(args: &[&str]) -> Check {
        Check::Exec(args.iter().map(|a| a.to_string()).collect())
    }

    #[tokio::test]
    async fn exec_probes_pass_fail_and_time_out() {
        let (t, _) = task(exec(&["true"]), 1000, vec![]);
        assert_eq!(t.check_once().await.error, None);
        let (t, _) = task(exec(&["sh", "-c", "echo no db >&2; exit 2"]), 1000, vec![]);
        let e = t.check_once().await.error.unwrap();
        assert_eq!(e, "`sh -c echo no db >&2; exit 2`: exit status: 2: no db");
        let (t, _) = task(exec(&["sleep", "5"]), 200, vec![]);
        let o = t.check_once().await;
        assert_eq!(o.error.as_deref(), Some("`sleep 5`: timed out after 200ms"));
        assert!(
            o.latency >= Duration::from_millis(200) && o.latency < Duration::from_millis(400),
            "killed at the timeout: {:?}",
            o.latency
        );
    }

    #[tokio::test]
    async fn a_probe_from_a_missing_cgroup_fails_saying_why() {
        let (t, _) = task(exec(&["true"]), 1000, vec![]);
        *t.from.lock().unwrap() = Some("/nonexistent/cgroup".into());
        let e = t.check_once().await.error.unwrap();
        assert!(
            e.starts_with("`true`: cannot join cgroup /nonexistent/cgroup"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn the_run_stops_at_the_first_rule_met() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let rule = AbortRule::Consecutive {
            probe: "p".into(),
            failures: 3,
        };
        let (t, mut rx) = task(Check::Tcp(closed), 100, vec![rule]);
        let board = t.board.clone();
        let begun = Instant::now();
        let running = tokio::spawn(t.run());
        let met = rx.wait_for(Option::is_some).await.unwrap().clone().unwrap();
        running.abort();
        let took = begun.elapsed();
        assert!(
            met.why.starts_with("3 failures in a row; last: connect to"),
            "{}",
            met.why
        );
        assert!(
            took < Duration::from_millis(200),
            "3 checks 20 ms apart: {took:?}"
        );
        assert_eq!(board.lock().unwrap().tally.failed, 3);
    }
}
