//! One run of a plan: start each fault kind, hold while following the targets, stop in
//! reverse. Every kind owns what it attached, and dropping a kind takes its fault off, so an
//! early return or a panic leaves nothing half applied; `stop` does the same in order and
//! reports what went wrong.

use std::{future::Future, path::PathBuf, pin::Pin, task::Poll, time::Duration};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::{
    error::{failed, Error},
    plan::Plan,
    probe::Probes,
    state::{self, State},
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

/// Signals that revert: Ctrl-C, SIGTERM and SIGHUP (a closed terminal).
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Result<Self, Error> {
        let on = |kind| signal(kind).map_err(failed("install the signal handlers"));
        Ok(Signals {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted",
            _ = self.term.recv() => "terminated",
            _ = self.hup.recv() => "hung up",
        }
    }
}

/// Runs `kinds` over `run` until the deadline or a signal; `state` is the record to keep.
pub async fn run(mut run: Run, kinds: Vec<Box<dyn Fault>>, state: State) -> Result<(), Error> {
    // Caught from here on, so a Ctrl-C while attaching still reverts.
    let mut signals = Signals::install()?;
    let mut records = Records {
        state,
        written: Vec::new(),
    };
    records
        .state
        .write()
        .map_err(failed("write the state file"))?;
    crate::watchdog::spawn(&records.state.name).map_err(failed("start the watchdog"))?;
    let mut kinds = kinds;
    let mut started = 0;
    let result = start_all(&run, &mut kinds, &mut started, &mut records);
    if let Err(e) = result {
        run.lease.stop();
        let (_, problems) = stop_all(&run, &mut kinds[..started]);
        for p in problems {
            eprintln!("fault: warning: {p}");
        }
        return Err(e);
    }
    // The timeline starts once everything is in place: a step's `at` counts from here, so
    // a step runs in full however long attaching took (the deadline still counts from the
    // start, and bounds everything).
    run.started = std::time::Instant::now();
    for k in &kinds {
        for line in k.banner(&run) {
            println!("{line}");
        }
    }
    let mut probes = match Probes::start(run.plan.probe_specs(), run.plan.abort_rules()) {
        Ok(p) => p,
        Err(e) => {
            run.lease.stop();
            let (_, problems) = stop_all(&run, &mut kinds);
            for p in problems {
                eprintln!("fault: warning: {p}");
            }
            return Err(failed("start the probes")(e));
        }
    };
    let mut switches = crate::timeline::Switches::default();
    let end = hold(
        &run,
        &mut kinds,
        &mut records,
        &mut signals,
        &mut probes,
        &mut switches,
    )
    .await;
    probes.stop();
    finish(run, kinds, records, end, &probes, &switches)
}

/// Reverts every kind, removes the records and says why and how it went.
fn finish(
    run: Run,
    mut kinds: Vec<Box<dyn Fault>>,
    records: Records,
    end: End,
    probes: &Probes,
    switches: &crate::timeline::Switches,
) -> Result<(), Error> {
    // No renewal during the revert: a revert that stalls still ends within a lease.
    run.lease.stop();
    let (lines, mut problems) = stop_all(&run, &mut kinds);
    drop(kinds);
    problems.extend(records.remove());
    let reason = match &end {
        End::Signal(s) => s.to_string(),
        End::Deadline => "duration elapsed".to_owned(),
        End::Abort(a) => format!("stopped by abort_when on probe {}", a.probe),
    };
    println!("fault: {} reverted ({reason})", run.plan.policy.name);
    for l in lines
        .into_iter()
        .chain(probes.summary())
        .chain(switches.summary())
    {
        println!("{l}");
    }
    crate::error::incomplete("revert", problems)?;
    match end {
        End::Abort(a) => Err(Error::Aborted {
            name: run.plan.policy.name.clone(),
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
    records.state.ready = true;
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
    run: &Run,
    kinds: &mut [Box<dyn Fault>],
    records: &mut Records,
    signals: &mut Signals,
    probes: &mut Probes,
    switches: &mut crate::timeline::Switches,
) -> End {
    let end = tokio::time::Instant::now() + run.plan.policy.duration;
    let start = std::time::Instant::now();
    let mut live = tokio::time::interval(run.plan.options.interval);
    live.tick().await;
    // Processes that join a target, or start in a new network namespace, are picked up
    // within this period.
    let mut rescan = tokio::time::interval(Duration::from_millis(250));
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_tick = tick_all(run, kinds, None, switches);
    loop {
        let tick_at = next_tick.map(|t| tokio::time::Instant::from_std(run.started + t));
        tokio::select! {
            s = signals.next() => return End::Signal(s),
            _ = tokio::time::sleep_until(end) => return End::Deadline,
            a = probes.abort() => return End::Abort(a),
            _ = sleep_until_some(tick_at) => {
                next_tick = tick_all(run, kinds, next_tick, switches);
            }
            _ = rescan.tick() => {
                for k in kinds.iter_mut() {
                    if let Err(e) = k.follow(run) {
                        eprintln!("fault: warning: following the targets: {e:#}");
                    }
                }
            }
            _ = any_event(run, kinds) => {}
            _ = live.tick() => print_live(run, kinds, probes, start),
        }
        records.update(kinds);
    }
}

/// Tells every kind where the timeline is (`due` is when it was meant to be, for the
/// figures in `switches`); the earliest time one wants to hear again.
fn tick_all(
    run: &Run,
    kinds: &mut [Box<dyn Fault>],
    due: Option<Duration>,
    switches: &mut crate::timeline::Switches,
) -> Option<Duration> {
    let t = run.started.elapsed();
    let next = kinds.iter_mut().map(|k| match k.tick(run, t) {
        Ok(next) => next,
        Err(e) => {
            eprintln!(
                "fault: warning: switching at {:.3}s: {e:#}",
                t.as_secs_f64()
            );
            None
        }
    });
    let next = crate::timeline::earliest(next.collect::<Vec<_>>());
    if let Some(due) = due {
        switches.record(t.saturating_sub(due), run.started.elapsed() - t);
    }
    next
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn print_live(run: &Run, kinds: &[Box<dyn Fault>], probes: &Probes, start: std::time::Instant) {
    let mut lines: Vec<String> = crate::timeline::live(&run.plan.policy, run.started.elapsed());
    lines.extend(kinds.iter().flat_map(|k| k.live(run)));
    lines.extend(probes.live());
    if !lines.is_empty() {
        println!("[{:>5}]", start.elapsed().as_secs());
        for l in lines {
            println!("{l}");
        }
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
