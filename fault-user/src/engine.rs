//! One run of a plan: start each fault kind, hold while following the targets, stop in
//! reverse. Every kind owns what it attached, and dropping a kind takes its fault off, so an
//! early return or a panic leaves nothing half applied; `stop` does the same in order and
//! reports what went wrong.

use std::{future::Future, path::PathBuf, pin::Pin, task::Poll, time::Duration};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::{
    error::{failed, Error},
    observe::{
        event::{Reason, Sample},
        live::LiveView,
        steps::StepWatch,
        targets::TargetWatch,
        Event as Told,
    },
    plan::Plan,
    probe::Probes,
    state::{self, State},
    timeline::Switches,
};

/// A future a kind waits on for events of its own (a process held at exec).
pub type Event<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// What every kind of fault does over a run.
pub trait Fault {
    /// Puts the fault in place. What was attached before an error stays owned by the kind,
    /// and its `stop` (or its drop) takes it off.
    fn start(&mut self, run: &Run) -> anyhow::Result<()>;
    /// Covers what appeared in the targets since the last look.
    fn follow(&mut self, run: &Run) -> anyhow::Result<()>;
    /// Waits for the kind's next event and handles it; never ready for kinds without any.
    fn event<'a>(&'a mut self, _run: &'a Run) -> Event<'a> {
        Box::pin(std::future::pending())
    }
    /// Brings the kind to where the timeline is `t` after the run started (steps switch on
    /// and off, ramps move); returns when it wants to be told next, if ever.
    fn tick(&mut self, _run: &Run, _t: Duration) -> anyhow::Result<Option<Duration>> {
        Ok(None)
    }
    /// Writes what the kind holds into the state file's record.
    fn record(&self, state: &mut State);
    /// What to tell once it is in place.
    fn banner(&self, run: &Run) -> Vec<String>;
    /// The live view's lines, every `--interval`.
    fn live(&self, run: &Run) -> Vec<String>;
    /// Adds the kind's counters to the sample the event log and the metrics take.
    fn sample(&self, _run: &Run, _sample: &mut crate::observe::event::Sample) {}
    /// Takes the fault off: lines to print, and the problems met.
    fn stop(&mut self, run: &Run) -> (Vec<String>, Vec<String>);
}

/// What the kinds share during a run.
pub struct Run {
    pub plan: Plan,
    /// Where maps are pinned for `fault status` and `fault stop`.
    pub pin_dir: PathBuf,
    /// CLOCK_MONOTONIC nanoseconds at which every fault ends, whatever happens to fault.
    pub deadline_ns: u64,
    /// The heartbeat every kind registers what it put in place with (see `crate::lease`).
    pub lease: crate::lease::Lease,
    /// When the timeline started (once every kind was in place): every step's `at` counts
    /// from here.
    pub started: std::time::Instant,
    /// The event log and the metrics.
    pub observer: crate::observe::Shared,
    /// The live view redraws in place (a terminal): the kinds leave their counters to it.
    pub live_in_place: bool,
    /// The targets found under another cgroup since the kinds last followed (a container
    /// started again with a new id): `plan` already has them where they are now, and the
    /// kinds that keep cgroups of their own move them.
    pub moved: Vec<crate::churn::Move>,
}

/// The state file and pins of a run; dropping it removes both, so a run that fails to start
/// (or panics) leaves no record of faults that are not there.
struct Records {
    state: State,
    written: Vec<u8>,
}

impl Records {
    /// Refreshes the state from the kinds and writes it when it changed.
    fn update(&mut self, kinds: &[Box<dyn Fault>]) {
        for k in kinds {
            k.record(&mut self.state);
        }
        let bytes = serde_json::to_vec(&self.state).unwrap_or_default();
        if bytes != self.written {
            match self.state.write() {
                Ok(()) => self.written = bytes,
                Err(e) => eprintln!("fault: warning: {e:#}"),
            }
        }
    }

    fn remove(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = state::remove_pins(&self.state.name) {
            problems.push(format!("{e:#}"));
        }
        if let Err(e) = self.state.remove_file() {
            problems.push(format!("{e:#}"));
        }
        problems
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        for p in self.remove() {
            eprintln!("fault: warning: {p}");
        }
    }
}

