//! Clock reads made as system calls. Where the kernel lets eBPF write user memory
//! (lockdown none, as on the Debian guests) they get the same fault as the vDSO; where
//! lockdown refuses it, they read true time and the process is named. Runs on every
//! kernel of the matrix, so its checks allow for emulation's coarse timing (tens of ms,
//! against a 5 s skew). Run one at a time (`--test-threads=1`).

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fault_tests::{
    assert_no_leftovers, fault, probe, require_root, spawn_in, write_policy, Cgroup, FaultApply,
};

const SEC: i128 = 1_000_000_000;

/// Whether this kernel lets eBPF programs write user memory, if the test can tell by
/// itself: the Debian guests run with lockdown none, and securityfs names the mode where
/// it is mounted. Otherwise (this host: lockdown=integrity without securityfs) fault's own
/// finding is taken, which it must state.
fn write_user_allowed() -> Option<bool> {
    if std::env::var_os("FAULT_IN_VM").is_some_and(|v| v == "1") {
        return Some(true);
    }
    std::fs::read_to_string("/sys/kernel/security/lockdown")
        .ok()
        .map(|text| text.contains("[none]"))
}

fn realtime_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i128
}

/// The lines a `clock-pair` probe prints (`<vDSO ns> <raw ns>`), each with the true time
/// it was read at.
type Pairs = Arc<Mutex<Vec<(i128, i128, i128)>>>;

fn collect(child: &mut std::process::Child) -> Pairs {
    let out = child.stdout.take().expect("piped stdout");
    let pairs: Pairs = Arc::default();
    let sink = pairs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut it = line.split_whitespace().map(|w| w.parse::<i128>().ok());
            if let (Some(Some(vdso)), Some(Some(raw))) = (it.next(), it.next()) {
                let row = (realtime_ns(), vdso, raw);
                sink.lock().unwrap().push(row);
            }
        }
    });
    pairs
}

