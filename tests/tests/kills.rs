//! The loader SIGKILLed at the worst moments, not only at random ones: inside a patch (every
//! thread of the target stopped under ptrace, a system call of fault's made in it) and
//! while a process held at exec is being patched; and fault's injector, the tracer itself,
//! SIGKILLed inside a patch. Afterwards every target
//! must stand as it did before: the same signal mask on every thread, not traced, not
//! stopped, reading true time within a second, and its vDSO pristine after `fault stop`.
//!
//! The moment is made with a test hook of the product (`FAULT_TEST_PATCH_HOLD_MS`): the
//! process that patches sleeps that long inside each patch, after its first system call in
//! the target. Run one at a time (`--test-threads=1`); each test leaves nothing behind.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fault_tests::{
    assert_no_leftovers, fault_ok, probe, require_root, spawn_in, vdso_of, write_policy, Cgroup,
    ChildGuard, FaultApply, PolicyFile,
};

const HOLD_ENV: &str = "FAULT_TEST_PATCH_HOLD_MS";
const MS: i128 = 1_000_000;
/// The skew the policies ask for: no reading is near it by chance.
const SKEW: i128 = 30_000 * MS;

fn policy(name: &str, cgroup: &Cgroup) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         duration: 60s\n  targets:\n    - cgroup: {}\n  clock:\n    - name: ahead\n      \
         offset: 30s\n",
        cgroup.path().display()
    )
}

/// How a process stands: each thread's blocked-signal mask, its tracer, its state letter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Standing {
    masks: Vec<(u32, String)>,
    tracer: u32,
    state: char,
}

fn status_field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

fn standing(pid: u32) -> Option<Standing> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut masks = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let tid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
        masks.push((tid, status_field(&text, "SigBlk")?));
    }
    masks.sort();
    Some(Standing {
        masks,
        tracer: status_field(&status, "TracerPid")?.parse().ok()?,
        state: status_field(&status, "State")?.chars().next()?,
    })
}

impl Standing {
    fn free(&self) -> bool {
        self.tracer == 0 && !matches!(self.state, 't' | 'T')
    }
}

/// fault's injector processes still running (`fault injector`).
fn injectors() -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.len() >= 2 && args[0].ends_with(b"fault") && args[1] == b"injector" {
            out.push(pid);
        }
    }
    out
}

/// A `fault-probe clock-pair` in the target: what it read through the vDSO next to the
/// raw system call, every 20 ms, and with `--count-signals` how many SIGRTMIN it took.
struct Pair {
    child: ChildGuard,
    lines: Arc<Mutex<Vec<(Instant, i128, i128)>>>,
    signals: Arc<AtomicU64>,
}

impl Pair {
    fn start(cgroup: &Cgroup, threads: u32) -> Self {
        Self::spawn(cgroup, &["clock-pair", "--threads", &threads.to_string()])
    }

    fn counting_signals(cgroup: &Cgroup, threads: u32) -> Self {
        let threads = threads.to_string();
        Self::spawn(
            cgroup,
            &["clock-pair", "--threads", &threads, "--count-signals"],
        )
    }

    fn spawn(cgroup: &Cgroup, args: &[&str]) -> Self {
        let mut child = spawn_in(Some(cgroup), None, probe(args));
        let out = child.child_mut().stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let signals = Arc::new(AtomicU64::new(0));
        let (sink, count) = (lines.clone(), signals.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut fields = line.split(' ');
                let (Some(Ok(seen)), Some(Ok(truth))) =
                    (fields.next().map(str::parse), fields.next().map(str::parse))
                else {
                    continue;
                };
                if let Some(Ok(n)) = fields.next().map(str::parse) {
                    count.store(n, Ordering::Relaxed);
                }
                sink.lock().unwrap().push((Instant::now(), seen, truth));
            }
        });
        Pair {
            child,
            lines,
            signals,
        }
    }

    fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The skews (ns) it read after `since`, waiting for at least `n`.
    fn skews_after(&self, since: Instant, n: usize) -> Vec<i128> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got: Vec<i128> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.0 > since)
                .map(|l| l.1 - l.2)
                .collect();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "reader {} printed {} readings after the mark, expected {n}",
                self.pid(),
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn all_skews(&self) -> Vec<i128> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.1 - l.2)
            .collect()
    }
}

fn sleeper(cgroup: &Cgroup) -> ChildGuard {
    let mut cmd = Command::new("sleep");
    cmd.arg("600");
    spawn_in(Some(cgroup), None, cmd)
}

