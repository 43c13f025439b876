//! The loader SIGKILLed at the worst moments, not only at random ones: inside a patch (every
//! thread of the target stopped under ptrace, its signals blocked, a system call of fault's
//! made in it) and while a process held at exec is being patched. Afterwards every target
//! must stand as it did before: the same signal mask on every thread, not traced, not
//! stopped, reading true time within a second, and its vDSO pristine after `fault stop`.
//!
//! The moment is made with a test hook of the product (`FAULT_TEST_PATCH_HOLD_MS`): the
//! process that patches sleeps that long inside each patch, after its first system call in
//! the target. Run one at a time (`--test-threads=1`); each test leaves nothing behind.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::Command;
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
/// raw system call, every 20 ms.
struct Pair {
    child: ChildGuard,
    lines: Arc<Mutex<Vec<(Instant, i128, i128)>>>,
}

impl Pair {
    fn start(cgroup: &Cgroup, threads: u32) -> Self {
        let mut child = spawn_in(
            Some(cgroup),
            None,
            probe(&["clock-pair", "--threads", &threads.to_string()]),
        );
        let out = child.child_mut().stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some((seen, truth)) = line.split_once(' ') {
                    if let (Ok(seen), Ok(truth)) = (seen.parse(), truth.parse()) {
                        sink.lock().unwrap().push((Instant::now(), seen, truth));
                    }
                }
            }
        });
        Pair { child, lines }
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
            let readers: Vec<Pair> = (0..2).map(|_| Pair::start(&cgroup, 3)).collect();
            let sleepers: Vec<ChildGuard> = (0..2).map(|_| sleeper(&cgroup)).collect();
            for r in &readers {
                r.skews_after(Instant::now(), 1);
            }
            let pids: Vec<u32> = readers
                .iter()
                .map(Pair::pid)
                .chain(sleepers.iter().map(ChildGuard::pid))
                .collect();
            let before: BTreeMap<u32, Standing> = pids
                .iter()
                .map(|&p| (p, standing(p).expect("a running target")))
                .collect();

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
