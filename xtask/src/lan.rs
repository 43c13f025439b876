//! Sandbox hosts on one LAN for the game-day demo: a network namespace per host, each joined
//! by a veth to a bridge in a namespace of its own, and a cgroup per host with a resident
//! process, as a service's would be. Dropping it removes everything; creating it first
//! removes what an interrupted earlier run left.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result};

use crate::{
    cmd,
    sandbox::{cgroup2_mount, remove_cgroup},
};

/// One host: its namespace, address and cgroup.
pub struct Host {
    pub name: &'static str,
    pub ns: String,
    pub addr: String,
    pub cgroup: PathBuf,
}

pub struct Lan {
    fault: PathBuf,
    /// The policy whose leftovers to remove.
    policy: &'static str,
    switch: String,
    /// The cgroup every host's cgroup is in, relative to the mount.
    parent: &'static str,
    pub hosts: Vec<Host>,
    residents: Vec<Child>,
}

impl Lan {
    /// Hosts `names` at `<subnet>.1`, `.2`, … in cgroups `<parent>/<name>`.
    pub fn create(
        fault: &Path,
        policy: &'static str,
        parent: &'static str,
        names: &[&'static str],
        subnet: &str,
    ) -> Result<Lan> {
        let mount = cgroup2_mount()?;
        let hosts = names
            .iter()
            .enumerate()
            .map(|(i, &name)| Host {
                name,
                ns: format!("fault-gd-{name}"),
                addr: format!("{subnet}.{}", i + 1),
                cgroup: mount.join(parent).join(name),
            })
            .collect();
        let mut lan = Lan {
            fault: fault.to_path_buf(),
            policy,
            switch: "fault-gd-switch".into(),
            parent,
            hosts,
            residents: Vec::new(),
        };
        lan.remove();
        lan.build().context("build the sandbox LAN")?;
        Ok(lan)
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.switch.clone();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for (i, h) in self.hosts.iter().enumerate() {
            let (inner, outer) = (format!("gd{i}"), format!("gdp{i}"));
            ip(&["netns", "add", &h.ns])?;
            ip(&[
                "link", "add", &inner, "netns", &h.ns, "type", "veth", "peer", "name", &outer,
                "netns", &sw,
            ])?;
            ip(&["-n", &sw, "link", "set", &outer, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{}/24", h.addr),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &h.ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &h.ns, "link", "set", "lo", "up"])?;
            std::fs::create_dir_all(&h.cgroup)
                .with_context(|| format!("create {}", h.cgroup.display()))?;
        }
        for i in 0..self.hosts.len() {
            let child = self.in_host(i, "sleep", &["3600"]).spawn()?;
            self.residents.push(child);
        }
        Ok(())
    }

    /// A command in host `i`'s cgroup (joined first, while /sys is the host's) and then in
    /// its namespace (nsenter leaves /sys alone).
    pub fn in_host(&self, i: usize, program: &str, args: &[&str]) -> Command {
        let h = &self.hosts[i];
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0\" && ns=$1 && shift && exec nsenter --net=/run/netns/$ns \"$@\"")
            .arg(h.cgroup.join("cgroup.procs"))
            .arg(&h.ns)
            .arg(program)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Starts a long-running process in host `i` (removed with the LAN).
    pub fn resident(&mut self, i: usize, program: &str, args: &[&str]) -> Result<()> {
        let child = self
            .in_host(i, program, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {program} on {}", self.hosts[i].name))?;
        self.residents.push(child);
        Ok(())
    }

    fn remove(&mut self) {
        let _ = Command::new(&self.fault)
            .args(["stop", self.policy])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for mut c in self.residents.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for h in &self.hosts {
            // A cgroup left frozen by an interrupted run is thawed before it is emptied.
            let _ = std::fs::write(h.cgroup.join("cgroup.freeze"), "0");
            remove_cgroup(&h.cgroup);
        }
        if let Ok(mount) = cgroup2_mount() {
            let _ = std::fs::remove_dir(mount.join(self.parent));
        }
        for ns in self
            .hosts
            .iter()
            .map(|h| h.ns.as_str())
            .chain([self.switch.as_str()])
        {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.remove();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    cmd::run(Command::new("ip").args(args))
}
