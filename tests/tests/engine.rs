//! The engine's promises, whatever the fault kind (the dry run's checks are tested with the
//! refusal they make, in delay.rs): every signal that ends a run reverts it, runs follow their targets for every kind of
//! rule, a remembered pid is checked against its start time, and the live view counts
//! rather than floods.

use std::{os::unix::process::CommandExt as _, process::Command, time::Duration};

use fault_tests::{
    anchor, assert_no_leftovers, fault, fault_ok, forget_attachments, hosts, probe, probe_json,
    require_root, run_in, spawn_in, write_policy, Cgroup, FaultApply, Hosts, STATE_DIR,
};

fn policy(name: &str, cgroup: &Cgroup, section: &str) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         duration: 2m\n  targets:\n    - cgroup: {}\n{section}",
        cgroup.path().display()
    )
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn sighup_reverts_like_sigterm() {
    require_root();
    {
        let h = hosts("hup", "10.79", 3);
        let target = Cgroup::new("hup");
        let _anchor = anchor(&target, &h.a);
        let file = write_policy(&policy(
            "t-hup",
            &target,
            "  network:\n    - direction: egress\n      match: {protocol: udp}\n      \
             drop: {probability: 100%}\n",
        ));
        let mut apply = FaultApply::start(file.path(), "t-hup");
        apply.wait_ready();
        // SAFETY: kill has no memory-safety preconditions; the pid is our child.
        unsafe { libc::kill(apply.pid() as i32, libc::SIGHUP) };
        let status = apply.wait_exit(Duration::from_secs(10));
        let log = apply.log();
        assert_eq!(status.code(), Some(0), "{log}");
        assert!(log.contains("reverted (hung up)"), "{log}");
        assert!(!apply.state_file().exists(), "state file removed: {log}");
    }
    assert_no_leftovers();
}

/// `count` UDP echo round trips from (`cgroup`, `h.a`) to an echo server on `h.b`, 5 ms
/// apart: the probe's report.
fn ping(h: &Hosts, cgroup: &Cgroup, port: u16, count: u32) -> serde_json::Value {
    let mut echo = spawn_in(
        None,
        Some(&h.b),
        probe(&["echo", "--bind", &format!("0.0.0.0:{port}")]),
    );
    echo.wait_listening(port);
    probe_json(&run_in(
        Some(cgroup),
        Some(&h.a),
        probe(&[
            "ping",
            "--to",
            &format!("{}:{port}", h.veth.ip_b()),
            "--count",
            &count.to_string(),
            "--interval-us",
            "5000",
        ]),
        Duration::from_secs(60),
    ))
}

/// The median of 20 round trips, ms.
fn rtt_ms(h: &Hosts, cgroup: &Cgroup, port: u16) -> f64 {
    ping(h, cgroup, port, 20)["p50_us"]
        .as_f64()
        .expect("p50_us")
        / 1000.0
}

/// The fail-safe rule for the network faults this engine puts in place, on the path whose
/// attachments outlive the loader (clsact filters): a partition (also judged at the
/// target's sockets) and a delay both end within a second of a SIGKILL, long before the
/// deadline, and `fault stop` then leaves nothing.
#[test]
fn after_sigkill_partition_and_delay_end_within_a_second_and_stop_leaves_nothing() {
    require_root();
    {
        let h = hosts("killall", "10.79", 7);
        let target = Cgroup::new("killall");
        let _anchor = anchor(&target, &h.a);
        let file = write_policy(&policy(
            "t-killall",
            &target,
            "  network:\n    - direction: egress\n      match: {protocol: udp, ports: [9371]}\n      \
             partition: true\n    - direction: egress\n      match: {protocol: udp, ports: [9372]}\n      \
             delay: {latency: 50ms}\n",
        ));
        let mut apply = FaultApply::start_env(
            [std::ffi::OsStr::new("apply"), file.path().as_os_str()],
            "t-killall",
            &[("FAULT_TC_MODE", "clsact")],
        );
        apply.wait_ready();
        assert_eq!(ping(&h, &target, 9371, 5)["replies"], 0, "partitioned");
        let delayed = rtt_ms(&h, &target, 9372);
        assert!(delayed >= 49.0, "delayed: p50 {delayed:.2} ms");
        // SAFETY: kill has no memory-safety preconditions; the pid is our child.
        unsafe { libc::kill(apply.pid() as i32, libc::SIGKILL) };
        let killed = std::time::Instant::now();
        apply.wait_exit(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(1100).saturating_sub(killed.elapsed()));
        assert_eq!(
            ping(&h, &target, 9371, 5)["replies"],
            5,
            "the partition ended within a second of the SIGKILL"
        );
        let after = rtt_ms(&h, &target, 9372);
        assert!(after < 10.0, "the delay ended too: p50 {after:.2} ms");
        let out = fault(["stop", "--all"]);
        assert!(out.status.success(), "fault stop --all: {}", text(&out));
    }
    assert_no_leftovers();
}

