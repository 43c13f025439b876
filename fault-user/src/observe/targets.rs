//! Targets joining and leaving, as the event log tells them: a target's cgroup that goes
//! away (a container stopped) and one that comes back.

use super::{event::Event, Observer};
use crate::target::ResolvedTarget;

pub struct TargetWatch {
    present: Vec<bool>,
}

impl TargetWatch {
    /// Tells every target as joined: they are all there once the run is applied.
    pub fn new(targets: &[ResolvedTarget], observer: &Observer) -> TargetWatch {
        for t in targets {
            observer.emit(joined(t));
        }
        TargetWatch {
            present: vec![true; targets.len()],
        }
    }

    /// Tells the targets whose cgroup went or came back since the last look.
    pub fn update(&mut self, targets: &[ResolvedTarget], observer: &Observer) {
        for (t, was) in targets.iter().zip(&mut self.present) {
            let now = t.cgroup.exists();
            if now == *was {
                continue;
            }
            *was = now;
            observer.emit(match now {
                true => joined(t),
                false => Event::TargetLeft {
                    target: t.label.clone(),
                    cgroup: t.cgroup.display().to_string(),
                },
            });
        }
    }
}

fn joined(t: &ResolvedTarget) -> Event {
    Event::TargetJoined {
        target: t.label.clone(),
        cgroup: t.cgroup.display().to_string(),
    }
}
