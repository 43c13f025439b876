//! The stop conditions' maths: failures in a row, and the failed share of a recent window of
//! results. Pure functions of the results and the time since the probes started, so the
//! tests drive them without a clock.

use std::{collections::VecDeque, time::Duration};

use super::AbortRule;

/// Joins what a rule found to the probe's last failure in [`super::Abort::why`].
pub(super) const LAST: &str = "; last: ";

/// One probe's results as far as its rules need them.
#[derive(Debug, Clone)]
pub(super) struct History {
    /// Failed checks since the last ok one.
    streak: u32,
    /// When the first result came in.
    first: Option<Duration>,
    /// Results (when, ok) newer than `keep`, oldest first.
    recent: VecDeque<(Duration, bool)>,
    /// The longest window among the probe's ratio rules: older results are forgotten.
    keep: Duration,
}

impl History {
    pub fn new(rules: &[AbortRule]) -> History {
        let keep = rules
            .iter()
            .filter_map(|r| match r {
                AbortRule::Ratio { window, .. } => Some(*window),
                AbortRule::Consecutive { .. } => None,
            })
            .max()
            .unwrap_or_default();
        History {
            streak: 0,
            first: None,
            recent: VecDeque::new(),
            keep,
        }
    }

    /// Takes the result of a check that answered `at` after the probes started.
    pub fn record(&mut self, at: Duration, ok: bool) {
        self.streak = if ok { 0 } else { self.streak + 1 };
        self.first.get_or_insert(at);
        if !self.keep.is_zero() {
            self.recent.push_back((at, ok));
            while self
                .recent
                .front()
                .is_some_and(|&(t, _)| at.saturating_sub(t) >= self.keep)
            {
                self.recent.pop_front();
            }
        }
    }

    /// Whether `rule` is met `now` (the time of the latest result): what it found, in words.
    pub fn judge(&self, rule: &AbortRule, now: Duration) -> Option<String> {
        match rule {
            AbortRule::Consecutive { failures, .. } => {
                (self.streak >= *failures).then(|| match self.streak {
                    1 => "1 failure".to_string(),
                    n => format!("{n} failures in a row"),
                })
            }
            AbortRule::Ratio { ratio, window, .. } => self.judge_ratio(*ratio, *window, now),
        }
    }

    /// Among the results of the last `window` (newer than `now - window`), failures make at
    /// least `ratio` of them; not judged before a whole window has passed since the first
    /// result.
    fn judge_ratio(&self, ratio: f64, window: Duration, now: Duration) -> Option<String> {
        let first = self.first?;
        if now.saturating_sub(first) < window {
            return None;
        }
        let inside = self.recent.iter().filter(|&&(t, _)| now - t < window);
        let (total, failed) = inside.fold((0u32, 0u32), |(n, f), &(_, ok)| (n + 1, f + !ok as u32));
        // The allowance keeps 30 % of 10 from reading as 3.0000000000000004 and missing.
        let met = failed > 0 && f64::from(failed) >= ratio * f64::from(total) - 1e-9;
        met.then(|| {
            format!(
                "{failed} of {total} checks failed in the last {}, {:.0}% for a limit of {:.0}%",
                humantime::format_duration(window),
                f64::from(failed) * 100.0 / f64::from(total),
                ratio * 100.0
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn consecutive(failures: u32) -> AbortRule {
        AbortRule::Consecutive {
            probe: "p".into(),
            failures,
        }
    }

    fn ratio(ratio: f64, window: Duration) -> AbortRule {
        AbortRule::Ratio {
            probe: "p".into(),
            ratio,
            window,
        }
    }

    /// Feeds `results` one a second from t = 1 s; the rule's finding after each.
    fn run(rule: &AbortRule, results: &[bool]) -> Vec<Option<String>> {
        let mut h = History::new(std::slice::from_ref(rule));
        results
            .iter()
            .enumerate()
            .map(|(i, &ok)| {
                let at = ms(1000 * (i as u64 + 1));
                h.record(at, ok);
                h.judge(rule, at)
            })
            .collect()
    }

    #[test]
    fn failures_in_a_row_are_met_at_the_count_and_an_ok_resets_them() {
        let rule = consecutive(3);
        let found = run(&rule, &[false, false, true, false, false, false, false]);
        let met: Vec<bool> = found.iter().map(Option::is_some).collect();
        assert_eq!(met, [false, false, false, false, false, true, true]);
        assert_eq!(found[5].as_deref(), Some("3 failures in a row"));
        assert_eq!(found[6].as_deref(), Some("4 failures in a row"));
    }

    #[test]
    fn one_failure_is_enough_when_the_rule_says_one() {
        let found = run(&consecutive(1), &[true, false]);
        assert_eq!(found, [None, Some("1 failure".to_string())]);
    }

    #[test]
    fn a_ratio_waits_for_a_whole_window_since_the_first_result() {
        // Every check fails, 1 s apart, window 5 s: the first result is at 1 s, so the rule
        // is judged from 6 s on.
        let found = run(&ratio(0.5, ms(5000)), &[false; 7]);
        let met: Vec<bool> = found.iter().map(Option::is_some).collect();
        assert_eq!(met, [false, false, false, false, false, true, true]);
        assert_eq!(
            found[5].as_deref(),
            Some("5 of 5 checks failed in the last 5s, 100% for a limit of 50%"),
            "the window holds the results of (1 s, 6 s]"
        );
    }

    #[test]
    fn a_ratio_counts_only_the_last_window() {
        // Failures early, then oks: at 10 s the window (5 s, 10 s] holds 5 oks.
        let results = [
            false, false, false, false, true, true, true, true, true, true,
        ];
        let found = run(&ratio(0.2, ms(5000)), &results);
        assert!(found[5].is_some(), "at 6 s, 3 of 5 failed: {:?}", found[5]);
        assert!(found[9].is_none(), "at 10 s, 0 of 5 failed: {:?}", found[9]);
    }

    #[test]
    fn a_ratio_is_met_at_the_limit_itself() {
        // 3 of 10 failed at 30 %: 0.3 * 10 is a hair above 3 in floating point.
        let mut results = [true; 10];
        results[..3].fill(false);
        let found = run(&ratio(0.3, ms(10_000)), &[&[true][..], &results].concat());
        assert_eq!(
            found[10].as_deref(),
            Some("3 of 10 checks failed in the last 10s, 30% for a limit of 30%")
        );
        let found = run(&ratio(0.31, ms(10_000)), &[&[true][..], &results].concat());
        assert_eq!(found[10], None, "3 of 10 is under 31 %");
    }

    #[test]
    fn a_zero_ratio_means_any_failure_but_not_none() {
        let found = run(&ratio(0.0, ms(2000)), &[true, true, true, false]);
        assert_eq!(found[2], None, "no failure in the window");
        assert!(found[3].is_some());
    }

    #[test]
    fn old_results_are_forgotten() {
        let rule = ratio(0.5, ms(2000));
        let mut h = History::new(std::slice::from_ref(&rule));
        for i in 0..1000 {
            h.record(ms(10 * i), false);
        }
        assert_eq!(h.recent.len(), 200, "2 s of results 10 ms apart");
        let mut h = History::new(&[consecutive(2)]);
        h.record(ms(1), false);
        assert!(h.recent.is_empty(), "no ratio rule, no window kept");
    }
}
