//! A real container, named as users name it: podman with runc, the probe bind-mounted in.

use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use fault_tests::{
    assert_no_leftovers, check, podman_available, probe, probe_bin, probe_json, require_root,
    spawn_in, status_rules, write_policy, Container, FaultApply, IMAGE_PYTHON,
};

/// The host's address on podman's bridge, which both containers can reach.
fn bridge_address() -> String {
    let out = check(std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "podman0"]));
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address on podman0: {out}"))
        .to_string()
}

/// False, having said why, in the qemu guest, which runs no podman.
fn podman_here() -> bool {
    // `cargo xtask vm` sets this; its guest shares the host's files but runs no podman.
    if std::env::var_os("FAULT_IN_VM").is_some_and(|v| v == "1") {
        // Past libtest's capture (which only takes print!/eprint!), so the reason is shown.
        let _ = writeln!(std::io::stderr(), "skipped: no podman in the qemu guest");
        return false;
    }
    // This machine kind has podman (cargo xtask setup installs it): a missing podman is a
    // failure, not a reason to skip.
    assert!(
        podman_available(),
        "podman or its test images are missing: run `cargo xtask setup`"
    );
    true
}

#[test]
fn a_container_named_in_the_policy_is_affected_and_its_neighbour_is_not() {
    require_root();
    if !podman_here() {
        return;
    }
    {
        let mount = format!("{}:/probe:ro", probe_bin().display());
        let target = Container::run_with("tgt", &["-v", &mount], IMAGE_PYTHON, &["sleep", "600"]);
        let neighbour =
            Container::run_with("nbr", &["-v", &mount], IMAGE_PYTHON, &["sleep", "600"]);
        let host = bridge_address();
        let file = write_policy(&format!(
            "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {{name: t-container}}\nspec:\n  \
             duration: 2m\n  targets: [{{container: {}}}]\n  network:\n    - direction: egress\n      \
             match: {{protocol: udp}}\n      drop: {{probability: 50%}}\n",
            target.name()
        ));
        let mut apply = FaultApply::start(file.path(), "t-container");
        apply.wait_ready();

        let count = 4000u64;
        for (container, port, expected) in [(&target, 9201u16, 0.5), (&neighbour, 9202, 0.0)] {
            let loss = loss_from(container, &host, port, count);
            // 4,000 datagrams at 50 %: one standard deviation is 0.8 points.
            assert!(
                (loss - expected).abs() <= 0.04,
                "{}: loss {:.1}%, expected {:.0}%",
                container.name(),
                loss * 100.0,
                expected * 100.0
            );
        }
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
        assert!(
            log.contains(&format!("container {}", target.name())),
            "{log}"
        );
    }
    assert_no_leftovers();
}

#[test]
fn ingress_delay_holds_packets_on_their_way_into_a_container() {
    require_root();
    if !podman_here() {
        return;
    }
    {
        let mount = format!("{}:/probe:ro", probe_bin().display());
        let target = Container::run_with(
            "slow",
            &["-v", &mount],
            IMAGE_PYTHON,
            &["/probe", "echo", "--bind", "0.0.0.0:9210"],
        );
        let to = format!("{}:9210", target.ip());
        let ping = || {
            let mut cmd = probe(&[
                "ping",
                "--to",
                &to,
                "--count",
                "50",
                "--interval-us",
                "2000",
            ]);
            cmd.stderr(std::process::Stdio::inherit());
            let got = probe_json(&fault_tests::run_in(
                None,
                None,
                cmd,
                Duration::from_secs(60),
            ));
            got["p50_us"].as_f64().unwrap() / 1000.0
        };
        let base = ping();
        let file = write_policy(&format!(
            "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {{name: t-container-in}}\nspec:\n  \
             duration: 2m\n  targets: [{{container: {}}}]\n  network:\n    - direction: ingress\n      \
             match: {{protocol: udp}}\n      delay: {{latency: 30ms}}\n",
            target.name()
        ));
        let mut apply = FaultApply::start(file.path(), "t-container-in");
        apply.wait_ready();
        let delayed = ping();
        eprintln!("container round trip {base:.2} ms, {delayed:.2} ms under a 30 ms ingress delay");
        assert!(
            (28.0..=32.0).contains(&(delayed - base)),
            "round trip rose by {:.2} ms for a 30 ms ingress delay",
            delayed - base
        );
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
        assert!(log.contains("ingress delay: at "), "{log}");
        assert!(
            (ping() - base).abs() < 2.0,
            "the delay ends with the policy"
        );
    }
    assert_no_leftovers();
}

