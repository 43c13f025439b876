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
//! 4. Delay through userspace, on this host (no sch_fq): added-delay errors, what the resend
//!    thread spends per packet, and the goodput of a delayed TCP flow.
//! 6. Experiments (`bench/gameday.rs`): an untargeted flow beside a flapping step, how
//!    punctual switches are, and what probes cost the loader.
//! 5. Delay (`bench/guest-delay.sh`, in the Debian 6.1 guest, which has sch_fq and netem):
//!    fault's EDT delay side by side with tc-netem on the same veth, and the cost for
//!    untargeted traffic of fault's rules and of netem's u32 filters.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{bail, Context, Result};

mod gameday;
mod observe;

use crate::{
    build, cmd,
    sandbox::{wait_ready, Layout, Sandbox},
    setup,
    vm::KillOnDrop,
};

const ROUNDS: usize = 5;
/// Where BENCHMARKS.md's hand-made comparisons across revisions begin: kept on a rewrite.
const KEPT_HEADING: &str = "## Across revisions";
const BYTES: u64 = 2 << 30;
/// Host B's address in both sandboxes, and the ports the probes listen on there.
const PEER: &str = "10.67.0.2";
const TCP_PORT: u16 = 5201;
const ECHO_PORT: u16 = 9000;

/// Egress UDP delays for the userspace path (ms), with the pings sent at each.
const US_DELAYS: [(u64, u64); 3] = [(1, 300), (10, 300), (100, 100)];
/// Egress TCP delays (ms) for the goodput of one flow through the userspace path.
const US_TCP_DELAYS: [u64; 2] = [10, 100];
const US_TCP_BYTES: u64 = 50_000_000;
const US_TCP_ROUNDS: usize = 3;
const US_POLICY: &str = "bench-userspace";

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        None => {}
        Some("observe") => return observe_only(root),
        Some(a) => {
            bail!("cargo xtask bench takes no argument but `observe` (that section alone), got {a}")
        }
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
    let sb = Sandbox::create(&fault, layout())?;
    let policy = root.join("target/bench-policy.yaml");
    std::fs::write(&policy, bench_policy(&sb))?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let a = transfer(&sb, sb.on_host(0, &probe), &probe, BYTES)? / 1e9;
        let mut apply = Command::new(&fault)
            .args(["apply", "--interval", "1h"])
            .arg(&policy)
            .stdout(Stdio::null())
            .spawn()?;
        let b = wait_ready(&mut apply, "bench")
            .and_then(|()| transfer(&sb, sb.on_host(0, &probe), &probe, BYTES));
        let _ = Command::new("kill")
            .args(["-TERM", &apply.id().to_string()])
            .status();
        let _ = apply.wait();
        let b = b? / 1e9;
        println!("  round {round}: without {a:.2} Gbit/s, with {b:.2} Gbit/s");
        without.push(a);
        with.push(b);
    }
    println!("== experiments: an untargeted flow beside a flapping step, switches, probes");
    let experiments = gameday::measure(&fault, &probe, &sb, root)?;
    print!("{experiments}");
    println!("== observability: the loader's CPU when its metrics are scraped");
    let observability = observe::measure(&fault, &policy)?;
    print!("{observability}");
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

    println!("== delay through userspace on this host (FAULT_DELAY_PATH=userspace)");
    let userspace = userspace_delay(&fault, &probe)?;
    print!("{userspace}");

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
         trie (at most five lookups, whatever the number of rules; none here, since the \
         port bitmap shows no rule names the packet's port). The packets run on a device \
         other than loopback, which the programs leave alone before any lookup.\n\
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
         By `fault-clock-bench --fault target/release/fault`. Cost: four copies of one \
         program time 10^6 calls per round, taking turns: one untouched, one patched with \
         offset, drift and jitter active on CLOCK_REALTIME (and jitter with the never-backwards \
         clamp on CLOCK_MONOTONIC), one patched with no clock faulted, and one patched with a \
         realtime offset of whole seconds alone (time()'s fast path). Goal: at most 1.25x for \
         clock_gettime (the uprobe route costs about 14 µs a call here, a raw-syscall stub \
         about 300 ns). The untargeted process's ratio compares it before and while the others \
         are patched (goal 1.00: nothing is added for it). Stop: idle processes with 1, 100 and \
         500 threads patched and reverted 20 times (goal for one thread: p50 at most 2 ms). \
         Time to the first faulted read: a target reading the clock every 100 µs, from the \
         start of `fault apply` (goal < 100 ms); and processes started in the target while \
         fault runs, held at exec until patched, from just before the spawn (goal < 10 ms; \
         the same spawn outside the target is shown for reference). System calls: 10^6 \
         calls of a process the clock-call count (`fault-ebpf/src/clock_calls.rs`) does not \
         count, without it, with it on the raw `sys_enter` tracepoint and with it on the clock \
         calls' own tracepoints (what fault uses from Linux 5.15 on), taking turns (goal \
         1.02, out of reach: any system-call tracepoint puts every call on the kernel's slow \
         path); the count is attached only in windows, 2 s at each patch and 2 s a minute \
         (README).\n\n{clocks}",
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
         `tc qdisc add dev va root netem delay`, on the same veth in the same run; one TCP \
         flow under 100 ms, by each; and the round trip of an untargeted process, with \
         fault's rules installed (a single delay rule already puts fq in place of the veth's \
         noqueue) and with netem steered to chosen destinations by u32 filters.\n\n{delay}\n\
         {userspace}
{experiments}
{observability}"
    );
    // Comparisons across revisions are made by hand (each says how) and kept as they are.
    let kept = std::fs::read_to_string(root.join("BENCHMARKS.md"))
        .ok()
        .and_then(|old| old.find(KEPT_HEADING).map(|at| old[at..].to_string()))
        .unwrap_or_default();
    std::fs::write(root.join("BENCHMARKS.md"), format!("{text}\n{kept}"))?;
    println!("written to BENCHMARKS.md");
    // The runs' event logs (/run/fault/NAME/): the bench keeps its figures here instead.
    for name in ["bench", gameday::NAME, US_POLICY] {
        let _ = std::fs::remove_dir_all(Path::new("/run/fault").join(name));
    }
    Ok(())
}

