//! The clock kind of fault, as the engine runs it: every process in the targets is
//! patched, those that exec are held until they are, and all are restored at the end.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    calls::{self, CallWatch, CallsRecord},
    exec::ExecWatch,
    layout::Plan,
    patch::Shared,
    Engine, Told,
};
use crate::{
    engine::{Event, Fault, Run},
    lease::{Renew, LEASE_NS},
    net::loader,
    policy::ClockRule,
    program_log::LogReader,
    state::State,
    sys::time::monotonic_ns,
    target::ResolvedTarget,
};

/// fault's own mappings of the patched processes' clock pages, by (pid, start time, patch
/// serial), for the heartbeat to move their deadlines forward. The serial tells a process
/// patched again after an exec (same pid and start time, a new page) from its old self.
type Pages = Arc<Mutex<BTreeMap<(u32, u64, u64), Shared>>>;

pub struct ClockFault {
    engine: Engine,
    watch: Option<ExecWatch>,
    /// Processes patched right after their exec, for the live view.
    at_exec: usize,
    pages: Pages,
    /// The exec program's rare events (`fault apply -v`).
    log: Option<LogReader>,
    /// Whose clocks: a policy's targets, or an experiment step's groups.
    targets: Vec<ResolvedTarget>,
    /// CLOCK_MONOTONIC ns at which the exec hold ends (the run's, or the step's, end).
    deadline_ns: u64,
    /// The count of clock system calls the fault cannot reach (see `super::calls`).
    calls: Option<CallWatch>,
    /// Its figures as the state file last had them, and when they were read.
    calls_seen: Vec<CallsRecord>,
    calls_read: Option<std::time::Instant>,
    /// Bit n for each clock id n the rules fault.
    mask: u32,
}

/// The heartbeat's hold on every patched process: their faults end within a lease of the
/// loader's death, even if nobody reverts them.
struct ClockLease {
    plan: Plan,
    pages: Pages,
}

impl Renew for ClockLease {
    fn renew(&mut self, until_ns: u64) {
        let pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        for page in pages.values() {
            page.renew(&self.plan, until_ns as i64);
        }
    }
}

impl ClockFault {
    /// A policy's clock rules on all its targets, for the whole run.
    pub fn new(run: &Run) -> Self {
        let plan = &run.plan;
        Self::scoped(
            &plan.policy.clock,
            plan.policy.duration,
            plan.resolved.targets.clone(),
            run.deadline_ns,
        )
    }

    /// `rules` on `targets` from now for `duration` (ending at `deadline_ns`).
    pub fn scoped(
        rules: &[ClockRule],
        duration: Duration,
        targets: Vec<ResolvedTarget>,
        deadline_ns: u64,
    ) -> Self {
        ClockFault {
            engine: Engine::new(rules, duration),
            watch: None,
            at_exec: 0,
            pages: Pages::default(),
            log: None,
            targets,
            deadline_ns,
            calls: None,
            calls_seen: Vec::new(),
            calls_read: None,
            mask: calls::clock_mask(rules),
        }
    }

    /// Starts counting the clock system calls of patched processes that the fault cannot
    /// reach, and says once why they are not rewritten.
    fn start_calls(&mut self) {
        match CallWatch::start(self.mask) {
            Ok(w) if w.rewrites() => {
                println!(
                    "fault: clock: reads made as system calls (clock_gettime, gettimeofday) \
                     get the same fault, rewritten by eBPF, and absolute deadlines handed to \
                     clock_nanosleep, realtime futex waits, timerfds and POSIX timers are \
                     moved by it; time() made as a system call follows the true clock, and \
                     each target process seen making it is named here and in `fault status`"
                );
                self.calls = Some(w);
            }
            Ok(w) => {
                let why = w
                    .refused()
                    .unwrap_or("fault does not rewrite them on any kernel yet");
                println!(
                    "fault: clock: reads made as system calls and waits until an absolute \
                     time follow the true clock ({why}); each target process seen making \
                     them within {} s of being patched (and for {} s every {} s after) is \
                     named here and in `fault status`",
                    calls::WINDOW.as_secs(),
                    calls::WINDOW.as_secs(),
                    calls::EVERY.as_secs()
                );
                self.calls = Some(w);
            }
            Err(e) => println!(
                "fault: clock: warning: reads made as system calls and waits until an \
                 absolute time follow the true clock, and they cannot be counted here ({:#})",
                anyhow::Error::from(e)
            ),
        }
    }

