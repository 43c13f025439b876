//! Section 6 of the bench: experiments. What a flapping step costs traffic that is not
//! targeted (the same untargeted TCP flow as section 2, with and without an experiment
//! whose step flips every 200 ms), how punctual the switches are (as `fault apply` reports
//! them when it ends: how late after its time each change was made and how long the map
//! updates took; a packet sent after that sees the new state), and what probes cost the
//! loader in CPU.

use std::{
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context, Result};

use super::{median, transfer};
use crate::sandbox::{wait_ready, Sandbox};

const ROUNDS: usize = 5;
const BYTES: u64 = 2 << 30;
pub const NAME: &str = "bench-gameday";
/// How long the loader runs for the CPU comparison.
const CPU_RUN: Duration = Duration::from_secs(10);

/// An experiment on the sandbox's target: a TCP drop step flapping 200 ms on, 200 ms off,
/// and `probes` (YAML list items, indented by four) if any.
fn experiment(sb: &Sandbox, probes: &str) -> String {
    format!(
        "apiVersion: fault/v1\nkind: Experiment\nmetadata: {{name: {NAME}}}\nspec:\n  \
         duration: 10m\n  groups:\n    target: [{{cgroup: {}}}]\n{probes}  steps:\n    \
         - name: flapping\n      at: 0s\n      for: 10m\n      targets: target\n      \
         flap: {{on: 200ms, off: 200ms}}\n      network: [{{direction: both, match: \
         {{protocol: tcp}}, drop: {{probability: 1%}}}}]\n",
        sb.cgroup.display()
    )
}

/// Starts `fault apply` on `text`; the child, once it is ready.
fn start(fault: &Path, file: &Path, text: &str) -> Result<std::process::Child> {
    std::fs::write(file, text)?;
    let mut apply = Command::new(fault)
        .args(["apply", "--interval", "1h"])
        .arg(file)
        .stdout(Stdio::piped())
        .spawn()?;
    wait_ready(&mut apply, NAME)?;
    Ok(apply)
}

/// One transfer while the flapping experiment runs; `timeline` gets fault's switch line.
fn flapping(
    fault: &Path,
    file: &Path,
    sb: &Sandbox,
    probe: &Path,
    timeline: &mut String,
) -> Result<f64> {
    let apply = start(fault, file, &experiment(sb, ""))?;
    let b = transfer(sb, sb.on_host(0, probe), probe, BYTES);
    let out = finish(apply)?;
    if let Some(l) = out.lines().find(|l| l.contains("timeline:")) {
        *timeline = l.trim().to_owned();
    }
    Ok(b? / 1e9)
}

/// SIGTERM, then what fault printed.
fn finish(apply: std::process::Child) -> Result<String> {
    let _ = Command::new("kill")
        .args(["-TERM", &apply.id().to_string()])
        .status();
    let out = apply.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// CPU time (user + system) the process has used, in ms.
pub fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .context("stat without a command name")?
        .1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // USER_HZ is 100 on Linux.
    Ok(ticks * 10.0)
}

pub fn measure(fault: &Path, probe: &Path, sb: &Sandbox, root: &Path) -> Result<String> {
    let file = root.join("target/bench-gameday.yaml");
    let (mut without, mut with, mut rows) = (Vec::new(), Vec::new(), String::new());
    let mut timeline = String::new();
    let mut ratios = Vec::new();
    for round in 1..=ROUNDS {
        // Taking turns at going first, so a machine whose throughput drifts over minutes
        // (this one moves between 3 and 5 Gbit/s) favours neither side.
        let first = match round % 2 {
            0 => Some(flapping(fault, &file, sb, probe, &mut timeline)?),
            _ => None,
        };
        let a = transfer(sb, sb.on_host(0, probe), probe, BYTES)? / 1e9;
        let b = match first {
            Some(b) => b,
            None => flapping(fault, &file, sb, probe, &mut timeline)?,
        };
        println!("  round {round}: without {a:.2} Gbit/s, with a flapping step {b:.2} Gbit/s");
        println!("    {timeline}");
        rows.push_str(&format!("| {round} | {a:.2} | {b:.2} | {:.3} |\n", b / a));
        without.push(a);
        with.push(b);
        ratios.push(b / a);
    }
    let (m0, m1) = (median(&mut without), median(&mut with));
    let ratio = median(&mut ratios);
    let cpu = probe_cpu(fault, &file, sb)?;
    let _ = std::fs::remove_file(&file);
    Ok(format!(
        "## Experiments\n\n\
         The untargeted TCP flow of section 2 ({} MiB), without fault and with an experiment \
         whose step (1 % TCP loss on the target) switches on and off every 200 ms, by map \
         updates while the programs stay attached; {ROUNDS} rounds.\n\n\
         | round | without (Gbit/s) | with a flapping step (Gbit/s) | ratio |\n|---:|---:|---:|---:|\n{rows}\
         | median | {m0:.2} | {m1:.2} | {ratio:.3} |\n\n**Ratio with/without, median of the rounds' \
         ratios: {ratio:.3}** (goal: at least 0.99; each round measures both, taking turns at \
         going first)\n\n\
         Switching, as the last round's `fault apply` reported it at the end (each change: \
         how long after its time the loader made it, and how long the map updates took; the \
         first packet after that is treated by the new state):\n\n    {timeline}\n\n\
         Probes: the loader's CPU time over {} s running the same experiment, without probes \
         and with a tcp probe (to a listener on this host) and an exec probe (`true`), each \
         every 100 ms:\n\n{cpu}\n",
        BYTES >> 20,
        CPU_RUN.as_secs()
    ))
}

/// The loader's CPU over `CPU_RUN`, without probes and with two.
fn probe_cpu(fault: &Path, file: &Path, sb: &Sandbox) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    // Accepts and drops, so the backlog never fills.
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    let probes = format!(
        "  probes:\n    - {{name: tcp, tcp: \"127.0.0.1:{port}\", every: 100ms, timeout: 100ms}}\n    \
         - {{name: exec, exec: [\"true\"], every: 100ms, timeout: 100ms}}\n"
    );
    let mut rows = String::from(
        "| probes | loader CPU (ms over the run) | per check (ms) |\n|---|---:|---:|\n",
    );
    let mut base = 0.0;
    for (label, p) in [
        ("none", String::new()),
        ("tcp + exec, every 100 ms", probes),
    ] {
        let apply = start(fault, file, &experiment(sb, &p))?;
        let before = cpu_ms(apply.id())?;
        sleep(CPU_RUN);
        let used = cpu_ms(apply.id())? - before;
        let out = finish(apply)?;
        let checks: u64 = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("probe "))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        let per = match checks {
            0 => "-".into(),
            n => format!("{:.2}", (used - base) / n as f64),
        };
        println!(
            "  probes {label}: {used:.0} ms CPU in {} s ({checks} checks)",
            CPU_RUN.as_secs()
        );
        rows.push_str(&format!("| {label} | {used:.0} | {per} |\n"));
        base = used;
    }
    Ok(rows)
}
