//! An experiment's steady-state probes and stop conditions on the real host: tcp, http and
//! exec checks are counted; a probe that keeps failing ends the run with exit 3 and leaves
//! nothing (failures in a row, or a failure ratio once its window has passed); a probe
//! `from` a group runs in that group's cgroup and network namespace; an exec probe is
//! killed and reaped at its timeout.
//!
//! No probe here sends a packet off the machine: servers listen on loopback, in a test
//! namespace's own loopback, or at the far end of a test veth.

use std::{
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use fault_tests::{
    anchor, assert_no_leftovers, hosts, require_root, serve, write_policy, Cgroup, FaultApply,
    Reply,
};

/// An experiment over one group `app` (the cgroup `app`) with these probe and abort_when
/// items (YAML flow mappings), and a step that never matches the test's traffic (egress to
/// TEST-NET-3, which nothing here talks to), since an experiment has at least one.
fn experiment(name: &str, app: &Cgroup, probes: &[String], abort_when: &[&str]) -> String {
    let items =
        |list: Vec<&str>| -> String { list.iter().map(|i| format!("    - {i}\n")).collect() };
    let mut yaml = format!(
        "apiVersion: fault/v1\nkind: Experiment\nmetadata: {{name: {name}}}\nspec:\n  \
         duration: 30s\n  groups:\n    app: [{{cgroup: {}}}]\n  probes:\n{}",
        app.path().display(),
        items(probes.iter().map(String::as_str).collect())
    );
    if !abort_when.is_empty() {
        yaml.push_str(&format!("  abort_when:\n{}", items(abort_when.to_vec())));
    }
    yaml.push_str(
        "  steps:\n    - {name: nothing-much, at: 0s, for: 30s, targets: app, network: \
         [{direction: egress, match: {cidrs: [203.0.113.0/24]}, drop: {probability: 1%}}]}\n",
    );
    yaml
}

/// Figures the test reports, past libtest's capture so they show in every run.
fn tell(line: &str) {
    let _ = writeln!(std::io::stderr(), "probes: {line}");
}

/// One probe's line of the revert summary.
#[derive(Debug)]
struct Summary {
    checks: u64,
    ok: u64,
    failed: u64,
    p50_ms: Option<f64>,
    max_ms: Option<f64>,
    line: String,
}

/// Parses `  probe NAME: T checks, O ok, F failed (x%); latency p50 A ms, p99 B ms, max C ms...`.
fn summary(log: &str, name: &str) -> Summary {
    let prefix = format!("  probe {name}: ");
    let line = log
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no summary line for probe {name}:\n{log}"));
    let words: Vec<&str> = line[prefix.len()..].split([' ', ',', ';']).collect();
    let before = |word: &str| -> Option<&str> {
        let i = words.iter().position(|w| *w == word)?;
        words.get(i.checked_sub(1)?).copied()
    };
    let after = |word: &str| -> Option<f64> {
        let i = words.iter().position(|w| *w == word)?;
        words.get(i + 1)?.parse().ok()
    };
    let count = |word| before(word).and_then(|n| n.parse().ok()).expect(line);
    Summary {
        checks: count("checks"),
        ok: count("ok"),
        failed: count("failed"),
        p50_ms: after("p50"),
        max_ms: after("max"),
        line: line.to_string(),
    }
}

/// A loopback port nothing listens on here.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A probe `from` the group is a process started in it, which under the 6.1 guest's
/// emulation alone can take over 100 ms: those get 500 ms.
fn tcp(name: &str, addr: impl std::fmt::Display, from: bool) -> String {
    let (from, pace) = match from {
        true => (", from: app", "every: 500ms, timeout: 500ms"),
        false => ("", "every: 200ms, timeout: 100ms"),
    };
    format!("{{name: {name}, tcp: \"{addr}\"{from}, {pace}}}")
}

#[test]
fn tcp_http_and_exec_probes_count_their_checks() {
    require_root();
    {
        let app = Cgroup::new("probes-ok");
        let h = hosts("probes-ok", "10.79", 31);
        let _anchor = anchor(&app, &h.a);
        let listener = serve(None, "127.0.0.1:0", Reply::Close);
        let web = serve(None, "127.0.0.1:0", Reply::Http(204));
        let probes = [
            tcp("port", listener.addr(), false),
            format!(
                "{{name: web, http: {{url: \"http://{}/health\", status: 204}}, every: 200ms, \
                 timeout: 200ms}}",
                web.addr()
            ),
            "{name: cmd, exec: [sh, -c, \"test -d /proc/self\"], every: 200ms, timeout: 200ms}"
                .to_string(),
        ];
        let file = write_policy(&experiment("t-probes-ok", &app, &probes, &[]));
        let mut apply = FaultApply::start(file.path(), "t-probes-ok");
        apply.wait_ready();
        std::thread::sleep(Duration::from_millis(1500));
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
        for name in ["port", "web", "cmd"] {
            let s = summary(&log, name);
            tell(&s.line);
            assert!(s.checks >= 6, "1.5 s of checks 200 ms apart: {s:?}");
            assert_eq!((s.ok, s.failed), (s.checks, 0), "{s:?}\n{log}");
            // Latencies are measured and reported (how fast is the bench's question): an
            // ok check answered within its timeout.
            let p50 = s.p50_ms.expect("a p50");
            assert!(p50 > 0.0 && p50 <= 200.0, "within the timeout: {s:?}");
            assert!(s.max_ms.expect("a max") >= p50);
        }
        assert!(
            listener.served() >= 6,
            "the listener saw the probe: {}",
            listener.served()
        );
        assert!(
            web.served() >= 6,
            "the server saw the probe: {}",
            web.served()
        );
    }
    assert_no_leftovers();
}

#[test]
fn a_probe_that_keeps_failing_aborts_the_run_with_exit_3() {
    require_root();
    {
        let app = Cgroup::new("probes-abort");
        let h = hosts("probes-abort", "10.79", 32);
        let _anchor = anchor(&app, &h.a);
        let down = format!("127.0.0.1:{}", closed_port());
        let file = write_policy(&experiment(
            "t-probes-abort",
            &app,
            &[tcp("down", &down, false)],
            &["{probe: down, failures: 3}"],
        ));
        let mut apply = FaultApply::start(file.path(), "t-probes-abort");
        apply.wait_ready();
        let ready = Instant::now();
        // Three checks 200 ms apart, the first at once, and the revert.
        let status = apply.wait_exit(Duration::from_millis(3 * 200 + 1000));
        let took = ready.elapsed();
        let log = apply.log();
        tell(&format!(
            "aborted {:.0} ms after ready (exit {:?})",
            took.as_secs_f64() * 1000.0,
            status.code()
        ));
        assert_eq!(status.code(), Some(3), "{log}");
        assert!(
            log.contains("probe down: 3 failures in a row (last: connect to"),
            "the probe and why: {log}"
        );
        assert!(log.contains(&down) && log.contains("refused"), "{log}");
        assert!(log.contains("reverted"), "{log}");
        let s = summary(&log, "down");
        assert_eq!((s.ok, s.failed), (0, 3), "{s:?}");
        assert!(!apply.state_file().exists(), "state file removed: {log}");
    }
    assert_no_leftovers();
}

#[test]
fn a_failure_ratio_is_judged_once_its_window_has_passed() {
    require_root();
    {
        let app = Cgroup::new("probes-ratio");
        let h = hosts("probes-ratio", "10.79", 35);
        let _anchor = anchor(&app, &h.a);
        let down = format!("127.0.0.1:{}", closed_port());
        let file = write_policy(&experiment(
            "t-probes-ratio",
            &app,
            &[tcp("down", &down, false)],
            &["{probe: down, failure_ratio: 50%, window: 1s}"],
        ));
        let mut apply = FaultApply::start(file.path(), "t-probes-ratio");
        apply.wait_ready();
        let ready = Instant::now();
        let status = apply.wait_exit(Duration::from_millis(1000 + 200 + 1000));
        let took = ready.elapsed();
        let log = apply.log();
        tell(&format!(
            "ratio aborted {:.0} ms after ready (exit {:?})",
            took.as_secs_f64() * 1000.0,
            status.code()
        ));
        assert_eq!(status.code(), Some(3), "{log}");
        assert!(
            took >= Duration::from_millis(1000),
            "not before a whole window: {took:?}"
        );
        // 5 or 6 checks in the window, by where the first and the latest fall within their
        // tick's microseconds.
        let met = log
            .lines()
            .find(|l| l.contains("aborted: probe down: "))
            .unwrap_or_else(|| panic!("no abort line: {log}"));
        assert!(
            met.contains(
                " checks failed in the last 1s, 100% for a limit of 50% (last: connect to"
            ),
            "{met}"
        );
    }
    assert_no_leftovers();
}

#[test]
fn a_probe_from_a_group_runs_in_its_cgroup_and_network_namespace() {
    require_root();
    {
        let app = Cgroup::new("probes-from");
        let h = hosts("probes-from", "10.79", 33);
        let _anchor = anchor(&app, &h.a);
        // Only the group's namespace has this: its own loopback. The same address from the
        // test's namespace is a port nothing listens on (checked below).
        let inside = serve(Some(&h.a), "127.0.0.1:0", Reply::Close);
        let port = inside.addr().port();
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} is free outside the group's namespace"
        );
        // Reached through the group's veth, at its far end.
        let web = serve(
            Some(&h.b),
            &format!("{}:0", h.veth.ip_b()),
            Reply::Http(200),
        );
        let ns_inode = std::fs::metadata(h.a.path()).expect("stat netns").ino();
        let whoami = format!(
            "grep -qx '0::{}' /proc/self/cgroup && test \"$(readlink /proc/self/ns/net)\" = \
             'net:[{ns_inode}]'",
            app.relative_path().display()
        );
        let probes = [
            tcp("inside", inside.addr(), true),
            tcp("outside", inside.addr(), false),
            format!(
                "{{name: far, http: {{url: \"http://{}/\"}}, from: app, every: 500ms, \
                 timeout: 500ms}}",
                web.addr()
            ),
            format!(
                "{{name: whoami, exec: [sh, -c, \"{}\"], from: app, every: 500ms, \
                 timeout: 500ms}}",
                whoami.replace('\\', "\\\\").replace('"', "\\\"")
            ),
        ];
        let file = write_policy(&experiment("t-probes-from", &app, &probes, &[]));
        let mut apply = FaultApply::start(file.path(), "t-probes-from");
        apply.wait_ready();
        std::thread::sleep(Duration::from_millis(3000));
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
        for name in ["inside", "far", "whoami"] {
            let s = summary(&log, name);
            tell(&s.line);
            // In the wrong cgroup or namespace every check fails. Under TCG one connect on
            // the guest's loopback once took over 500 ms (CI, 5.10 guest): one timeout is
            // the emulator's, not the probe's.
            let one_timeout = s.failed == 1 && s.line.contains("timed out");
            assert!(
                s.checks >= 5 && (s.failed == 0 || one_timeout),
                "{s:?}\n{log}"
            );
        }
        let outside = summary(&log, "outside");
        tell(&outside.line);
        assert_eq!(
            outside.ok, 0,
            "not reachable from fault's namespace: {outside:?}"
        );
        assert!(
            outside.failed >= 5 && outside.line.contains("refused"),
            "{outside:?}"
        );
        assert!(
            inside.served() >= 5 && web.served() >= 5,
            "the servers saw the probes"
        );
        assert_eq!(
            app.procs().len(),
            1,
            "only the anchor is left in the group: {:?}",
            app.procs()
        );
    }
    assert_no_leftovers();
}