/// Two readers (three threads each) reading, and two sleepers, in `cgroup`: with every
/// pid and how each stands.
fn targets(
    cgroup: &Cgroup,
) -> (
    Vec<Pair>,
    Vec<ChildGuard>,
    Vec<u32>,
    BTreeMap<u32, Standing>,
) {
    let readers: Vec<Pair> = (0..2).map(|_| Pair::start(cgroup, 3)).collect();
    let sleepers: Vec<ChildGuard> = (0..2).map(|_| sleeper(cgroup)).collect();
    for r in &readers {
        r.skews_after(Instant::now(), 1);
    }
    let pids: Vec<u32> = readers
        .iter()
        .map(Pair::pid)
        .chain(sleepers.iter().map(ChildGuard::pid))
        .collect();
    let before = pids
        .iter()
        .map(|&p| (p, standing(p).expect("a running target")))
        .collect();
    (readers, sleepers, pids, before)
}

#[track_caller]
fn assert_pristine(pids: &[u32]) {
    let pristine = vdso_of(std::process::id());
    for &pid in pids {
        assert!(
            vdso_of(pid) == pristine,
            "process {pid}: its vDSO is still patched after `fault stop`"
        );
    }
}

/// Waits until `pids` (those still alive) are neither traced nor stopped; how long it took.
fn wait_free(pids: &[u32], within: Duration) -> Duration {
    let begun = Instant::now();
    loop {
        let stuck: Vec<(u32, Standing)> = pids
            .iter()
            .filter_map(|&p| standing(p).map(|s| (p, s)))
            .filter(|(_, s)| !s.free())
            .collect();
        if stuck.is_empty() {
            return begun.elapsed();
        }
        assert!(
            begun.elapsed() < within,
            "still traced or stopped {within:?} after the loader died: {stuck:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the `nth` distinct process of `pids` is seen traced; returns it.
fn wait_nth_traced(pids: &[u32], nth: usize, apply: &mut FaultApply) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen: Vec<u32> = Vec::new();
    loop {
        for &p in pids {
            if !seen.contains(&p) && standing(p).is_some_and(|s| s.tracer != 0) {
                seen.push(p);
                if seen.len() == nth {
                    return p;
                }
            }
        }
        if let Some(status) = apply.try_wait() {
            panic!("fault apply ended ({status}) first:\n{}", apply.log());
        }
        assert!(
            Instant::now() < deadline,
            "{nth} target(s) never seen under ptrace (saw {seen:?}):\n{}",
            apply.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn sigkill(apply: &mut FaultApply) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our child.
    unsafe { libc::kill(apply.pid() as i32, libc::SIGKILL) };
    apply.wait_exit(Duration::from_secs(5));
}

/// `fault apply FILE` with the test hook: each patch holds for 300 ms inside.
fn apply_holding(file: &PolicyFile, name: &str) -> FaultApply {
    FaultApply::start_env(
        [std::ffi::OsStr::new("apply"), file.path().as_os_str()],
        name,
        &[(HOLD_ENV, "300")],
    )
}

/// The injector finishes what it holds and exits with its loader (within 2 s).
#[track_caller]
fn assert_injector_gone() {
    let left = Instant::now() + Duration::from_secs(2);
    while !injectors().is_empty() && Instant::now() < left {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        injectors(),
        Vec::<u32>::new(),
        "the injector outlived its loader"
    );
}

#[track_caller]
fn assert_true_time(skews: &[i128], what: &str) {
    for s in skews {
        assert!(
            s.abs() < 5 * MS,
            "{what}: read {:+.3} s off true time, expected true time",
            *s as f64 / 1e9
        );
    }
}

/// Four cycles, each with two readers (three threads each) and two sleepers started fresh,
/// the loader killed while the first, second, third and fourth of them is being patched.
#[test]
fn a_loader_killed_inside_a_patch_leaves_every_target_as_it_found_it() {
    require_root();
    {
        let cgroup = Cgroup::new("kill-patch");
        let file = write_policy(&policy("kill-patch", &cgroup));
        let mut figures = Vec::new();
        for cycle in 0..4 {
            let (readers, _sleepers, pids, before) = targets(&cgroup);

            let mut apply = apply_holding(&file, "kill-patch");
            let victim = wait_nth_traced(&pids, cycle + 1, &mut apply);
            std::thread::sleep(Duration::from_millis(50));
            let held = standing(victim).expect("the victim runs");
            sigkill(&mut apply);
            let killed = Instant::now();
            let settled = wait_free(&pids, Duration::from_secs(3));
            figures.push(format!(
                "cycle {cycle}: killed while patching {victim} (state {}, tracer {}); all free {:.0} ms later",
                held.state,
                held.tracer,
                settled.as_secs_f64() * 1e3
            ));
            for (&pid, was) in &before {
                let now = standing(pid).expect("every target survives");
                assert_eq!(
                    now.masks, was.masks,
                    "cycle {cycle}: process {pid}'s signal masks changed"
                );
            }
            assert_injector_gone();
            // The lease: true time within a second of the death, on every reader.
            for r in &readers {
                assert_true_time(
                    &r.skews_after(killed + Duration::from_millis(1050), 3),
                    &format!("cycle {cycle}: reader {} after the death", r.pid()),
                );
            }
            fault_ok(["stop", "--all"]);
            assert_pristine(&pids);
            for (&pid, was) in &before {
                assert_eq!(
                    standing(pid).map(|s| s.masks),
                    Some(was.masks.clone()),
                    "cycle {cycle}: process {pid} after `fault stop`"
                );
            }
            drop(apply);
        }
        for f in &figures {
            eprintln!("{f}");
        }
    }
    assert_no_leftovers();
}

/// Three cycles: a reader exec'd in the target after apply is held at exec, and the
/// loader is killed while it is being patched. It must go on, unfaulted, with its own mask.
#[test]
fn a_loader_killed_while_patching_a_process_held_at_exec_lets_it_go_unfaulted() {
    require_root();
    {
        let cgroup = Cgroup::new("kill-exec");
        let file = write_policy(&policy("kill-exec", &cgroup));
        let mut figures = Vec::new();
        for cycle in 0..3 {
            let mut apply = apply_holding(&file, "kill-exec");
            apply.wait_ready();
            let reader = Pair::start(&cgroup, 3);
            let pid = reader.pid();
            wait_nth_traced(&[pid], 1, &mut apply);
            let held = standing(pid).expect("the reader runs");
            sigkill(&mut apply);
            let killed = Instant::now();
            let settled = wait_free(&[pid], Duration::from_secs(3));
            figures.push(format!(
                "cycle {cycle}: killed while patching {pid} held at exec (state {}); free {:.0} ms later",
                held.state,
                settled.as_secs_f64() * 1e3
            ));
            let now = standing(pid).expect("the reader survives");
            assert!(
                now.masks.iter().all(|(_, m)| m == "0000000000000000"),
                "cycle {cycle}: the reader's masks are not its own (none blocked): {now:?}"
            );
            // Its patch was finished after the loader's death, leased from before it: true
            // time within a second of the death.
            assert_true_time(
                &reader.skews_after(killed + Duration::from_millis(1050), 5),
                &format!("cycle {cycle}: reader {pid} a second after the death"),
            );
            let all = reader.all_skews();
            figures.push(format!(
                "cycle {cycle}: reader {pid} read the skew {} time(s) of {}",
                all.iter().filter(|s| (*s - SKEW).abs() < 100 * MS).count(),
                all.len()
            ));
            assert_injector_gone();
            fault_ok(["stop", "--all"]);
            assert_pristine(&[pid]);
            drop(reader);
            drop(apply);
        }
        for f in &figures {
            eprintln!("{f}");
        }
    }
    assert_no_leftovers();
}

/// Two cycles, each with two readers (three threads each) and two sleepers, fault's injector
/// (the tracer) SIGKILLed while the first, then the second of them is being patched: every
/// target must go on with its own masks, its sleep and its registers (a reader that resumed
/// on fault's registers would crash or stop printing). The loader goes on, starts another
/// injector, and tries the cut process once more.
#[test]
fn the_injector_killed_inside_a_patch_leaves_every_target_as_it_found_it() {
    require_root();
    {
        let cgroup = Cgroup::new("kill-injector");
        let file = write_policy(&policy("kill-injector", &cgroup));
        let mut figures = Vec::new();
        for cycle in 0..2 {
            let (readers, _sleepers, pids, before) = targets(&cgroup);

            let mut apply = apply_holding(&file, "kill-injector");
            let victim = wait_nth_traced(&pids, cycle + 1, &mut apply);
            std::thread::sleep(Duration::from_millis(50));
            let helpers = injectors();
            assert_eq!(helpers.len(), 1, "one injector runs: {helpers:?}");
            let tracer = standing(victim).expect("the victim runs").tracer;
            assert_eq!(tracer, helpers[0], "the injector is the victim's tracer");
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(helpers[0] as i32, libc::SIGKILL) };
            let killed = Instant::now();
            std::thread::sleep(Duration::from_millis(20));
            for (&pid, was) in &before {
                let now = standing(pid).expect("every target survives the tracer's death");
                assert_eq!(
                    now.masks, was.masks,
                    "cycle {cycle}: process {pid}'s signal masks changed"
                );
            }
            // Every reader goes on reading; all are patched in the end (the cut one again).
            apply.wait_ready();
            for r in &readers {
                let deadline = Instant::now() + Duration::from_secs(5);
                while !r
                    .skews_after(Instant::now(), 1)
                    .iter()
                    .all(|s| (s - SKEW).abs() < 100 * MS)
                {
                    assert!(
                        Instant::now() < deadline,
                        "cycle {cycle}: reader {} does not read the skew 5 s after the injector \
                         died (victim {victim}):\n{}",
                        r.pid(),
                        apply.log()
                    );
                }
            }
            let skewed = killed.elapsed();
            wait_free(&pids, Duration::from_secs(3));
            figures.push(format!(
                "cycle {cycle}: injector killed while patching {victim}; every reader skewed {:.0} ms later",
                skewed.as_secs_f64() * 1e3
            ));
            let (status, log) = apply.stop();
            assert!(
                status.success(),
                "fault apply after the injector's death: {status}\n{log}"
            );
            assert!(
                log.contains("tried again"),
                "the loader said nothing of the cut patch:\n{log}"
            );
            assert_injector_gone();
            assert_pristine(&pids);
            for (&pid, was) in &before {
                assert_eq!(
                    standing(pid).map(|s| s.masks),
                    Some(was.masks.clone()),
                    "cycle {cycle}: process {pid} after the revert"
                );
            }
            fault_ok(["stop", "--all"]);
        }
        for f in &figures {
            eprintln!("{f}");
        }
    }
    assert_no_leftovers();
}

/// A reader flooded with queued real-time signals (they do not merge: each is one
/// delivery) while it is patched, held 300 ms inside the patch, and reverted takes every
/// one in its handler, reads the skew while applied and true time after, and keeps its
/// masks: fault never blocks a signal, it delivers each on the thread's own registers.
#[test]
fn a_target_flooded_with_signals_while_patched_takes_every_one() {
    require_root();
    {
        let cgroup = Cgroup::new("signal-flood");
        let file = write_policy(&policy("signal-flood", &cgroup));
        let reader = Pair::counting_signals(&cgroup, 3);
        reader.skews_after(Instant::now(), 1);
        let pid = reader.pid();
        let before = standing(pid).expect("the reader runs");

        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let value = libc::sigval {
                        sival_ptr: std::ptr::null_mut(),
                    };
                    // SAFETY: sigqueue has no memory-safety preconditions.
                    if unsafe { libc::sigqueue(pid as i32, libc::SIGRTMIN(), value) } == 0 {
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                sent
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        let mut apply = apply_holding(&file, "signal-flood");
        apply.wait_ready();
        let applied = Instant::now();
        let skews = reader.skews_after(applied, 5);
        assert!(
            skews.iter().all(|s| (s - SKEW).abs() < 100 * MS),
            "the flooded reader does not read the skew: {skews:?}\n{}",
            apply.log()
        );
        let (status, log) = apply.stop();
        assert!(status.success(), "fault apply: {status}\n{log}");
        let reverted = Instant::now();
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        let sent = flood.join().expect("the sender");
        let deadline = Instant::now() + Duration::from_secs(3);
        while reader.signals.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let taken = reader.signals.load(Ordering::Relaxed);
        eprintln!("signals sent {sent}, taken {taken}; patch and revert made during the flood");
        assert_eq!(taken, sent, "signals were lost or made up:\n{log}");
        assert_true_time(
            &reader.skews_after(reverted, 3),
            "the reader after the revert",
        );
        let now = standing(pid).expect("the reader survives");
        assert_eq!(now.masks, before.masks, "the reader's signal masks changed");
        assert!(now.free(), "the reader is still stopped or traced: {now:?}");
        assert_pristine(&[pid]);
    }
    assert_no_leftovers();
}