/// The readings made after `since` (true ns), waiting up to 5 s for at least 5.
fn after(pairs: &Pairs, since: i128) -> Vec<(i128, i128, i128)> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let got: Vec<_> = pairs
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|r| r.0 > since)
            .collect();
        if got.len() >= 5 || Instant::now() > until {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The worst distance (ns) of each reading from `truth + skew`, as (vDSO, raw).
fn worst(rows: &[(i128, i128, i128)], skew: i128) -> (i128, i128) {
    rows.iter().fold((0, 0), |(v, r), &(at, vdso, raw)| {
        (
            v.max((vdso - at - skew).abs()),
            r.max((raw - at - skew).abs()),
        )
    })
}

#[test]
fn raw_clock_reads_get_the_skew_where_ebpf_may_write_user_memory_and_end_with_the_loader() {
    require_root();
    let allowed = write_user_allowed();
    {
        let cgroup = Cgroup::new("rawclock");
        let mut cmd = probe(&["clock-pair", "--interval-ms", "20"]);
        cmd.stdout(Stdio::piped());
        let mut reader = spawn_in(Some(&cgroup), None, cmd);
        let pairs = collect(reader.child_mut());
        let policy = format!(
            "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: rawclock\nspec:\n  \
             duration: 60s\n  targets:\n    - cgroup: {}\n  clock:\n    - name: ahead\n      \
             offset: 5s\n",
            cgroup.path().display()
        );
        let file = write_policy(&policy);
        let mut apply = FaultApply::start(file.path(), "rawclock");
        apply.wait_ready();
        std::thread::sleep(Duration::from_millis(500));
        let rows = after(&pairs, realtime_ns());
        assert!(rows.len() >= 5, "too few readings: {rows:?}");
        let (vdso, raw) = worst(&rows, 5 * SEC);
        let ms = |ns: i128| ns as f64 / 1e6;
        println!(
            "rawclock: {} readings under +5 s; worst distance from the skewed time: vDSO \
             {:.1} ms, raw system call {:.1} ms (eBPF may write user memory: {allowed:?})",
            rows.len(),
            ms(vdso),
            ms(raw)
        );
        assert!(vdso < 200_000_000, "the vDSO reads the skew: {rows:?}");
        let log = apply.log();
        let refused = log.contains("refuses bpf_probe_write_user");
        assert_ne!(
            allowed,
            Some(refused),
            "fault's finding on writing user memory: {log}"
        );
        if !refused {
            assert!(raw < 200_000_000, "the raw reads get the skew: {rows:?}");
            assert!(log.contains("rewritten by eBPF"), "{log}");
        } else {
            let (_, truth) = worst(&rows, 0);
            assert!(truth < 200_000_000, "the raw reads are true: {rows:?}");
            assert!(
                log.contains(&format!("process {} (fault-probe)", reader.pid())),
                "the raw reader is named: {log}"
            );
        }
        // The rewrite's links are the loader's: they end with it.
        // SAFETY: kill has no memory-safety preconditions; the pid is our child.
        unsafe { libc::kill(apply.pid() as i32, libc::SIGKILL) };
        apply.wait_exit(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(1100));
        let rows = after(&pairs, realtime_ns());
        let (vdso, raw) = worst(&rows, 0);
        println!(
            "rawclock: 1.1 s after the loader's SIGKILL, worst distance from true time: \
             vDSO {:.1} ms, raw {:.1} ms",
            ms(vdso),
            ms(raw)
        );
        assert!(
            vdso < 200_000_000 && raw < 200_000_000,
            "true time again: {rows:?}"
        );
        let out = fault(["stop", "--all"]);
        assert!(out.status.success(), "fault stop --all: {out:?}");
    }
    assert_no_leftovers();
}

/// The policy for `cgroup`: its realtime clock `offset` off, for a minute.
fn skew_policy(name: &str, cgroup: &Cgroup, offset: &str) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         duration: 60s\n  targets:\n    - cgroup: {}\n  clock:\n    - name: off\n      \
         offset: {offset}\n",
        cgroup.path().display()
    )
}

/// Each line an `abs-wait` probe prints: how long (ns) one wait took by CLOCK_MONOTONIC,
/// with the true time it was printed at.
fn waits_after(pairs: &Arc<Mutex<Vec<(i128, i128)>>>, since: i128, n: usize) -> Vec<i128> {
    let until = Instant::now() + Duration::from_secs(12);
    loop {
        let got: Vec<i128> = pairs
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 > since)
            .map(|r| r.1)
            .collect();
        if got.len() >= n || Instant::now() > until {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn collect_waits(child: &mut std::process::Child) -> Arc<Mutex<Vec<(i128, i128)>>> {
    let out = child.stdout.take().expect("piped stdout");
    let waits: Arc<Mutex<Vec<(i128, i128)>>> = Arc::default();
    let sink = waits.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(ns) = line.trim().parse::<i128>() {
                sink.lock().unwrap().push((realtime_ns(), ns));
            }
        }
    });
    waits
}

