//! The live view of `fault apply`: on a terminal, one block redrawn in place every
//! `--interval` (a line per rule with its rates, the time left); otherwise plain lines
//! that a log keeps; nothing with `--output json`, whose stdout is the event log.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

use super::event::{RuleCounts, Sample};

pub struct LiveView {
    mode: Mode,
    /// Lines drawn last time, to move back over (terminal only).
    drawn: usize,
    last: Option<(Instant, Sample)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    InPlace,
    Lines,
    Off,
}

/// Whether the live view of a run will redraw in place.
pub fn in_place(json: bool) -> bool {
    !json && std::io::stdout().is_terminal()
}

impl LiveView {
    /// Off when `json`, else in place when [`in_place`] said so, plain lines otherwise.
    pub fn new(json: bool, in_place: bool) -> LiveView {
        let mode = match (json, in_place) {
            (true, _) => Mode::Off,
            (false, true) => Mode::InPlace,
            (false, false) => Mode::Lines,
        };
        LiveView {
            mode,
            drawn: 0,
            last: None,
        }
    }

    /// Shows the run `elapsed` into it with `left` to go: `sample`'s counters (as rates on a
    /// terminal) and the kinds' own `lines`.
    pub fn show(
        &mut self,
        name: &str,
        elapsed: Duration,
        left: Duration,
        sample: &Sample,
        lines: Vec<String>,
    ) {
        let now = Instant::now();
        let block = match self.mode {
            Mode::Off => return,
            Mode::Lines => {
                let mut b = vec![format!("[{:>5}]", elapsed.as_secs())];
                b.extend(lines);
                if b.len() == 1 {
                    return;
                }
                b
            }
            Mode::InPlace => {
                let since = self.last.as_ref().map(|(t, s)| (now - *t, s));
                let mut b = vec![header(name, elapsed, left)];
                b.extend(rate_lines(&sample.rules, since));
                b.extend(lines);
                b
            }
        };
        self.last = Some((now, sample.clone()));
        let mut out = std::io::stdout().lock();
        let mut text = String::new();
        if self.mode == Mode::InPlace && self.drawn > 0 {
            // Up over the last block, then clear to the end of the screen.
            text.push_str(&format!("\x1b[{}A\r\x1b[J", self.drawn));
        }
        for l in &block {
            text.push_str(l);
            text.push('\n');
        }
        self.drawn = block.len();
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }

    /// Forgets the block drawn, so what is printed next stays below it.
    pub fn leave(&mut self) {
        self.drawn = 0;
    }
}

/// `fault: replica-loss  12s of 1m  (48s left)`: whole seconds that add up to the run's
/// length.
fn header(name: &str, elapsed: Duration, left: Duration) -> String {
    let total = (elapsed + left).as_secs_f64().round() as u64;
    let done = elapsed.as_secs().min(total);
    let secs = |s: u64| humantime::format_duration(Duration::from_secs(s));
    format!(
        "fault: {name}  {} of {}  ({} left)",
        secs(done),
        secs(total),
        secs(total - done)
    )
}

/// One line per rule: its rates since the last draw (per second) and its totals.
pub fn rate_lines(rules: &[RuleCounts], since: Option<(Duration, &Sample)>) -> Vec<String> {
    let width = rules.iter().map(|r| r.rule.len()).max().unwrap_or(0);
    rules
        .iter()
        .map(|r| {
            let before = since.and_then(|(_, s)| s.rules.iter().find(|o| o.rule == r.rule));
            let secs = since.map_or(0.0, |(d, _)| d.as_secs_f64());
            let rate = |now: u64, then: Option<u64>| match (then, secs > 0.0) {
                (Some(t), true) => now.saturating_sub(t) as f64 / secs,
                _ => 0.0,
            };
            let seen = rate(r.seen, before.map(|b| b.seen));
            let dropped = rate(r.dropped, before.map(|b| b.dropped));
            let share = match r.seen {
                0 => "-".to_owned(),
                n => format!("{:.1}%", r.dropped as f64 * 100.0 / n as f64),
            };
            let mut line = format!(
                "  {:width$}  {seen:>8.0} pkt/s  dropped {dropped:>7.0}/s ({share} of {})",
                r.rule, r.seen
            );
            for (what, now, then) in [
                ("corrupted", r.corrupted, before.map(|b| b.corrupted)),
                ("duplicated", r.duplicated, before.map(|b| b.duplicated)),
                ("delayed", r.delayed, before.map(|b| b.delayed)),
            ] {
                if now > 0 {
                    line.push_str(&format!("  {what} {:.0}/s", rate(now, then)));
                }
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_difference_over_the_time_between_draws() {
        let rule = |seen, dropped| RuleCounts {
            rule: "loss".into(),
            seen,
            dropped,
            ..RuleCounts::default()
        };
        let before = Sample {
            rules: vec![rule(100, 10)],
            ..Sample::default()
        };
        let lines = rate_lines(&[rule(300, 30)], Some((Duration::from_secs(2), &before)));
        assert_eq!(
            lines,
            ["  loss       100 pkt/s  dropped      10/s (10.0% of 300)"]
        );
        let first = rate_lines(&[rule(0, 0)], None);
        assert_eq!(
            first,
            ["  loss         0 pkt/s  dropped       0/s (- of 0)"]
        );
    }

    #[test]
    fn the_header_tells_the_time_left() {
        let h = header(
            "p",
            Duration::from_millis(12_400),
            Duration::from_millis(47_600),
        );
        assert_eq!(h, "fault: p  12s of 1m  (48s left)");
        let h = header(
            "p",
            Duration::from_millis(3_100),
            Duration::from_millis(900),
        );
        assert_eq!(h, "fault: p  3s of 4s  (1s left)");
    }
}
