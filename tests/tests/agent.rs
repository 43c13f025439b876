//! `fault agent`: the kernel holds what the watched directory says, through 100 changes of
//! a ConfigMap-shaped directory; SIGTERM reverts everything; the agent's death reverts its
//! experiments within the heartbeat's second, and a new agent applies them again; invalid
//! files are reported in the status file, the event log and the metrics, and stop nothing
//! else.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::Hasher as _,
    io::{Read as _, Write as _},
    os::unix::fs::symlink,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fault_tests::{
    anchor, assert_no_leftovers, fault, fault_bin, fault_ok, hosts, require_root, udp, vdso_of,
    Cgroup, STATE_DIR,
};
use serde_json::Value;

const AGENT_DIR: &str = "/run/fault/.agent";
/// Every policy name the suite writes starts so; their run directories go at the end.
const PREFIX: &str = "t-agent-";

/// A directory laid out as the kubelet lays out a ConfigMap volume: each key a link to
/// `..data/KEY`, `..data` a link to a directory of this version's files. An update writes
/// the new version's directory, swaps `..data` by a rename, then adds and removes keys.
struct ConfigMapDir {
    root: tempfile::TempDir,
    version: u32,
}

impl ConfigMapDir {
    fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("fault-agent-dir-")
            .tempdir()
            .expect("a temporary directory");
        ConfigMapDir { root, version: 0 }
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    /// Makes the directory hold exactly `files` (key → content), as one update.
    fn set(&mut self, files: &BTreeMap<String, String>) {
        self.version += 1;
        let root = self.path().to_path_buf();
        let data = format!("..v{}", self.version);
        std::fs::create_dir(root.join(&data)).unwrap();
        for (key, text) in files {
            std::fs::write(root.join(&data).join(key), text).unwrap();
        }
        symlink(&data, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        for key in files.keys() {
            if std::fs::symlink_metadata(root.join(key)).is_err() {
                symlink(format!("..data/{key}"), root.join(key)).unwrap();
            }
        }
        for entry in std::fs::read_dir(&root).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let old_version = name.starts_with("..v") && name != data;
            let gone_key = !name.starts_with('.') && !files.contains_key(&name);
            match (old_version, gone_key) {
                (true, _) => std::fs::remove_dir_all(entry.path()).unwrap(),
                (_, true) => std::fs::remove_file(entry.path()).unwrap(),
                _ => {}
            }
        }
    }
}