/// The loss one container's datagrams meet on their way to `host`:`port`.
fn loss_from(container: &Container, host: &str, port: u16, count: u64) -> f64 {
    let mut receiver = spawn_in(
        None,
        None,
        probe(&[
            "udp-recv",
            "--bind",
            &format!("0.0.0.0:{port}"),
            "--expect",
            &count.to_string(),
            "--timeout-ms",
            "1500",
        ]),
    );
    receiver.wait_listening(port);
    let sent = probe_json(&container.exec(&[
        "/probe",
        "udp-send",
        "--to",
        &format!("{host}:{port}"),
        "--count",
        &count.to_string(),
        "--interval-us",
        "50",
    ]));
    assert_eq!(sent["errors"], 0, "{}: {sent}", container.name());
    let got = probe_json(&receiver.wait_output(Duration::from_secs(60)));
    1.0 - got["unique"].as_f64().unwrap() / count as f64
}

/// The `target_*` events of a run's log so far: (type, cgroup).
fn target_events(file: &fault_tests::PolicyFile) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(file.run_dir().join("events.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with("target_")))
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (s("type"), s("cgroup"))
        })
        .collect()
}

/// Chaos Mesh's #1884: a container removed and started again under its name (a new id, a
/// new cgroup, a new network namespace) while the run goes on is faulted again, and the
/// event log tells it leaving its old cgroup and joining the new.
#[test]
fn a_container_started_again_under_its_name_is_faulted_again() {
    require_root();
    if !podman_here() {
        return;
    }
    // On both attachment paths: what was attached in the old namespace (links, filters,
    // qdiscs) went with it, whether or not the new one has its inode number.
    for mode in ["tcx", "clsact"] {
        recreated_and_faulted_again(mode);
    }
    assert_no_leftovers();
}

/// How many BPF links process `pid` holds open.
fn bpf_links(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf_link")
        })
        .count()
}