/// `cargo xtask bench observe`: the observability section alone, put in place of its
/// section of BENCHMARKS.md.
fn observe_only(root: &Path) -> Result<()> {
    setup::ensure()?;
    let fault = build::fault(root)?;
    let sb = Sandbox::create(&fault, layout())?;
    let policy = root.join("target/bench-policy.yaml");
    std::fs::write(&policy, bench_policy(&sb))?;
    let section = observe::measure(&fault, &policy);
    drop(sb);
    let _ = std::fs::remove_file(&policy);
    let _ = std::fs::remove_dir_all(Path::new("/run/fault/bench"));
    let section = section?;
    print!("{section}");
    let path = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let text = match old.find("## Observability") {
        Some(at) => {
            let rest = &old[at + 2..];
            let end = rest.find("\n## ").map_or(old.len(), |e| at + 2 + e + 1);
            format!("{}{section}\n{}", &old[..at], &old[end..])
        }
        None => match old.find(KEPT_HEADING) {
            Some(at) => format!("{}{section}\n{}", &old[..at], &old[at..]),
            None => format!("{old}\n{section}"),
        },
    };
    std::fs::write(&path, text)?;
    println!("written to BENCHMARKS.md (the Observability section; `cargo xtask bench observe`)");
    Ok(())
}

/// The bench's two hosts and target.
fn layout() -> Layout {
    Layout {
        ns: ["fault-bench-a", "fault-bench-b"],
        dev: ["fbench0", "fbench1"],
        addr: ["10.67.0.1/24", "10.67.0.2/24"],
        cgroup: "fault-bench",
    }
}

