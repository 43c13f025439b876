//! The cost of a clock read in a process whose vDSO fault has redirected, next to the same
//! program untouched, and how long patching stops a process. Needs root (ptrace); prints
//! Markdown tables.
//!
//! `fault-clock-bench [--rounds N]`: two copies of this program run as workers; one is
//! patched with offset, drift and jitter all active on CLOCK_REALTIME (and jitter on
//! CLOCK_MONOTONIC, which brings the clamp), the other is not. Both time 10^6 calls per
//! round, taking turns, and the medians are compared. Then idle workers with 1, 100 and 500
//! threads are patched and reverted 20 times each to time the stop.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fault::clock::{layout, patch};
use fault::policy::{ClockId, ClockRule};

const CALLS: u32 = 1_000_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        let threads = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        return worker(threads);
    }
    let rounds = match args.iter().position(|a| a == "--rounds") {
        Some(i) => args.get(i + 1).context("--rounds N")?.parse()?,
        None => 15,
    };
    if !nix::unistd::geteuid().is_root() {
        bail!("fault-clock-bench needs root: it patches its worker with ptrace");
    }
    cost(rounds)?;
    stop_times()
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
    let p = patch::patch(faulted.pid(), &plan)?;
    // Patched, but no clock faulted: the cost of the redirection alone.
    let nothing = layout::Plan::new(&[], 3_600_000_000_000, layout::now_ns);
    let q = patch::patch(idle.pid(), &nothing)?;
    let mut results: [[Vec<f64>; 4]; 3] = Default::default();
    for _ in 0..rounds {
        for (i, w) in [&mut plain, &mut faulted, &mut idle]
            .into_iter()
            .enumerate()
        {
            let r = w.round()?;
            for k in 0..4 {
                results[i][k].push(r[k]);
            }
        }
    }
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
