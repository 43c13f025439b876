//! The steps of an experiment as the event log and the metrics tell them: when each is
//! planned to be on, and each actual switch.

use std::time::Duration;

use super::{event::Event, Observer};
use crate::{policy::Policy, timeline::Window};

/// At most this many planned spans per step in the `applied` event (a 1 s flap over a day
/// would be 43,200).
const MAX_SPANS: usize = 2000;

/// The times `window` is planned to be on within `duration`, in seconds.
pub fn planned_spans(window: &Window, duration: Duration) -> Vec<[f64; 2]> {
    let mut spans = Vec::new();
    let mut t = Duration::ZERO;
    let mut on_since = window.is_on(t).then_some(t);
    while let Some(next) = window.next_change(t) {
        if next > duration || next <= t || spans.len() == MAX_SPANS {
            break;
        }
        t = next;
        match (on_since, window.is_on(t)) {
            (None, true) => on_since = Some(t),
            (Some(from), false) => {
                spans.push([from.as_secs_f64(), t.as_secs_f64()]);
                on_since = None;
            }
            _ => {}
        }
    }
    if let Some(from) = on_since {
        spans.push([from.as_secs_f64(), window.end().min(duration).as_secs_f64()]);
    }
    spans
}

/// Which steps are on, to tell each change once.
pub struct StepWatch {
    on: Vec<bool>,
}

impl StepWatch {
    /// Every step off, as the metrics say too.
    pub fn new(policy: &Policy, observer: &Observer) -> StepWatch {
        for s in &policy.steps {
            observer.metrics.set_step(&s.name, false);
        }
        StepWatch {
            on: vec![false; policy.steps.len()],
        }
    }

    /// Tells the steps that went on or off by `t` on the timeline.
    pub fn update(&mut self, policy: &Policy, t: Duration, observer: &Observer) {
        for (s, was) in policy.steps.iter().zip(&mut self.on) {
            let now = s.window.is_on(t);
            if now == *was {
                continue;
            }
            *was = now;
            observer.metrics.set_step(&s.name, now);
            let step = s.name.clone();
            observer.emit(match now {
                true => Event::StepOn { step },
                false => Event::StepOff { step },
            });
        }
    }

    /// The steps on now.
    pub fn on(&self, policy: &Policy) -> Vec<String> {
        policy
            .steps
            .iter()
            .zip(&self.on)
            .filter(|(_, on)| **on)
            .map(|(s, _)| s.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Flap;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_plain_window_is_one_span() {
        let w = Window {
            at: s(10),
            len: s(20),
            flap: None,
        };
        assert_eq!(planned_spans(&w, s(60)), [[10.0, 30.0]]);
        assert_eq!(planned_spans(&Window::whole(s(5)), s(5)), [[0.0, 5.0]]);
    }

    #[test]
    fn a_flapping_window_is_one_span_per_on_period_cut_at_the_duration() {
        let w = Window {
            at: s(0),
            len: s(30),
            flap: Some(Flap {
                on: s(5),
                off: s(10),
            }),
        };
        assert_eq!(planned_spans(&w, s(60)), [[0.0, 5.0], [15.0, 20.0]]);
        assert_eq!(planned_spans(&w, s(17)), [[0.0, 5.0], [15.0, 17.0]]);
    }
}
