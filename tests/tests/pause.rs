//! Pauses on real cgroups: a process in a target cgroup appends the time to a file every
//! 10 ms, so a freeze shows as a gap of its length, at its time. A loader that dies while a
//! target is frozen leaves it frozen for no longer than its watchdog takes to notice, and
//! `fault stop` thaws it when the watchdog died too. What must never be frozen (the root,
//! fault's own cgroup and its ancestors) is refused. Run one at a time
//! (`--test-threads=1`); each test leaves nothing behind (checked at its end).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fault_tests::{
    assert_no_leftovers, cgroup2_mount, enter_cgroup, fault, fault_bin, monotonic_ns, probe,
    require_root, spawn_in, write_policy, Cgroup, ChildGuard, FaultApply, PolicyFile, STATE_DIR,
};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

/// An experiment whose step `gc` pauses `cgroup` from `at` for `len`; `pause` is the step's
/// `{for, every}`.
fn experiment(name: &str, cgroup: &Path, at: &str, len: &str, pause: &str) -> String {
    format!(
        "apiVersion: fault/v1\nkind: Experiment\nmetadata: {{name: {name}}}\nspec:\n  \
         duration: 20s\n  groups:\n    app: [{{cgroup: \"{}\"}}]\n  steps:\n    - name: gc\n      \
         at: {at}\n      for: {len}\n      targets: app\n      pause: {pause}\n",
        cgroup.display()
    )
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether every process of the cgroup is stopped, as `cgroup.events` says.
fn frozen(cgroup: &Path) -> bool {
    let events = fs::read_to_string(cgroup.join("cgroup.events"))
        .unwrap_or_else(|e| panic!("reading {}/cgroup.events: {e}", cgroup.display()));
    events.lines().any(|l| l.trim() == "frozen 1")
}

/// Polls `done` every millisecond; how long it took. Panics past `timeout`.
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "not {what} after {timeout:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

/// Thaws the cgroup on drop, so a failing test leaves no frozen process behind (declared
/// after the cgroup's guard, it runs first).
struct Thaw<'a>(&'a Path);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.freeze"), "0");
    }
}

/// `fault-probe ticks` in a cgroup: a line of CLOCK_MONOTONIC ns every 10 ms.
struct Ticks {
    file: tempfile::NamedTempFile,
    _writer: ChildGuard,
}

impl Ticks {
    fn start(cgroup: &Cgroup) -> Ticks {
        let file = tempfile::Builder::new()
            .prefix("fault-ticks-")
            .tempfile()
            .expect("creating the ticks file");
        let out = file.path().to_string_lossy().into_owned();
        let writer = spawn_in(Some(cgroup), None, probe(&["ticks", "--out", &out]));
        let ticks = Ticks {
            file,
            _writer: writer,
        };
        wait_until("ticking", Duration::from_secs(5), || {
            ticks.read().len() >= 5
        });
        ticks
    }

    /// The ticks so far (a line still being written is not one yet).
    fn read(&self) -> Vec<u64> {
        fs::read_to_string(self.file.path())
            .unwrap_or_default()
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n')?.parse().ok())
            .collect()
    }

    /// Waits (a second at most) for a tick later than now: the writer runs.
    fn wait_running(&self) {
        let now = monotonic_ns();
        wait_until("ticking again", Duration::from_secs(1), || {
            self.read().last().is_some_and(|&t| t > now)
        });
    }
}

/// Gaps longer than `min` between consecutive ticks: (start, length), in ns.
fn gaps(ticks: &[u64], min: Duration) -> Vec<(u64, u64)> {
    ticks
        .windows(2)
        .map(|w| (w[0], w[1].saturating_sub(w[0])))
        .filter(|&(_, len)| len > min.as_nanos() as u64)
        .collect()
}

/// The watchdog `fault apply` (pid `loader`) started for `name`: the process whose command
/// line is `fault watchdog NAME PID START`.
fn watchdog_of(name: &str, loader: u32) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let loader = loader.to_string();
        let wanted: [&[u8]; 3] = [b"watchdog", name.as_bytes(), loader.as_bytes()];
        (args.len() >= 5 && args[1..4] == wanted).then_some(pid)
    })
}

