//! Two sandbox hosts for the demo and the bench: network namespaces joined by a veth pair, and
//! a target cgroup whose resident process lives on the first host, as a service's would before
//! a game day. Dropping it removes everything, and creating it first removes what an
//! interrupted earlier run left.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Names and addresses of a sandbox.
pub struct Layout {
    /// Network namespaces of host A (the target's) and host B.
    pub ns: [&'static str; 2],
    /// The veth ends, in A and in B.
    pub dev: [&'static str; 2],
    /// Their addresses with prefix length.
    pub addr: [&'static str; 2],
    /// The target cgroup, relative to the cgroup2 mount.
    pub cgroup: &'static str,
}

pub struct Sandbox {
    fault: PathBuf,
    layout: Layout,
    pub cgroup: PathBuf,
    anchor: Option<Child>,
}

impl Sandbox {
    pub fn create(fault: &Path, layout: Layout) -> Result<Self> {
        let cgroup = cgroup2_mount()?.join(layout.cgroup);
        let mut sb = Sandbox {
            fault: fault.to_path_buf(),
            layout,
            cgroup,
            anchor: None,
        };
        sb.remove();
        let [a, b] = sb.layout.ns;
        let [dev_a, dev_b] = sb.layout.dev;
        let [addr_a, addr_b] = sb.layout.addr;
        for args in [
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec![
                "link", "add", dev_a, "netns", a, "type", "veth", "peer", "name", dev_b, "netns", b,
            ],
            vec!["-n", a, "addr", "add", addr_a, "dev", dev_a],
            vec!["-n", b, "addr", "add", addr_b, "dev", dev_b],
            vec!["-n", a, "link", "set", dev_a, "up"],
            vec!["-n", b, "link", "set", dev_b, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ] {
            cmd::run(Command::new("ip").args(&args)).context("build the sandbox hosts")?;
        }
        std::fs::create_dir_all(&sb.cgroup)
            .with_context(|| format!("create {}", sb.cgroup.display()))?;
        let anchor = sb
            .in_target("sleep", &["3600"])
            .spawn()
            .context("start the target's resident process")?;
        sb.anchor = Some(anchor);
        Ok(sb)
    }

    /// A command in the target cgroup (joined first, while /sys is the host's) and then in
    /// host A's namespace (nsenter, unlike `ip netns exec`, leaves /sys alone).
    pub fn in_target(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0\" && ns=$1 && shift && exec nsenter --net=/run/netns/$ns \"$@\"")
            .arg(self.cgroup.join("cgroup.procs"))
            .arg(self.layout.ns[0])
            .arg(program)
            .args(args);
        c
    }

    /// A command in host `index`'s namespace (0: A, 1: B), outside the target cgroup.
    pub fn on_host(&self, index: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.layout.ns[index]))
            .arg(program);
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
        remove_cgroup(&self.cgroup);
        // A nested target cgroup leaves its parent, which is ours too.
        if let Some(parent) = Path::new(self.layout.cgroup).parent() {
            if !parent.as_os_str().is_empty() {
                if let Ok(mount) = cgroup2_mount() {
                    let _ = std::fs::remove_dir(mount.join(parent));
                }
            }
        }
        for ns in self.layout.ns {
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

/// Kills what is left in a cgroup and removes it, waiting up to 2 s for the kernel to let
/// the directory go.
pub fn remove_cgroup(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            break;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Waits until `fault apply` (running as `apply`) says in its state file that policy
/// `name` is attached; kills it and fails if it exits first or takes over 30 s.
pub fn wait_ready(apply: &mut Child, name: &str) -> Result<()> {
    let state = PathBuf::from(format!("/run/fault/{name}.json"));
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

/// The cgroup2 mount point, from /proc/self/mountinfo.
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
