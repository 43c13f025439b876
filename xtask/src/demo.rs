//! `cargo xtask demo`: fault's main job, on a sandbox it builds and removes.
//!
//! Two hosts (network namespaces joined by a veth pair), a client cgroup on one of them, and
//! traffic a person can read: ping's loss line and a count of damaged UDP datagrams. The
//! traffic runs healthy, then under `policies/demo-loss.yaml`, then healthy again after the
//! fault reverts. Everything the demo creates is removed, also when a step fails.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{build, cmd, setup};

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
    let sandbox = Sandbox::create(&fault)?;
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
    wait_ready(&mut apply)?;

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
        .in_client(
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

    let receiver = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{SERVER_NS}"))
        .arg(probe)
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
        .in_client(
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

fn wait_ready(apply: &mut Child) -> Result<()> {
    let state = PathBuf::from(format!("/run/fault/{POLICY_NAME}.json"));
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"ready\": true")) {
            return Ok(());
        }
        if let Some(status) = apply.try_wait()? {
            bail!("fault apply exited early ({status})");
        }
        if Instant::now() > until {
            let _ = apply.kill();
            bail!("fault apply did not get ready within 30 s");
        }
        sleep(Duration::from_millis(50));
    }
}

/// The demo's hosts and cgroup; dropping it removes them.
struct Sandbox {
    fault: PathBuf,
    cgroup: PathBuf,
    anchor: Option<Child>,
}

impl Sandbox {
    fn create(fault: &Path) -> Result<Self> {
        let cg2 = cgroup2_mount()?;
        let mut sb = Sandbox {
            fault: fault.to_path_buf(),
            cgroup: cg2.join("fault-demo/client"),
            anchor: None,
        };
        // Leftovers of an interrupted earlier run go first.
        sb.remove();
        for (args, what) in [
            (
                vec!["netns", "add", CLIENT_NS],
                "create the client namespace",
            ),
            (
                vec!["netns", "add", SERVER_NS],
                "create the server namespace",
            ),
            (
                vec![
                    "link", "add", "fdemo0", "netns", CLIENT_NS, "type", "veth", "peer", "name",
                    "fdemo1", "netns", SERVER_NS,
                ],
                "create the veth pair",
            ),
            (
                vec![
                    "-n",
                    CLIENT_NS,
                    "addr",
                    "add",
                    "10.66.0.1/24",
                    "dev",
                    "fdemo0",
                ],
                "address",
            ),
            (
                vec![
                    "-n",
                    SERVER_NS,
                    "addr",
                    "add",
                    "10.66.0.2/24",
                    "dev",
                    "fdemo1",
                ],
                "address",
            ),
            (
                vec!["-n", CLIENT_NS, "link", "set", "fdemo0", "up"],
                "link up",
            ),
            (
                vec!["-n", SERVER_NS, "link", "set", "fdemo1", "up"],
                "link up",
            ),
            (vec!["-n", CLIENT_NS, "link", "set", "lo", "up"], "lo up"),
            (vec!["-n", SERVER_NS, "link", "set", "lo", "up"], "lo up"),
        ] {
            cmd::run(Command::new("ip").args(&args)).context(what)?;
        }
        std::fs::create_dir_all(&sb.cgroup)
            .with_context(|| format!("create {}", sb.cgroup.display()))?;
        // The client host's resident process, as a service would have before a game day.
        sb.anchor = Some(
            sb.in_client("sleep", &["3600"])
                .spawn()
                .context("start the client")?,
        );
        Ok(sb)
    }

    /// A command in the client cgroup (joined first, while /sys is the host's) and then in
    /// the client namespace (nsenter, unlike `ip netns exec`, leaves /sys alone).
    fn in_client(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0\" && ns=$1 && shift && exec nsenter --net=/run/netns/$ns \"$@\"")
            .arg(self.cgroup.join("cgroup.procs"))
            .arg(CLIENT_NS)
            .arg(program)
            .args(args);
        c
    }

    fn remove(&mut self) {
        let _ = Command::new(&self.fault)
            .args(["stop", "--all"])
            .stdout(Stdio::null())
            .status();
        if let Some(mut a) = self.anchor.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = std::fs::write(self.cgroup.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            sleep(Duration::from_millis(20));
        }
        if let Some(parent) = self.cgroup.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        for ns in [CLIENT_NS, SERVER_NS] {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.remove();
    }
}

pub fn cgroup2_mount() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 mount in /proc/self/mountinfo")
}
