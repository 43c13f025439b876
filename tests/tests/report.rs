//! `fault report` on a synthetic event log, looked at in chromium: the page is offline, has
//! its sections and charts, and the timeline actually shows bars. No root needed, no fault
//! applied: the log is written here by hand, in the wire format of fault's event log.
//!
//! The page and the screenshots are left in `target/tmp/report-test/` to look at.

use std::fs;
use std::path::{Path, PathBuf};

use fault_tests::browser::{self, Region};
use fault_tests::fault;
use serde_json::{json, Value};

const T0_NS: u64 = 7_000_000_000;
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 1600;

/// A record at `s` seconds after `applied`.
fn at(s: f64, event: Value) -> Value {
    let ms = (s * 1000.0).round() as u64;
    let mut record = json!({
        "wall": format!("2026-12-02T03:30:{:02}.{:03}Z", ms / 1000, ms % 1000),
        "mono_ns": T0_NS + ms * 1_000_000,
    });
    record
        .as_object_mut()
        .unwrap()
        .extend(event.as_object().unwrap().clone());
    record
}

const POLICY: &str = "apiVersion: fault/v1
kind: Experiment
metadata:
  name: checkout-gameday   # <b>not bold</b> & not a tag
spec:
  duration: 24s
  steps:
    - name: partition
      at: 2s
      for: 6s
    - name: latency
      at: 10s
      for: 12s
";

fn applied() -> Value {
    json!({
        "type": "applied", "policy": "checkout-gameday", "kind": "Experiment",
        "file": "/etc/fault/checkout.yaml", "text": POLICY, "pid": 4242, "duration_s": 24.0,
        "targets": [
            {"name": "container: api", "cgroup": "/sys/fs/cgroup/system.slice/api.scope", "group": "api"},
            {"name": "container: db", "cgroup": "/sys/fs/cgroup/system.slice/db.scope", "group": "db"}
        ],
        "rules": [
            {"name": "partition/api-db", "summary": "egress to 10.88.0.3/32: drop 100%",
             "direction": "egress", "step": "partition", "target": "api"},
            {"name": "latency/egress", "summary": "egress: delay 200ms",
             "direction": "egress", "step": "latency", "target": "api"}
        ],
        "steps": [
            {"name": "partition", "summary": "api | db", "kind": "partition", "spans": [[2.0, 8.0]]},
            {"name": "latency", "summary": "delay 200ms", "kind": "network", "spans": [[10.0, 22.0]]}
        ],
        "probes": ["api-health", "db-tcp"]
    })
}

/// Cumulative counters at second `s`: the partition drops all it sees from 2 to 8 s, the
/// latency step delays all it sees from 10 s; api-health fails from 12 s on.
fn counters(s: u64) -> Value {
    let on = |from: u64, to: u64| s.clamp(from, to) - from;
    json!({
        "rules": [
            {"rule": "partition/api-db", "seen": 120 * s, "dropped": 120 * on(2, 8),
             "corrupted": 0, "duplicated": 0, "delayed": 0},
            {"rule": "latency/egress", "seen": 300 * s, "dropped": 0,
             "corrupted": 0, "duplicated": 0, "delayed": 300 * on(10, 30)}
        ],
        "probes": [
            {"probe": "api-health", "ok": s.min(12), "failed": s.saturating_sub(12),
             "last_latency_ms": if s >= 12 { 1000.0 } else if s >= 10 { 210.0 } else { 4.0 + (s % 3) as f64 }},
            {"probe": "db-tcp", "ok": s, "failed": 0, "last_latency_ms": 1.0 + 0.3 * (s % 4) as f64}
        ]
    })
}

/// Twenty seconds of an experiment that a failing probe aborts at 19.5 s.
fn events() -> Vec<Value> {
    let mut log = vec![
        at(0.0, applied()),
        at(
            0.1,
            json!({"type": "target_joined", "target": "container: api",
                        "cgroup": "/sys/fs/cgroup/system.slice/api.scope"}),
        ),
        at(
            0.2,
            json!({"type": "probe_changed", "probe": "api-health", "ok": true,
                        "latency_ms": 4.0, "error": ""}),
        ),
    ];
    for s in 1..=19u64 {
        match s {
            2 => log.push(at(2.0, json!({"type": "step_on", "step": "partition"}))),
            8 => log.push(at(8.0, json!({"type": "step_off", "step": "partition"}))),
            10 => log.push(at(10.0, json!({"type": "step_on", "step": "latency"}))),
            12 => log.push(at(
                11.9,
                json!({"type": "probe_changed", "probe": "api-health",
                        "ok": false, "latency_ms": 1000.0, "error": "timed out after 1s"}),
            )),
            _ => {}
        }
        let mut sample = counters(s);
        sample["type"] = json!("sample");
        sample["steps_on"] = json!([]);
        log.push(at(s as f64, sample));
    }
    log.push(at(
        19.5,
        json!({"type": "abort", "probe": "api-health",
                             "why": "failed 3 times in a row"}),
    ));
    log.push(at(19.6, json!({"type": "step_off", "step": "latency"})));
    let mut end = counters(19);
    end["type"] = json!("reverted");
    end["reason"] = json!("aborted");
    end["detail"] = json!("probe api-health: failed 3 times in a row");
    log.push(at(19.7, end));
    log
}

