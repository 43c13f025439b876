//! When the steps of an experiment are on: a window (`at`, `for`), optionally flapping on
//! and off inside it, and how far into it a ramp has got. Pure maths over the time since the
//! run started, so every kind switches by the same clock.

use std::time::Duration;

/// Switching on and off inside a step: `on` first, then `off`, repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flap {
    pub on: Duration,
    pub off: Duration,
}

/// When a step is on, as times since the run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub at: Duration,
    /// The step's `for`; above zero.
    pub len: Duration,
    pub flap: Option<Flap>,
}

impl Window {
    /// A step on for the whole run: what a policy is.
    pub fn whole(len: Duration) -> Window {
        Window {
            at: Duration::ZERO,
            len,
            flap: None,
        }
    }

    pub fn end(&self) -> Duration {
        self.at + self.len
    }

    /// Whether `t` lies inside the window at all (flapping aside).
    pub fn spans(&self, t: Duration) -> bool {
        self.at <= t && t < self.end()
    }

    /// Whether the step is on at `t`.
    pub fn is_on(&self, t: Duration) -> bool {
        if !self.spans(t) {
            return false;
        }
        match self.flap {
            None => true,
            Some(f) => {
                let period = (f.on + f.off).as_nanos();
                (t - self.at).as_nanos() % period < f.on.as_nanos()
            }
        }
    }

    /// The first time after `t` at which `is_on` changes, if it ever does again.
    pub fn next_change(&self, t: Duration) -> Option<Duration> {
        if t < self.at {
            return Some(self.at);
        }
        if t >= self.end() {
            return None;
        }
        let edge = match self.flap {
            None => self.end(),
            Some(f) => {
                let period = (f.on + f.off).as_nanos();
                let into = (t - self.at).as_nanos();
                let cycle = into - into % period;
                let next = match into % period < f.on.as_nanos() {
                    true => cycle + f.on.as_nanos(),
                    false => cycle + period,
                };
                self.at + nanos(next)
            }
        };
        Some(edge.min(self.end()))
    }

    /// How far into the window `t` is, from 0 at its start to 1 at its end: a ramp's
    /// position.
    pub fn progress(&self, t: Duration) -> f64 {
        if t <= self.at {
            return 0.0;
        }
        ((t - self.at).as_secs_f64() / self.len.as_secs_f64()).min(1.0)
    }
}

fn nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// A value that goes linearly from `from` at the start of its step to `to` at the end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ramp {
    pub from: f64,
    pub to: f64,
}

impl Ramp {
    pub fn at(&self, progress: f64) -> f64 {
        self.from + (self.to - self.from) * progress.clamp(0.0, 1.0)
    }
}

/// The live view's timeline: the steps on now, and the next change and when (experiments
/// only).
pub fn live(policy: &crate::policy::Policy, t: Duration) -> Vec<String> {
    if !policy.is_experiment() {
        return Vec::new();
    }
    let on: Vec<&str> = policy
        .steps
        .iter()
        .filter(|s| s.window.is_on(t))
        .map(|s| s.name.as_str())
        .collect();
    let next = policy
        .steps
        .iter()
        .filter_map(|s| Some((s.window.next_change(t)?, s)))
        .min_by_key(|(at, _)| *at);
    let mut line = format!(
        "timeline: on now: {}",
        match on.is_empty() {
            true => "nothing".to_owned(),
            false => on.join(", "),
        }
    );
    if let Some((at, s)) = next {
        let what = if s.window.is_on(at) { "on" } else { "off" };
        line.push_str(&format!(
            "; next: {} {what} in {:.1}s",
            s.name,
            (at - t).as_secs_f64()
        ));
    }
    vec![line]
}

/// How punctual the timeline was: for each change, how late after its time the engine woke,
/// and how long the kinds took to make it (map updates, freezes, patches). A packet sent
/// after that is treated by the new state.
#[derive(Debug, Default)]
pub struct Switches {
    late: Vec<Duration>,
    took: Vec<Duration>,
}

impl Switches {
    pub fn record(&mut self, late: Duration, took: Duration) {
        self.late.push(late);
        self.took.push(took);
    }

    pub fn summary(&self) -> Vec<String> {
        if self.late.is_empty() {
            return Vec::new();
        }
        let ms = |v: &[Duration]| {
            let mut v: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[v.len() - 1])
        };
        let (late50, late_max) = ms(&self.late);
        let (took50, took_max) = ms(&self.took);
        vec![format!(
            "  timeline: {} changes, each made {late50:.2} ms after its time (p50; max \
             {late_max:.2}), taking {took50:.3} ms (max {took_max:.3}) to switch",
            self.late.len()
        )]
    }
}

/// The earliest of the times some kind wants to be told about next.
pub fn earliest(times: impl IntoIterator<Item = Option<Duration>>) -> Option<Duration> {
    times.into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn a_plain_window_is_on_from_at_to_its_end() {
        let w = Window {
            at: s(30),
            len: s(120),
            flap: None,
        };
        assert!(!w.is_on(s(29)));
        assert!(w.is_on(s(30)));
        assert!(w.is_on(s(149)));
        assert!(!w.is_on(s(150)));
        assert_eq!(w.next_change(s(0)), Some(s(30)));
        assert_eq!(w.next_change(s(30)), Some(s(150)));
        assert_eq!(w.next_change(s(150)), None);
    }

    #[test]
    fn flapping_alternates_on_and_off_and_stops_at_the_end() {
        let w = Window {
            at: s(10),
            len: s(22),
            flap: Some(Flap {
                on: s(5),
                off: s(10),
            }),
        };
        let on: Vec<u64> = (0..40).filter(|&t| w.is_on(s(t))).collect();
        assert_eq!(on, vec![10, 11, 12, 13, 14, 25, 26, 27, 28, 29]);
        assert_eq!(w.next_change(s(10)), Some(s(15)));
        assert_eq!(w.next_change(s(15)), Some(s(25)));
        assert_eq!(w.next_change(s(26)), Some(s(30)));
        // Off at 30, and the window ends at 32, in the middle of the next off period.
        assert_eq!(w.next_change(s(30)), Some(s(32)));
        assert_eq!(w.next_change(s(32)), None);
    }

    #[test]
    fn a_ramp_follows_the_progress_through_its_window() {
        let w = Window {
            at: s(10),
            len: s(10),
            flap: None,
        };
        let r = Ramp { from: 0.0, to: 1.0 };
        assert_eq!(r.at(w.progress(s(5))), 0.0);
        assert!((r.at(w.progress(s(12))) - 0.2).abs() < 1e-9);
        assert_eq!(r.at(w.progress(s(25))), 1.0);
    }
}
