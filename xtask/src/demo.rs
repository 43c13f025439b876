//! `cargo xtask demo`: fault's main job, on a sandbox it builds and removes.
//!
//! Two hosts (network namespaces joined by a veth pair), a client cgroup on one of them, and
//! traffic a person can read: ping's loss line and a count of damaged UDP datagrams. The
//! traffic runs healthy, then under `policies/demo-loss.yaml`, then healthy again after the
//! fault reverts. Everything the demo creates is removed, also when a step fails.

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

const CLIENT_NS: &str = "fault-demo-client";
const SERVER_NS: &str = "fault-demo-server";
const CLIENT_IP: &str = "10.66.0.1";
const SERVER_IP: &str = "10.66.0.2";
const POLICY: &str = "policies/demo-loss.yaml";
const POLICY_NAME: &str = "demo-loss";

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("cargo xtask demo takes no arguments, got {a}");
    }
    setup::ensure()?;
    let fault = build::fault(root)?;
    let probe = build::probe(root)?;
    let sandbox = Sandbox::create(
        &fault,
        Layout {
            ns: [CLIENT_NS, SERVER_NS],
            dev: ["fdemo0", "fdemo1"],
            addr: ["10.66.0.1/24", "10.66.0.2/24"],
            cgroup: "fault-demo/client",
        },
    )?;
    let result = show(root, &fault, &probe, &sandbox);
    drop(sandbox);
    result
}

fn heading(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn show(root: &Path, fault: &Path, probe: &Path, sb: &Sandbox) -> Result<()> {
    heading("1. two sandbox hosts, healthy");
    println!(
        "client {CLIENT_IP} (netns {CLIENT_NS}, cgroup {}) <-> server {SERVER_IP} (netns {SERVER_NS})",
        sb.cgroup.display()
    );
    traffic(sb, probe)?;

    heading(&format!("2. fault apply {POLICY}"));
    let mut apply = Command::new(fault)
        .args(["apply", "--interval", "3s"])
        .arg(root.join(POLICY))
        .stdin(Stdio::null())
        .spawn()
        .context("start fault apply")?;
    wait_ready(&mut apply, POLICY_NAME)?;

    heading("3. the same traffic under the fault");
    traffic(sb, probe)?;

    heading("4. fault status (from another process)");
    cmd::run(Command::new(fault).arg("status"))?;

    heading("5. Ctrl-C: fault reverts");
    // SIGTERM and SIGINT take the same path in fault; `kill` needs no extra crate here.
    cmd::run(Command::new("kill").args(["-INT", &apply.id().to_string()]))?;
    let status = apply.wait()?;
    if !status.success() {
        bail!("fault apply exited with {status}");
    }

    heading("6. healthy again");
    traffic(sb, probe)?;
    println!("\nThe demo's namespaces and cgroup are removed next; nothing of fault's remains.");
    Ok(())
}

/// 100 pings and 2,000 UDP datagrams from the client cgroup to the server.
fn traffic(sb: &Sandbox, probe: &Path) -> Result<()> {
    let out = sb
        .in_target(
            "ping",
            &["-q", "-c", "100", "-i", "0.01", "-W", "1", SERVER_IP],
        )
        .output()
        .context("run ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packet loss"))
        .unwrap_or("ping printed no summary");
    println!("  ping:  {line}");

    let receiver = sb
        .on_host(1, probe)
        .args([
            "udp-recv",
            "--bind",
            "0.0.0.0:9999",
            "--expect",
            "2000",
            "--timeout-ms",
            "1000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("start the UDP receiver")?;
    sleep(Duration::from_millis(300));
    let probe = probe.to_string_lossy();
    let sent = sb
        .in_target(
            &probe,
            &[
                "udp-send",
                "--to",
                &format!("{SERVER_IP}:9999"),
                "--count",
                "2000",
            ],
        )
        .output()
        .context("run the UDP sender")?;
    let got = receiver.wait_with_output()?;
    let field = |json: &str, key: &str| -> String {
        json.split(&format!("\"{key}\":"))
            .nth(1)
            .map(|rest| rest.split([',', '}']).next().unwrap_or("?").to_string())
            .unwrap_or_else(|| "?".into())
    };
    let (sent, got) = (
        String::from_utf8_lossy(&sent.stdout).into_owned(),
        String::from_utf8_lossy(&got.stdout).into_owned(),
    );
    println!(
        "  udp:   {} datagrams sent ({} send errors), {} received, {} with a damaged payload",
        field(&sent, "sent"),
        field(&sent, "errors"),
        field(&got, "received"),
        field(&got, "corrupted"),
    );
    Ok(())
}
