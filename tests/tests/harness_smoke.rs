//! The harness itself works: namespaces, a veth pair, a cgroup, the probe across them, and a
//! clean machine afterwards. No fault involved, so a failure here is the harness's.

use std::time::Duration;

use fault_tests::{
    assert_no_leftovers, probe, probe_json, require_root, run_in, spawn_in, Cgroup, Netns, VethPair,
};

#[test]
fn udp_crosses_a_veth_pair_from_inside_a_cgroup() {
    require_root();
    {
        let sender_ns = Netns::new("smoke-tx");
        let receiver_ns = Netns::new("smoke-rx");
        let veth = VethPair::new(&sender_ns, "10.77.1.1/24", &receiver_ns, "10.77.1.2/24")
            .with_ipv6("fd77:1::1/64", "fd77:1::2/64");
        let cgroup = Cgroup::new("smoke");
        assert!(cgroup.id() > 1, "a cgroup id is its directory's inode");

        for (to, bind) in [
            (format!("{}:9000", veth.ip_b()), "0.0.0.0:9000".to_string()),
            (
                format!("[{}]:9001", veth.ip6_b().expect("IPv6 added")),
                "[::]:9001".to_string(),
            ),
        ] {
            let port = bind.rsplit(':').next().unwrap().parse().unwrap();
            let mut receiver = spawn_in(
                Some(&cgroup),
                Some(&receiver_ns),
                probe(&[
                    "udp-recv",
                    "--bind",
                    &bind,
                    "--expect",
                    "1000",
                    "--timeout-ms",
                    "3000",
                ]),
            );
            receiver.wait_listening(port);
            assert!(
                cgroup.procs().contains(&(receiver.pid() as i32)),
                "the receiver runs in the test cgroup"
            );
            let sent = probe_json(&run_in(
                Some(&cgroup),
                Some(&sender_ns),
                probe(&["udp-send", "--to", &to, "--count", "1000", "--size", "64"]),
                Duration::from_secs(20),
            ));
            assert_eq!(sent["sent"], 1000, "all 1000 sends accepted: {sent}");
            assert_eq!(sent["errors"], 0, "no send errors: {sent}");

            let got = probe_json(&receiver.wait_output(Duration::from_secs(20)));
            assert_eq!(got["unique"], 1000, "1000 of 1000 delivered to {to}: {got}");
            assert_eq!(got["duplicates"], 0, "no duplicates: {got}");
            assert_eq!(got["corrupted"], 0, "no corruption: {got}");
        }

        // Round trips through the echo server.
        let echo_port = 9100;
        let mut echo = spawn_in(
            None,
            Some(&receiver_ns),
            probe(&["echo", "--bind", &format!("0.0.0.0:{echo_port}")]),
        );
        echo.wait_listening(echo_port);
        let rtt = probe_json(&run_in(
            None,
            Some(&sender_ns),
            probe(&[
                "ping",
                "--to",
                &format!("{}:{echo_port}", veth.ip_b()),
                "--count",
                "20",
                "--interval-us",
                "100",
            ]),
            Duration::from_secs(20),
        ));
        assert_eq!(rtt["replies"], 20, "20 of 20 echoes answered: {rtt}");
    }
    assert_no_leftovers();
}

#[test]
fn tcp_bytes_arrive_intact() {
    require_root();
    {
        let a = Netns::new("smoke-tcp-a");
        let b = Netns::new("smoke-tcp-b");
        let veth = VethPair::new(&a, "10.77.2.1/24", &b, "10.77.2.2/24");
        // Checksums computed in software: TCP still delivers everything.
        veth.set_tx_checksum_offload(false);
        let mut receiver = spawn_in(
            None,
            Some(&b),
            probe(&["tcp-recv", "--bind", "0.0.0.0:9200"]),
        );
        receiver.wait_listening(9200);
        let sent = probe_json(&run_in(
            None,
            Some(&a),
            probe(&[
                "tcp-send",
                "--to",
                &format!("{}:9200", veth.ip_b()),
                "--bytes",
                "1000000",
            ]),
            Duration::from_secs(30),
        ));
        assert!(sent["error"].is_null(), "sender saw no error: {sent}");
        let got = probe_json(&receiver.wait_output(Duration::from_secs(30)));
        assert_eq!(got["bytes"], 1_000_000, "1000000 bytes received: {got}");
        assert_eq!(got["mismatched"], 0, "no byte altered: {got}");
    }
    assert_no_leftovers();
}
