//! The pause kind of fault, as the engine runs it: at each tick every target cgroup is
//! frozen or thawed as the steps' schedules say, and everything is thawed at the end, on an
//! error and on a panic. A cgroup is recorded (`State::frozen`) when the kind starts, and
//! frozen only at ticks, which come after the engine has written the record: a loader that
//! dies leaves no frozen cgroup that its watchdog and `fault stop` do not know of.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::anyhow;

use super::{check_cgroups, freeze, schedule::Schedule, PauseStep};
use crate::{
    engine::{Fault, Run},
    state::State,
    timeline,
};

/// How long a freeze may take to reach every process before fault says so: a process in
/// an uninterruptible sleep (disk, NFS) stops only when it leaves it.
const FREEZE_WAIT: Duration = Duration::from_secs(1);

pub struct PauseFault {
    steps: Vec<Step>,
    /// Every target cgroup, and whether fault has asked for it to be frozen.
    cgroups: BTreeMap<PathBuf, bool>,
}

/// One step, and what it has done so far, for the live view.
struct Step {
    spec: PauseStep,
    schedule: Schedule,
    /// When its current pause began, while one is under way.
    since: Option<Instant>,
    frozen_for: Duration,
}

impl Step {
    /// Starts or ends a pause on the step's own clock (its cgroups are switched apart,
    /// since steps may share one).
    fn switch(&mut self, frozen: bool, now: Instant) {
        match (self.since, frozen) {
            (None, true) => self.since = Some(now),
            (Some(since), false) => {
                self.frozen_for += now - since;
                self.since = None;
            }
            _ => {}
        }
    }

    fn frozen_so_far(&self) -> Duration {
        self.frozen_for + self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

impl PauseFault {
    pub fn new(steps: Vec<PauseStep>) -> Self {
        let steps = steps
            .into_iter()
            .map(|spec| Step {
                schedule: Schedule::new(spec.window, spec.freeze, spec.every),
                spec,
                since: None,
                frozen_for: Duration::ZERO,
            })
            .collect();
        PauseFault {
            steps,
            cgroups: BTreeMap::new(),
        }
    }

    /// Whether some step has `cgroup` frozen now.
    fn wanted(&self, cgroup: &Path) -> bool {
        self.steps
            .iter()
            .any(|s| s.since.is_some() && s.spec.cgroups.iter().any(|c| c == cgroup))
    }

    /// Writes what changed: thaws first (quick), then freezes, then waits for the frozen
    /// ones together, so several cgroups cost one wait. A write that failed is tried again
    /// at the next tick.
    fn switch_cgroups(&mut self) {
        let (freeze, thaw): (Vec<PathBuf>, Vec<PathBuf>) = self
            .cgroups
            .iter()
            .filter(|&(c, &frozen)| self.wanted(c) != frozen)
            .map(|(c, _)| c.clone())
            .partition(|c| self.wanted(c));
        for c in &thaw {
            self.write(c, false);
        }
        let freezing: Vec<PathBuf> = freeze.into_iter().filter(|c| self.write(c, true)).collect();
        wait_frozen(&freezing);
    }

    /// Freezes or thaws one cgroup; whether it took.
    fn write(&mut self, cgroup: &Path, frozen: bool) -> bool {
        match freeze::set(cgroup, frozen) {
            Ok(()) => {
                self.cgroups.insert(cgroup.to_path_buf(), frozen);
                true
            }
            Err(e) if e.is_gone() => {
                eprintln!(
                    "fault: pause: cgroup {} is gone; no more pauses there",
                    cgroup.display()
                );
                self.cgroups.remove(cgroup);
                false
            }
            Err(e) => {
                eprintln!("fault: pause: warning: {:#}", anyhow::Error::from(e));
                false
            }
        }
    }

    /// Thaws every cgroup of the run, frozen or not (a thawed one is left as it is); the
    /// problems met. A cgroup that is gone is none.
    fn thaw_all(&mut self) -> Vec<String> {
        let now = Instant::now();
        for s in &mut self.steps {
            s.switch(false, now);
        }
        std::mem::take(&mut self.cgroups)
            .into_keys()
            .filter_map(|c| match freeze::set(&c, false) {
                Err(e) if !e.is_gone() => Some(format!("{:#}", anyhow::Error::from(e))),
                _ => None,
            })
            .collect()
    }
}

/// Waits for the cgroups just told to freeze, a second at most for all of them together.
fn wait_frozen(cgroups: &[PathBuf]) {
    let until = Instant::now() + FREEZE_WAIT;
    for cgroup in cgroups {
        match freeze::wait_frozen(cgroup, until) {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "fault: pause: warning: cgroup {} is not frozen after {FREEZE_WAIT:?} (a \
                 process in an uninterruptible sleep?); it stops when it can",
                cgroup.display()
            ),
            Err(e) => eprintln!("fault: pause: warning: {:#}", anyhow::Error::from(e)),
        }
    }
}

/// Ready, before anything is frozen: refuses what must not be paused, and what someone
/// else froze (fault would thaw it at the end).
fn ready(cgroup: &Path) -> anyhow::Result<()> {
    match freeze::requested(cgroup) {
        Ok(false) => Ok(()),
        Ok(true) => Err(anyhow!(
            "cgroup {} is frozen already (its cgroup.freeze is 1), and fault would thaw it",
            cgroup.display()
        )),
        Err(e) if e.is_gone() && cgroup.is_dir() => Err(anyhow!(
            "cgroup {} has no cgroup.freeze: pauses need the cgroup v2 freezer (Linux 5.2)",
            cgroup.display()
        )),
        Err(e) => Err(e.into()),
    }
}

impl Fault for PauseFault {
    fn start(&mut self, _run: &Run) -> anyhow::Result<()> {
        let all: Vec<PathBuf> = self
            .steps
            .iter()
            .flat_map(|s| s.spec.cgroups.iter().cloned())
            .collect();
        check_cgroups(&all).map_err(|e| anyhow!(e))?;
        for c in &all {
            ready(c)?;
        }
        self.cgroups = all.into_iter().map(|c| (c, false)).collect();
        Ok(())
    }

