//! When a pause step has its cgroups frozen: for `freeze` at the start of every `every`
//! inside the step's window, cut short by the window's end. Pure maths over the time since
//! the run started, on the timeline's own flapping (a pause is a flap whose on is frozen).

use std::time::Duration;

use crate::timeline::{Flap, Window};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// The step's window, flapping `freeze` on and `every - freeze` off.
    frozen: Window,
    every: Duration,
}

impl Schedule {
    /// `freeze` is taken as at most `every`, and `every` as above zero: the plan has
    /// refused anything else, and the maths must not divide by zero.
    pub fn new(window: Window, freeze: Duration, every: Duration) -> Schedule {
        let every = every.max(Duration::from_nanos(1));
        let freeze = freeze.min(every);
        // Frozen all along when the pauses leave no gap: a flap with an empty off would
        // ask to be told at every period for nothing.
        let flap = (freeze < every).then(|| Flap {
            on: freeze,
            off: every - freeze,
        });
        Schedule {
            frozen: Window { flap, ..window },
            every,
        }
    }

    pub fn is_frozen(&self, t: Duration) -> bool {
        self.frozen.is_on(t)
    }

    /// The first time after `t` at which the cgroups are to be frozen or thawed, if ever.
    pub fn next_change(&self, t: Duration) -> Option<Duration> {
        self.frozen.next_change(t)
    }

    /// How many pauses the window holds (the last one may be cut short by its end).
    pub fn pauses(&self) -> u64 {
        count(self.frozen.len.as_nanos().div_ceil(self.every.as_nanos()))
    }

    /// How many pauses have begun by `t`: the one due at `t` is the last of them, counted
    /// from 1.
    pub fn begun(&self, t: Duration) -> u64 {
        if t < self.frozen.at {
            return 0;
        }
        let period = t.saturating_sub(self.frozen.at).as_nanos() / self.every.as_nanos();
        (count(period) + 1).min(self.pauses())
    }

    pub fn window(&self) -> &Window {
        &self.frozen
    }
}

fn count(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The experiment of the privileged test: at 1s for 6s, pause 1s every 2s.
    fn gc() -> Schedule {
        Schedule::new(
            Window {
                at: ms(1000),
                len: ms(6000),
                flap: None,
            },
            ms(1000),
            ms(2000),
        )
    }

    #[test]
    fn frozen_for_the_start_of_every_period_inside_the_window() {
        let s = gc();
        let frozen: Vec<u64> = (0..90)
            .map(|d| d * 100)
            .filter(|&t| s.is_frozen(ms(t)))
            .collect();
        let expected: Vec<u64> = [1000, 3000, 5000]
            .iter()
            .flat_map(|&from| (from..from + 1000).step_by(100))
            .collect();
        assert_eq!(frozen, expected);
        assert!(!s.is_frozen(ms(999)) && s.is_frozen(ms(1000)));
        assert!(s.is_frozen(ms(5999)) && !s.is_frozen(ms(6000)));
    }

    #[test]
    fn the_next_change_is_the_next_freeze_or_thaw_then_none() {
        let s = gc();
        let mut t = Duration::ZERO;
        let mut changes = Vec::new();
        while let Some(next) = s.next_change(t) {
            changes.push(next.as_millis());
            t = next;
        }
        assert_eq!(changes, [1000, 2000, 3000, 4000, 5000, 6000, 7000]);
        // A late tick finds the change after the one it missed.
        assert_eq!(s.next_change(ms(2003)), Some(ms(3000)));
    }

    #[test]
    fn a_window_that_ends_inside_a_pause_cuts_it_short() {
        let s = Schedule::new(
            Window {
                at: ms(0),
                len: ms(5000),
                flap: None,
            },
            ms(3000),
            ms(4000),
        );
        assert_eq!(s.pauses(), 2);
        assert!(s.is_frozen(ms(4999)));
        assert!(!s.is_frozen(ms(5000)));
        assert_eq!(s.next_change(ms(4000)), Some(ms(5000)));
        assert_eq!(s.next_change(ms(5000)), None);
    }

    #[test]
    fn pauses_that_fill_their_period_freeze_the_whole_window() {
        let s = Schedule::new(
            Window {
                at: ms(1000),
                len: ms(3000),
                flap: None,
            },
            ms(500),
            ms(500),
        );
        assert!((1000..4000).step_by(50).all(|t| s.is_frozen(ms(t))));
        assert_eq!(s.next_change(ms(1000)), Some(ms(4000)));
        assert_eq!(s.pauses(), 6);
    }

    #[test]
    fn the_pause_due_is_counted_from_its_start() {
        let s = gc();
        assert_eq!(s.pauses(), 3);
        let begun: Vec<u64> = [0, 1000, 1500, 2500, 3000, 6999, 7000, 60_000]
            .iter()
            .map(|&t| s.begun(ms(t)))
            .collect();
        assert_eq!(begun, [0, 1, 1, 1, 2, 3, 3, 3]);
    }
}
