//! Traffic the tests measure faults with.

use std::time::Duration;

use serde_json::Value;

use crate::{probe, probe_json, run_in, spawn_in, Cgroup, Netns};

/// Sends `count` datagrams from (`cgroup`, `from`) to `to` (an address in `dest`), with a
/// receiver bound there; returns (sender report, receiver report).
pub fn udp(
    cgroup: Option<&Cgroup>,
    from: &Netns,
    dest: &Netns,
    dest_cgroup: Option<&Cgroup>,
    to: &str,
    count: u64,
) -> (Value, Value) {
    let port: u16 = to.rsplit(':').next().unwrap().parse().unwrap();
    let bind = if to.starts_with('[') {
        format!("[::]:{port}")
    } else {
        format!("0.0.0.0:{port}")
    };
    let mut receiver = spawn_in(
        dest_cgroup,
        Some(dest),
        probe(&[
            "udp-recv",
            "--bind",
            &bind,
            "--expect",
            &count.to_string(),
            "--timeout-ms",
            "1500",
            "--linger-ms",
            "300",
        ]),
    );
    receiver.wait_listening(port);
    let sent = probe_json(&run_in(
        cgroup,
        Some(from),
        probe(&[
            "udp-send",
            "--to",
            to,
            "--count",
            &count.to_string(),
            "--size",
            "128",
            "--interval-us",
            "20",
        ]),
        Duration::from_secs(60),
    ));
    let got = probe_json(&receiver.wait_output(Duration::from_secs(60)));
    (sent, got)
}