/// A running `fault agent`; on drop it is stopped (SIGTERM, then SIGKILL) and everything
/// of the suite's is removed, whatever the test did.
struct Agent {
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl Agent {
    fn start(dir: &Path, extra: &[&str]) -> Agent {
        let log = tempfile::NamedTempFile::new().unwrap();
        let out = log.reopen().unwrap();
        let child = Command::new(fault_bin())
            .arg("agent")
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start fault agent");
        Agent {
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child's.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits for the agent to exit; its exit code.
    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some(s) = child.try_wait().unwrap() {
                self.child = None;
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the agent did not exit within {timeout:?}:\n{}", self.log())
    }

    /// The status file once `done` holds for it, at most `timeout`.
    fn status_when(&self, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < until {
            if let Ok(text) = std::fs::read(Path::new(AGENT_DIR).join("status.json")) {
                last = serde_json::from_slice(&text).unwrap_or(Value::Null);
                if done(&last) {
                    return last;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the agent's status did not settle within {timeout:?}: {last:#}\n{}",
            self.log()
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `signal`.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let until = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("the agent's log:\n{}", self.log());
        }
        let _ = fault(["stop", "--all"]);
        let _ = std::fs::remove_dir_all(AGENT_DIR);
        for entry in std::fs::read_dir(STATE_DIR).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(PREFIX) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// The agent's key for a content (see fault's `agent::content_hash`), as the status file
/// prints it.
fn content_of(text: &str) -> String {
    let mut h = std::hash::DefaultHasher::new();
    h.write(text.as_bytes());
    format!("{:016x}", h.finish())
}

fn net_policy(name: &str, cgroup: &Cgroup, percent: u32) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         duration: 5m\n  targets:\n    - cgroup: {}\n  network:\n    - direction: egress\n      \
         match: {{protocol: udp}}\n      drop: {{probability: {percent}%}}\n",
        cgroup.path().display()
    )
}

fn clock_policy(name: &str, cgroup: &Cgroup, seconds: u32) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         duration: 5m\n  targets:\n    - cgroup: {}\n  clock:\n    - name: ahead\n      \
         offset: {seconds}s\n",
        cgroup.path().display()
    )
}

/// What a file of the directory should be in force as.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    /// A drop rule at this percentage, under this name.
    Net(String, u32),
    /// A clock offset of this many seconds, under this name.
    Clock(String, u32),
    Invalid,
}

/// Whether the status file shows every file of `files` settled on its current content,
/// and no other file.
fn settled(status: &Value, files: &BTreeMap<String, (String, Expect)>, dir: &Path) -> bool {
    let Some(listed) = status["files"].as_array() else {
        return false;
    };
    listed.len() == files.len()
        && files.iter().all(|(key, (text, expect))| {
            let want = if *expect == Expect::Invalid {
                "invalid"
            } else {
                "active"
            };
            listed.iter().any(|f| {
                f["file"] == dir.join(key).display().to_string()
                    && f["content"] == content_of(text)
                    && f["state"] == want
            })
        })
}

/// Compares the kernel and fault's records with what `files` asks for: the runs and their
/// rules, the pins, the tcx links, and the patched process. Returns what differs.
fn differences(files: &BTreeMap<String, (String, Expect)>, clock_pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let runs: Value = serde_json::from_str(&fault_ok(["status", "--json"])).unwrap();
    let runs = runs.as_array().cloned().unwrap_or_default();
    let running: BTreeSet<String> = runs
        .iter()
        .filter(|r| r["loader_alive"] == true)
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    let mut wanted = BTreeSet::new();
    let mut clock_on = false;
    for (key, (_, expect)) in files {
        let (Expect::Net(name, _) | Expect::Clock(name, _)) = expect else {
            continue;
        };
        clock_on |= matches!(expect, Expect::Clock(..));
        wanted.insert(name.clone());
        match runs.iter().find(|r| r["name"] == name.as_str()) {
            Some(r) if in_force(r, expect) => {}
            Some(r) => out.push(format!("{key}: {name} runs other rules: {r}")),
            None => out.push(format!("{key}: {name} does not run")),
        }
    }
    if running != wanted {
        out.push(format!(
            "running {running:?}, the directory asks for {wanted:?}"
        ));
    }
    let pins: BTreeSet<String> = std::fs::read_dir("/sys/fs/bpf/fault")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !pins.is_subset(&wanted) {
        out.push(format!("pins {pins:?}, runs {wanted:?}"));
    }
    let attachments: u64 = runs.iter().filter_map(|r| r["attachments"].as_u64()).sum();
    let tcx = tcx_links();
    if tcx != attachments {
        out.push(format!("{tcx} tcx links, the runs record {attachments}"));
    }
    // A revert leaves the stub's mapping, inert: what tells is the vDSO's code.
    let patched = vdso_of(clock_pid) != vdso_of(std::process::id());
    if patched != clock_on {
        out.push(format!(
            "the clock target patched: {patched}, asked: {clock_on}"
        ));
    }
    out
}

/// tcx links on the host (bpftool names the type, or gives its number, 11, where it is
/// older than the kernel).
fn tcx_links() -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "link", "list"])
        .output()
        .expect("bpftool");
    let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()));
    let links = links.as_array().cloned().unwrap_or_default();
    links
        .iter()
        .filter(|l| l["type"] == "tcx" || l["type"] == 11)
        .count() as u64
}

