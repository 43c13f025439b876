//! What a run shows of itself, on real runs: the Prometheus endpoint (checked by Debian's
//! promtool, its counters against `fault status --json`), the event log of runs that end
//! at their deadline, by `fault stop`, by a stop condition and by a SIGKILL, `--output
//! json`, detached runs (in force when the command returns, ended by `fault stop` and by
//! the watchdog), and `fault report` of a real run rendered in headless Chromium.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fault_tests::{
    anchor, assert_no_leftovers, browser, fault, fault_bin, hosts, require_root, status_rules, udp,
    write_policy, Cgroup, FaultApply,
};
use serde_json::Value;

/// Figures the test reports, past libtest's capture so they show in every run.
fn tell(line: &str) {
    let _ = writeln!(std::io::stderr(), "observe: {line}");
}

fn policy(name: &str, cgroup: &Cgroup, duration: &str, rules: &str) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         duration: {duration}\n  targets:\n    - cgroup: {}\n  network:\n{rules}",
        cgroup.path().display()
    )
}

/// A loopback port free right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// One GET of the metrics endpoint; the body. Retries while the endpoint is not up yet.
fn scrape(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
                let mut reply = String::new();
                s.read_to_string(&mut reply).expect("read the reply");
                let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
                assert!(
                    head.starts_with("HTTP/1.") && head.contains(" 200"),
                    "{head}"
                );
                return body.to_owned();
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("connect to the metrics endpoint {addr}: {e}"),
        }
    }
}

/// `promtool check metrics` on `text` (its stdin); the tool's verdict and output.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed by `cargo xtask setup`");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let words = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), words)
}

/// The value of the series `name{...labels containing every one of want...}`.
fn series(text: &str, name: &str, want: &[&str]) -> f64 {
    let line = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (n, rest) = l.split_once(['{', ' ']).unwrap_or((l, ""));
            n == name && want.iter().all(|w| rest.contains(w))
        })
        .unwrap_or_else(|| panic!("no series {name} with {want:?} in:\n{text}"));
    let value = line.rsplit(' ').next().expect("a value");
    value
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {line}"))
}

/// The run's event log, every line parsed (and of a known type).
fn events(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read the event log {}: {e}", path.display()));
    parse_events(&text)
}

const KNOWN: &[&str] = &[
    "applied",
    "target_joined",
    "target_left",
    "process_patched",
    "process_refused",
    "step_on",
    "step_off",
    "probe_changed",
    "sample",
    "abort",
    "warning",
    "reverted",
];

fn parse_events(text: &str) -> Vec<Value> {
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for e in &lines {
        let t = e["type"].as_str().unwrap_or_else(|| panic!("no type: {e}"));
        assert!(KNOWN.contains(&t), "unknown event type {t}: {e}");
        assert!(e["wall"].as_str().is_some_and(|w| w.ends_with('Z')), "{e}");
        assert!(e["mono_ns"].as_u64().is_some_and(|n| n > 0), "{e}");
    }
    lines
}

/// The reason of the run's last event, which must be `reverted`.
fn end_reason(events: &[Value]) -> String {
    let last = events.last().expect("an empty event log");
    assert_eq!(last["type"], "reverted", "the last event: {last}");
    last["reason"].as_str().expect("a reason").to_owned()
}