fn recreated_and_faulted_again(mode: &str) {
    {
        let mount = format!("{}:/probe:ro", probe_bin().display());
        let opts = ["-v", mount.as_str()];
        let args = ["sleep", "600"];
        let target = Container::run_with("again", &opts, IMAGE_PYTHON, &args);
        let host = bridge_address();
        let file = write_policy(&format!(
            "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {{name: t-again}}\nspec:\n  \
             duration: 2m\n  targets: [{{container: {}}}]\n  network:\n    - direction: egress\n      \
             match: {{protocol: udp}}\n      drop: {{probability: 50%}}\n",
            target.name()
        ));
        let mut apply = FaultApply::start_env(
            [std::ffi::OsStr::new("apply"), file.path().as_os_str()],
            "t-again",
            &[("FAULT_TC_MODE", mode)],
        );
        apply.wait_ready();
        let (count, port) = (4000u64, 9203u16);
        let first = loss_from(&target, &host, port, count);
        let links_before = bpf_links(apply.pid());
        let (old_id, old_cgroup) = (target.id().to_owned(), target.cgroup_path());
        let target = target.recreate(&opts, IMAGE_PYTHON, &args);
        assert_ne!(
            target.id(),
            old_id,
            "podman gave the new container a new id"
        );
        let new_cgroup = target.cgroup_path();
        // The run looks a gone container up once a second: it follows within about that.
        let begun = Instant::now();
        while !apply.log().contains("following it there") {
            assert!(
                begun.elapsed() < Duration::from_secs(10),
                "not followed in 10 s:\n{}",
                apply.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let followed = begun.elapsed();
        // Attaching in the new namespace comes with the same rescan; give it one more.
        std::thread::sleep(Duration::from_millis(300));
        let again = loss_from(&target, &host, port, count);
        let links_after = bpf_links(apply.pid());
        eprintln!(
            "{mode}: the loader holds {links_before} BPF link descriptor(s) before, \
             {links_after} after"
        );
        // The old namespace's tcx link is closed, not kept until the run ends.
        assert!(
            links_after <= links_before,
            "{mode}: {links_before} BPF links before the recreate, {links_after} after"
        );
        eprintln!(
            "{mode}: loss {:.1} % before, {:.1} % after the container was recreated; followed \
             {} ms after podman run returned",
            first * 100.0,
            again * 100.0,
            followed.as_millis()
        );
        for loss in [first, again] {
            assert!((loss - 0.5).abs() <= 0.04, "loss {:.1} %", loss * 100.0);
        }
        // Attached in the new namespace, which may have the old one's inode number.
        let log = apply.log();
        let attached: Vec<&str> = log.lines().filter(|l| l.contains("namespace")).collect();
        eprintln!("{}", attached.join("\n"));
        assert!(
            attached.iter().any(|l| l.contains("attached there")),
            "attached in the new namespace:\n{log}"
        );
        let events = target_events(&file);
        let (old, new) = (
            old_cgroup.display().to_string(),
            new_cgroup.display().to_string(),
        );
        let told = |t: &str, c: &str| events.iter().position(|e| e.0 == t && e.1 == c);
        let left = told("target_left", &old).unwrap_or_else(|| panic!("{events:?}"));
        let joined = told("target_joined", &new).unwrap_or_else(|| panic!("{events:?}"));
        assert!(left < joined, "left, then joined: {events:?}");
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
        assert!(!log.contains("warning"), "the revert is clean: {log}");
    }
}

/// The `probe_changed` events of run `file`, in order: (probe, ok), and where the
/// `target_joined` of `cgroup` stands among them.
fn probe_changes(
    file: &fault_tests::PolicyFile,
    cgroup: &std::path::Path,
) -> (Vec<(String, bool)>, Option<usize>) {
    let text = std::fs::read_to_string(file.run_dir().join("events.jsonl")).unwrap_or_default();
    let mut changes = Vec::new();
    let mut joined = None;
    for e in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        match e["type"].as_str() {
            Some("probe_changed") => changes.push((
                e["probe"].as_str().unwrap_or_default().to_owned(),
                e["ok"].as_bool().unwrap_or_default(),
            )),
            Some("target_joined")
                if e["cgroup"].as_str() == Some(&cgroup.display().to_string()) =>
            {
                joined = Some(changes.len())
            }
            _ => {}
        }
    }
    (changes, joined)
}

/// A probe that runs from a container's group goes with the container when it is started
/// again under its name: its checks run in the new cgroup. Before, every check after the
/// recreate failed for good ("cannot join cgroup", the old one being gone).
#[test]
fn a_probe_from_a_recreated_container_runs_in_the_new_one() {
    require_root();
    if !podman_here() {
        return;
    }
    {
        let args = ["sleep", "600"];
        let target = Container::run("probe-again", IMAGE_PYTHON, &args);
        let file = write_policy(&format!(
            "apiVersion: fault/v1\nkind: Experiment\nmetadata: {{name: t-probe-again}}\nspec:\n  \
             duration: 2m\n  groups:\n    db: [{{container: {}}}]\n  probes:\n    - {{name: \
             inside, exec: [\"true\"], from: db, every: 200ms, timeout: 200ms}}\n  steps:\n    - \
             {{name: nothing-much, at: 0s, for: 2m, targets: db, network: [{{direction: egress, \
             match: {{cidrs: [203.0.113.0/24]}}, drop: {{probability: 1%}}}}]}}\n",
            target.name()
        ));
        let mut apply = FaultApply::start(file.path(), "t-probe-again");
        apply.wait_ready();
        std::thread::sleep(Duration::from_millis(500));
        let target = target.recreate(&[], IMAGE_PYTHON, &args);
        let begun = Instant::now();
        let new_cgroup = target.cgroup_path();
        loop {
            let (changes, joined) = probe_changes(&file, &new_cgroup);
            let back = joined.is_some_and(|j| changes[j..].iter().any(|c| c.1))
                && changes.last().is_some_and(|c| c.1);
            if back {
                break;
            }
            assert!(
                begun.elapsed() < Duration::from_secs(10),
                "the probe is not ok in the recreated container 10 s on: {changes:?} \
                 (target joined after change {joined:?})\n{}",
                apply.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "the probe from {} passed again {} ms after podman run returned",
            target.name(),
            begun.elapsed().as_millis()
        );
        std::thread::sleep(Duration::from_millis(1000));
        let (changes, _) = probe_changes(&file, &new_cgroup);
        assert!(
            changes.last().is_some_and(|c| c.1),
            "the probe failed again: {changes:?}"
        );
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
    }
    assert_no_leftovers();
}

/// The drops counted for the rule named `name` so far.
fn dropped_by(name: &str) -> u64 {
    let rules = status_rules();
    let rule = rules.iter().find(|r| r["name"] == name);
    rule.and_then(|r| r["dropped"].as_f64())
        .unwrap_or_else(|| panic!("no rule {name}: {rules:?}")) as u64
}

/// A partition follows a group whose container is started again under its name with a
/// new address: the far end cuts by the new one too. Datagrams from `a` to the recreated
/// `b`'s new address are dropped by `a`'s own egress cut (before, only `b`'s ingress cut
/// held them: `a`'s rule still named the old address).
#[test]
fn a_partition_cuts_by_the_new_address_of_a_recreated_container() {
    require_root();
    if !podman_here() {
        return;
    }
    {
        let mount = format!("{}:/probe:ro", probe_bin().display());
        let args = ["sleep", "600"];
        let a = Container::run_with("cut-a", &["-v", &mount], IMAGE_PYTHON, &args);
        let b = Container::run_with("cut-b", &["-v", &mount], IMAGE_PYTHON, &args);
        let file = write_policy(&format!(
            "apiVersion: fault/v1\nkind: Experiment\nmetadata: {{name: t-recut}}\nspec:\n  \
             duration: 2m\n  groups:\n    a: [{{container: {}}}]\n    b: [{{container: {}}}]\n  \
             steps:\n    - {{name: split, at: 0s, for: 2m, partition: {{between: [a, b]}}}}\n",
            a.name(),
            b.name()
        ));
        let mut apply = FaultApply::start(file.path(), "t-recut");
        apply.wait_ready();
        let IpAddr::V4(old) = b.ip() else {
            panic!("podman's network gives IPv4 addresses")
        };
        // Another address of podman's /16 than the one it had.
        let new = std::net::Ipv4Addr::from(u32::from(old).wrapping_add(100));
        let b = b.recreate(
            &["-v", &mount, "--ip", &new.to_string()],
            IMAGE_PYTHON,
            &args,
        );
        assert_eq!(
            b.ip(),
            IpAddr::V4(new),
            "podman gave the new container its address"
        );
        let begun = Instant::now();
        while !apply.log().contains("cut by them") {
            assert!(
                begun.elapsed() < Duration::from_secs(10),
                "the new address was not taken up in 10 s:\n{}",
                apply.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let rule = "split/cut-to-b@a";
        let before = dropped_by(rule);
        let sent = probe_json(&a.exec(&[
            "/probe",
            "udp-send",
            "--to",
            &format!("{new}:9"),
            "--count",
            "200",
            "--interval-us",
            "200",
        ]));
        let cut = dropped_by(rule) - before;
        eprintln!(
            "{rule}: {cut} of 200 datagrams to b's new address {new} (was {old}) dropped at a's \
             egress; taken up {} ms after podman run returned",
            begun.elapsed().as_millis()
        );
        assert!(
            cut >= 200,
            "a's egress cut dropped {cut} of 200 datagrams to b's new address ({sent})\n{}",
            apply.log()
        );
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
        assert!(
            !log.contains("warning"),
            "the follow and the revert are clean: {log}"
        );
    }
    assert_no_leftovers();
}