    /// Counts the patched processes' calls; names each process at its first call of a
    /// kind, and refreshes the figures for the state file once a second.
    fn sync_calls(&mut self) {
        let Some(watch) = self.calls.as_mut() else {
            return;
        };
        let procs: Vec<(u32, u64)> = self
            .engine
            .records()
            .iter()
            .map(|r| (r.pid, r.base))
            .collect();
        watch.watch(&procs);
        for r in watch.news() {
            println!("fault: clock: warning: {}", r.describe());
        }
        if self
            .calls_read
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.calls_seen = watch.records();
            self.calls_read = Some(std::time::Instant::now());
        }
    }

    /// Brings the heartbeat's pages in line with the patched processes; a new one is
    /// renewed at once, so it never runs on the policy's deadline alone.
    fn sync_pages(&mut self) {
        let leased = self.engine.leased();
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        pages.retain(|key, _| leased.iter().any(|(k, _)| k == key));
        let until = (monotonic_ns() + LEASE_NS) as i64;
        for &(key, base) in &leased {
            if pages.contains_key(&key) {
                continue;
            }
            if let Ok(page) = Shared::open(key.0, base) {
                page.renew(self.engine.plan(), until);
                pages.insert(key, page);
            }
        }
    }

    /// Per-process lines are details (`-v`); refusals are always told.
    fn tell(run: &Run, told: &[Told], at_exec: bool) {
        for t in told {
            let (pid, comm) = (t.pid, t.comm.clone());
            run.observer.emit(match t.refused {
                false => crate::observe::Event::ProcessPatched { pid, comm, at_exec },
                true => crate::observe::Event::ProcessRefused {
                    pid,
                    comm,
                    why: t.why.clone(),
                },
            });
            if run.plan.options.verbose || t.refused {
                println!("fault: {}", t.text);
            }
        }
    }

    /// The targets' cgroups, in order: the exec hold's slots.
    fn cgroups(&self) -> Vec<PathBuf> {
        self.targets.iter().map(|t| t.cgroup.clone()).collect()
    }

    /// Starts holding processes that exec in the targets until they are patched; where the
    /// kernel refuses a step, says which and that the rescan covers them instead.
    fn start_watch(&mut self, run: &Run) {
        let cgroups = self.cgroups();
        match ExecWatch::start(loader::OBJECT, &cgroups, self.deadline_ns, &run.pin_dir) {
            Ok(w) => {
                if cgroups.len() > fault_common::EXEC_MAX_CGROUPS as usize {
                    println!(
                        "fault: clock: warning: processes that exec are held in the first {} \
                         targets only; in the others they are patched by the 250 ms rescan",
                        fault_common::EXEC_MAX_CGROUPS
                    );
                }
                self.watch = Some(w);
            }
            Err(e) => println!(
                "fault: clock: warning: cannot hold processes at exec ({:#}); falling back to \
                 the 250 ms rescan: a process that execs in a target reads true time until then",
                anyhow::Error::from(e)
            ),
        }
    }

    /// Patches the processes the exec hold stopped, and lets each go (also when the patch
    /// failed).
    fn on_exec(&mut self, run: &Run, held: Vec<fault_common::ExecEvent>) {
        let Some(watch) = self.watch.as_mut() else {
            return;
        };
        for e in &held {
            let mut told = self.engine.patch_exec(e.pid);
            watch.release(e.pid);
            self.at_exec += told.iter().filter(|t| !t.refused).count();
            let held_ms = monotonic_ns().saturating_sub(e.stopped_ns) as f64 / 1e6;
            for t in &mut told {
                t.text = format!("{}; held {held_ms:.2} ms", t.text);
            }
            Self::tell(run, &told, true);
        }
    }
}

