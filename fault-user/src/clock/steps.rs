//! An experiment's clock steps: each step's rules go on its groups' processes when the step
//! switches on (the fault's clock starts then: an offset of 2 s is 2 s from that moment) and
//! come off when it switches off. One clock step is on at a time (the plan refuses overlaps),
//! so the state file's clock records are always those of the step that is on.

use std::time::Duration;

use super::ClockFault;
use crate::{
    engine::{Event, Fault, Run},
    policy::ClockRule,
    state::State,
    target::ResolvedTarget,
    timeline::Window,
};

/// One clock step, as the plan decided it.
pub struct ClockStep {
    pub name: String,
    pub window: Window,
    pub rules: Vec<ClockRule>,
    pub targets: Vec<ResolvedTarget>,
}

struct Slot {
    step: ClockStep,
    on: Option<ClockFault>,
    /// How many times it went on, for the live view.
    times: u64,
}

pub struct ClockSteps {
    slots: Vec<Slot>,
}

impl ClockSteps {
    pub fn new(steps: Vec<ClockStep>) -> Self {
        ClockSteps {
            slots: steps
                .into_iter()
                .map(|step| Slot {
                    step,
                    on: None,
                    times: 0,
                })
                .collect(),
        }
    }

    fn switch_on(slot: &mut Slot, run: &Run, t: Duration) -> anyhow::Result<()> {
        let w = &slot.step.window;
        // Until the step (or its current flap period) ends: the stub stops by itself then.
        let until = w.next_change(t).unwrap_or(w.end());
        let left = until.saturating_sub(t);
        let deadline = crate::sys::time::monotonic_ns() + left.as_nanos() as u64;
        let mut fault = ClockFault::scoped(
            &slot.step.rules,
            left,
            slot.step.targets.clone(),
            deadline.min(run.deadline_ns),
        );
        let started = fault.start(run);
        slot.on = Some(fault);
        slot.times += 1;
        println!("fault: step {} on", slot.step.name);
        started
    }

    fn switch_off(slot: &mut Slot, run: &Run) -> Vec<String> {
        let Some(mut fault) = slot.on.take() else {
            return Vec::new();
        };
        let (lines, problems) = fault.stop(run);
        for l in lines {
            println!("{l}");
        }
        println!("fault: step {} off", slot.step.name);
        problems
    }
}

impl Fault for ClockSteps {
    fn start(&mut self, _run: &Run) -> anyhow::Result<()> {
        Ok(())
    }

    fn follow(&mut self, run: &Run) -> anyhow::Result<()> {
        for f in self.slots.iter_mut().filter_map(|s| s.on.as_mut()) {
            f.follow(run)?;
        }
        Ok(())
    }

    fn tick(&mut self, run: &Run, t: Duration) -> anyhow::Result<Option<Duration>> {
        let mut problems = Vec::new();
        // Off first, so two steps that meet never overlap.
        for slot in &mut self.slots {
            if slot.on.is_some() && !slot.step.window.is_on(t) {
                problems.extend(Self::switch_off(slot, run));
            }
        }
        for slot in &mut self.slots {
            if slot.on.is_none() && slot.step.window.is_on(t) {
                if let Err(e) = Self::switch_on(slot, run, t) {
                    problems.push(format!("step {}: {e:#}", slot.step.name));
                }
            }
        }
        for p in problems {
            eprintln!("fault: warning: {p}");
        }
        let next = self
            .slots
            .iter()
            .filter_map(|s| s.step.window.next_change(t));
        Ok(next.min())
    }

    fn event<'a>(&'a mut self, run: &'a Run) -> Event<'a> {
        match self.slots.iter_mut().find_map(|s| s.on.as_mut()) {
            Some(f) => f.event(run),
            None => Box::pin(std::future::pending()),
        }
    }

    fn record(&self, state: &mut State) {
        match self.slots.iter().find_map(|s| s.on.as_ref()) {
            Some(f) => f.record(state),
            None => {
                state.clock_processes.clear();
                state.clock_rules.clear();
            }
        }
    }

    fn banner(&self, _run: &Run) -> Vec<String> {
        self.slots
            .iter()
            .map(|s| {
                let rules: Vec<String> = s.step.rules.iter().map(|r| r.describe()).collect();
                format!(
                    "  clock step {}: {} on {} target(s)",
                    s.step.name,
                    rules.join("; "),
                    s.step.targets.len()
                )
            })
            .collect()
    }

    fn sample(&self, run: &Run, sample: &mut crate::observe::event::Sample) {
        for f in self.slots.iter().filter_map(|s| s.on.as_ref()) {
            f.sample(run, sample);
        }
    }

    fn live(&self, run: &Run) -> Vec<String> {
        self.slots
            .iter()
            .flat_map(|s| match &s.on {
                Some(f) => f
                    .live(run)
                    .into_iter()
                    .map(|l| format!("{l} (step {})", s.step.name))
                    .collect(),
                None => vec![format!(
                    "  clock step {}: off (on {} time(s) so far)",
                    s.step.name, s.times
                )],
            })
            .collect()
    }

    fn stop(&mut self, run: &Run) -> (Vec<String>, Vec<String>) {
        let mut problems = Vec::new();
        for slot in &mut self.slots {
            problems.extend(Self::switch_off(slot, run));
        }
        (Vec::new(), problems)
    }
}