    /// The freezer covers the processes and cgroups that join a target; a target found
    /// under another cgroup (a container started again) is frozen there instead.
    fn follow(&mut self, run: &Run) -> anyhow::Result<()> {
        if run.moved.is_empty() {
            return Ok(());
        }
        for m in &run.moved {
            for s in &mut self.steps {
                let moved = s.spec.cgroups.iter_mut().filter(|c| **c == m.from);
                moved.for_each(|c| *c = m.to.clone());
            }
            self.cgroups.remove(&m.from);
            self.cgroups.insert(m.to.clone(), false);
        }
        // A step in a pause freezes the new cgroup now, not at its next change.
        self.switch_cgroups();
        Ok(())
    }

    /// Never an error: one would end the ticks, and with them the thaws. What went wrong is
    /// told instead, and the next change still comes.
    fn tick(&mut self, _run: &Run, t: Duration) -> anyhow::Result<Option<Duration>> {
        let now = Instant::now();
        for s in &mut self.steps {
            s.switch(s.schedule.is_frozen(t), now);
        }
        self.switch_cgroups();
        let next = self.steps.iter().map(|s| s.schedule.next_change(t));
        Ok(timeline::earliest(next.collect::<Vec<_>>()))
    }

    fn record(&self, state: &mut State) {
        state.frozen = self.cgroups.keys().cloned().collect();
    }

    fn banner(&self, _run: &Run) -> Vec<String> {
        self.steps.iter().map(banner_line).collect()
    }

    fn live(&self, run: &Run) -> Vec<String> {
        let t = run.started.elapsed();
        self.steps
            .iter()
            .map(|s| {
                let w = s.schedule.window();
                let now = match (s.since, w.spans(t)) {
                    (Some(_), _) => "frozen",
                    (None, true) => "running",
                    (None, false) if t < w.at => "waiting",
                    (None, false) => "done",
                };
                format!(
                    "  pause {}: {now} ({} of {} pauses so far, {:.1} s frozen)",
                    s.spec.step,
                    s.schedule.begun(t),
                    s.schedule.pauses(),
                    s.frozen_so_far().as_secs_f64()
                )
            })
            .collect()
    }

    fn stop(&mut self, run: &Run) -> (Vec<String>, Vec<String>) {
        let problems = self.thaw_all();
        let t = run.started.elapsed();
        let lines = self
            .steps
            .iter()
            .map(|s| {
                format!(
                    "fault: pause {}: {} pause(s), {:.1} s frozen; thawed",
                    s.spec.step,
                    s.schedule.begun(t),
                    s.frozen_for.as_secs_f64()
                )
            })
            .collect();
        (lines, problems)
    }
}

/// A panic, or an error before `stop`, must not leave a target frozen.
impl Drop for PauseFault {
    fn drop(&mut self) {
        for p in self.thaw_all() {
            eprintln!("fault: pause: warning: {p}");
        }
    }
}

fn banner_line(s: &Step) -> String {
    let w = s.schedule.window();
    let human = |d: Duration| humantime::format_duration(d).to_string();
    let cgroups: Vec<String> = s
        .spec
        .cgroups
        .iter()
        .map(|c| c.display().to_string())
        .collect();
    format!(
        "fault: pause {}: frozen {} of every {} from {} to {} ({} pause{}), in cgroup(s) {}",
        s.spec.step,
        human(s.spec.freeze),
        human(s.spec.every),
        human(w.at),
        human(w.end()),
        s.schedule.pauses(),
        if s.schedule.pauses() == 1 { "" } else { "s" },
        cgroups.join(", ")
    )
}