impl Fault for ClockFault {
    fn start(&mut self, run: &Run) -> anyhow::Result<()> {
        // Attached before the first scan, so a process that execs meanwhile is held or found.
        self.start_watch(run);
        self.start_calls();
        if let Some(lease) = self.watch.as_mut().and_then(ExecWatch::take_lease) {
            run.lease.add(Box::new(lease));
        }
        let verbose = run.plan.options.verbose;
        match self.watch.as_mut().map(|w| w.log_reader(verbose)) {
            Some(Ok(reader)) => self.log = Some(reader),
            Some(Err(why)) if verbose => eprintln!("fault: warning: {why}"),
            _ => {}
        }
        run.lease.add(Box::new(ClockLease {
            plan: self.engine.plan().clone(),
            pages: Arc::clone(&self.pages),
        }));
        self.follow(run)
    }

    fn follow(&mut self, run: &Run) -> anyhow::Result<()> {
        for m in &run.moved {
            let moved = self.targets.iter_mut().filter(|t| t.cgroup == m.from);
            moved.for_each(|t| t.cgroup = m.to.clone());
        }
        if !run.moved.is_empty() {
            let cgroups = self.cgroups();
            if let Some(Err(e)) = self.watch.as_mut().map(|w| w.retarget(&cgroups)) {
                println!(
                    "fault: clock: warning: cannot hold processes at exec in the moved \
                     target ({:#}); the 250 ms rescan patches them",
                    anyhow::Error::from(e)
                );
            }
        }
        let lines = self.engine.follow(&self.targets);
        Self::tell(run, &lines, false);
        self.sync_pages();
        self.sync_calls();
        Ok(())
    }

    fn event<'a>(&'a mut self, run: &'a Run) -> Event<'a> {
        Box::pin(async move {
            let (watch, log) = (&mut self.watch, &mut self.log);
            let held = tokio::select! {
                held = async {
                    match watch.as_mut() {
                        Some(w) => w.next().await,
                        None => std::future::pending().await,
                    }
                } => Some(held),
                () = async {
                    match log.as_mut() {
                        Some(l) => l.next().await,
                        None => std::future::pending().await,
                    }
                } => None,
            };
            if let Some(held) = held {
                self.on_exec(run, held);
                self.sync_pages();
                self.sync_calls();
            }
        })
    }

    fn record(&self, state: &mut State) {
        let records = self.engine.records();
        if records != state.clock_processes || state.clock_rules.is_empty() {
            state.clock_processes = records;
            state.clock_rules = self.engine.rule_status();
        }
        if state.clock_calls != self.calls_seen {
            state.clock_calls = self.calls_seen.clone();
        }
    }

    fn banner(&self, run: &Run) -> Vec<String> {
        let (patched, refused) = self.engine.counts();
        vec![format!(
            "fault: {} clock faults active for {} in {patched} process(es) ({refused} refused); Ctrl-C reverts",
            run.plan.policy.name,
            humantime::format_duration(run.plan.policy.duration),
        )]
    }

    fn sample(&self, _run: &Run, sample: &mut crate::observe::event::Sample) {
        let (patched, refused) = self.engine.counts();
        sample.clock.patched += patched as u64;
        sample.clock.refused += refused as u64;
        sample.clock.held_at_exec += self.at_exec as u64;
    }

    fn live(&self, _run: &Run) -> Vec<String> {
        let (patched, refused) = self.engine.counts();
        let mut line = format!(
            "  clock: {patched} process(es) patched ({} at exec), {refused} refused",
            self.at_exec
        );
        if !self.calls_seen.is_empty() {
            line += &format!(
                "; {} read or wait by the true clock (system calls, absolute waits)",
                self.calls_seen.len()
            );
        }
        vec![line]
    }

    fn stop(&mut self, _run: &Run) -> (Vec<String>, Vec<String>) {
        let mut lines = Vec::new();
        self.pages.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if let Some(w) = self.calls.take() {
            lines.extend(
                w.records()
                    .iter()
                    .map(|r| format!("fault: clock: {}", r.describe())),
            );
        }
        // The exec hold goes first: nothing is stopped after this, and whoever it still
        // holds goes on.
        if let Some(w) = self.watch.take() {
            let pids = w.finish();
            if !pids.is_empty() {
                lines.push(format!(
                    "fault: clock: let go {pids:?}, stopped at exec and not patched yet"
                ));
            }
        }
        (lines, self.engine.revert_all())
    }
}