#[test]
fn absolute_waits_last_as_long_as_on_a_machine_whose_clock_is_that_far_off() {
    require_root();
    let allowed = write_user_allowed();
    // The timerfd is made before the patch (its clock is read from /proc), the POSIX
    // timers after (their clocks are recorded at their creation).
    // timerfd-same passes one itimerspec as the new and the old value; timerfd-dup arms a
    // new copy of the descriptor each time.
    let ways = [
        "nanosleep",
        "futex",
        "timerfd",
        "timer",
        "timerfd-same",
        "timerfd-dup",
    ];
    for (how, offset) in ways.iter().flat_map(|w| [(w, "5s"), (w, "-5s")]) {
        {
            let cgroup = Cgroup::new("rawwait");
            let mut cmd = probe(&["abs-wait", "--interval-ms", "1000", "--via", how]);
            cmd.stdout(Stdio::piped());
            let mut waiter = spawn_in(Some(&cgroup), None, cmd);
            let waits = collect_waits(waiter.child_mut());
            let file = write_policy(&skew_policy("rawwait", &cgroup, offset));
            let mut apply = FaultApply::start(file.path(), "rawwait");
            apply.wait_ready();
            let ready = realtime_ns();
            let log = apply.log();
            let refused = log.contains("refuses bpf_probe_write_user");
            assert_ne!(allowed, Some(refused), "fault's finding: {log}");
            if refused {
                let named = format!("process {} (fault-probe)", waiter.pid());
                let until = Instant::now() + Duration::from_secs(8);
                while !apply.log().contains(&named) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let log = apply.log();
                assert!(
                    log.contains(&named) && log.contains("wait(s) until an absolute time"),
                    "{how} under {offset}: the waiter is named: {log}"
                );
                println!("rawwait: {how} under {offset}: named, as this kernel refuses");
            } else {
                // The wait under way at the patch began by the true clock: skip it.
                let got = waits_after(&waits, ready, 3);
                let ms: Vec<f64> = got.iter().map(|&ns| ns as f64 / 1e6).collect();
                println!("rawwait: {how} under {offset}: waits of 1 s took {ms:.1?} ms");
                assert!(got.len() >= 3, "{how} under {offset}: {ms:?}");
                for &w in &got[1..3] {
                    assert!(
                        (w - SEC).abs() <= SEC / 10,
                        "{how} under {offset}: a wait of 1 s took {ms:?} ms"
                    );
                }
            }
            let (status, log) = apply.stop();
            assert!(status.success(), "{log}");
        }
        assert_no_leftovers();
    }
}

#[test]
fn monotonic_never_goes_back_through_the_vdso_and_the_system_call_mixed() {
    require_root();
    let allowed = write_user_allowed();
    {
        let cgroup = Cgroup::new("rawmono");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let go = dir.path().join("go");
        let cmd = probe(&["mono-mixed", "--go", go.to_str().unwrap()]);
        let mixer = spawn_in(Some(&cgroup), None, cmd);
        let file = write_policy(&format!(
            "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: rawmono\nspec:\n  \
             duration: 120s\n  targets:\n    - cgroup: {}\n  clock:\n    - name: noisy\n      \
             clocks: [monotonic]\n      jitter: 2ms\n",
            cgroup.path().display()
        ));
        let mut apply = FaultApply::start(file.path(), "rawmono");
        apply.wait_ready();
        let log = apply.log();
        let refused = log.contains("refuses bpf_probe_write_user");
        assert_ne!(allowed, Some(refused), "fault's finding: {log}");
        // The process is watched by the rewrite within a tick of being patched.
        std::thread::sleep(Duration::from_millis(500));
        std::fs::write(&go, b"").expect("write the go file");
        let out = mixer.wait_output(Duration::from_secs(300));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "mono-mixed: {out:?}");
        println!("rawmono: steps back, reads, largest step back (ns): {text}");
        let f: Vec<i64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [back, reads, worst] = f[..] else {
            panic!("mono-mixed printed {text:?}");
        };
        assert_eq!(reads, 1_000_000);
        if refused {
            // Raw reads are true time, the vDSO's lag by up to 2 ms: mixed, they go back.
            assert!(back > 0, "the two paths disagree here: {text}");
            assert!(worst <= 2_100_000, "by the jitter at most: {text}");
        } else {
            assert_eq!(
                back, 0,
                "monotonic went back {back} times, by up to {worst} ns"
            );
        }
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
    }
    assert_no_leftovers();
}

