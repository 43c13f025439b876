//! Campaigns, with fixed seeds so a failure can be replayed: 100 SIGKILLs of the loader at
//! random moments of its start, its patching, its steady state and its revert, across a
//! partition, a delay, a clock skew and a pause, each followed by the checks of the
//! fail-safe rule (every fault over within a second of the death, no target process left
//! stopped, traced or with signals blocked, and nothing of fault's left after `fault
//! stop`); and 200 apply/revert cycles, with the loader's descriptors and memory and the
//! kernel's BPF objects compared first to last. Run one at a time (`--test-threads=1`).

use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use fault_tests::{
    anchor, assert_no_leftovers, fault, hosts, leftovers, probe, probe_json, require_root, run_in,
    spawn_in, write_policy, Cgroup, ChildGuard, FaultApply, Hosts,
};

/// xorshift64*: a fixed sequence from a fixed seed, enough to spread moments around.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Partition,
    Delay,
    Clock,
    Pause,
}

const KINDS: [Kind; 4] = [Kind::Partition, Kind::Delay, Kind::Clock, Kind::Pause];
const PARTITION_PORT: u16 = 9391;
const DELAY_PORT: u16 = 9392;
const SKEW_S: i64 = -3;

/// The run's document for `kind` on `cgroup`.
fn document(name: &str, kind: Kind, cgroup: &Cgroup) -> String {
    let cg = cgroup.path().display();
    let head = |k: &str| {
        format!(
            "apiVersion: fault/v1\nkind: {k}\nmetadata: {{name: {name}}}\nspec:\n  duration: 60s\n"
        )
    };
    let policy = |section: &str| {
        format!(
            "{}  targets: [{{cgroup: \"{cg}\"}}]\n{section}",
            head("FaultPolicy")
        )
    };
    match kind {
        Kind::Partition => policy(&format!(
            "  network:\n    - direction: egress\n      match: {{protocol: udp, ports: \
             [{PARTITION_PORT}]}}\n      partition: true\n"
        )),
        Kind::Delay => policy(&format!(
            "  network:\n    - direction: egress\n      match: {{protocol: udp, ports: \
             [{DELAY_PORT}]}}\n      delay: {{latency: 50ms}}\n"
        )),
        Kind::Clock => policy(&format!(
            "  clock:\n    - name: behind\n      offset: {SKEW_S}s\n"
        )),
        Kind::Pause => format!(
            "{}  groups:\n    app: [{{cgroup: \"{cg}\"}}]\n  steps:\n    - name: gc\n      \
             at: 0s\n      for: 60s\n      targets: app\n      pause: {{for: 300ms, every: 400ms}}\n",
            head("Experiment")
        ),
    }
}

/// What lives in the target through the whole campaign: a clock reader (its lines go to a
/// file), sleepers, and an echo server on the far host.
struct Targets {
    reader: ChildGuard,
    readings: PathBuf,
    /// The sleepers and the echo servers, stopped on drop.
    _others: Vec<ChildGuard>,
    /// Each target process's signal mask before anything was applied.
    masks: Vec<(u32, String)>,
}

impl Targets {
    fn start(h: &Hosts, cgroup: &Cgroup) -> Targets {
        let readings = std::env::temp_dir().join(format!("fault-campaign-{}", std::process::id()));
        let mut cmd = probe(&["clock-pair", "--interval-ms", "10", "--threads", "3"]);
        cmd.stdout(Stdio::from(
            fs::File::create(&readings).expect("readings file"),
        ));
        let reader = spawn_in(Some(cgroup), Some(&h.a), cmd);
        let mut others: Vec<ChildGuard> = (0..2)
            .map(|_| {
                let mut c = std::process::Command::new("sleep");
                c.arg("600").stdout(Stdio::null()).stderr(Stdio::null());
                spawn_in(Some(cgroup), Some(&h.a), c)
            })
            .collect();
        for port in [PARTITION_PORT, DELAY_PORT] {
            let bind = format!("0.0.0.0:{port}");
            let mut echo = spawn_in(None, Some(&h.b), probe(&["echo", "--bind", &bind]));
            echo.wait_listening(port);
            others.push(echo);
        }
        std::thread::sleep(Duration::from_millis(100));
        let masks = cgroup_threads(cgroup)
            .into_iter()
            .map(|(pid, s)| (pid, s.sigblk))
            .collect();
        Targets {
            reader,
            readings,
            _others: others,
            masks,
        }
    }

