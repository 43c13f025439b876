//! `cargo xtask bench`: fault's performance, measured side by side in one run, written to
//! BENCHMARKS.md.
//!
//! 1. Classifier cost per packet through BPF_PROG_TEST_RUN (`fault-bench`), for 1, 1,000 and
//!    10,000 rules.
//! 2. Throughput of an untargeted TCP flow over a veth pair with fault attached in its
//!    namespace and without, in alternating rounds.
//! 3. Clock faults (`fault-clock-bench`): the cost of a clock read in a patched process next
//!    to an untouched one, how long patching stops a process, and the time to the first
//!    faulted read after `fault apply` and after an exec inside the target.
//! 4. Delay (`bench/guest-delay.sh`, in the Debian 6.1 guest, which has sch_fq and netem):
//!    fault's EDT delay side by side with tc-netem on the same veth.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    build, cmd,
    sandbox::{wait_ready, Layout, Sandbox},
    setup,
};

const NS_A: &str = "fault-bench-a";
const NS_B: &str = "fault-bench-b";
const ROUNDS: usize = 5;
const BYTES: u64 = 2 << 30;

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("cargo xtask bench takes no arguments, got {a}");
    }
    setup::ensure()?;
    let fault = build::fault(root)?;
    let probe = build::probe(root)?;
    let mut c = cmd::cargo();
    c.current_dir(root).args([
        "build",
        "--release",
        "-p",
        "fault-user",
        "--bin",
        "fault-bench",
    ]);
    cmd::run(&mut c)?;
    let bench = crate::target_dir(root).join("release/fault-bench");

    println!("== classifier cost (BPF_PROG_TEST_RUN, 1,000,000 runs, median of 5)");
    let classifier = cmd::stdout_of(&mut Command::new(&bench))
        .context("fault-bench failed (run it by hand to see why)")?;
    print!("{classifier}");

    println!(
        "== throughput of an untargeted TCP flow, {ROUNDS} rounds of {} MiB",
        BYTES >> 20
    );
    let sb = Sandbox::create(
        &fault,
        Layout {
            ns: [NS_A, NS_B],
            dev: ["fbench0", "fbench1"],
            addr: ["10.67.0.1/24", "10.67.0.2/24"],
            cgroup: "fault-bench",
        },
    )?;
    let policy = root.join("target/bench-policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {{name: bench}}\nspec:\n  \
             duration: 10m\n  targets: [{{cgroup: {}}}]\n  network:\n    - direction: both\n      \
             match: {{protocol: tcp}}\n      drop: {{probability: 1%}}\n",
            sb.cgroup.display()
        ),
    )?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let a = throughput(&probe)?;
        let mut apply = Command::new(&fault)
            .args(["apply", "--interval", "1h"])
            .arg(&policy)
            .stdout(Stdio::null())
            .spawn()?;
        let b = wait_ready(&mut apply, "bench").and_then(|()| throughput(&probe));
        let _ = Command::new("kill")
            .args(["-TERM", &apply.id().to_string()])
            .status();
        let _ = apply.wait();
        let b = b?;
        println!("  round {round}: without {a:.2} Gbit/s, with {b:.2} Gbit/s");
        without.push(a);
        with.push(b);
    }
    drop(sb);
    let _ = std::fs::remove_file(&policy);
    let (m0, m1) = (median(&mut without), median(&mut with));
    let ratio = m1 / m0;
    println!("  median: without {m0:.2}, with {m1:.2} Gbit/s, ratio {ratio:.3}");

    // `cargo build -p fault-user` (build::fault above) builds fault-clock-bench too.
    println!("== clock faults (fault-clock-bench)");
    let clock_bench = crate::target_dir(root).join("release/fault-clock-bench");
    let clocks = cmd::stdout_of(Command::new(&clock_bench).arg("--fault").arg(&fault))
        .context("fault-clock-bench failed (run it by hand to see why)")?;
    print!("{clocks}");

    let kernel = cmd::stdout_of(Command::new("uname").arg("-r")).unwrap_or_default();
    let date = cmd::stdout_of(Command::new("date").args(["-u", "+%Y-%m-%d"])).unwrap_or_default();
    let text = format!(
        "# Benchmarks\n\nProduced by `cargo xtask bench` (as root) on {} with Linux {}, on this \
         project's 2-core VM. Rerun it to refresh this file.\n\n\
         ## Classifier cost per packet\n\n\
         Mean time per run of a UDP packet that no rule matches, as BPF_PROG_TEST_RUN reports \
         it over 1,000,000 runs (median of 5). It includes the test-run loop's own overhead. \
         Each rule has a /24 and a port of its own, so the trie holds two entries per rule \
         (both directions).\n\n\
         - *untargeted socket*: the sending socket's cgroup is not a target, the common case \
         for a host's traffic: one hash lookup, then the packet is handed on.\n\
         - *targeted socket, no rule matches*: the packet is parsed and looked up in the rule \
         trie (at most three lookups, whatever the number of rules).\n\
         - *ingress*: the cgroup_skb program, which only runs for the targets' sockets.\n\n\
         {classifier}\n\
         ## Throughput of an untargeted TCP flow\n\n\
         One TCP flow of {} MiB over a veth pair between two network namespaces, from a process \
         outside the target cgroup, in the namespace where fault attaches its egress program (the \
         target's resident process lives there too). {ROUNDS} rounds, each measuring without \
         and then with `fault apply` running; medians compared.\n\n\
         | round | without (Gbit/s) | with (Gbit/s) |\n|---:|---:|---:|\n{}\
         | median | {m0:.2} | {m1:.2} |\n\n**Ratio with/without: {ratio:.3}** (goal: at least 0.99)\n\n\
         ## Clock faults\n\n\
         By `fault-clock-bench --fault target/release/fault`. Cost: three copies of one \
         program time 10^6 calls per round, taking turns: one untouched, one patched with \
         offset, drift and jitter active on CLOCK_REALTIME (and jitter with the never-backwards \
         clamp on CLOCK_MONOTONIC), one patched with no clock faulted. Goal: at most 1.25x for \
         clock_gettime (the uprobe route costs about 14 µs a call here, a raw-syscall stub \
         about 300 ns). The untargeted process's ratio compares it before and while the others \
         are patched (goal 1.00: nothing is added for it). Stop: idle processes with 1, 100 and \
         500 threads patched and reverted 20 times (goal for one thread: p50 at most 2 ms). \
         Time to the first faulted read: a target reading the clock every 100 µs, from the \
         start of `fault apply` (goal < 100 ms); and processes started in the target while \
         fault runs, held at exec until patched, from just before the spawn (goal < 10 ms; \
         the same spawn outside the target is shown for reference).\n\n{clocks}",
        date.trim(),
        kernel.trim(),
        BYTES >> 20,
        without
            .iter()
            .zip(&with)
            .enumerate()
            .map(|(i, (a, b))| format!("| {} | {a:.2} | {b:.2} |\n", i + 1))
            .collect::<String>(),
    );
    println!("== delay: fault vs netem in the Debian 6.1 guest (several minutes)");
    let out = Command::new(std::env::current_exe()?)
        .args(["vm", "--", "sh"])
        .arg(root.join("xtask/src/bench/guest-delay.sh"))
        .env("FAULT_BIN", &fault)
        .env("FAULT_PROBE", &probe)
        .stderr(Stdio::inherit())
        .output()
        .context("run the delay bench in the guest")?;
    if !out.status.success() {
        bail!("the delay bench failed in the guest ({})", out.status);
    }
    let delay = String::from_utf8_lossy(&out.stdout);
    print!("{delay}");
    let text = format!(
        "{text}\n## Delay: fault (EDT + fq) and netem on the same veth\n\n\
         In the Debian 6.1 guest under qemu (TCG), which has sch_fq and sch_netem: UDP echo \
         round trips from a target process with an egress delay, first by fault, then by \
         `tc qdisc add dev va root netem delay`, on the same veth in the same run; a bulk \
         TCP transfer under 100 ms; and an untargeted process's round trip with 10,000 delay \
         rules installed (which also puts fq in place of the veth's noqueue).\n\n{delay}"
    );
    std::fs::write(root.join("BENCHMARKS.md"), text)?;
    println!("written to BENCHMARKS.md");
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One TCP transfer from an untargeted process in A to B; Gbit/s as the receiver saw it.
fn throughput(probe: &Path) -> Result<f64> {
    let receiver = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NS_B}"))
        .arg(probe)
        .args(["tcp-recv", "--bind", "10.67.0.2:5201"])
        .stdout(Stdio::piped())
        .spawn()?;
    sleep(Duration::from_millis(300));
    let sent = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NS_A}"))
        .arg(probe)
        .args([
            "tcp-send",
            "--to",
            "10.67.0.2:5201",
            "--bytes",
            &BYTES.to_string(),
        ])
        .output()?;
    let got = receiver.wait_with_output()?;
    let text = String::from_utf8_lossy(&got.stdout);
    let num = |key: &str| -> Option<f64> {
        text.split(&format!("\"{key}\":"))
            .nth(1)?
            .split([',', '}'])
            .next()?
            .trim()
            .parse()
            .ok()
    };
    match (num("bytes"), num("elapsed_ms")) {
        (Some(b), Some(ms)) if b as u64 == BYTES && ms > 0.0 => Ok(b * 8.0 / (ms / 1000.0) / 1e9),
        _ => bail!(
            "transfer failed: sender {}, receiver {text}",
            String::from_utf8_lossy(&sent.stdout)
        ),
    }
}