/// A loader killed while it reverted can have deleted its clsact qdisc, and the filters
/// with it, before it removed its record (a campaign caught one 34 ms into a revert).
/// `fault stop` finishes that revert instead of failing on the filters that are gone.
#[test]
fn stop_finishes_a_revert_that_a_sigkill_cut_short() {
    require_root();
    for filter_only in [true, false] {
        stop_after_a_cut_revert(filter_only);
    }
}

/// A loader killed after it added a cls_bpf filter (and the clsact qdisc for it) but before
/// it wrote them into its record (a campaign caught one): `fault stop` finds both through
/// the intents the loader wrote down before adding them.
#[test]
fn stop_removes_a_filter_the_record_never_named() {
    require_root();
    after_a_killed_clsact_delay("unnamed", 10, |h| {
        forget_attachments("t-unnamed");
        let qdiscs = || {
            let out = Command::new("ip")
                .args(["netns", "exec", h.a.name(), "tc", "qdisc", "show"])
                .args(["dev", h.veth.name_a()])
                .output()
                .expect("run tc");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert!(
            qdiscs().contains("clsact"),
            "the killed run's qdisc: {}",
            qdiscs()
        );
        let out = fault(["stop", "--all"]);
        assert!(out.status.success(), "fault stop --all: {}", text(&out));
        assert!(!qdiscs().contains("clsact"), "clsact left: {}", qdiscs());
    });
}

fn stop_after_a_cut_revert(filter_only: bool) {
    after_a_killed_clsact_delay("cutrev", 8, |h| {
        // What the killed revert had done: the filter is gone, or the qdisc and the filter
        // with it; the record is not.
        let what: &[&str] = match filter_only {
            true => &["filter", "del", "dev", h.veth.name_a(), "egress"],
            false => &["qdisc", "del", "dev", h.veth.name_a(), "clsact"],
        };
        let del = Command::new("ip")
            .args(["netns", "exec", h.a.name(), "tc"])
            .args(what)
            .output()
            .expect("run tc");
        assert!(del.status.success(), "tc qdisc del: {}", text(&del));
        let out = fault(["stop", "--all"]);
        assert!(out.status.success(), "fault stop --all: {}", text(&out));
    });
}

/// Runs a clsact delay on hosts `name` (subnet 10.79.`net`), SIGKILLs its loader once
/// ready, calls `then` while the hosts are still up, and checks nothing is left after.
/// The policy is named `t-NAME`.
fn after_a_killed_clsact_delay(name: &str, net: u8, then: impl FnOnce(&Hosts)) {
    {
        let policy_name = format!("t-{name}");
        let h = hosts(name, "10.79", net);
        let target = Cgroup::new(name);
        let _anchor = anchor(&target, &h.a);
        let file = write_policy(&policy(
            &policy_name,
            &target,
            "  network:\n    - direction: egress\n      match: {protocol: udp}\n      \
             delay: {latency: 50ms}\n",
        ));
        let mut apply = FaultApply::start_env(
            [std::ffi::OsStr::new("apply"), file.path().as_os_str()],
            &policy_name,
            &[("FAULT_TC_MODE", "clsact")],
        );
        apply.wait_ready();
        // SAFETY: kill has no memory-safety preconditions; the pid is our child.
        unsafe { libc::kill(apply.pid() as i32, libc::SIGKILL) };
        apply.wait_exit(Duration::from_secs(5));
        then(&h);
    }
    assert_no_leftovers();
}

#[test]
fn ingress_delay_alone_follows_a_target_into_a_new_namespace() {
    require_root();
    {
        let first = hosts("infollow1", "10.79", 5);
        let target = Cgroup::new("infollow");
        let _anchor = anchor(&target, &first.a);
        let file = write_policy(&policy(
            "t-infollow",
            &target,
            "  network:\n    - direction: ingress\n      match: {protocol: udp}\n      \
             delay: {latency: 50ms}\n",
        ));
        let mut apply = FaultApply::start(file.path(), "t-infollow");
        apply.wait_ready();
        // The target starts a process in a namespace of its own after apply.
        let later = hosts("infollow2", "10.79", 6);
        let _late = anchor(&target, &later.a);
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while !apply.log().contains("appeared in network namespace") {
            assert!(
                std::time::Instant::now() < until,
                "the new namespace was not followed: {}",
                apply.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let rtt = rtt_ms(&later, &target, 9361);
        assert!(
            rtt >= 49.0,
            "replies entering the new namespace are delayed: p50 {rtt:.2} ms"
        );
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
    }
    assert_no_leftovers();
}

/// Ring buffers among the BPF maps `pid` holds: their max_entries (bytes), from fdinfo.
fn ring_sizes(pid: u32) -> Vec<u64> {
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        // BPF_MAP_TYPE_RINGBUF is 27.
        if field("map_type:").as_deref() == Some("27") {
            sizes.extend(field("max_entries:").and_then(|v| v.parse::<u64>().ok()));
        }
    }
    sizes
}

#[test]
fn a_clock_only_policy_holds_no_packet_ring() {
    require_root();
    {
        let target = Cgroup::new("clockring");
        let mut sleep = Command::new("sleep");
        sleep.arg("600");
        let _anchor = spawn_in(Some(&target), None, sleep);
        let file = write_policy(&policy(
            "t-clockring",
            &target,
            "  clock:\n    - offset: 2s\n",
        ));
        let mut apply = FaultApply::start(file.path(), "t-clockring");
        apply.wait_ready();
        let rings = ring_sizes(apply.pid());
        assert!(!rings.is_empty(), "the exec hold's event ring is there");
        assert!(
            rings.iter().all(|&bytes| bytes <= 1 << 20),
            "no ring above 1 MiB: {rings:?}"
        );
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
    }
    assert_no_leftovers();
}

#[test]
fn a_process_that_got_a_dead_loaders_pid_is_not_the_loader() {
    require_root();
    // Named like the old check's mistake: argv[0] ending in "fault".
    let mut sleep = Command::new("sleep");
    sleep.arg0("default").arg("600");
    let mut other = spawn_in(None, None, sleep);
    let name = "t-reused-pid";
    let path = std::path::Path::new(STATE_DIR).join(format!("{name}.json"));
    let record = serde_json::json!({
        "name": name, "file": "/nonexistent.yaml", "pid": other.pid(),
        "pid_start": 1, "started_unix": 0, "deadline_unix": 0, "rules": [],
        "targets": [], "cgroup_ids": [], "tc_mode": "tcx", "attachments": [], "qdiscs": [],
    });
    std::fs::create_dir_all(STATE_DIR).unwrap();
    std::fs::write(&path, record.to_string()).unwrap();
    let status = fault(["status", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let stop = fault(["stop", name]);
    let alive = other.try_wait().is_none();
    let _ = std::fs::remove_file(&path);
    assert_eq!(shown[0]["loader_alive"], false, "{shown}");
    assert!(stop.status.success(), "{}", text(&stop));
    assert!(
        alive,
        "fault stop signalled a process that is not its loader"
    );
    assert!(!path.exists());
    assert_no_leftovers();
}

#[test]
fn processes_patched_at_exec_are_counted_and_detailed_only_with_verbose() {
    require_root();
    {
        let target = Cgroup::new("execcount");
        let mut sh = Command::new("sh");
        sh.args([
            "-c",
            "sleep 1; for i in $(seq 20); do /bin/true; done; sleep 600",
        ]);
        let _loop = spawn_in(Some(&target), None, sh);
        let file = write_policy(&policy(
            "t-execcount",
            &target,
            "  clock:\n    - offset: 2s\n",
        ));
        let mut apply = FaultApply::start_args(
            [
                "apply",
                "--interval",
                "300ms",
                &*file.path().to_string_lossy(),
            ],
            "t-execcount",
        );
        apply.wait_ready();
        let counted = |log: &str| {
            log.lines()
                .filter_map(|l| l.split_once(" at exec)").map(|(head, _)| head))
                .filter_map(|head| head.rsplit('(').next()?.parse::<u32>().ok())
                .max()
                .unwrap_or(0)
        };
        // Each exec is held until patched; under emulation 20 of them take several seconds.
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while counted(&apply.log()) < 20 && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(300));
        }
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
        assert!(
            !log.contains("patched process"),
            "no line per exec'd process without -v: {log}"
        );
        assert!(counted(&log) >= 20, "the live view counts the execs: {log}");
    }
    assert_no_leftovers();
}

#[test]
fn usage_errors_exit_2_and_apply_nothing() {
    require_root();
    let help = fault(["--help"]);
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("clock"),
        "--help names clock faults too"
    );
    let target = Cgroup::new("usage");
    let file = write_policy(&policy(
        "t-usage",
        &target,
        "  network:\n    - direction: egress\n      drop: {probability: 1%}\n",
    ));
    let out = fault([
        "apply".as_ref(),
        "--interval".as_ref(),
        "0s".as_ref(),
        file.path().as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    drop(target);
    assert_no_leftovers();
}

/// A loader SIGKILLed while writing its record leaves the half-written copy: `fault stop`
/// removes it with the rest, also when it is all there is.
#[test]
fn stop_removes_a_half_written_record() {
    require_root();
    let tmp = std::path::Path::new(STATE_DIR).join("t-half-written.json.tmp");
    std::fs::create_dir_all(STATE_DIR).expect("create the state directory");
    std::fs::write(&tmp, b"{\"name\": \"t-half").expect("write a half record");
    fault_ok(["stop", "t-half-written"]);
    assert!(!tmp.exists(), "{} is still there", tmp.display());
    std::fs::write(&tmp, b"{\"na").expect("write a half record");
    fault_ok(["stop", "--all"]);
    assert!(
        !tmp.exists(),
        "{} is still there after --all",
        tmp.display()
    );
    assert_no_leftovers();
}

/// Ctrl-C at moments from the first millisecond of `fault apply` to after it is in place:
/// each time the loader ends and leaves nothing of fault's (no record, pin or BPF object),
/// with no `fault stop` after it. Before its handlers are installed the signal's default
/// action ends a loader that has put nothing in place; from then on it reverts.
#[test]
fn a_ctrl_c_at_any_moment_of_apply_leaves_nothing_behind() {
    require_root();
    {
        let h = hosts("early", "10.79", 9);
        let target = Cgroup::new("early");
        let _anchor = anchor(&target, &h.a);
        let file = write_policy(&policy(
            "t-early",
            &target,
            "  network:\n    - direction: egress\n      drop: {probability: 10%}\n  \
             clock:\n    - name: ahead\n      offset: 1s\n",
        ));
        let run_dir = format!("{STATE_DIR}/t-early");
        let mut ends = Vec::new();
        for after_ms in [0u64, 1, 2, 5, 10, 20, 40, 80, 160, 320] {
            let mut child = Command::new(fault_tests::fault_bin())
                .arg("apply")
                .arg(file.path())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start fault apply");
            std::thread::sleep(Duration::from_millis(after_ms));
            // SAFETY: kill has no memory-safety preconditions; the pid is our child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let until = std::time::Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(s) = child.try_wait().expect("wait") {
                    break s;
                }
                assert!(
                    std::time::Instant::now() < until,
                    "fault apply ignored a Ctrl-C {after_ms} ms after its start"
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            ends.push(format!("{after_ms} ms: {status}"));
            // The test's own namespaces and cgroup are still there; the run's event log is
            // kept on purpose.
            let ours = || -> Vec<String> {
                fault_tests::leftovers()
                    .into_iter()
                    .filter(|l| !l.starts_with("network namespace") && !l.starts_with("cgroup "))
                    .filter(|l| !l.contains(&run_dir))
                    .collect()
            };
            let until = std::time::Instant::now() + Duration::from_secs(2);
            while !ours().is_empty() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert_eq!(
                ours(),
                Vec::<String>::new(),
                "a Ctrl-C {after_ms} ms after the start of fault apply ({status}) left these"
            );
        }
        eprintln!("ends: {}", ends.join(", "));
    }
    assert_no_leftovers();
}