/// Why a run ended.
enum End {
    Signal(&'static str),
    Deadline,
    /// A stop condition of the experiment was met.
    Abort(crate::probe::Abort),
}

impl End {
    /// The reason and the words of the `reverted` event (and of the last line).
    fn reason(&self, policy: &str) -> (Reason, String) {
        match self {
            End::Signal(s) if crate::observe::stop_marker(policy).exists() => {
                (Reason::Stopped, format!("fault stop ({s})"))
            }
            End::Signal(s) => (Reason::Signal, s.to_string()),
            End::Deadline => (Reason::Deadline, "duration elapsed".to_owned()),
            End::Abort(a) => (
                Reason::Aborted,
                format!("stopped by abort_when on probe {}", a.probe),
            ),
        }
    }
}

/// What the engine keeps an eye on for the event log, the metrics and the live view.
struct Watchers {
    steps: StepWatch,
    targets: TargetWatch,
    live: LiveView,
    switches: Switches,
}

/// Signals that revert: Ctrl-C, SIGTERM and SIGHUP (a closed terminal). `fault apply`
/// installs them first thing, so one that comes while it reads the policy or attaches is
/// kept, and acted on (everything put in place is reverted) instead of killing the loader
/// halfway with its default action.
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    pub fn install() -> Result<Self, Error> {
        let on = |kind| signal(kind).map_err(failed("install the signal handlers"));
        Ok(Signals {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
        })
    }

    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted",
            _ = self.term.recv() => "terminated",
            _ = self.hup.recv() => "hung up",
        }
    }
}

/// Runs `kinds` over `run` until the deadline or a signal; `state` is the record to keep,
/// already written (by `fault apply`, under the lock its claims were checked with).
pub async fn run(
    mut run: Run,
    kinds: Vec<Box<dyn Fault>>,
    state: State,
    mut signals: Signals,
) -> Result<(), Error> {
    // From here a failure removes the record (and the pins) as the run unwinds.
    let mut records = Records {
        state,
        written: Vec::new(),
    };
    crate::watchdog::spawn(&records.state.name).map_err(failed("start the watchdog"))?;
    let mut kinds = kinds;
    let mut started = 0;
    let result = start_all(&run, &mut kinds, &mut started, &mut records);
    if let Err(e) = result {
        return Err(abandon(&run, &mut kinds[..started], e));
    }
    // The timeline starts once everything is in place: a step's `at` counts from here, so
    // a step runs in full however long attaching took (the deadline still counts from the
    // start, and bounds everything).
    run.started = std::time::Instant::now();
    let mut watchers = applied(&run);
    for k in &kinds {
        for line in k.banner(&run) {
            println!("{line}");
        }
    }
    let mut probes = match Probes::start(
        run.plan.probe_specs(),
        run.plan.abort_rules(),
        &run.observer,
    ) {
        Ok(p) => p,
        Err(e) => return Err(abandon(&run, &mut kinds, failed("start the probes")(e))),
    };
    // Ready once everything is in place and told: the record says so last, so whoever
    // waits on it (`fault status`, scripts, the tests) finds the banners printed.
    records.state.ready = true;
    records.update(&kinds);
    if let Err(e) = crate::commands::tell_ready(&run) {
        return Err(abandon(&run, &mut kinds, e));
    }
    let end = hold(
        &mut run,
        &mut kinds,
        &mut records,
        &mut signals,
        &mut probes,
        &mut watchers,
    )
    .await;
    probes.stop();
    finish(run, kinds, records, end, &probes, watchers)
}

/// Everything is in place: tells the event log what runs and sets up what watches it.
fn applied(run: &Run) -> Watchers {
    let o = &run.observer;
    o.emit(Told::Applied(Box::new(crate::observe::applied(&run.plan))));
    if run.plan.net.is_some() {
        o.metrics
            .add_packets(run.pin_dir.clone(), crate::observe::rule_labels(&run.plan));
    }
    Watchers {
        steps: StepWatch::new(&run.plan.policy, o),
        targets: TargetWatch::new(&run.plan.resolved.targets, o),
        live: LiveView::new(run.plan.options.json, run.live_in_place),
        switches: Switches::default(),
    }
}

