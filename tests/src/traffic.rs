//! Traffic the tests measure faults with.

use std::time::Duration;

use serde_json::Value;

use crate::{probe, probe_json, run_at, spawn_at, Cgroup, Netns, Place};

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
    udp_at(
        &Place::new(cgroup, Some(from)),
        &Place::new(dest_cgroup, Some(dest)),
        to,
        count,
    )
}

/// [`udp`] between any two places (a pod's containers, for one): the sender at `from`, the
/// receiver at `dest`, where `to` is an address.
pub fn udp_at(from: &Place, dest: &Place, to: &str, count: u64) -> (Value, Value) {
    let port: u16 = to.rsplit(':').next().unwrap().parse().unwrap();
    let bind = if to.starts_with('[') {
        format!("[::]:{port}")
    } else {
        format!("0.0.0.0:{port}")
    };
    let mut receiver = spawn_at(
        dest,
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
    let sent = probe_json(&run_at(
        from,
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
