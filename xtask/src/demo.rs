//! `cargo xtask demo`: a game day on three sandbox hosts it builds and removes.
//!
//! A primary and a replica each serve a page over HTTP (python's http.server, in the host's
//! cgroup and namespace), and a client sits beside them. `policies/demo-gameday.yaml` then
//! partitions the primary from the replica, slows the replica, skews the primary's clock
//! and pauses the replica, one after another, while its two probes (the primary asking the
//! replica, the client asking the primary) show what each step does; every two seconds the
//! demo prints the time as the primary reads it. At the end fault prints the counters and
//! the probes' figures, and the demo removes everything, also when a step fails.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{build, cmd, lan::Lan, sandbox::wait_ready, setup};

const POLICY: &str = "policies/demo-gameday.yaml";
const POLICY_NAME: &str = "demo-gameday";
const HOSTS: [&str; 3] = ["primary", "replica", "client"];

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("cargo xtask demo takes no arguments, got {a}");
    }
    setup::ensure()?;
    if !cmd::succeeds(Command::new("python3").arg("--version")) {
        bail!("the demo's web servers are python3's http.server: install python3");
    }
    let fault = build::fault(root)?;
    let mut lan = Lan::create(&fault, POLICY_NAME, "fault-demo", &HOSTS, "10.67.0")?;
    let result = show(root, &fault, &mut lan);
    drop(lan);
    result
}

fn heading(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn show(root: &Path, fault: &Path, lan: &mut Lan) -> Result<()> {
    heading("1. three sandbox hosts on one LAN");
    for h in &lan.hosts {
        println!(
            "  {:<8} {} (netns {}, cgroup {})",
            h.name,
            h.addr,
            h.ns,
            h.cgroup.display()
        );
    }
    for h in lan.hosts.iter().take(2) {
        println!("  {} serves http://{}:8000/", h.name, h.addr);
    }
    for i in 0..2 {
        let addr = lan.hosts[i].addr.clone();
        lan.resident(
            i,
            "python3",
            &["-m", "http.server", "8000", "--bind", &addr],
        )?;
    }
    sleep(Duration::from_secs(1));

    heading(&format!("2. fault apply {POLICY}: 45 s, four steps"));
    let mut apply = Command::new(fault)
        .args(["apply", "--interval", "2s"])
        .arg(root.join(POLICY))
        .stdin(Stdio::null())
        .spawn()
        .context("start fault apply")?;
    wait_ready(&mut apply, POLICY_NAME)?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = apply.try_wait()? {
            break status;
        }
        println!(
            "[demo {:>4.1}s] the primary's clock reads {}; the true time is {}",
            started.elapsed().as_secs_f64(),
            primary_time(lan),
            cmd::stdout_of(Command::new("date").arg("+%T"))
                .unwrap_or_default()
                .trim()
        );
        sleep(Duration::from_secs(2));
    };
    if !status.success() {
        bail!("fault apply exited with {status}");
    }

    heading("3. afterwards: fault status (nothing is left) and the run's report");
    cmd::run(Command::new(fault).arg("status"))?;
    let page = crate::target_dir(root).join("demo-report.html");
    cmd::run(
        Command::new(fault)
            .arg("report")
            .arg(Path::new("/run/fault").join(POLICY_NAME))
            .arg("-o")
            .arg(&page),
    )?;
    println!("Open it in a browser: the steps on the timeline, the drops, the probes' failures.");
    println!("\nThe demo's namespaces, cgroups and servers are removed next.");
    Ok(())
}

/// `date` as a process exec'd in the primary reads it (held at exec and patched while the
/// skew step is on).
fn primary_time(lan: &Lan) -> String {
    let out = lan.in_host(0, "date", &["+%T"]).output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => format!(
            "(date failed: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("(date failed: {e})"),
    }
}
