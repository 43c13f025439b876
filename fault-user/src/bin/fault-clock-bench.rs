//! The cost of a clock read in a process whose vDSO fault has redirected, next to the same
//! program untouched, and how long patching stops a process. Needs root (ptrace); prints
//! Markdown tables.
//!
//! `fault-clock-bench [--rounds N] [--fault PATH]`: two copies of this program run as workers; one is
//! patched with offset, drift and jitter all active on CLOCK_REALTIME (and jitter on
//! CLOCK_MONOTONIC, which brings the clamp), the other is not. Both time 10^6 calls per
//! round, taking turns, and the medians are compared. Then idle workers with 1, 100 and 500
//! threads are patched and reverted 20 times each to time the stop. With `--fault`, the
//! `fault` binary is run on a cgroup of its own: the time from `fault apply` to the first
//! faulted read in a running target, and from exec to the first read of a process started
//! in the target (held at exec until patched).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fault::clock::{layout, patch, syscall_tp::Hook};
use fault::policy::{ClockId, ClockRule};

const CALLS: u32 = 1_000_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--worker") => {
            let threads = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
            return worker(threads);
        }
        Some("--watch") => return watch(),
        Some("--first-read") => return first_read(),
        _ => {}
    }
    let fault_bin = args
        .iter()
        .position(|a| a == "--fault")
        .map(|i| args.get(i + 1).context("--fault PATH").map(PathBuf::from))
        .transpose()?;
    let rounds = match args.iter().position(|a| a == "--rounds") {
        Some(i) => args.get(i + 1).context("--rounds N")?.parse()?,
        None => 15,
    };
    if !nix::unistd::geteuid().is_root() {
        bail!("fault-clock-bench needs root: it patches its worker with ptrace");
    }
    cost(rounds)?;
    hook_cost(rounds)?;
    stop_times()?;
    if let Some(fault_bin) = fault_bin {
        apply_and_exec(&fault_bin)?;
    }
    Ok(())
}

/// ns per system call over `CALLS` calls of `call`.
fn time_calls(call: impl Fn()) -> f64 {
    let start = Instant::now();
    for _ in 0..CALLS {
        call();
    }
    start.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

/// What the clock-call count (`fault::clock::calls`) adds to the system calls of a process
/// it does not count: rounds without and with the program attached, taking turns.
fn hook_cost(rounds: usize) -> anyhow::Result<()> {
    let getppid = || {
        // SAFETY: no arguments, no memory.
        unsafe { libc::syscall(libc::SYS_getppid) };
    };
    let clock = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to write.
        unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_REALTIME, &mut ts) };
    };
    let word = 0u32;
    let futex = || {
        // SAFETY: a wake on our own word, which nobody waits on.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                &word as *const u32,
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                1,
            )
        };
    };
    let calls: [(&str, &dyn Fn()); 3] = [
        ("getppid (not a clock call)", &getppid),
        (
            "futex(FUTEX_WAKE), no waiter (watched for realtime waits)",
            &futex,
        ),
        ("clock_gettime as a system call", &clock),
    ];
    // [no hook, raw sys_enter, the calls' own tracepoints][call]: rounds' ns per call
    let mut ns = vec![vec![Vec::new(); calls.len()]; 3];
    let mut hook = String::new();
    for _ in 0..rounds {
        for (k, sample) in ns.iter_mut().enumerate() {
            let watch = match k {
                0 => None,
                _ => Some(
                    fault::clock::calls::CallWatch::start_with(1, k == 1)
                        .map_err(|e| anyhow::anyhow!("attach the clock-call count: {e:#}"))?,
                ),
            };
            if let (2, Some(Hook::Raw { why })) = (k, watch.as_ref().map(|w| w.hook())) {
                hook = format!(" (here on the raw sys_enter as well: {why})");
            }
            for (i, (_, call)) in calls.iter().enumerate() {
                sample[i].push(time_calls(call));
            }
        }
    }
    println!(
        "system calls of a process the clock-call count does not count, medians of {rounds} \
         rounds of {CALLS} calls (ns per call), with the count attached to the raw sys_enter \
         tracepoint (every system call runs it) and to the clock calls' own \
         sys_enter_<name> tracepoints{hook}:\n"
    );
    println!(
        "| system call | no hook | raw sys_enter | clock calls' tracepoints | ratio raw | \
         ratio clock calls' |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, (name, _)) in calls.iter().enumerate() {
        let m: Vec<f64> = ns.iter().map(|k| median(k[i].clone())).collect();
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} |",
            m[0],
            m[1],
            m[2],
            m[1] / m[0],
            m[2] / m[0]
        );
    }
    println!();
    Ok(())
}

