//! The two text formats a scrape may ask for. prometheus-client writes OpenMetrics; a
//! client that does not ask for it (curl, promtool, an older Prometheus) gets the Prometheus
//! text format 0.0.4, where a counter's family carries its `_total` name and there is no
//! `# UNIT` or `# EOF` line.

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the request's Accept header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// OpenMetrics text as prometheus-client writes it (each family's HELP, then TYPE, then
/// UNIT, then its samples), in the Prometheus text format.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let family = match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            };
            if let Some(h) = help.take() {
                let text = h["# HELP ".len()..].split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {family} {text}\n"));
            }
            out.push_str(&format!("# TYPE {family} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_name_and_units_and_eof_go() {
        let om = "# HELP fault_packets_seen Packets seen.\n# TYPE fault_packets_seen counter\n\
                  fault_packets_seen_total{rule=\"a\"} 3\n# HELP fault_delay_added_seconds Delay.\n\
                  # TYPE fault_delay_added_seconds histogram\n# UNIT fault_delay_added_seconds seconds\n\
                  fault_delay_added_seconds_sum 0.5\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP fault_packets_seen_total Packets seen.\n# TYPE fault_packets_seen_total counter\n\
             fault_packets_seen_total{rule=\"a\"} 3\n# HELP fault_delay_added_seconds Delay.\n\
             # TYPE fault_delay_added_seconds histogram\nfault_delay_added_seconds_sum 0.5\n"
        );
    }

    #[test]
    fn only_an_accept_header_naming_openmetrics_gets_it() {
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
    }
}