/// Children of `parent` named `comm`: (pid, state letter).
fn children_named(parent: u32, comm: &str) -> Vec<(u32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let (state, ppid) = (fields.first(), fields.get(1).and_then(|p| p.parse().ok()));
        if &stat[open + 1..close] == comm && ppid == Some(parent) {
            found.push((pid, state.and_then(|s| s.chars().next()).unwrap_or('?')));
        }
    }
    found
}

#[test]
fn an_exec_probe_is_killed_and_reaped_at_its_timeout() {
    require_root();
    {
        let app = Cgroup::new("probes-timeout");
        let h = hosts("probes-timeout", "10.79", 34);
        let _anchor = anchor(&app, &h.a);
        let slow = "{name: slow, exec: [sleep, \"5\"], every: 500ms, timeout: 200ms}".to_string();
        let file = write_policy(&experiment("t-probes-timeout", &app, &[slow], &[]));
        let mut apply = FaultApply::start(file.path(), "t-probes-timeout");
        apply.wait_ready();
        // Each sleep is seen from its start until it is reaped: at most the timeout, and
        // never as a zombie left behind.
        let mut seen: std::collections::BTreeMap<u32, (Instant, Instant, char)> =
            Default::default();
        let until = Instant::now() + Duration::from_millis(2200);
        while Instant::now() < until {
            let now = Instant::now();
            for (pid, state) in children_named(apply.pid(), "sleep") {
                let e = seen.entry(pid).or_insert((now, now, state));
                (e.1, e.2) = (now, state);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
        assert!(seen.len() >= 3, "a sleep every 500 ms: {seen:?}");
        for (pid, (first, last, state)) in &seen {
            let lived = last.duration_since(*first);
            assert!(
                // Not killed, it would live 5 s; the margin is for a slow machine.
                lived < Duration::from_millis(1000),
                "sleep {pid} was seen for {lived:?} (last state {state}): killed at 200 ms and reaped"
            );
        }
        let s = summary(&log, "slow");
        tell(&s.line);
        assert_eq!(s.ok, 0, "{s:?}");
        assert!(s.failed >= 4, "{s:?}");
        assert!(s.line.contains("`sleep 5`: timed out after 200ms"), "{s:?}");
        let last = log
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with("probe slow "))
            .unwrap_or_else(|| panic!("no live line for probe slow:\n{log}"));
        tell(last.trim());
        let ms: f64 = last
            .split("last")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no last latency in `{last}`"));
        assert!(
            (200.0..300.0).contains(&ms),
            "a check that timed out took its timeout: {ms} ms"
        );
    }
    assert_no_leftovers();
}