/// A fresh `target/tmp/report-test/NAME`.
fn artifacts(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("report-test")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir
}

fn write_log(dir: &Path, records: &[Value]) -> PathBuf {
    let path = dir.join("events.jsonl");
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    fs::write(&path, lines.join("\n") + "\n").expect("write the event log");
    path
}

/// Nothing on the page is fetched: no script, no stylesheet or image by reference, no URL
/// but the SVG namespace (an identifier, never loaded).
fn assert_offline(html: &str) {
    let lower = html.to_lowercase();
    for banned in [
        "<script", "<link", "<img", "<iframe", "src=", "href=", "url(", "@import",
    ] {
        assert!(!lower.contains(banned), "the page holds `{banned}`");
    }
    let rest = lower.replace("http://www.w3.org/2000/svg", "");
    assert!(
        !rest.contains("http://") && !rest.contains("https://"),
        "the page holds a URL other than the SVG namespace"
    );
}

#[test]
fn the_report_of_a_run_renders_offline_in_chromium() {
    let dir = artifacts("experiment");
    write_log(&dir, &events());
    let out = fault(["report".as_ref(), dir.as_os_str()]);
    assert!(
        out.status.success(),
        "fault report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = dir.join("report.html");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        page.display().to_string(),
        "fault report prints the page's path"
    );
    let html = fs::read_to_string(&page).expect("the page is written beside the log");
    assert_offline(&html);
    assert!(
        html.contains("# &lt;b&gt;not bold&lt;/b&gt; &amp; not a tag"),
        "the policy text is escaped"
    );

    let shot = dir.join("page.png");
    browser::screenshot(&page, &shot, WIDTH, HEIGHT).unwrap_or_else(|e| panic!("{e:#}"));
    let whole = browser::png_stats(&shot, None).expect("read the screenshot");
    assert_eq!(
        (whole.width, whole.height),
        (WIDTH, HEIGHT),
        "screenshot size"
    );
    assert!(whole.inked > 0.03, "the page is nearly blank: {whole:?}");

    // The timeline alone, so its place on the page does not matter. The region is the
    // chart's plot (right of the step names, between the legend and the x axis), where the
    // bars are: about a quarter of it is coloured; axes and grid alone colour none of it.
    let timeline = dir.join("timeline.png");
    browser::screenshot_section(&page, "timeline", &timeline, WIDTH, 400)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let plot = Region {
        x: 220,
        y: 100,
        width: 840,
        height: 100,
    };
    let bars = browser::png_stats(&timeline, Some(plot)).expect("read the timeline");
    assert!(bars.inked > 0.10, "the timeline is blank: {bars:?}");
    assert!(
        bars.colored > 0.10,
        "the timeline has no coloured bars: {bars:?}"
    );

    let dom = browser::dump_dom(&page).unwrap_or_else(|e| panic!("{e:#}"));
    for id in ["timeline", "counters", "probes", "targets", "policy"] {
        let section = browser::section(&dom, id)
            .unwrap_or_else(|| panic!("no section {id} in the DOM chromium built"));
        if ["timeline", "counters", "probes"].contains(&id) {
            assert!(section.contains("<svg"), "no chart in section {id}");
        }
    }
    let timeline_dom = browser::section(&dom, "timeline").unwrap();
    let svg = &timeline_dom[timeline_dom.find("<svg").unwrap()..];
    assert!(
        svg.matches("<rect").count() >= 5,
        "the timeline's svg has fewer rects than its background and four bars"
    );
    println!("page and screenshots in {}", dir.display());
}

#[test]
fn a_run_without_reverted_says_the_loader_may_have_been_killed() {
    let dir = artifacts("killed");
    let mut records = events();
    records.retain(|r| r["type"] != "reverted");
    write_log(&dir, &records);
    let out_page = dir.join("killed.html");
    let out = fault([
        "report".as_ref(),
        dir.join("events.jsonl").as_os_str(),
        "-o".as_ref(),
        out_page.as_os_str(),
    ]);
    assert!(out.status.success(), "fault report failed: {out:?}");
    let html = fs::read_to_string(&out_page).expect("the page is written where -o says");
    assert!(html.contains("no reverted event: the loader may have been killed"));
    assert_offline(&html);
}

#[test]
fn a_bad_log_names_the_file_and_line() {
    let dir = artifacts("bad");
    let log = dir.join("events.jsonl");
    fs::write(&log, format!("{}\n{{not json\n", at(0.0, applied()))).unwrap();
    let out = fault(["report".as_ref(), log.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed log is exit 2: {out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&log.display().to_string()) && stderr.contains("line 2"),
        "stderr names the file and line: {stderr}"
    );

    let missing = dir.join("absent.jsonl");
    let out = fault(["report".as_ref(), missing.as_os_str()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing log is exit 1: {out:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(&missing.display().to_string()));
}