/// Whether `pid` has exited (gone, or a zombie nobody reaped).
fn exited(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

fn kill(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn a_target_stops_for_each_pause_and_runs_between_them() {
    require_root();
    {
        let target = Cgroup::new("pause");
        let _thaw = Thaw(target.path());
        let ticks = Ticks::start(&target);
        let file = write_policy(&experiment(
            "t-pause",
            target.path(),
            "1s",
            "6s",
            "{for: 1s, every: 2s}",
        ));
        let applied = monotonic_ns();
        let mut apply = FaultApply::start_args(
            [
                "apply",
                "--interval",
                "500ms",
                &*file.path().to_string_lossy(),
            ],
            "t-pause",
        );
        apply.wait_ready();
        // The step ends 7 s after the run started, which is a little after `applied`.
        let end = Duration::from_nanos((applied + 8 * SEC).saturating_sub(monotonic_ns()));
        std::thread::sleep(end);
        assert!(
            !frozen(target.path()),
            "thawed after the step: {}",
            apply.log()
        );
        ticks.wait_running();
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
        let all = ticks.read();
        let after: Vec<u64> = all.into_iter().filter(|&t| t >= applied).collect();
        let found = gaps(&after, Duration::from_millis(100));
        let shown: Vec<String> = found
            .iter()
            .map(|&(at, len)| {
                let at = (at - applied) as f64 / SEC as f64;
                format!(
                    "{len_ms:.1} ms at {at:.3} s",
                    len_ms = len as f64 / MS as f64
                )
            })
            .collect();
        eprintln!("gaps over 100 ms after apply: {shown:?}");
        assert_eq!(
            found.len(),
            3,
            "three pauses, no other gap: {shown:?}\n{log}"
        );
        for &(_, len) in &found {
            assert!(
                len.abs_diff(SEC) <= 50 * MS,
                "each pause lasts 1 s ± 50 ms: {shown:?}"
            );
        }
        let first = found[0].0 - applied;
        assert!(
            (950 * MS..2 * SEC).contains(&first),
            "the first pause begins about 1 s after apply: {shown:?}"
        );
        for (k, &(at, _)) in found.iter().enumerate() {
            let due = found[0].0 + 2 * SEC * k as u64;
            assert!(at.abs_diff(due) <= 50 * MS, "pauses 2 s apart: {shown:?}");
        }
        assert!(
            log.contains("pause gc: frozen ("),
            "the live view tells: {log}"
        );
        assert!(log.contains("pause gc: 3 pause(s)"), "and the end: {log}");
    }
    assert_no_leftovers();
}

/// A cgroup frozen by `NAME` (5 s pauses every 10 s from 1 s): started, ready, and frozen.
fn frozen_by(name: &str, target: &Cgroup) -> (FaultApply, PolicyFile) {
    let file = write_policy(&experiment(
        name,
        target.path(),
        "1s",
        "10s",
        "{for: 5s, every: 10s}",
    ));
    let mut apply = FaultApply::start(file.path(), name);
    apply.wait_ready();
    wait_until("frozen", Duration::from_secs(5), || frozen(target.path()));
    // Well inside the pause.
    std::thread::sleep(Duration::from_millis(300));
    (apply, file)
}

#[test]
fn after_sigkill_while_frozen_the_watchdog_thaws_within_a_second() {
    require_root();
    {
        let target = Cgroup::new("pausekill");
        let _thaw = Thaw(target.path());
        let ticks = Ticks::start(&target);
        let (mut apply, _file) = frozen_by("t-pausekill", &target);
        kill(apply.pid());
        let thawed = wait_until("thawed", Duration::from_secs(3), || !frozen(target.path()));
        eprintln!(
            "thawed {:.1} ms after the SIGKILL",
            thawed.as_secs_f64() * 1e3
        );
        assert!(
            thawed < Duration::from_secs(1),
            "thawed within a second of the SIGKILL, not {thawed:?}: {}",
            apply.log()
        );
        apply.wait_exit(Duration::from_secs(5));
        ticks.wait_running();
        let out = fault(["stop", "t-pausekill"]);
        assert!(out.status.success(), "fault stop: {}", text(&out));
        assert!(!frozen(target.path()));
    }
    assert_no_leftovers();
}

#[test]
fn fault_stop_thaws_what_a_dead_loader_and_its_dead_watchdog_left_frozen() {
    require_root();
    {
        let target = Cgroup::new("pausestop");
        let _thaw = Thaw(target.path());
        let ticks = Ticks::start(&target);
        let (mut apply, _file) = frozen_by("t-pausestop", &target);
        let dog = watchdog_of("t-pausestop", apply.pid())
            .unwrap_or_else(|| panic!("no watchdog for {}: {}", apply.pid(), apply.log()));
        // The watchdog first: it would thaw as soon as the loader died.
        kill(dog);
        wait_until("watchdog gone", Duration::from_secs(2), || exited(dog));
        kill(apply.pid());
        apply.wait_exit(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(1200));
        assert!(
            frozen(target.path()),
            "nothing else thaws it: {}",
            apply.log()
        );
        let record = fs::read_to_string(Path::new(STATE_DIR).join("t-pausestop.json"))
            .expect("the dead run's record");
        let record: serde_json::Value = serde_json::from_str(&record).expect("JSON");
        assert_eq!(
            record["frozen"],
            serde_json::json!([target.path()]),
            "the record names the frozen cgroup"
        );
        let out = fault(["stop", "t-pausestop"]);
        assert!(out.status.success(), "fault stop: {}", text(&out));
        assert!(!frozen(target.path()), "fault stop thawed it");
        ticks.wait_running();
    }
    assert_no_leftovers();
}

/// A cgroup below a test cgroup, removed before its parent.
struct Below {
    path: PathBuf,
}

impl Below {
    fn new(parent: &Cgroup, name: &str) -> Below {
        let path = parent.path().join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Below { path }
    }
}

impl Drop for Below {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let until = Instant::now() + Duration::from_secs(5);
        while fs::remove_dir(&self.path).is_err() && self.path.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `fault apply` of an experiment pausing `target`, run from inside the cgroup `from`, to
/// its end (30 s at most).
fn apply_from(from: &Path, name: &str, target: &Path) -> std::process::Output {
    let file = write_policy(&experiment(
        name,
        target,
        "0s",
        "5s",
        "{for: 1s, every: 2s}",
    ));
    let mut cmd = Command::new(fault_bin());
    cmd.arg("apply")
        .arg(file.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    enter_cgroup(&mut cmd, from);
    spawn_in(None, None, cmd).wait_output(Duration::from_secs(30))
}

fn assert_refused(out: &std::process::Output, cgroup: &Path, why: &str) {
    let said = text(out);
    assert_eq!(out.status.code(), Some(2), "refused as invalid: {said}");
    assert!(
        said.contains(&cgroup.display().to_string()) && said.contains(why),
        "the refusal names {} and says {why:?}: {said}",
        cgroup.display()
    );
}

#[test]
fn pausing_the_root_or_fault_s_own_cgroup_or_an_ancestor_of_it_is_refused() {
    require_root();
    {
        // The root, spelled both ways (it has no cgroup.freeze: nothing could freeze it).
        let mount = cgroup2_mount();
        for spelled in [Path::new("."), &mount] {
            let file = write_policy(&experiment(
                "t-pauseroot",
                spelled,
                "0s",
                "5s",
                "{for: 1s, every: 2s}",
            ));
            let out = fault(["apply".as_ref(), file.path().as_os_str()]);
            assert_refused(&out, &mount, "cgroup2 root");
        }
        // fault is run from inside test cgroups, so a refusal that failed would freeze
        // only those (and the guards thaw them).
        let own = Cgroup::new("pauseown");
        let _thaw_own = Thaw(own.path());
        let out = apply_from(own.path(), "t-pauseown", own.path());
        assert_refused(&out, own.path(), "fault's own cgroup");
        assert!(!frozen(own.path()));
        let up = Cgroup::new("pauseup");
        let _thaw_up = Thaw(up.path());
        let below = Below::new(&up, "fault");
        let out = apply_from(&below.path, "t-pauseup", up.path());
        assert_refused(&out, up.path(), "holds fault's own cgroup");
        assert!(!frozen(up.path()) && !frozen(&below.path));
    }
    assert_no_leftovers();
}