/// This kernel's (major, minor) version.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut it = release.split(['.', '-']).map(|w| w.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The tracepoints (`bpftool perf list`) at which process `pid` runs a program.
fn tracepoints_of(pid: u32) -> Vec<String> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "perf", "list"])
        .output()
        .expect("run bpftool perf list");
    assert!(out.status.success(), "bpftool perf list: {out:?}");
    let list: Vec<serde_json::Value> = match out.stdout.iter().all(u8::is_ascii_whitespace) {
        true => Vec::new(),
        false => serde_json::from_slice(&out.stdout).expect("bpftool's JSON"),
    };
    let mut names: Vec<String> = list
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(pid as u64))
        .filter_map(|e| e["tracepoint"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The raw tracepoint links of `fault_clock_*` programs (`bpftool link list`).
fn raw_clock_links() -> Vec<String> {
    let json = |what: &str| -> Vec<serde_json::Value> {
        let out = std::process::Command::new("bpftool")
            .args(["-j", what, "list"])
            .output()
            .expect("run bpftool");
        match out.stdout.iter().all(u8::is_ascii_whitespace) {
            true => Vec::new(),
            false => serde_json::from_slice(&out.stdout).expect("bpftool's JSON"),
        }
    };
    let clock_progs: Vec<u64> = json("prog")
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("fault_clock"))
        })
        .filter_map(|p| p["id"].as_u64())
        .collect();
    json("link")
        .iter()
        .filter(|l| l["type"] == "raw_tracepoint")
        .filter(|l| {
            l["prog_id"]
                .as_u64()
                .is_some_and(|id| clock_progs.contains(&id))
        })
        .map(|l| l.to_string())
        .collect()
}

fn tracefs_mounts() -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines().filter(|l| l.contains(" - tracefs ")).count()
}

#[test]
fn the_clock_call_hooks_sit_on_the_clock_calls_own_tracepoints_and_mount_nothing() {
    require_root();
    let per_call = kernel_version() >= (5, 15);
    let mounts = tracefs_mounts();
    {
        let cgroup = Cgroup::new("rawhook");
        let mut cmd = probe(&["clock-pair", "--interval-ms", "50"]);
        cmd.stdout(Stdio::null());
        let reader = spawn_in(Some(&cgroup), None, cmd);
        let file = write_policy(&skew_policy("rawhook", &cgroup, "5s"));
        let mut apply = FaultApply::start(file.path(), "rawhook");
        apply.wait_ready();
        // Counting only (lockdown), the hook is attached for a window from the patch on.
        let seen = tracepoints_of(apply.pid());
        let raw = raw_clock_links();
        let log = apply.log();
        println!("rawhook: fault's tracepoints: {seen:?}; raw links: {raw:?}");
        if per_call {
            for call in [
                "clock_gettime",
                "gettimeofday",
                "time",
                "futex",
                "clock_nanosleep",
            ] {
                let name = format!("sys_enter_{call}");
                assert!(seen.contains(&name), "{name} in {seen:?}: {log}");
            }
            // (the exec hold's raw sched_process_exec is fault's too)
            let all_calls = ["sys_enter", "sys_exit"];
            assert!(
                !seen.iter().any(|t| all_calls.contains(&t.as_str())),
                "only the calls' own tracepoints: {seen:?}"
            );
            assert!(raw.is_empty(), "no raw sys_enter/sys_exit links: {raw:?}");
            if log.contains("refuses bpf_probe_write_user") {
                // Counting alone: the calls that only tell a timer's clock are left alone.
                assert!(
                    !seen
                        .iter()
                        .any(|t| t.contains("fcntl") || t.contains("dup")),
                    "{seen:?}"
                );
            }
            assert!(!log.contains("raw sys_enter"), "{log}");
        } else {
            assert!(seen.iter().any(|t| t == "sys_enter"), "{seen:?}");
            assert!(!raw.is_empty(), "before 5.15, the raw tracepoint: {log}");
            assert!(log.contains("use the raw sys_enter tracepoint"), "{log}");
        }
        assert_eq!(tracefs_mounts(), mounts, "tracefs mounts on the host");
        let (status, log) = apply.stop();
        assert!(status.success(), "{log}");
        drop(reader);
    }
    assert_no_leftovers();
}
