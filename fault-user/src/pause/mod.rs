//! The pause kind of fault: a process pause, as a garbage collector's stop-the-world, a VM
//! migration or a SIGSTOP makes one, by freezing the targets' cgroups (the cgroup v2
//! freezer) for `for` at the start of every `every` of a step. The processes notice nothing
//! but the time that passed; their peers see them stop answering.
//!
//! `schedule` says when, `freeze` does it through cgroupfs, `check` refuses what must never
//! be frozen, and `fault` is the kind the engine runs. No deadline in the kernel ends a
//! freeze: the watchdog thaws what a dead loader recorded, and `fault stop` does too.

mod check;
mod fault;
pub mod freeze;
mod schedule;

use std::{path::PathBuf, time::Duration};

pub use check::check_cgroups;
pub use fault::PauseFault;

use crate::{state::State, timeline::Window};

/// One step of pauses, as the plan decided it.
#[derive(Debug, Clone)]
pub struct PauseStep {
    /// The step's name, for messages and the live view.
    pub step: String,
    /// When the step is on (its flap is always None for pauses).
    pub window: Window,
    /// `for`: how long each pause lasts (above zero, at most `every`).
    pub freeze: Duration,
    /// The period: a pause begins at the start of each.
    pub every: Duration,
    /// Absolute cgroup directories of the step's targets.
    pub cgroups: Vec<PathBuf>,
}

/// Thaws every cgroup a dead run recorded in `state.frozen`; the problems met (a cgroup that
/// no longer exists is none).
pub fn thaw_recorded(state: &State) -> Vec<String> {
    state
        .frozen
        .iter()
        .filter_map(|c| match freeze::set(c, false) {
            Err(e) if !e.is_gone() => Some(format!("{:#}", anyhow::Error::from(e))),
            _ => None,
        })
        .collect()
}