#[test]
fn metrics_pass_promtool_and_agree_with_status() {
    require_root();
    {
        let h = hosts("metrics", "10.81", 11);
        let target = Cgroup::new("metrics");
        let _anchor = anchor(&target, &h.a);
        let file = write_policy(&policy(
            "t-metrics",
            &target,
            "2m",
            "    - name: udp-loss\n      direction: egress\n      match: {protocol: udp, ports: [7001]}\n      \
             drop: {probability: 20%}\n    - name: udp-slow\n      direction: egress\n      \
             match: {protocol: udp, ports: [7002]}\n      delay: {latency: 20ms}\n",
        ));
        let addr = format!("127.0.0.1:{}", free_port());
        let mut apply = FaultApply::start_args(
            ["apply", "--metrics", &addr, file.path().to_str().unwrap()],
            "t-metrics",
        );
        apply.wait_ready();
        let (_, got) = udp(
            Some(&target),
            &h.a,
            &h.b,
            None,
            &format!("{}:7001", h.veth.ip_b()),
            5000,
        );
        let (_, slow) = udp(
            Some(&target),
            &h.a,
            &h.b,
            None,
            &format!("{}:7002", h.veth.ip_b()),
            200,
        );
        let text = scrape(&addr);
        let rules = status_rules();
        let (ok, words) = promtool(&text);
        assert!(
            ok,
            "promtool check metrics refused the endpoint:\n{words}\n{text}"
        );
        let rule = [
            "rule=\"udp-loss\"",
            "policy=\"t-metrics\"",
            "direction=\"egress\"",
        ];
        let dropped = series(&text, "fault_packets_dropped_total", &rule);
        let seen = series(&text, "fault_packets_seen_total", &rule);
        tell(&format!(
            "udp-loss: scrape {dropped} dropped of {seen}, status {} of {}; receiver got {}",
            rules[0]["dropped"], rules[0]["seen"], got["unique"]
        ));
        assert_eq!(
            dropped,
            rules[0]["dropped"].as_f64().unwrap(),
            "{rules:?}\n{text}"
        );
        assert_eq!(seen, 5000.0, "{text}");
        assert_eq!(seen - dropped, got["unique"].as_f64().unwrap(), "{got}");
        // The delay histogram: every delayed packet in it, its mean near the latency.
        let slow_rule = ["rule=\"udp-slow\""];
        let count = series(&text, "fault_delay_added_seconds_count", &slow_rule);
        let sum = series(&text, "fault_delay_added_seconds_sum", &slow_rule);
        let inf = series(
            &text,
            "fault_delay_added_seconds_bucket",
            &["rule=\"udp-slow\"", "le=\"+Inf\""],
        );
        let under_32ms = series(
            &text,
            "fault_delay_added_seconds_bucket",
            &["rule=\"udp-slow\"", "le=\"0.032\""],
        );
        let under_16ms = series(
            &text,
            "fault_delay_added_seconds_bucket",
            &["rule=\"udp-slow\"", "le=\"0.016\""],
        );
        tell(&format!(
            "udp-slow: {count} delayed, mean {:.2} ms, receiver got {}",
            sum / count * 1e3,
            slow["unique"]
        ));
        assert_eq!(count, 200.0, "{text}");
        assert_eq!(inf, count);
        assert_eq!(
            (under_16ms, under_32ms),
            (0.0, 200.0),
            "20 ms lies in (16, 32] ms"
        );
        assert!(
            (sum / count - 0.020).abs() < 0.001,
            "mean delay {sum}/{count}"
        );
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
        assert!(
            TcpStream::connect(&addr).is_err(),
            "the endpoint closes with the run"
        );
    }
    assert_no_leftovers();
}

#[test]
fn event_logs_end_with_the_reason_the_run_ended() {
    require_root();
    {
        let h = hosts("events", "10.81", 12);
        let target = Cgroup::new("events");
        let _anchor = anchor(&target, &h.a);
        let rules =
            "    - name: udp-loss\n      direction: egress\n      match: {protocol: udp}\n      \
                     drop: {probability: 50%}\n";
        // At its deadline; the log also goes to --events, and stdout is the log.
        let file = write_policy(&policy("t-events-deadline", &target, "2s", rules));
        let extra = tempfile::NamedTempFile::new().expect("a temp file");
        let out = Command::new(fault_bin())
            .args([
                "apply",
                "--output",
                "json",
                "--interval",
                "200ms",
                "--events",
            ])
            .arg(extra.path())
            .arg(file.path())
            .output()
            .expect("run fault apply");
        assert!(out.status.success(), "{out:?}");
        let stdout = parse_events(&String::from_utf8_lossy(&out.stdout));
        let own = events(&file.run_dir().join("events.jsonl"));
        assert_eq!(own, stdout, "stdout carries the log, and nothing else");
        assert_eq!(events(extra.path()), own, "--events gets the same lines");
        assert_eq!(end_reason(&own), "deadline");
        assert_eq!(own[0]["type"], "applied", "{}", own[0]);
        assert!(own[0]["text"]
            .as_str()
            .unwrap()
            .contains("t-events-deadline"));
        let samples = own.iter().filter(|e| e["type"] == "sample").count();
        assert!(samples >= 5, "2 s of samples 200 ms apart: {samples}");
        tell(&format!(
            "deadline run: {} events, {samples} samples",
            own.len()
        ));

        // By `fault stop`.
        let file = write_policy(&policy("t-events-stop", &target, "1m", rules));
        let mut apply = FaultApply::start(file.path(), "t-events-stop");
        apply.wait_ready();
        let (_, _) = udp(
            Some(&target),
            &h.a,
            &h.b,
            None,
            &format!("{}:7011", h.veth.ip_b()),
            1000,
        );
        let stop = fault(["stop", "t-events-stop"]);
        assert!(stop.status.success(), "{stop:?}");
        apply.wait_exit(Duration::from_secs(10));
        let log = events(&file.run_dir().join("events.jsonl"));
        assert_eq!(end_reason(&log), "stopped", "{:?}", log.last());
        let last = log.last().unwrap();
        assert_eq!(last["rules"][0]["seen"], 1000, "final counters: {last}");

        // By a SIGKILL: the watchdog ends the log for the loader.
        let file = write_policy(&policy("t-events-kill", &target, "1m", rules));
        let mut apply = FaultApply::start(file.path(), "t-events-kill");
        apply.wait_ready();
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(apply.pid() as i32, libc::SIGKILL) };
        apply.wait_exit(Duration::from_secs(5));
        let path = file.run_dir().join("events.jsonl");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&path)
            .unwrap_or_default()
            .contains("\"reverted\"")
        {
            assert!(
                Instant::now() < deadline,
                "the watchdog never ended the log"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(end_reason(&events(&path)), "loader_died");
        assert!(fault(["stop", "t-events-kill"]).status.success());
        let log = events(&path);
        assert_eq!(
            log.iter().filter(|e| e["type"] == "reverted").count(),
            1,
            "fault stop adds no second end"
        );
    }
    assert_no_leftovers();
}

