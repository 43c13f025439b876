//! Real podman containers from the local images `cargo xtask setup` builds.

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::{cgroup2_mount, check, check_quietly, output_of, unique_name};

/// Busybox only.
pub const IMAGE_BUSYBOX: &str = "localhost/fault-bb:latest";
/// Busybox plus the host's python3.11 (socket and struct, not json) and libgcc_s, so a host
/// Rust binary such as fault-probe runs inside when bind-mounted (`-v PATH:/probe:ro`).
pub const IMAGE_PYTHON: &str = "localhost/fault-bbpy:latest";

/// Prefix of every container name the harness uses; [`crate::leftovers`] looks for it.
pub(crate) const CONTAINER_PREFIX: &str = "fault-t-";

/// True when podman runs and the busybox image exists. Tests that need containers should
/// skip with a printed reason otherwise.
pub fn podman_available() -> bool {
    Command::new("podman")
        .args(["image", "exists", IMAGE_BUSYBOX])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running container, removed (`podman rm -f -t 0`) on drop.
pub struct Container {
    name: String,
    id: String,
}

impl Container {
    /// `podman run -d --name fault-t-<prefix>-<pid>-<n> IMAGE ARGS...`
    pub fn run(name_prefix: &str, image: &str, args: &[&str]) -> Self {
        Self::run_with(name_prefix, &[], image, args)
    }

    /// Like [`Container::run`], with extra `podman run` options before the image (`-v`, `-p`).
    pub fn run_with(name_prefix: &str, podman_opts: &[&str], image: &str, args: &[&str]) -> Self {
        let name = format!("{CONTAINER_PREFIX}{}", unique_name(name_prefix));
        Self::start(name, podman_opts, image, args)
    }

    /// Removes this container and starts another under its name, as someone recreating it
    /// would (`podman rm -f NAME; podman run --name NAME ...`): same name, new id.
    pub fn recreate(self, podman_opts: &[&str], image: &str, args: &[&str]) -> Self {
        let name = self.name.clone();
        drop(self);
        Self::start(name, podman_opts, image, args)
    }

    fn start(name: String, podman_opts: &[&str], image: &str, args: &[&str]) -> Self {
        let id = check(
            Command::new("podman")
                .args(["run", "-d", "--name", &name])
                .args(podman_opts)
                .arg(image)
                .args(args),
        )
        .trim()
        .to_string();
        Self { name, id }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 64-hex container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn inspect(&self, format: &str) -> String {
        check(Command::new("podman").args(["inspect", "-f", format, &self.name]))
            .trim()
            .to_string()
    }

    /// Host pid of the container's first process.
    pub fn pid(&self) -> u32 {
        let pid = self.inspect("{{.State.Pid}}");
        pid.parse()
            .unwrap_or_else(|e| panic!("podman gave pid `{pid}`: {e}"))
    }

    /// Address on podman's bridge; it changes from run to run.
    pub fn ip(&self) -> IpAddr {
        let ip = self.inspect("{{.NetworkSettings.IPAddress}}");
        ip.parse()
            .unwrap_or_else(|e| panic!("podman gave address `{ip}`: {e}"))
    }

    /// The container's cgroup directory in the v2 hierarchy
    /// (`<cgroup2 mount>/libpod_parent/libpod-<id>` with podman's cgroupfs manager).
    pub fn cgroup_path(&self) -> PathBuf {
        let rel = self.inspect("{{.State.CgroupPath}}");
        cgroup2_mount().join(rel.trim_start_matches('/'))
    }

    /// The BPF cgroup id of the container (inode of its cgroup directory).
    pub fn cgroup_id(&self) -> u64 {
        let path = self.cgroup_path();
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .ino()
    }

    /// The container's network namespace (`/run/netns/netns-<uuid>`), usable with
    /// [`crate::enter_netns`].
    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(self.inspect("{{.NetworkSettings.SandboxKey}}"))
    }

    /// `podman exec NAME ARGS...`; returns the output whatever the exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        output_of(Command::new("podman").args(["exec", &self.name]).args(args))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Without -t 0 podman waits 10 s for the container to stop on its own.
        check_quietly(Command::new("podman").args(["rm", "-f", "-t", "0", &self.name]));
    }
}
