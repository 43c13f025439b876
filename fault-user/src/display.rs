//! How counters and active policies are shown to people and to scripts.

use fault_common::RuleCounters;
use serde::Serialize;

use crate::state::RuleInfo;

/// Counters of one rule, by name, as `fault status --json` prints them.
#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub name: String,
    pub summary: String,
    pub seen: u64,
    pub dropped: u64,
    pub corrupted: u64,
    pub duplicated: u64,
    /// Given a later departure time (delay, jitter, rate).
    pub delayed: u64,
    pub errors: u64,
}

pub fn rule_reports(rules: &[RuleInfo], counters: &[RuleCounters]) -> Vec<RuleReport> {
    rules
        .iter()
        .zip(counters)
        .map(|(r, c)| RuleReport {
            name: r.name.clone(),
            summary: r.summary.clone(),
            seen: c.seen,
            dropped: c.dropped,
            corrupted: c.corrupted,
            duplicated: c.duplicated,
            delayed: c.delayed,
            errors: c.errors,
        })
        .collect()
}

fn pct(n: u64, of: u64) -> String {
    if of == 0 {
        "-".into()
    } else {
        format!("{:.1}%", n as f64 * 100.0 / of as f64)
    }
}

/// One line per rule: `  replica-loss  seen 20000  dropped 1003 (5.0%)  ...`.
pub fn counter_lines(reports: &[RuleReport]) -> Vec<String> {
    let width = reports.iter().map(|r| r.name.len()).max().unwrap_or(0);
    reports
        .iter()
        .map(|r| {
            let mut line = format!(
                "  {:width$}  seen {:>8}  dropped {:>7} ({:>5})  corrupted {:>7} ({:>5})  duplicated {:>7} ({:>5})",
                r.name,
                r.seen,
                r.dropped,
                pct(r.dropped, r.seen),
                r.corrupted,
                pct(r.corrupted, r.seen),
                r.duplicated,
                pct(r.duplicated, r.seen),
            );
            if r.delayed != 0 {
                line.push_str(&format!("  delayed {}", r.delayed));
            }
            if r.errors != 0 {
                line.push_str(&format!("  errors {}", r.errors));
            }
            line
        })
        .collect()
}

/// One line per clock rule: `  replica-behind  realtime: offset -2s, drift +500ppm  (now -1.998s)  in 3 processes`.
pub fn clock_lines(rules: &[crate::clock::RuleStatus], processes: usize) -> Vec<String> {
    let width = rules.iter().map(|r| r.name.len()).max().unwrap_or(0);
    rules
        .iter()
        .map(|r| {
            format!(
                "  {:width$}  {}  (steady fault {:+.3}s when last recorded)  in {processes} process(es)",
                r.name,
                r.summary,
                r.steady_ns as f64 / 1e9
            )
        })
        .collect()
}

/// The userspace delay path's figures (see `crate::net::resend`).
pub fn resend_line(s: &crate::net::resend::Stats) -> String {
    let per = |total: u64| match s.sent {
        0 => 0.0,
        n => total as f64 / n as f64 / 1000.0,
    };
    format!(
        "  delayed in userspace: {} sent, {} dropped (queue full or no socket), {} send errors; \
         {:.1} us CPU per packet, {:.1} us late on average{}",
        s.sent,
        s.dropped,
        s.errors,
        per(s.cpu_ns),
        per(s.late_ns),
        s.last_error
            .map(|e| format!(
                " (last send error: {})",
                std::io::Error::from_raw_os_error(e)
            ))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_guard_against_zero() {
        assert_eq!(pct(0, 0), "-");
        assert_eq!(pct(5, 100), "5.0%");
    }

    #[test]
    fn clock_lines_name_the_rule_and_the_processes() {
        let rules = [crate::clock::RuleStatus {
            name: "behind".into(),
            summary: "realtime: offset -2s".into(),
            steady_ns: -2_000_000_000,
        }];
        assert_eq!(
            clock_lines(&rules, 3),
            ["  behind  realtime: offset -2s  (steady fault -2.000s when last recorded)  in 3 process(es)"]
        );
    }
}
