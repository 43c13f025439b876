//! What a probe has seen: counts, latencies, the last failure, and how they are shown in the
//! live view, the revert summary and the state file.

use std::{collections::VecDeque, time::Duration};

use super::ProbeCount;

/// Latencies of the last this many ok checks make the percentiles, so a long run's memory
/// stays bounded; the maximum covers the whole run.
const KEPT: usize = 1024;

/// The result of one check: how long it took to its answer, and why it failed if it did.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Outcome {
    pub latency: Duration,
    pub error: Option<String>,
}

/// One probe's counters.
#[derive(Debug, Clone, Default)]
pub(super) struct Tally {
    pub name: String,
    pub ok: u64,
    pub failed: u64,
    /// Failed checks since the last ok one.
    pub streak: u64,
    pub last_latency: Option<Duration>,
    pub last_error: Option<String>,
    /// Latencies of the latest ok checks, oldest first.
    latencies: VecDeque<Duration>,
    max: Option<Duration>,
}

impl Tally {
    pub fn new(name: &str) -> Tally {
        Tally {
            name: name.to_string(),
            ..Tally::default()
        }
    }

    pub fn record(&mut self, outcome: &Outcome) {
        self.last_latency = Some(outcome.latency);
        match &outcome.error {
            None => {
                self.ok += 1;
                self.streak = 0;
                if self.latencies.len() == KEPT {
                    self.latencies.pop_front();
                }
                self.latencies.push_back(outcome.latency);
                self.max = self.max.max(Some(outcome.latency));
            }
            Some(e) => {
                self.failed += 1;
                self.streak += 1;
                self.last_error = Some(e.clone());
            }
        }
    }

    /// The `q` quantile (0..=1) of the kept ok latencies, nearest rank.
    fn quantile(&self, q: f64) -> Option<Duration> {
        let mut sorted: Vec<Duration> = self.latencies.iter().copied().collect();
        sorted.sort_unstable();
        let rank = (q * sorted.len() as f64).ceil() as usize;
        sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
    }

    pub fn count(&self) -> ProbeCount {
        ProbeCount {
            name: self.name.clone(),
            ok: self.ok,
            failed: self.failed,
            last_latency_ms: self.last_latency.map(as_ms),
            last_error: self.last_error.clone(),
        }
    }
}

fn as_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.2} ms", as_ms(d)),
        None => "-".into(),
    }
}

/// `  probe writes  ok       ok 12  failed 0  last 0.31 ms  p50 0.28 ms  max 1.20 ms`, with
/// `FAILING` and the streak's reason while the latest check failed.
pub(super) fn live_lines(tallies: &[Tally]) -> Vec<String> {
    let width = tallies.iter().map(|t| t.name.len()).max().unwrap_or(0);
    tallies
        .iter()
        .map(|t| {
            let head = format!("  probe {:width$}", t.name);
            if t.ok + t.failed == 0 {
                return format!("{head}  waiting for the first check");
            }
            let state = if t.streak == 0 { "ok" } else { "FAILING" };
            let mut line = format!(
                "{head}  {state:7}  ok {:>6}  failed {:>6}  last {:>9}  p50 {:>9}  max {:>9}",
                t.ok,
                t.failed,
                ms(t.last_latency),
                ms(t.quantile(0.5)),
                ms(t.max),
            );
            if let (true, Some(e)) = (t.streak > 0, &t.last_error) {
                line.push_str(&format!("  ({} in a row: {e})", t.streak));
            }
            line
        })
        .collect()
}

/// `  probe writes: 120 checks, 117 ok, 3 failed (2.5%); latency p50 0.28 ms, p99 0.90 ms,
/// max 1.20 ms; last failure: connect to ...`.
pub(super) fn summary_lines(tallies: &[Tally]) -> Vec<String> {
    tallies
        .iter()
        .map(|t| {
            let total = t.ok + t.failed;
            let share = match total {
                0 => "-".to_string(),
                n => format!("{:.1}%", t.failed as f64 * 100.0 / n as f64),
            };
            let mut line = format!(
                "  probe {}: {total} checks, {} ok, {} failed ({share}); latency p50 {}, p99 {}, max {}",
                t.name,
                t.ok,
                t.failed,
                ms(t.quantile(0.5)),
                ms(t.quantile(0.99)),
                ms(t.max),
            );
            if let Some(e) = &t.last_error {
                line.push_str(&format!("; last failure: {e}"));
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ms: u64) -> Outcome {
        Outcome {
            latency: Duration::from_millis(ms),
            error: None,
        }
    }

    fn failed(why: &str) -> Outcome {
        Outcome {
            latency: Duration::from_millis(100),
            error: Some(why.into()),
        }
    }

    #[test]
    fn counts_latencies_and_the_last_failure() {
        let mut t = Tally::new("up");
        for n in [3, 1, 2, 10] {
            t.record(&ok(n));
        }
        t.record(&failed("connect to 127.0.0.1:1: refused"));
        assert_eq!((t.ok, t.failed, t.streak), (4, 1, 1));
        assert_eq!(t.quantile(0.5), Some(Duration::from_millis(2)));
        assert_eq!(t.max, Some(Duration::from_millis(10)));
        let c = t.count();
        assert_eq!(
            c.last_latency_ms,
            Some(100.0),
            "a failure's latency counts as last"
        );
        t.record(&ok(1));
        assert_eq!(t.streak, 0, "an ok ends the streak");
        assert_eq!(
            t.count().last_error.as_deref(),
            Some("connect to 127.0.0.1:1: refused"),
            "the last failure is kept"
        );
    }

    #[test]
    fn only_the_latest_latencies_are_kept() {
        let mut t = Tally::new("up");
        for _ in 0..KEPT {
            t.record(&ok(50));
        }
        for _ in 0..KEPT {
            t.record(&ok(1));
        }
        assert_eq!(t.quantile(0.99), Some(Duration::from_millis(1)));
        assert_eq!(t.max, Some(Duration::from_millis(50)), "the run's maximum");
    }

    #[test]
    fn lines_say_ok_failing_or_waiting() {
        let mut a = Tally::new("a");
        a.record(&ok(1));
        let mut b = Tally::new("bb");
        b.record(&failed("GET http://x/: answered 503, expected 200"));
        let lines = live_lines(&[a, b, Tally::new("c")]);
        assert!(lines[0].starts_with("  probe a   ok "), "{}", lines[0]);
        assert!(lines[0].contains("p50   1.00 ms"), "{}", lines[0]);
        assert!(lines[1].contains("FAILING"), "{}", lines[1]);
        assert!(
            lines[1].ends_with("(1 in a row: GET http://x/: answered 503, expected 200)"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("waiting for the first check"),
            "{}",
            lines[2]
        );
        let summary = summary_lines(&[Tally::new("c")]);
        assert_eq!(
            summary[0],
            "  probe c: 0 checks, 0 ok, 0 failed (-); latency p50 -, p99 -, max -"
        );
    }
}