/// The throughput section's policy: 1 % TCP loss both ways on the sandbox's target.
fn bench_policy(sb: &Sandbox) -> String {
    format!(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {{name: bench}}\nspec:\n  \
         duration: 10m\n  targets: [{{cgroup: {}}}]\n  network:\n    - direction: both\n      \
         match: {{protocol: tcp}}\n      drop: {{probability: 1%}}\n",
        sb.cgroup.display()
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The number in `json` (one flat object, as fault-probe prints) under `key`.
fn json_num(json: &str, key: &str) -> Option<f64> {
    json.split(&format!("\"{key}\":"))
        .nth(1)?
        .split([',', '}'])
        .next()?
        .trim()
        .parse()
        .ok()
}

/// One TCP transfer of `bytes` from `sender` (a command that ends in the probe, to which the
/// probe's arguments are added) to host B; bit/s as the receiver saw it, from its first read.
fn transfer(sb: &Sandbox, mut sender: Command, probe: &Path, bytes: u64) -> Result<f64> {
    let to = format!("{PEER}:{TCP_PORT}");
    let receiver = sb
        .on_host(1, probe)
        .args(["tcp-recv", "--bind", &to])
        .stdout(Stdio::piped())
        .spawn()?;
    sleep(Duration::from_millis(300));
    let sent = sender
        .args(["tcp-send", "--to", &to, "--bytes", &bytes.to_string()])
        .output()?;
    let got = receiver.wait_with_output()?;
    let text = String::from_utf8_lossy(&got.stdout);
    match (json_num(&text, "bytes"), json_num(&text, "elapsed_ms")) {
        (Some(b), Some(ms)) if b as u64 == bytes && ms > 0.0 => Ok(b * 8.0 / (ms / 1000.0)),
        _ => bail!(
            "transfer failed: sender {}, receiver {text}",
            String::from_utf8_lossy(&sent.stdout)
        ),
    }
}

/// A child process (the echo server) that is killed however the bench ends.
/// What fault's final "delayed in userspace" line reports (`report::resend_line`).
#[derive(Default)]
struct Resend {
    sent: f64,
    dropped: f64,
    errors: f64,
    cpu_us: f64,
    late_us: f64,
}

impl Resend {
    fn parse(out: &str) -> Option<Self> {
        let line = out.lines().find(|l| l.contains("delayed in userspace:"))?;
        // The figure is the word just before its label.
        let before = |label: &str| -> Option<f64> {
            let at = line.find(label)?;
            line[..at].split([' ', ',', ';']).next_back()?.parse().ok()
        };
        Some(Resend {
            sent: before(" sent,")?,
            dropped: before(" dropped")?,
            errors: before(" send errors")?,
            cpu_us: before(" us CPU per packet")?,
            late_us: before(" us late on average")?,
        })
    }
}

/// Runs `work` while `fault apply POLICY` holds delayed packets in userspace; returns its
/// result and the resend figures fault prints when it stops.
fn with_userspace_fault<T>(
    fault: &Path,
    policy: &Path,
    work: impl FnOnce() -> Result<T>,
) -> Result<(T, Resend)> {
    let mut apply = Command::new(fault)
        .args(["apply", "--interval", "1h"])
        .arg(policy)
        .env("FAULT_DELAY_PATH", "userspace")
        .stdout(Stdio::piped())
        .spawn()
        .context("start fault apply")?;
    let result = wait_ready(&mut apply, US_POLICY).and_then(|()| work());
    let _ = Command::new("kill")
        .args(["-TERM", &apply.id().to_string()])
        .status();
    let out = apply.wait_with_output()?;
    let result = result?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let resend = Resend::parse(&stdout)
        .with_context(|| format!("no \"delayed in userspace\" line from fault: {stdout}"))?;
    Ok((result, resend))
}

/// `ping` of fault-probe from the target to host B's echo server: (p50, p99) in µs.
fn ping(sb: &Sandbox, probe: &str, count: u64) -> Result<(f64, f64)> {
    let out = sb
        .in_target(
            probe,
            &[
                "ping",
                "--to",
                &format!("{PEER}:{ECHO_PORT}"),
                "--count",
                &count.to_string(),
                "--interval-us",
                "2000",
            ],
        )
        .output()
        .context("run fault-probe ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match (
        json_num(&text, "replies"),
        json_num(&text, "p50_us"),
        json_num(&text, "p99_us"),
    ) {
        (Some(r), Some(p50), Some(p99)) if r as u64 == count => Ok((p50, p99)),
        _ => bail!("ping did not get all {count} replies: {text}"),
    }
}

/// Section 4: the userspace delay path on this host, as Markdown.
fn userspace_delay(fault: &Path, probe: &Path) -> Result<String> {
    let sb = Sandbox::create(
        fault,
        Layout {
            ns: ["fault-bench-ua", "fault-bench-ub"],
            dev: ["fbus0", "fbus1"],
            addr: ["10.67.0.1/24", "10.67.0.2/24"],
            cgroup: "fault-bench-us",
        },
    )?;
    let probe_str = probe.to_str().context("the probe's path is not UTF-8")?;
    let _echo = KillOnDrop(
        sb.on_host(1, probe)
            .args(["echo", "--bind", &format!("{PEER}:{ECHO_PORT}")])
            .stdout(Stdio::null())
            .spawn()
            .context("start the echo server")?,
    );
    sleep(Duration::from_millis(300));
    let policy = std::env::temp_dir().join("fault-bench-userspace.yaml");
    let write_policy = |protocol: &str, ms: u64| {
        std::fs::write(
            &policy,
            format!(
                "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {{name: {US_POLICY}}}\n\
                 spec:\n  duration: 10m\n  targets: [{{cgroup: {}}}]\n  network:\n    - \
                 {{direction: egress, match: {{protocol: {protocol}}}, delay: {{latency: \
                 {ms}ms}}}}\n",
                sb.cgroup.display()
            ),
        )
    };
    let result = (|| -> Result<String> {
        let (base, _) = ping(&sb, probe_str, 200)?;
        let mut udp = String::new();
        // (CPU µs per packet, mean lateness µs) of every run, and the delayed flows' goodput.
        let mut costs = Vec::new();
        let mut goodputs = Vec::new();
        for (ms, count) in US_DELAYS {
            write_policy("udp", ms)?;
            let ((p50, p99), r) =
                with_userspace_fault(fault, &policy, || ping(&sb, probe_str, count))?;
            let us = ms as f64 * 1000.0;
            let err = |p: f64| {
                let e = p - base - us;
                format!("{:+.1} % ({e:+.0} µs)", e / us * 100.0)
            };
            println!(
                "  {ms} ms: p50 {p50:.0} µs, p99 {p99:.0} µs; {} sent, {:.1} µs CPU, {:.1} µs late",
                r.sent, r.cpu_us, r.late_us
            );
            costs.push((r.cpu_us, r.late_us));
            udp += &format!(
                "| {ms} ms | {count} | {} | {} | {:.0} / {:.0} / {:.0} | {:.1} µs | {:.1} µs |\n",
                err(p50),
                err(p99),
                r.sent,
                r.dropped,
                r.errors,
                r.cpu_us,
                r.late_us
            );
        }
        let mbit = |sender: Command| transfer(&sb, sender, probe, US_TCP_BYTES).map(|b| b / 1e6);
        let mut plain = Vec::new();
        for _ in 0..US_TCP_ROUNDS {
            plain.push(mbit(sb.in_target(probe_str, &[]))?);
        }
        let plain = median(&mut plain);
        println!("  TCP without fault: {plain:.0} Mbit/s");
        let mut tcp = format!("| no fault | {plain:.0} | | | | |\n");
        for ms in US_TCP_DELAYS {
            write_policy("tcp", ms)?;
            let (mut rounds, r) = with_userspace_fault(fault, &policy, || {
                (0..US_TCP_ROUNDS)
                    .map(|_| mbit(sb.in_target(probe_str, &[])))
                    .collect::<Result<Vec<f64>>>()
            })?;
            let m = median(&mut rounds);
            costs.push((r.cpu_us, r.late_us));
            goodputs.push((ms, m));
            // CPU for the whole run, over the bytes the flows carried.
            let per_mb = r.cpu_us * r.sent / (US_TCP_ROUNDS as f64 * US_TCP_BYTES as f64 / 1e6);
            println!(
                "  TCP under {ms} ms: {m:.0} Mbit/s; {} sent, {:.1} µs CPU, {:.1} µs late",
                r.sent, r.cpu_us, r.late_us
            );
            tcp += &format!(
                "| {ms} ms | {m:.0} | {:.0} / {:.0} / {:.0} | {:.1} µs | {per_mb:.0} µs | {:.1} µs |\n",
                r.sent, r.dropped, r.errors, r.cpu_us, r.late_us
            );
        }
        // The longest delay's flow is held by the sender's send buffer (raising tcp_wmem's
        // maximum raises its goodput); say so with this host's figures.
        let wmem = cmd::stdout_of(sb.on_host(0, "cat").arg("/proc/sys/net/ipv4/tcp_wmem"))
            .and_then(|t| t.split_whitespace().nth(2).map(str::to_owned))
            .context("read net.ipv4.tcp_wmem")?;
        let &(slow_ms, slow_mbit) = goodputs.last().context("no delayed TCP flow")?;
        let range = |f: fn(&(f64, f64)) -> f64| {
            let v: Vec<f64> = costs.iter().map(f).collect();
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(0.0, f64::max);
            format!("{lo:.0} to {hi:.0} µs")
        };
        Ok(format!(
            "In short, the fallback spent {} of CPU per delayed packet and sent packets {} \
             late on average; one TCP flow carried {}, against {plain:.0} Mbit/s without \
             fault.\n\n\
             Base round trip, no fault: p50 {base:.1} µs.\n\n\
             | delay | pings | p50 error | p99 error | sent / dropped / send errors | CPU per \
             packet | mean lateness |\n|---:|---:|---:|---:|---:|---:|---:|\n{udp}\n\
             One TCP flow of {} MB, median of {US_TCP_ROUNDS} (a packet here is what TCP hands \
             to the device, mostly a GSO super-packet of several segments):\n\n\
             | delay | goodput (Mbit/s) | packets sent / dropped / send errors | CPU per packet \
             | CPU per MB carried | mean lateness |\n|---:|---:|---:|---:|---:|---:|\n{tcp}\n\
             Under {slow_ms} ms the flow keeps about {:.1} MB in flight, as much as the sender's \
             send buffer allows (net.ipv4.tcp_wmem: at most {wmem} bytes here, overhead \
             included): there the limit is TCP's buffer, not the resend thread.\n",
            range(|c| c.0),
            range(|c| c.1),
            goodputs
                .iter()
                .map(|(ms, m)| format!("{m:.0} Mbit/s under {ms} ms"))
                .collect::<Vec<_>>()
                .join(" and "),
            US_TCP_BYTES / 1_000_000,
            slow_mbit * slow_ms as f64 / 1000.0 / 8.0,
        ))
    })();
    let _ = std::fs::remove_file(&policy);
    let figures = result?;
    let has_fq = Path::new("/sys/module/sch_fq").exists()
        || cmd::succeeds(Command::new("modprobe").args(["-n", "sch_fq"]));
    let why = if has_fq {
        "forced with FAULT_DELAY_PATH=userspace; this kernel has sch_fq"
    } else {
        "this kernel has no sch_fq"
    };
    Ok(format!(
        "## Delay through userspace ({why})\n\n\
         Where the kernel has no sch_fq, fault holds delayed packets itself: the egress program \
         copies each one into a ring buffer and drops it, and a thread of `fault apply` sends \
         it again at its departure time through a packet socket (fault-user/src/resend.rs). \
         Measured on this host, over a veth between two network namespaces, from a process in \
         the target cgroup, with FAULT_DELAY_PATH=userspace. Errors of the added round trip \
         are computed as in the guest above, from fault-probe `ping` against an echo server \
         (200 pings without fault give the base). CPU per packet is the resend thread's CPU \
         time (user and system) divided by the packets it sent, so it includes the thread's \
         heartbeat every 100 ms, which weighs more where packets are few (the 100 ms row: \
         about 10 a second); lateness is how long after its departure time a packet was \
         sent. Both come from the line fault prints when it stops.\n\n{figures}"
    ))
}