/// Takes off what a run that failed to start had put in place, and logs why.
fn abandon(run: &Run, started: &mut [Box<dyn Fault>], e: Error) -> Error {
    run.lease.stop();
    let (_, problems) = stop_all(run, started);
    for p in problems {
        eprintln!("fault: warning: {p}");
    }
    run.observer.emit(Told::Reverted {
        reason: Reason::Failed,
        detail: e.to_string(),
        rules: Vec::new(),
        probes: Vec::new(),
    });
    run.observer.close();
    crate::commands::remove_ready_file(run);
    e
}

/// The counters of every kind and probe now.
fn sample(run: &Run, kinds: &[Box<dyn Fault>], probes: &Probes, steps: &StepWatch) -> Sample {
    let mut s = Sample::default();
    for k in kinds {
        k.sample(run, &mut s);
    }
    s.probes = probes
        .counts()
        .into_iter()
        .map(|p| crate::observe::event::ProbeCounts {
            probe: p.name,
            ok: p.ok,
            failed: p.failed,
            last_latency_ms: p.last_latency_ms,
        })
        .collect();
    s.steps_on = steps.on(&run.plan.policy);
    s
}

/// Reverts every kind, removes the records and says why and how it went.
fn finish(
    run: Run,
    mut kinds: Vec<Box<dyn Fault>>,
    records: Records,
    end: End,
    probes: &Probes,
    mut watchers: Watchers,
) -> Result<(), Error> {
    // No renewal during the revert: a revert that stalls still ends within a lease.
    run.lease.stop();
    let name = run.plan.policy.name.clone();
    let last = sample(&run, &kinds, probes, &watchers.steps);
    if let End::Abort(a) = &end {
        run.observer.emit(Told::Abort {
            probe: a.probe.clone(),
            why: a.to_string(),
        });
    }
    let (lines, mut problems) = stop_all(&run, &mut kinds);
    drop(kinds);
    problems.extend(records.remove());
    let (reason, detail) = end.reason(&name);
    let _ = std::fs::remove_file(crate::observe::stop_marker(&name));
    watchers.live.leave();
    println!("fault: {name} reverted ({detail})");
    run.observer.emit(Told::Reverted {
        reason,
        detail,
        rules: last.rules,
        probes: last.probes,
    });
    run.observer.close();
    crate::commands::remove_ready_file(&run);
    for l in lines
        .into_iter()
        .chain(probes.summary())
        .chain(watchers.switches.summary())
    {
        println!("{l}");
    }
    crate::error::incomplete("revert", problems)?;
    match end {
        End::Abort(a) => Err(Error::Aborted {
            name,
            why: a.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Starts each kind in order; `started` counts those to stop (the failing one included,
/// since it may hold part of its fault).
fn start_all(
    run: &Run,
    kinds: &mut [Box<dyn Fault>],
    started: &mut usize,
    records: &mut Records,
) -> Result<(), Error> {
    for k in kinds.iter_mut() {
        *started += 1;
        k.start(run).map_err(failed("apply"))?;
    }
    records.update(kinds);
    Ok(())
}

/// Stops the kinds in reverse order.
fn stop_all(run: &Run, kinds: &mut [Box<dyn Fault>]) -> (Vec<String>, Vec<String>) {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for k in kinds.iter_mut().rev() {
        let (l, p) = k.stop(run);
        lines.extend(l);
        problems.extend(p);
    }
    (lines, problems)
}

/// Follows the targets and serves the kinds' events until a signal or the deadline.
async fn hold(
    run: &mut Run,
    kinds: &mut [Box<dyn Fault>],
    records: &mut Records,
    signals: &mut Signals,
    probes: &mut Probes,
    w: &mut Watchers,
) -> End {
    let end = tokio::time::Instant::now() + run.plan.policy.duration;
    let start = std::time::Instant::now();
    let mut live = tokio::time::interval(run.plan.options.interval);
    live.tick().await;
    // Processes that join a target, or start in a new network namespace, are picked up
    // within this period.
    let mut rescan = tokio::time::interval(Duration::from_millis(250));
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_tick = tick_all(run, kinds, None, w);
    let mut churn = crate::churn::Churn::default();
    loop {
        let mut rescan_due = false;
        let tick_at = next_tick.map(|t| tokio::time::Instant::from_std(run.started + t));
        // In this order when several are ready: ending, switching on time and letting a
        // held process go come before following the targets and the live view.
        tokio::select! {
            biased;
            s = signals.next() => return End::Signal(s),
            _ = tokio::time::sleep_until(end) => return End::Deadline,
            a = probes.abort() => return End::Abort(a),
            _ = sleep_until_some(tick_at) => {
                next_tick = tick_all(run, kinds, next_tick, w);
            }
            // A process held at exec waits for this.
            _ = any_event(run, kinds) => {}
            _ = rescan.tick() => rescan_due = true,
            _ = live.tick() => show(run, kinds, probes, w, start, end),
        }
        if rescan_due {
            follow_all(run, kinds, &mut churn, w);
            probes.follow(&run.moved);
            // Where the targets are now (moved, or pods that joined), for `fault status`.
            records.state.targets.clone_from(&run.plan.resolved.targets);
            records
                .state
                .cgroup_ids
                .clone_from(&run.plan.resolved.cgroup_ids);
        }
        records.update(kinds);
    }
}

/// Finds the targets again (a container started again under its name) and lets every kind
/// cover what appeared in them.
fn follow_all(
    run: &mut Run,
    kinds: &mut [Box<dyn Fault>],
    churn: &mut crate::churn::Churn,
    w: &mut Watchers,
) {
    run.moved = churn.follow(&mut run.plan);
    for m in &run.moved {
        match m.from.as_os_str().is_empty() {
            true => println!(
                "fault: {} started, in {}; it is a target from now on",
                m.label,
                m.to.display()
            ),
            false => println!(
                "fault: {} is back under another cgroup, {}; following it there",
                m.label,
                m.to.display()
            ),
        }
    }
    for k in kinds.iter_mut() {
        if let Err(e) = k.follow(run) {
            eprintln!("fault: warning: following the targets: {e:#}");
        }
    }
    w.targets.update(&run.plan.resolved.targets, &run.observer);
}

/// Tells every kind where the timeline is (`due` is when it was meant to be, for the
/// figures in `switches`); the earliest time one wants to hear again.
fn tick_all(
    run: &Run,
    kinds: &mut [Box<dyn Fault>],
    due: Option<Duration>,
    w: &mut Watchers,
) -> Option<Duration> {
    let t = run.started.elapsed();
    let next = kinds.iter_mut().map(|k| match k.tick(run, t) {
        Ok(next) => next,
        Err(e) => {
            let message = format!("switching at {:.3}s: {e:#}", t.as_secs_f64());
            eprintln!("fault: warning: {message}");
            run.observer.emit(Told::Warning { message });
            None
        }
    });
    let next = crate::timeline::earliest(next.collect::<Vec<_>>());
    w.steps.update(&run.plan.policy, t, &run.observer);
    if let Some(due) = due {
        w.switches
            .record(t.saturating_sub(due), run.started.elapsed() - t);
    }
    next
}

/// Every `--interval`: a sample for the event log and the metrics, and the live view.
fn show(
    run: &Run,
    kinds: &[Box<dyn Fault>],
    probes: &Probes,
    w: &mut Watchers,
    start: std::time::Instant,
    end: tokio::time::Instant,
) {
    let s = sample(run, kinds, probes, &w.steps);
    run.observer.metrics.set_clock(&s.clock);
    let mut lines: Vec<String> = crate::timeline::live(&run.plan.policy, run.started.elapsed());
    lines.extend(kinds.iter().flat_map(|k| k.live(run)));
    lines.extend(probes.live());
    let left = end.saturating_duration_since(tokio::time::Instant::now());
    w.live
        .show(&run.plan.policy.name, start.elapsed(), left, &s, lines);
    run.observer.emit(Told::Sample(s));
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Ready when one kind has handled an event. The others' futures are dropped, which their
/// event sources allow (nothing is lost: what was not taken stays queued).
async fn any_event(run: &Run, kinds: &mut [Box<dyn Fault>]) {
    let mut events: Vec<Event<'_>> = kinds.iter_mut().map(|k| k.event(run)).collect();
    std::future::poll_fn(
        |cx| match events.iter_mut().any(|e| e.as_mut().poll(cx).is_ready()) {
            true => Poll::Ready(()),
            false => Poll::Pending,
        },
    )
    .await
}