/// Whether the run `r` (of `fault status --json`) has the rule `expect` asks for.
fn in_force(r: &Value, expect: &Expect) -> bool {
    match expect {
        Expect::Net(_, p) => r["rules"][0]["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&format!("drop {p}%"))),
        Expect::Clock(_, s) => r["clock_rules"][0]["steady_ns"] == u64::from(*s) * 1_000_000_000,
        Expect::Invalid => false,
    }
}

/// A small deterministic generator (xorshift), so a failing sequence repeats.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The next content of key `slot`: keys 0–2 drop on their own cgroup, key 3 skews its
/// cgroup's clock; a name changes now and then (the old run goes, a new one comes).
fn next_content(
    rng: &mut Rng,
    slot: usize,
    cgroups: &[Cgroup],
    now: Option<&Expect>,
) -> (String, Expect) {
    let alive = matches!(now, Some(Expect::Net(..) | Expect::Clock(..)));
    if rng.below(6) == 0 {
        return (
            format!("apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {{name: {PREFIX}bad}}\nspec: [{}\n", rng.below(1000)),
            Expect::Invalid,
        );
    }
    let renamed = !alive || rng.below(4) == 0;
    let name = match (now, renamed) {
        (Some(Expect::Net(n, _) | Expect::Clock(n, _)), false) => n.clone(),
        _ => format!("{PREFIX}{slot}-{}", rng.below(1_000_000)),
    };
    if slot == 3 {
        let s = 1 + rng.below(9) as u32;
        (
            clock_policy(&name, &cgroups[slot], s),
            Expect::Clock(name, s),
        )
    } else {
        let p = 1 + rng.below(99) as u32;
        (net_policy(&name, &cgroups[slot], p), Expect::Net(name, p))
    }
}

#[test]
fn the_kernel_holds_what_the_directory_says_through_100_changes() {
    require_root();
    {
        let h = hosts("agent", "10.81", 1);
        let cgroups: Vec<Cgroup> = (0..4).map(|i| Cgroup::new(&format!("agent-{i}"))).collect();
        let anchors: Vec<_> = cgroups.iter().map(|c| anchor(c, &h.a)).collect();
        let clock_pid = anchors[3].pid();
        let mut dir = ConfigMapDir::new();
        let mut files: BTreeMap<String, (String, Expect)> = BTreeMap::new();
        dir.set(&BTreeMap::new());
        let agent = Agent::start(dir.path(), &[]);
        let mut rng = Rng(0x5eed_f00d);
        let mut took = Vec::new();
        for step in 0..100 {
            // One key changes at each step, two at every tenth (one update either way).
            for _ in 0..1 + usize::from(step % 10 == 9) {
                let slot = rng.below(4) as usize;
                let key = format!("exp-{slot}.yaml");
                let now = files.get(&key).map(|f| f.1.clone());
                if now.is_some() && rng.below(4) == 0 {
                    files.remove(&key);
                } else {
                    let next = next_content(&mut rng, slot, &cgroups, now.as_ref());
                    files.insert(key, next);
                }
            }
            let texts = files
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            let started = Instant::now();
            dir.set(&texts);
            agent.status_when(Duration::from_secs(20), |s| settled(s, &files, dir.path()));
            took.push(started.elapsed());
            let diff = differences(&files, clock_pid);
            assert!(
                diff.is_empty(),
                "step {step}: {files:#?}\n{}",
                diff.join("\n")
            );
        }
        took.sort();
        eprintln!(
            "100 updates settled: median {:?}, max {:?}",
            took[took.len() / 2],
            took[took.len() - 1]
        );
        drop(agent);
        drop(anchors);
    }
    assert_no_leftovers();
}

fn received(report: &Value) -> u64 {
    report["received"].as_u64().unwrap_or(u64::MAX)
}

#[test]
fn the_agents_death_reverts_within_a_second_and_a_new_agent_applies_again() {
    require_root();
    {
        let h = hosts("agentkill", "10.81", 2);
        let target = Cgroup::new("agentkill");
        let _anchor = anchor(&target, &h.a);
        let mut dir = ConfigMapDir::new();
        let text = net_policy(&format!("{PREFIX}kill"), &target, 100);
        dir.set(&BTreeMap::from([("drop.yaml".to_string(), text.clone())]));
        let to = format!("{}:7301", h.veth.ip_b());
        let active = |s: &Value| s["files"][0]["state"] == "active";

        let first = Agent::start(dir.path(), &[]);
        first.status_when(Duration::from_secs(10), active);
        let (_, got) = udp(Some(&target), &h.a, &h.b, None, &to, 50);
        assert_eq!(received(&got), 0, "100% drop under the agent: {got}");

        first.signal(libc::SIGKILL);
        let killed = Instant::now();
        let mut off = None;
        while killed.elapsed() < Duration::from_secs(5) {
            let runs: Value = serde_json::from_str(&fault_ok(["status", "--json"])).unwrap();
            if runs.as_array().is_some_and(|r| r.is_empty()) {
                off = Some(killed.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let off =
            off.unwrap_or_else(|| panic!("the run outlived its agent by 5 s\n{}", first.log()));
        eprintln!("the agent killed: its experiment reverted {off:?} later");
        assert!(
            off < Duration::from_millis(1100),
            "reverted {off:?} after the agent's death"
        );
        let (_, got) = udp(Some(&target), &h.a, &h.b, None, &to, 50);
        assert_eq!(
            received(&got),
            50,
            "nothing drops once the agent is gone: {got}"
        );
        drop(first);

        let mut second = Agent::start(dir.path(), &[]);
        second.status_when(Duration::from_secs(10), active);
        let (_, got) = udp(Some(&target), &h.a, &h.b, None, &to, 50);
        assert_eq!(
            received(&got),
            0,
            "the new agent applies the file again: {got}"
        );

        second.signal(libc::SIGTERM);
        assert_eq!(
            second.wait_exit(Duration::from_secs(30)),
            Some(0),
            "{}",
            second.log()
        );
        let log = second.log();
        assert!(
            log.contains("reverting every experiment") && log.contains("reverted"),
            "{log}"
        );
        assert!(!Path::new(AGENT_DIR).join("status.json").exists(), "{log}");
        assert_eq!(fault_ok(["status"]).trim(), "fault: nothing active");
    }
    assert_no_leftovers();
}

/// A GET of `path` on `addr`: the body.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn metrics_addr(agent: &Agent) -> String {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let log = agent.log();
        if let Some(rest) = log.split("metrics at http://").nth(1) {
            return rest.split('/').next().unwrap().to_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "the agent did not say where its metrics are:\n{}",
        agent.log()
    )
}

#[test]
fn invalid_files_are_reported_and_stop_nothing_else() {
    require_root();
    {
        let target = Cgroup::new("agentbad");
        let mut dir = ConfigMapDir::new();
        let good = net_policy(&format!("{PREFIX}good"), &target, 10);
        let bad = net_policy(&format!("{PREFIX}bad"), &target, 150);
        let twin = net_policy(&format!("{PREFIX}good"), &target, 20);
        dir.set(&BTreeMap::from([
            ("a-good.yaml".to_string(), good),
            ("b-bad.yaml".to_string(), bad),
            ("c-twin.yaml".to_string(), twin),
            ("notes.txt".to_string(), "not a policy".to_string()),
        ]));
        let agent = Agent::start(dir.path(), &["--metrics", "127.0.0.1:0"]);
        let status = agent.status_when(Duration::from_secs(10), |s| {
            s["files"].as_array().is_some_and(|f| f.len() == 3)
                && s["files"][0]["state"] == "active"
        });
        let files = status["files"].as_array().unwrap();
        assert_eq!(files[1]["state"], "invalid", "{status:#}");
        let why = files[1]["why"].as_str().unwrap();
        assert!(
            why.contains("b-bad.yaml") && why.contains("probability"),
            "{why}"
        );
        assert_eq!(files[2]["state"], "invalid", "{status:#}");
        let why = files[2]["why"].as_str().unwrap();
        assert!(
            why.contains("already the name of") && why.contains("a-good.yaml"),
            "{why}"
        );

        let shown = fault_ok(["status"]);
        assert!(
            shown.contains("a-good.yaml") && shown.contains(": active"),
            "{shown}"
        );
        assert!(
            shown.contains("b-bad.yaml") && shown.contains(": invalid"),
            "{shown}"
        );

        let events = std::fs::read_to_string(Path::new(AGENT_DIR).join("events.jsonl")).unwrap();
        let invalid: Vec<Value> = events
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["event"] == "invalid")
            .collect();
        assert_eq!(invalid.len(), 2, "{events}");

        let body = http_get(&metrics_addr(&agent), "/metrics");
        for line in [
            "fault_agent_files{state=\"active\"} 1",
            "fault_agent_files{state=\"invalid\"} 2",
            "fault_agent_events_total{event=\"applied\"} 1",
            "fault_agent_apply_seconds_count 1",
        ] {
            assert!(body.lines().any(|l| l == line), "no `{line}` in\n{body}");
        }
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (cargo xtask setup installs it)");
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let checked = promtool.wait_with_output().unwrap();
        assert!(
            checked.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&checked.stderr)
        );

        let other = fault(["agent", "--dir", dir.path().to_str().unwrap()]);
        assert_eq!(other.status.code(), Some(1), "{other:?}");
        assert!(
            String::from_utf8_lossy(&other.stderr).contains("an agent already runs"),
            "{other:?}"
        );

        let missing = fault(["agent", "--dir", "/nonexistent/fault-agent"]);
        assert_eq!(missing.status.code(), Some(2), "{missing:?}");
        drop(agent);
    }
    assert_no_leftovers();
}