    /// The reader's skew (vDSO minus raw syscall) on its last whole line, ns.
    fn skew_ns(&self) -> i64 {
        let text = fs::read_to_string(&self.readings).unwrap_or_default();
        let line = text
            .lines()
            .rev()
            .nth(1) // the last may be half written
            .unwrap_or_else(|| panic!("the reader {} printed nothing", self.reader.pid()));
        let v: Vec<i64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        v[0] - v[1]
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.readings);
    }
}

/// What /proc tells of one thread.
struct ThreadState {
    state: char,
    sigblk: String,
    tracer: u32,
}

/// Every thread of every process in `cgroup`, by tid.
fn cgroup_threads(cgroup: &Cgroup) -> Vec<(u32, ThreadState)> {
    let procs = fs::read_to_string(cgroup.path().join("cgroup.procs")).unwrap_or_default();
    let mut out = Vec::new();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(status) = fs::read_to_string(t.path().join("status")) else {
                continue;
            };
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            let tid = t.file_name().to_string_lossy().parse().unwrap_or(0);
            out.push((
                tid,
                ThreadState {
                    state: field("State:").chars().next().unwrap_or('?'),
                    sigblk: field("SigBlk:"),
                    tracer: field("TracerPid:").parse().unwrap_or(0),
                },
            ));
        }
    }
    out
}

/// Replies to `count` UDP echo requests from the target to the far host's `port`, and the
/// median round trip in ms.
fn ping(h: &Hosts, cgroup: &Cgroup, port: u16, count: u32) -> (u64, f64) {
    let out: Output = run_in(
        Some(cgroup),
        Some(&h.a),
        probe(&[
            "ping",
            "--to",
            &format!("{}:{port}", h.veth.ip_b()),
            "--count",
            &count.to_string(),
            "--interval-us",
            "2000",
            "--timeout-ms",
            "200",
        ]),
        Duration::from_secs(30),
    );
    let v = probe_json(&out);
    let replies = v["replies"].as_u64().unwrap_or(0);
    (replies, v["p50_us"].as_f64().unwrap_or(f64::NAN) / 1000.0)
}