#[test]
fn an_aborted_experiment_logs_the_probe_changes_the_abort_and_the_reason() {
    require_root();
    {
        let app = Cgroup::new("events-abort");
        let h = hosts("events-abort", "10.81", 13);
        let _anchor = anchor(&app, &h.a);
        let closed = free_port();
        let yaml = format!(
            "apiVersion: fault/v1\nkind: Experiment\nmetadata: {{name: t-events-abort}}\nspec:\n  \
             duration: 30s\n  groups:\n    app: [{{cgroup: {}}}]\n  probes:\n    - {{name: down, \
             tcp: \"127.0.0.1:{closed}\", every: 200ms, timeout: 100ms}}\n  abort_when:\n    - \
             {{probe: down, failures: 3}}\n  steps:\n    - {{name: later, at: 20s, for: 5s, \
             targets: app, network: [{{direction: egress, match: {{cidrs: [203.0.113.0/24]}}, \
             drop: {{probability: 1%}}}}]}}\n",
            app.path().display()
        );
        let file = write_policy(&yaml);
        let mut apply = FaultApply::start(file.path(), "t-events-abort");
        apply.wait_ready();
        let status = apply.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(3), "{}", apply.log());
        let log = events(&file.run_dir().join("events.jsonl"));
        assert_eq!(end_reason(&log), "aborted");
        let types: Vec<&str> = log.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert!(
            types.contains(&"probe_changed") && types.contains(&"abort"),
            "{types:?}"
        );
        let changed = log.iter().find(|e| e["type"] == "probe_changed").unwrap();
        assert_eq!(
            (changed["probe"].as_str(), changed["ok"].as_bool()),
            (Some("down"), Some(false))
        );
        let abort = log.iter().find(|e| e["type"] == "abort").unwrap();
        assert!(
            abort["why"]
                .as_str()
                .unwrap()
                .contains("3 failures in a row"),
            "{abort}"
        );
        assert!(
            !types.contains(&"step_on"),
            "the step at 20 s never came: {types:?}"
        );
    }
    assert_no_leftovers();
}

/// How many of 300 datagrams to port `port` of b arrive from the target.
fn delivered(h: &fault_tests::Hosts, target: &Cgroup, port: u16) -> u64 {
    let (_, got) = udp(
        Some(target),
        &h.a,
        &h.b,
        None,
        &format!("{}:{port}", h.veth.ip_b()),
        300,
    );
    got["unique"].as_u64().unwrap()
}

