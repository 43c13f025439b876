//! Targets joining and leaving, as the event log tells them: a target's cgroup that goes
//! away (a container stopped), one that comes back, and a target found under another cgroup
//! (a container started again with a new id: it leaves its old cgroup and joins the new).

use std::path::PathBuf;

use super::{event::Event, Observer};
use crate::target::ResolvedTarget;

pub struct TargetWatch {
    /// The cgroup each target was last told present in.
    told: Vec<Option<PathBuf>>,
}

impl TargetWatch {
    /// Tells every target as joined: they are all there once the run is applied.
    pub fn new(targets: &[ResolvedTarget], observer: &Observer) -> TargetWatch {
        for t in targets {
            observer.emit(joined(t));
        }
        TargetWatch {
            told: targets.iter().map(|t| Some(t.cgroup.clone())).collect(),
        }
    }

    /// Tells the targets whose cgroup went, came back or changed since the last look.
    pub fn update(&mut self, targets: &[ResolvedTarget], observer: &Observer) {
        for (t, told) in targets.iter().zip(&mut self.told) {
            let now = t.cgroup.exists().then(|| t.cgroup.clone());
            if now == *told {
                continue;
            }
            if let Some(old) = told.take() {
                observer.emit(Event::TargetLeft {
                    target: t.label.clone(),
                    cgroup: old.display().to_string(),
                });
            }
            if now.is_some() {
                observer.emit(joined(t));
            }
            *told = now;
        }
    }
}

fn joined(t: &ResolvedTarget) -> Event {
    Event::TargetJoined {
        target: t.label.clone(),
        cgroup: t.cgroup.display().to_string(),
    }
}