fn frozen(cgroup: &Cgroup) -> bool {
    fs::read_to_string(cgroup.path().join("cgroup.events"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim() == "frozen 1")
}

/// What is still in effect at least a second after the loader died, if anything.
fn still_faulted(kind: Kind, h: &Hosts, cgroup: &Cgroup, t: &Targets) -> Option<String> {
    match kind {
        Kind::Partition => {
            let (replies, _) = ping(h, cgroup, PARTITION_PORT, 3);
            (replies != 3).then(|| format!("partitioned: {replies} of 3 replies"))
        }
        Kind::Delay => {
            let (_, p50) = ping(h, cgroup, DELAY_PORT, 5);
            (p50 >= 25.0).then(|| format!("delayed: p50 {p50:.1} ms"))
        }
        Kind::Clock => {
            let skew = t.skew_ns();
            (skew.abs() > 50_000_000).then(|| format!("skewed {:+.3} s", skew as f64 / 1e9))
        }
        Kind::Pause => frozen(cgroup).then(|| "frozen".to_owned()),
    }
}

/// Target threads left worse than they were: stopped, traced, or with another mask.
fn damaged(cgroup: &Cgroup, t: &Targets) -> Vec<String> {
    let mut out = Vec::new();
    for (tid, s) in cgroup_threads(cgroup) {
        if matches!(s.state, 'T' | 't') || s.tracer != 0 {
            out.push(format!(
                "thread {tid}: state {} tracer {}",
                s.state, s.tracer
            ));
        }
        if let Some((_, mask)) = t.masks.iter().find(|(p, _)| *p == tid) {
            if *mask != s.sigblk {
                out.push(format!("thread {tid}: SigBlk {} (was {mask})", s.sigblk));
            }
        }
    }
    out
}

/// fault's own leftovers (the campaign's namespaces and cgroup are the test's, still there),
/// given the kernel up to 2 s to free what an exited loader held (a program on a raw
/// tracepoint goes after a grace period), as `assert_no_leftovers` does.
fn faults_leftovers() -> Vec<String> {
    let until = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let left: Vec<String> = leftovers()
            .into_iter()
            .filter(|l| !l.starts_with("network namespace ") && !l.starts_with("cgroup "))
            .collect();
        if left.is_empty() || std::time::Instant::now() > until {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where in the run a kill lands.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// This long after `fault apply` was started: reading, attaching, patching, or the
    /// first moments of the steady state.
    After(Duration),
    /// This long after a SIGTERM sent once the run was ready: inside the revert.
    Reverting(Duration),
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    unsafe { libc::kill(pid as i32, sig) };
}

/// One kill: starts the run, SIGKILLs it at `moment`, checks what the rule promises.
fn one_kill(
    kind: Kind,
    moment: Moment,
    clsact: bool,
    h: &Hosts,
    cgroup: &Cgroup,
    t: &Targets,
) -> Vec<String> {
    let file = write_policy(&document("t-campaign", kind, cgroup));
    let mode = if clsact { "clsact" } else { "tcx" };
    let mut apply = FaultApply::start_env(
        [std::ffi::OsStr::new("apply"), file.path().as_os_str()],
        "t-campaign",
        &[("FAULT_TC_MODE", mode)],
    );
    match moment {
        Moment::After(d) => std::thread::sleep(d),
        Moment::Reverting(d) => {
            apply.wait_ready();
            kill(apply.pid(), libc::SIGTERM);
            std::thread::sleep(d);
        }
    }
    kill(apply.pid(), libc::SIGKILL);
    let killed = Instant::now();
    apply.wait_exit(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1100).saturating_sub(killed.elapsed()));
    let mut problems = Vec::new();
    problems.extend(still_faulted(kind, h, cgroup, t));
    problems.extend(damaged(cgroup, t));
    let out = fault(["stop", "--all"]);
    if !out.status.success() {
        problems.push(format!(
            "fault stop --all: exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // The run's directory (its event log) is kept for `fault logs`; the policy file
    // removes it with itself.
    drop(apply);
    drop(file);
    let left = faults_leftovers();
    problems.extend(left.into_iter().map(|l| format!("after stop: {l}")));
    problems.extend(
        damaged(cgroup, t)
            .into_iter()
            .map(|d| format!("after stop: {d}")),
    );
    problems
        .into_iter()
        .map(|p| format!("{kind:?} {mode} killed at {moment:?}: {p}"))
        .collect()
}

#[test]
fn a_hundred_sigkills_at_random_moments_leave_nothing() {
    require_root();
    {
        let h = hosts("camp", "10.87", 1);
        let cgroup = Cgroup::new("camp");
        let _anchor = anchor(&cgroup, &h.a);
        let targets = Targets::start(&h, &cgroup);
        // The checks below see each fault while it is on, so their silence means it is off.
        for kind in KINDS {
            let file = write_policy(&document("t-campaign", kind, &cgroup));
            let mut apply = FaultApply::start(file.path(), "t-campaign");
            apply.wait_ready();
            let begun = Instant::now();
            while still_faulted(kind, &h, &cgroup, &targets).is_none() {
                assert!(
                    begun.elapsed() < Duration::from_secs(3),
                    "{kind:?}: the campaign's check does not see the fault on"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let (status, log) = apply.stop();
            assert!(status.success(), "{log}");
        }
        let mut rng = Rng(0x5eed_fa17_c0de_0001);
        let mut problems = Vec::new();
        let (mut during, mut reverting) = (0, 0);
        let begun = Instant::now();
        for i in 0..100 {
            let kind = KINDS[i % KINDS.len()];
            let moment = match rng.below(5) {
                0 => {
                    reverting += 1;
                    Moment::Reverting(Duration::from_millis(rng.below(40)))
                }
                _ => {
                    during += 1;
                    Moment::After(Duration::from_millis(rng.below(900)))
                }
            };
            let clsact = rng.below(2) == 0;
            problems.extend(one_kill(kind, moment, clsact, &h, &cgroup, &targets));
        }
        let _ = writeln!(
            std::io::stderr(),
            "campaign: 100 SIGKILLs ({during} in start, patching or steady state, {reverting} \
             in the revert) in {:.0} s: {} problems",
            begun.elapsed().as_secs_f64(),
            problems.len()
        );
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
    assert_no_leftovers();
}

/// The loader's open descriptors and resident memory once ready, read from /proc.
/// The descriptors are the fewest of five looks 20 ms apart: the loader's rescan opens
/// /proc files and netlink sockets for a moment, and a look may land on one of them.
fn loader_usage(pid: u32) -> (usize, u64) {
    let fds = (0..5)
        .map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
        })
        .min()
        .unwrap_or(0);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (fds, rss)
}

/// The kernel's BPF programs, maps and links, all of them (not only fault's).
fn bpf_objects() -> [usize; 3] {
    let count = |what: &str| {
        let out = std::process::Command::new("bpftool")
            .args(["-j", what, "list"])
            .output()
            .expect("bpftool");
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).map_or(0, |v| v.len())
    };
    [count("prog"), count("map"), count("link")]
}

#[test]
fn two_hundred_apply_revert_cycles_keep_everything_flat() {
    require_root();
    {
        let h = hosts("cycle", "10.87", 2);
        let cgroup = Cgroup::new("cycle");
        let _anchor = anchor(&cgroup, &h.a);
        let _targets = Targets::start(&h, &cgroup);
        let before = bpf_objects();
        let mut usage = Vec::new();
        let mut objects = Vec::new();
        let begun = Instant::now();
        for i in 0..200 {
            let kind = KINDS[i % KINDS.len()];
            let file = write_policy(&document("t-cycle", kind, &cgroup));
            let mut apply = FaultApply::start(file.path(), "t-cycle");
            apply.wait_ready();
            usage.push((kind, loader_usage(apply.pid())));
            objects.push(bpf_objects());
            let (status, log) = apply.stop();
            assert!(status.success(), "cycle {i} ({kind:?}): {log}");
            drop(file);
            let left = faults_leftovers();
            assert!(left.is_empty(), "cycle {i} ({kind:?}) left {left:?}");
        }
        let after = bpf_objects();
        let elapsed = begun.elapsed();
        for kind in KINDS {
            let of: Vec<(usize, u64)> = usage
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, u)| *u)
                .collect();
            let (first, last) = (of[0], of[of.len() - 1]);
            let _ = writeln!(
                std::io::stderr(),
                "cycles {kind:?}: loader fds {} first, {} last; RSS {} KiB first, {} KiB last",
                first.0,
                last.0,
                first.1,
                last.1
            );
            assert_eq!(first.0, last.0, "{kind:?}: the loader's descriptors");
            assert!(
                last.1 < first.1 + first.1 / 4,
                "{kind:?}: the loader's memory grew: {first:?} -> {last:?}"
            );
        }
        let _ = writeln!(
            std::io::stderr(),
            "cycles: 200 in {:.0} s; BPF progs/maps/links before {before:?}, in the first \
             cycles {:?}, in the last {:?}, after {after:?}",
            elapsed.as_secs_f64(),
            &objects[..4],
            &objects[196..]
        );
        for i in 0..4 {
            assert_eq!(objects[i], objects[196 + i], "BPF objects while running");
        }
        assert_eq!(before, after, "BPF objects after the cycles");
    }
    assert_no_leftovers();
}