#[test]
fn a_detached_run_is_in_force_when_the_command_returns_and_ends_on_stop_or_kill() {
    require_root();
    {
        let h = hosts("detach", "10.81", 14);
        let target = Cgroup::new("detach");
        let _anchor = anchor(&target, &h.a);
        let rules =
            "    - name: cut\n      direction: egress\n      match: {protocol: udp}\n      \
                     partition: true\n";
        let file = write_policy(&policy("t-detach", &target, "1m", rules));
        let ready = tempfile::tempdir().expect("a temp dir");
        let ready_file = ready.path().join("ready");
        let started = Instant::now();
        let out = fault([
            "apply".as_ref(),
            "--detach".as_ref(),
            "--ready-file".as_ref(),
            ready_file.as_os_str(),
            file.path().as_os_str(),
        ]);
        let took = started.elapsed();
        assert!(out.status.success(), "{out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("applied in the background"), "{said}");
        // In force at once: the first datagrams after the return are cut.
        assert_eq!(
            delivered(&h, &target, 7021),
            0,
            "cut when --detach returned"
        );
        let rules = status_rules();
        assert_eq!(rules[0]["dropped"], 300, "{rules:?}");
        let pid: u32 = std::fs::read_to_string(&ready_file)
            .expect("the ready file")
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("NAME PID in the ready file");
        tell(&format!(
            "--detach returned after {} ms (loader pid {pid})",
            took.as_millis()
        ));
        let logs = fault(["logs", "t-detach"]);
        assert!(
            String::from_utf8_lossy(&logs.stdout).contains("t-detach ready"),
            "{logs:?}"
        );
        // `fault logs -f` follows until the run ends; `fault stop` ends it.
        let follow = Command::new(fault_bin())
            .args(["logs", "-f", "t-detach"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("fault logs -f");
        assert!(fault(["stop", "t-detach"]).status.success());
        let followed = follow
            .wait_with_output()
            .expect("fault logs -f ends with the run");
        let followed = String::from_utf8_lossy(&followed.stdout);
        assert!(followed.contains("reverted (fault stop"), "{followed}");
        assert_eq!(delivered(&h, &target, 7022), 300, "stopped: nothing cut");
        assert!(!ready_file.exists(), "the ready file goes with the run");

        // A SIGKILL of the detached loader: the faults end within the lease.
        let out = fault([
            "apply".as_ref(),
            "--detach".as_ref(),
            file.path().as_os_str(),
        ]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(delivered(&h, &target, 7023), 0);
        let state: Value = serde_json::from_slice(
            &std::fs::read("/run/fault/t-detach.json").expect("the state file"),
        )
        .unwrap();
        let pid = state["pid"].as_i64().unwrap() as i32;
        // SAFETY: plain kill(2) of the loader the test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(delivered(&h, &target, 7024), 300, "a second after the kill");
        assert!(fault(["stop", "t-detach"]).status.success());

        // Bad input: exit 2 from the command itself, nothing started.
        let bad = write_policy("apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {name: t-detach-bad}\nspec: {duration: 1x}\n");
        let out = fault([
            "apply".as_ref(),
            "--detach".as_ref(),
            bad.path().as_os_str(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
    }
    assert_no_leftovers();
}

#[test]
fn the_report_of_a_real_experiment_renders_in_chromium() {
    require_root();
    {
        let app = Cgroup::new("report");
        let h = hosts("report", "10.81", 15);
        let _anchor = anchor(&app, &h.a);
        let web = fault_tests::serve(None, "127.0.0.1:0", fault_tests::Reply::Http(200));
        let yaml = format!(
            "apiVersion: fault/v1\nkind: Experiment\nmetadata: {{name: t-report}}\nspec:\n  \
             duration: 5s\n  groups:\n    app: [{{cgroup: {}}}]\n  probes:\n    - {{name: web, \
             http: {{url: \"http://{}/\"}}, every: 200ms, timeout: 200ms}}\n  steps:\n    - \
             {{name: lossy, at: 0s, for: 4s, targets: app, network: [{{direction: egress, \
             match: {{protocol: udp}}, drop: {{probability: 30%}}}}]}}\n    - {{name: flappy, \
             at: 1s, for: 3s, flap: {{on: 500ms, off: 500ms}}, targets: app, network: \
             [{{direction: egress, match: {{protocol: tcp}}, drop: {{probability: 5%}}}}]}}\n",
            app.path().display(),
            web.addr()
        );
        let file = write_policy(&yaml);
        let mut apply = FaultApply::start_args(
            [
                "apply",
                "--interval",
                "250ms",
                file.path().to_str().unwrap(),
            ],
            "t-report",
        );
        apply.wait_ready();
        let _ = udp(
            Some(&app),
            &h.a,
            &h.b,
            None,
            &format!("{}:7031", h.veth.ip_b()),
            3000,
        );
        let status = apply.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "{}", apply.log());
        let log = events(&file.run_dir().join("events.jsonl"));
        let ons = log.iter().filter(|e| e["type"] == "step_on").count();
        assert!(ons >= 3, "lossy once and flappy at least twice: {ons}");

        let dir = tempfile::tempdir().expect("a temp dir");
        let page = dir.path().join("report.html");
        let out = fault([
            "report".as_ref(),
            file.run_dir().as_os_str(),
            "-o".as_ref(),
            page.as_os_str(),
        ]);
        assert!(out.status.success(), "{out:?}");
        let html = std::fs::read_to_string(&page).expect("the page");
        for external in [
            "<script",
            "https://",
            "src=\"http",
            "href=\"http",
            "url(http",
        ] {
            assert!(
                !html.contains(external),
                "the page must work offline: {external}"
            );
        }
        let png = dir.path().join("report.png");
        browser::screenshot(&page, &png, 1280, 2400).expect("chromium screenshot");
        let stats = browser::png_stats(&png, None).expect("the screenshot");
        tell(&format!(
            "report: {} bytes of HTML, screenshot {stats:?}",
            html.len()
        ));
        assert_eq!((stats.width, stats.height), (1280, 2400));
        assert!(stats.inked > 0.02, "the page is not blank: {stats:?}");
        // The timeline alone: its bars are coloured, axes and text are not.
        let timeline = dir.path().join("timeline.png");
        browser::screenshot_section(&page, "timeline", &timeline, 1280, 500)
            .expect("chromium screenshot of the timeline");
        let bars = browser::png_stats(&timeline, None).expect("the timeline screenshot");
        tell(&format!("timeline screenshot {bars:?}"));
        assert!(
            bars.colored > 0.01,
            "the timeline's bars are drawn: {bars:?}"
        );
        let dom = browser::dump_dom(&page).expect("chromium dump-dom");
        let timeline = browser::section(&dom, "timeline").expect("the timeline section");
        assert!(
            timeline.contains("<svg") && timeline.matches("<rect").count() >= 3,
            "the timeline is an SVG with bars"
        );
        for id in ["timeline", "counters", "probes", "targets", "policy"] {
            assert!(
                dom.contains(&format!("id=\"{id}\"")),
                "section {id} rendered"
            );
        }
        for step in ["lossy", "flappy", "web", "t-report"] {
            assert!(dom.contains(step), "{step} named on the page");
        }
    }
    assert_no_leftovers();
}

/// On a terminal the live view redraws one block in place (cursor up, clear), with the time
/// left and a line of rates per rule; into a pipe it prints plain lines.
#[test]
fn the_live_view_redraws_in_place_on_a_terminal() {
    require_root();
    {
        let target = Cgroup::new("live");
        let h = hosts("live", "10.81", 16);
        let _anchor = anchor(&target, &h.a);
        let rules =
            "    - name: udp-loss\n      direction: egress\n      match: {protocol: udp}\n      \
                     drop: {probability: 10%}\n";
        let file = write_policy(&policy("t-live", &target, "2s", rules));
        // script(1) gives fault a pseudo-terminal as its stdout.
        let line = format!(
            "{} apply --interval 300ms {}",
            fault_bin().display(),
            file.path().display()
        );
        let out = Command::new("script")
            .args(["-qfec", &line, "/dev/null"])
            .output()
            .expect("script (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        let redraws = text.matches("\x1b[").count();
        tell(&format!("terminal: {redraws} redraws in 2 s at 300 ms"));
        assert!(redraws >= 4, "redrawn in place: {text:?}");
        assert!(text.contains("left)") && text.contains("pkt/s"), "{text:?}");
        assert!(
            !text.contains("[    1]"),
            "no plain lines on a terminal: {text:?}"
        );
        // Into a pipe: plain lines, no escapes.
        let file = write_policy(&policy("t-live-pipe", &target, "1s", rules));
        let out = Command::new(fault_bin())
            .args(["apply", "--interval", "300ms"])
            .arg(file.path())
            .output()
            .expect("fault apply");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            !text.contains('\x1b') && text.contains("udp-loss  seen"),
            "{text}"
        );
    }
    assert_no_leftovers();
}