fn rules() -> Vec<ClockRule> {
    vec![
        ClockRule {
            name: "bench-wall".into(),
            clocks: vec![ClockId::Realtime],
            offset_ns: -2_000_000_000,
            drift_ppm: 500.0,
            jumps: None,
            jitter_ns: 2_000_000,
            allow_backwards: false,
        },
        ClockRule {
            name: "bench-mono".into(),
            clocks: vec![ClockId::Monotonic],
            offset_ns: 0,
            drift_ppm: 0.0,
            jumps: None,
            jitter_ns: 1_000,
            allow_backwards: false,
        },
    ]
}

fn whole_seconds() -> ClockRule {
    ClockRule {
        name: "bench-seconds".into(),
        clocks: vec![ClockId::Realtime],
        offset_ns: -2_000_000_000,
        drift_ppm: 0.0,
        jumps: None,
        jitter_ns: 0,
        allow_backwards: false,
    }
}

struct Worker {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(threads: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--worker", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let input = child.stdin.take().context("stdin")?;
        let mut output = BufReader::new(child.stdout.take().context("stdout")?);
        let mut ready = String::new();
        output.read_line(&mut ready)?;
        Ok(Worker {
            child,
            input,
            output,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One round: ns per call for clock_gettime(REALTIME), (MONOTONIC), gettimeofday, time.
    fn round(&mut self) -> anyhow::Result<[f64; 4]> {
        writeln!(self.input, "go")?;
        let mut line = String::new();
        self.output.read_line(&mut line)?;
        let v: Vec<f64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        Ok([v[0], v[1], v[2], v[3]])
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The fastest round: on a busy machine the least disturbed one.
fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn cost(rounds: usize) -> anyhow::Result<()> {
    let rules = rules();
    let plan = layout::Plan::new(&rules, 3_600_000_000_000, layout::now_ns);
    let mut plain = Worker::spawn(0)?;
    let mut faulted = Worker::spawn(0)?;
    let mut idle = Worker::spawn(0)?;
    let mut whole = Worker::spawn(0)?;
    // The untargeted process before anything is patched, taking turns with the same
    // workers as later, for its ratio.
    let mut untargeted_before = Vec::new();
    for _ in 0..rounds {
        untargeted_before.push(plain.round()?[0]);
        faulted.round()?;
        idle.round()?;
        whole.round()?;
    }
    let p = patch::patch(faulted.pid(), &plan)?;
    // Patched, but no clock faulted: the cost of the redirection alone.
    let nothing = layout::Plan::new(&[], 3_600_000_000_000, layout::now_ns);
    let q = patch::patch(idle.pid(), &nothing)?;
    // A game day's usual skew: whole seconds and nothing else, time()'s fast path.
    let seconds = layout::Plan::new(&[whole_seconds()], 3_600_000_000_000, layout::now_ns);
    let w = patch::patch(whole.pid(), &seconds)?;
    let mut results: [[Vec<f64>; 4]; 4] = Default::default();
    for _ in 0..rounds {
        for (i, w) in [&mut plain, &mut faulted, &mut idle, &mut whole]
            .into_iter()
            .enumerate()
        {
            let r = w.round()?;
            for k in 0..4 {
                results[i][k].push(r[k]);
            }
        }
    }
    patch::revert_patched(&w)?;
    patch::revert_patched(&q)?;
    patch::revert_patched(&p)?;
    let mut after = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..rounds.min(5) {
        let r = faulted.round()?;
        for k in 0..4 {
            after[k].push(r[k]);
        }
    }
    println!("clock read cost, medians of {rounds} rounds of {CALLS} calls (ns per call):\n");
    println!("| call | untouched process | patched (offset+drift+jitter) | ratio of medians | ratio of best rounds | patched, no clock faulted | patched process after revert |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let names = [
        "clock_gettime(REALTIME)",
        "clock_gettime(MONOTONIC), jitter + clamp",
        "gettimeofday",
        "time",
    ];
    for k in 0..4 {
        let a = median(results[0][k].clone());
        let b = median(results[1][k].clone());
        let c = median(after[k].clone());
        let e = median(results[2][k].clone());
        let (ba, bb) = (best(&results[0][k]), best(&results[1][k]));
        println!(
            "| {} | {a:.1} | {b:.1} | {:.2}x | {:.2}x | {e:.1} | {c:.1} |",
            names[k],
            b / a,
            bb / ba
        );
    }
    println!();
    let (a, b) = (median(results[0][3].clone()), median(results[3][3].clone()));
    let (ba, bb) = (best(&results[0][3]), best(&results[3][3]));
    println!(
        "time() under a whole-second offset alone (-2 s: the fast path, no clock_gettime): \
         {b:.1} ns against {a:.1} ns untouched: **ratio of medians {:.2}x**, of best rounds \
         {:.2}x\n",
        b / a,
        bb / ba
    );
    let before = median(untargeted_before);
    let during = median(results[0][0].clone());
    println!(
        "untargeted process, clock_gettime(REALTIME): {before:.1} ns before the others were \
         patched, {during:.1} ns while they were: **ratio {:.2}**\n",
        during / before
    );
    Ok(())
}

fn stop_times() -> anyhow::Result<()> {
    let plan = layout::Plan::new(&rules(), 3_600_000_000_000, layout::now_ns);
    println!("how long patching stops a process (µs, 20 runs each):\n");
    println!("| threads | first patch | re-patch p50 | re-patch p90 | revert p50 |");
    println!("|---:|---:|---:|---:|---:|");
    for threads in [1usize, 100, 500] {
        let w = Worker::spawn(threads - 1)?;
        let first = patch::patch(w.pid(), &plan)?;
        let first_us = first.stopped_us;
        patch::revert_patched(&first)?;
        drop(first);
        let (mut again, mut revert) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            let p = patch::patch(w.pid(), &plan)?;
            again.push(p.stopped_us as f64);
            let t = Instant::now();
            patch::revert_patched(&p)?;
            revert.push(t.elapsed().as_micros() as f64);
        }
        again.sort_by(f64::total_cmp);
        let p90 = again[again.len() * 9 / 10];
        println!(
            "| {threads} | {first_us} | {:.0} | {p90:.0} | {:.0} |",
            median(again.clone()),
            median(revert)
        );
    }
    println!();
    Ok(())
}

const OFFSET_S: i64 = -2;
const POLICY: &str = "clock-bench";

/// CLOCK_REALTIME through the vDSO (faultable) and by the raw system call (never faulted).
fn both_clocks() -> (i64, i64) {
    let mut v = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut t = v;
    // SAFETY: valid out pointers.
    unsafe {
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut v);
        libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_REALTIME, &mut t);
    }
    let ns = |t: libc::timespec| t.tv_sec * 1_000_000_000 + t.tv_nsec;
    (ns(v), ns(t))
}

/// Reads the clock every 100 µs; prints the true time of the first faulted read, and exits.
fn watch() -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    loop {
        let (seen, truth) = both_clocks();
        if (seen - truth - OFFSET_S * 1_000_000_000).abs() < 100_000_000 {
            writeln!(out, "{truth}")?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Prints `<faultable ns> <true ns>` of its first clock read.
fn first_read() -> anyhow::Result<()> {
    let (seen, truth) = both_clocks();
    println!("{seen} {truth}");
    Ok(())
}

/// A cgroup of the bench's own; removed (its processes killed) on drop.
struct BenchCgroup(PathBuf);

impl BenchCgroup {
    fn create() -> anyhow::Result<Self> {
        let path = fault::sys::mounts::cgroup2_mount()?.join("fault-clock-bench");
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(BenchCgroup(path))
    }

    /// `cmd`, started inside the cgroup: it moves itself there between fork and exec.
    fn command(&self, program: &Path) -> anyhow::Result<Command> {
        use std::os::unix::process::CommandExt as _;
        let procs = std::ffi::CString::new(
            self.0
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )?;
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        Ok(cmd)
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running `fault apply`, ended with SIGTERM on drop.
struct Apply(Child);

impl Apply {
    fn start(fault_bin: &Path, policy: &Path) -> anyhow::Result<Self> {
        let child = Command::new(fault_bin)
            .args(["apply", "--interval", "1h"])
            .arg(policy)
            .stdout(Stdio::null())
            .spawn()
            .context("start fault apply")?;
        Ok(Apply(child))
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let state = format!("/run/fault/{POLICY}.json");
        let until = Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"ready\": true")) {
            if self.0.try_wait()?.is_some() || Instant::now() > until {
                bail!("fault apply did not get ready");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }
}

impl Drop for Apply {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn wall_ns() -> i64 {
    both_clocks().1
}

fn percentile(v: &[f64], p: usize) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn apply_and_exec(fault_bin: &Path) -> anyhow::Result<()> {
    let cgroup = BenchCgroup::create()?;
    let policy = std::env::temp_dir().join("fault-clock-bench.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {{name: {POLICY}}}\nspec:\n  \
             duration: 10m\n  targets: [{{cgroup: {}}}]\n  clock:\n    - name: bench\n      \
             offset: {OFFSET_S}s\n      drift: 500ppm\n      jitter: 1ms\n",
            cgroup.0.display()
        ),
    )?;
    let me = std::env::current_exe()?;

    // A running target: from the start of `fault apply` to its first faulted read.
    let mut to_first = Vec::new();
    for _ in 0..10 {
        let mut target = cgroup
            .command(&me)?
            .arg("--watch")
            .stdout(Stdio::piped())
            .spawn()?;
        let mut out = BufReader::new(target.stdout.take().context("stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)?;
        let started = wall_ns();
        let mut apply = Apply::start(fault_bin, &policy)?;
        line.clear();
        out.read_line(&mut line)?;
        let truth: i64 = line.trim().parse().context("watcher output")?;
        to_first.push((truth - started) as f64 / 1e6);
        apply.wait_ready()?;
        let _ = target.wait();
        drop(apply);
    }

    // Processes started in the target while fault runs: from just before the spawn (fork,
    // joining the cgroup and exec included) to their first read, which must be faulted.
    let mut apply = Apply::start(fault_bin, &policy)?;
    apply.wait_ready()?;
    let mut exec_to_first = Vec::new();
    for _ in 0..50 {
        let started = wall_ns();
        let out = cgroup.command(&me)?.arg("--first-read").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<i64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [seen, truth] = v[..] else {
            bail!("--first-read printed {text:?}");
        };
        if (seen - truth - OFFSET_S * 1_000_000_000).abs() > 100_000_000 {
            bail!("a process exec'd in the target read true time first ({text})");
        }
        exec_to_first.push((truth - started) as f64 / 1e6);
    }
    // The same spawn outside the target, for what fork and exec cost by themselves.
    let mut plain = Vec::new();
    for _ in 0..50 {
        let started = wall_ns();
        let out = Command::new(&me).arg("--first-read").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let truth: i64 = text
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .context("--first-read output")?;
        plain.push((truth - started) as f64 / 1e6);
    }
    drop(apply);
    let _ = std::fs::remove_file(&policy);
    // The run's event log, kept for `fault logs`: a bench leaves nothing behind.
    let _ = std::fs::remove_dir_all(Path::new(fault::state::STATE_DIR).join(POLICY));

    println!("time to the first faulted read (ms):\n");
    println!("| what | runs | p50 | p90 | max | goal |");
    println!("|---|---:|---:|---:|---:|---|");
    let row = |what: &str, v: &[f64], goal: &str| {
        println!(
            "| {what} | {} | {:.2} | {:.2} | {:.2} | {goal} |",
            v.len(),
            percentile(v, 50),
            percentile(v, 90),
            v.iter().copied().fold(0.0, f64::max)
        );
    };
    row(
        "running target: from starting `fault apply` (load, attach, patch)",
        &to_first,
        "< 100 ms",
    );
    row(
        "process exec'd in the target: from spawn (fork + exec + hold + patch)",
        &exec_to_first,
        "< 10 ms",
    );
    row(
        "the same spawn outside the target (no fault): first read",
        &plain,
        "(reference)",
    );
    println!();
    Ok(())
}

/// Waits for "go" on stdin, times the calls, prints ns per call; idle threads on request.
fn worker(threads: usize) -> anyhow::Result<()> {
    for _ in 0..threads {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(3600));
        });
    }
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        if line?.trim() != "go" {
            continue;
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let mut tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        let time = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            for _ in 0..CALLS {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(CALLS)
        };
        // SAFETY (all four): valid out pointers.
        let real = time(&mut || unsafe {
            libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts);
        });
        let mono = time(&mut || unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        });
        let gtod = time(&mut || unsafe {
            libc::gettimeofday(&mut tv, std::ptr::null_mut());
        });
        let tm = time(&mut || unsafe {
            libc::time(std::ptr::null_mut());
        });
        std::hint::black_box((&ts, &tv));
        writeln!(out, "{real} {mono} {gtod} {tm}")?;
        out.flush()?;
    }
    Ok(())
}
