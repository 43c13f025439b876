//! A private Docker Engine (Debian's docker.io, dockerd 20.10) for the tests of fault's
//! `container:` target on docker: fault asks the Engine API on the standard socket, so that is
//! where this dockerd listens, and everything else of it is ours.
//!
//! dockerd's data root ([`DATA_ROOT`]) and exec root ([`EXEC_ROOT`]) hold its images,
//! containers, its configuration, pid file, trust key, log and the containerd it starts and
//! supervises itself (`<exec root>/containerd/containerd.sock`, its root under the data root),
//! apart from tests/src/cri.rs's containerd. It changes no firewall rule, sysctl or bridge,
//! and its containers run with no network. What it makes elsewhere is removed when it stops:
//! the socket, its containers' cgroups (`docker/<id>` in every hierarchy, the cgroupfs
//! driver's layout), the plugin socket directory dockerd always makes ([`PLUGIN_DIR`]), and
//! what its containerd makes on demand (the shims' sockets in [`SHIM_SOCKET_ROOT`], and
//! [`CONTAINERD_OPT`]).

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cri::{
    cgroup_mounts, comm_of, end_process, on_path, parent_of, remove_cgroup_tree,
    remove_dirs_below_mounts, SHIM_SOCKET_ROOT,
};
use crate::{cgroup2_mount, check, check_quietly, output_of, unique_name, IMAGE_BUSYBOX};

/// dockerd's exec root: its configuration, pid file, trust key, log, its containerd's state
/// and socket, runc's state, the containers' network namespaces.
pub(crate) const EXEC_ROOT: &str = "/run/fault-test-docker";
/// dockerd's data root: images, layers (overlay2), containers, its containerd's root.
pub(crate) const DATA_ROOT: &str = "/var/lib/fault-test-docker";
/// The only place fault looks for a Docker Engine (fault-user/src/target.rs).
pub(crate) const SOCKET: &str = "/var/run/docker.sock";
/// The cgroupfs driver's cgroup parent: a container lives in `/docker/<id>`.
pub(crate) const CGROUP_PARENT: &str = "docker";
/// Made by every dockerd 20.10 whatever its roots (`getPluginExecRoot` in
/// daemon/daemon_unix.go returns this constant).
const PLUGIN_DIR: &str = "/run/docker/plugins";
/// containerd's `opt` plugin makes this (bin/, lib/) at start; dockerd's generated
/// containerd configuration cannot move it.
const CONTAINERD_OPT: &str = "/opt/containerd";
/// A containerd already listening here would be used by dockerd instead of its own.
const SYSTEM_CONTAINERD: &str = "/run/containerd/containerd.sock";
/// The package's CLI, of the daemon's version; another one may come first on PATH.
const DOCKER_CLI: &str = "/usr/bin/docker";
/// Prefix of the harness's docker container names.
const DOCKER_PREFIX: &str = "fault-d-";

/// How long dockerd gets to answer `/_ping` (it starts its containerd first).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long dockerd gets to exit on SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The dockerd command line; each flag says why it is there.
fn dockerd_args() -> Vec<String> {
    let flags: &[&str] = &[
        // A configuration of ours ([`daemon_json`]): /etc/docker/daemon.json, if any, is the
        // machine's.
        "--config-file={EXEC_ROOT}/daemon.json",
        // Ours, not /var/lib/docker and /var/run/docker.
        "--data-root={DATA_ROOT}",
        "--exec-root={EXEC_ROOT}",
        "--pidfile={EXEC_ROOT}/dockerd.pid",
        // The standard socket: fault looks only there.
        "--host=unix://{SOCKET}",
        // The host's firewall, forwarding and bridges stay as they are: no docker0, no NAT,
        // no DOCKER chains; the containers run with `--network none`.
        "--iptables=false",
        "--ip6tables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--bridge=none",
        "--userland-proxy=false",
        // No systemd here; cgroupfs puts a container in /docker/<id>.
        "--exec-opt=native.cgroupdriver=cgroupfs",
        // ext4 below the data root: overlay2 works, and says so if it does not.
        "--storage-driver=overlay2",
    ];
    flags
        .iter()
        .map(|f| {
            f.replace("{EXEC_ROOT}", EXEC_ROOT)
                .replace("{DATA_ROOT}", DATA_ROOT)
                .replace("{SOCKET}", SOCKET)
        })
        .collect()
}

/// dockerd's configuration file: what has no flag.
fn daemon_json() -> String {
    // Without it dockerd 20.10 writes its trust key to /etc/docker/key.json; the setting has
    // no flag (`TrustKeyPath` in daemon/config/config.go).
    format!("{{\"deprecated-key-path\": \"{EXEC_ROOT}/key.json\"}}\n")
}

/// A private dockerd on [`SOCKET`], with the busybox image loaded from podman; stopped on
/// drop (containers removed, dockerd and its containerd ended, everything it made removed).
pub struct Dockerd {
    process: Option<Child>,
    /// Set once dockerd is stopped: a container dropped later went with it.
    stopped: Arc<AtomicBool>,
    /// Whether [`CONTAINERD_OPT`] existed before, in which case it is left alone.
    containerd_opt_before: bool,
}

impl Dockerd {
    /// Starts dockerd, waits until its API answers and loads podman's busybox image into it.
    /// Panics if dockerd or the image is missing (`cargo xtask setup` installs both), if
    /// another dockerd runs or [`SOCKET`] is taken (fault would ask that one), or if a
    /// containerd listens on its standard socket (dockerd would use it instead of its own).
    pub fn start() -> Dockerd {
        for tool in ["dockerd", "containerd", "runc"] {
            assert!(
                on_path(tool),
                "`{tool}` is not installed: `cargo xtask setup` installs it (Debian's docker.io)"
            );
        }
        assert!(
            Path::new(DOCKER_CLI).is_file(),
            "{DOCKER_CLI} is missing: `cargo xtask setup` installs it (Debian's docker.io)"
        );
        let exists = Command::new("podman")
            .args(["image", "exists", IMAGE_BUSYBOX])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            exists,
            "podman has no image {IMAGE_BUSYBOX}: `cargo xtask setup` builds it"
        );
        recover();
        refuse_others();
        let started = Instant::now();
        let dockerd = Self::launch();
        let answering = started.elapsed();
        dockerd.load_image();
        eprintln!(
            "docker: dockerd answering in {answering:?}, busybox loaded in {:?} more",
            started.elapsed() - answering
        );
        dockerd
    }

    fn launch() -> Dockerd {
        fs::create_dir_all(EXEC_ROOT).unwrap_or_else(|e| panic!("creating {EXEC_ROOT}: {e}"));
        let config = Path::new(EXEC_ROOT).join("daemon.json");
        fs::write(&config, daemon_json())
            .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let log = fs::File::create(log_path()).expect("creating dockerd's log file");
        let containerd_opt_before = Path::new(CONTAINERD_OPT).exists();
        let process = Command::new("dockerd")
            .args(dockerd_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("duplicating the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dockerd: {e}"));
        let mut dockerd = Dockerd {
            process: Some(process),
            stopped: Arc::new(AtomicBool::new(false)),
            containerd_opt_before,
        };
        dockerd.wait_answering();
        dockerd
    }

    /// Waits until `GET /_ping` answers 200, or panics with dockerd's log.
    fn wait_answering(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match get(SOCKET, "/_ping") {
                Ok((200, _)) => return,
                Ok((status, body)) if Instant::now() > deadline => panic!(
                    "dockerd answers /_ping with {status} after {START_TIMEOUT:?}: {body}{}",
                    log_tail()
                ),
                Err(e) if Instant::now() > deadline => panic!(
                    "dockerd not answering after {START_TIMEOUT:?}: {e}{}",
                    log_tail()
                ),
                _ => {}
            }
            let process = self.process.as_mut().expect("dockerd process");
            if let Ok(Some(status)) = process.try_wait() {
                panic!("dockerd exited ({status}){}", log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// There is no registry: podman's image goes in through an archive.
    fn load_image(&self) {
        let archive = Path::new(EXEC_ROOT).join("images.tar");
        check(
            Command::new("podman")
                .args(["save", "-q", "--format", "docker-archive", "-o"])
                .arg(&archive)
                .arg(IMAGE_BUSYBOX),
        );
        check(docker_cli().args(["load", "-q", "-i"]).arg(&archive));
        let _ = fs::remove_file(&archive);
    }

    /// `docker run -d --name fault-d-<prefix>-<pid>-<n> --network none busybox ARGS...`;
    /// returns once it runs.
    pub fn run(&self, name_prefix: &str, args: &[&str]) -> DockerContainer {
        let name = format!("{DOCKER_PREFIX}{}", unique_name(name_prefix));
        let out = output_of(
            docker_cli()
                .args(["run", "-d", "--name", &name, "--network", "none"])
                .arg(IMAGE_BUSYBOX)
                .args(args),
        );
        assert!(
            out.status.success(),
            "docker run {name}: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            log_tail()
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // From here a panic removes the container through its drop.
        let container = DockerContainer {
            name,
            id,
            stopped: self.stopped.clone(),
        };
        let running = container.inspect("{{.State.Running}}");
        assert_eq!(
            running, "true",
            "docker container {} is not running",
            container.name
        );
        container
    }

    /// Removes every container, then ends dockerd and whatever of ours survives it.
    fn stop(&mut self) {
        if let Ok(out) = docker_cli().args(["ps", "-aq"]).output() {
            let ids = String::from_utf8_lossy(&out.stdout);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                check_quietly(docker_cli().args(["rm", "-f"]).args(&ids));
            }
        }
        self.stopped.store(true, Ordering::SeqCst);
        if let Some(mut process) = self.process.take() {
            // dockerd stops its own containerd on SIGTERM.
            end_process(&mut process, "dockerd", STOP_TIMEOUT);
        }
        clean_up(self.containerd_opt_before);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A container of [`Dockerd::run`], removed (`docker rm -f`) on drop.
pub struct DockerContainer {
    name: String,
    id: String,
    stopped: Arc<AtomicBool>,
}

impl DockerContainer {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 64-hex container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Host pid of the container's first process (`docker inspect -f '{{.State.Pid}}'`).
    pub fn pid(&self) -> u32 {
        let pid = self.inspect("{{.State.Pid}}");
        pid.parse()
            .unwrap_or_else(|e| panic!("docker gave pid `{pid}`: {e}"))
    }

    /// Where the cgroupfs driver puts the container in the v2 hierarchy:
    /// `<cgroup2 mount>/docker/<id>`.
    pub fn cgroup_dir(&self) -> PathBuf {
        cgroup2_mount().join(CGROUP_PARENT).join(&self.id)
    }

    /// `docker exec NAME ARGS...`; returns the output whatever the exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        output_of(docker_cli().args(["exec", &self.name]).args(args))
    }

    fn inspect(&self, format: &str) -> String {
        check(docker_cli().args(["inspect", "--type", "container", "-f", format, &self.name]))
            .trim()
            .to_string()
    }
}

impl Drop for DockerContainer {
    fn drop(&mut self) {
        // After its dockerd stopped, the container went with it.
        if !self.stopped.load(Ordering::SeqCst) {
            check_quietly(docker_cli().args(["rm", "-f", &self.name]));
        }
    }
}

/// The package's docker CLI, talking to [`SOCKET`], with its configuration in our exec
/// root rather than ~/.docker.
pub fn docker_cli() -> Command {
    let mut cmd = Command::new(DOCKER_CLI);
    cmd.env("DOCKER_CONFIG", Path::new(EXEC_ROOT).join("cli"))
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .arg(format!("--host=unix://{SOCKET}"))
        .stdin(Stdio::null());
    cmd
}

/// `GET PATH` over a unix socket (HTTP/1.0, so the reply ends when the connection closes),
/// as fault asks: the status code and the body.
fn get(socket: &str, path: &str) -> io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP reply: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// dockerd's, its containerd's and their shims' processes of ours (our exec root in their
/// command lines), as (pid, command line).
pub(crate) fn our_processes() -> Vec<(u32, String)> {
    processes(|comm| comm == "dockerd" || comm.starts_with("containerd"))
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains(EXEC_ROOT))
        .collect()
}

/// Every dockerd that runs, as (pid, command line); not a zombie (its command line is
/// empty) waiting for its parent.
fn dockerds() -> Vec<(u32, String)> {
    processes(|comm| comm == "dockerd")
        .into_iter()
        .filter(|(_, cmdline)| !cmdline.is_empty())
        .collect()
}

/// The processes whose comm `named` accepts, as (pid, command line).
fn processes(named: impl Fn(&str) -> bool) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| named(&comm_of(*pid)))
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            Some((pid, cmdline.trim().to_string()))
        })
        .collect()
}

/// The docker cgroup parents (`docker` in every hierarchy) that exist.
pub(crate) fn docker_cgroups() -> Vec<PathBuf> {
    cgroup_mounts()
        .into_iter()
        .map(|mount| mount.join(CGROUP_PARENT))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// What [`Dockerd`] leaves if its drop did not run or failed. A dockerd not of ours owns
/// the socket and the docker cgroups, which are then not reported.
pub(crate) fn leftovers() -> Vec<String> {
    let mut found: Vec<String> = our_processes()
        .into_iter()
        .map(|(pid, cmdline)| format!("process {pid} of the test dockerd ({cmdline})"))
        .collect();
    for dir in [EXEC_ROOT, DATA_ROOT] {
        if Path::new(dir).exists() {
            found.push(format!("test dockerd directory {dir}"));
        }
    }
    let another = dockerds()
        .iter()
        .any(|(_, cmdline)| !cmdline.contains(EXEC_ROOT));
    if !another {
        if Path::new(SOCKET).exists() {
            found.push(format!("docker socket {SOCKET}"));
        }
        for dir in docker_cgroups() {
            found.push(format!("docker cgroup {}", dir.display()));
        }
    }
    found
}

/// Panics if a dockerd not of ours runs or [`SOCKET`] is someone else's: fault would ask
/// that one. Likewise for a containerd on its standard socket, which dockerd would use.
fn refuse_others() {
    if let Some((pid, cmdline)) = dockerds().into_iter().next() {
        panic!(
            "a dockerd runs already (pid {pid}: {cmdline}); the tests start their own on \
             {SOCKET}, where fault looks: stop that one first"
        );
    }
    assert!(
        !Path::new(SOCKET).exists(),
        "{SOCKET} exists but no dockerd runs; the tests start their own dockerd there: \
         remove the stale socket first"
    );
    assert!(
        !Path::new(SYSTEM_CONTAINERD).exists(),
        "{SYSTEM_CONTAINERD} exists: dockerd would use that containerd instead of starting its \
         own; stop it (or remove the stale socket) first"
    );
}

/// A test run killed before its drops leaves its dockerd (orphaned), its containerd and
/// shims, the containers' processes and cgroups, or only their state: all of it is thrown
/// away. Panics if a dockerd of ours serves a live test.
fn recover() {
    let ours = our_processes();
    if ours.is_empty() && !Path::new(EXEC_ROOT).exists() && !Path::new(DATA_ROOT).exists() {
        return;
    }
    for (pid, cmdline) in &ours {
        if comm_of(*pid) != "dockerd" {
            continue;
        }
        let parent = parent_of(*pid).unwrap_or(1);
        assert!(
            parent == 1,
            "a dockerd of ours (pid {pid}: {cmdline}) serves process {parent}: one test at a \
             time (--test-threads=1), or end that run"
        );
    }
    eprintln!("docker: removing what a killed test run left");
    // Whether the killed run made /opt/containerd is unknown; an empty one is removed.
    clean_up(false);
}

/// Everything of ours after dockerd has exited: survivors killed, the containers' cgroups,
/// mounts and directories, the socket and what dockerd and its containerd made elsewhere.
fn clean_up(containerd_opt_before: bool) {
    let ids = container_ids();
    // The shims outlive a dockerd that did not stop its containers; a killed run leaves
    // dockerd and its containerd too.
    let survivors = our_processes();
    for (pid, cmdline) in &survivors {
        eprintln!("cleanup: killing {pid} ({cmdline})");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    // Orphans are reaped by init, our child by its drop: either way soon gone.
    let deadline = Instant::now() + STOP_TIMEOUT;
    while survivors
        .iter()
        .any(|(pid, _)| !comm_of(*pid).is_empty() && !is_zombie(*pid))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A shim removes its socket as it exits, unless it is killed.
    for socket in ids.iter().filter_map(|id| shim_socket(id)) {
        if socket.exists() {
            if let Err(e) = fs::remove_file(&socket) {
                eprintln!("cleanup: removing {}: {e}", socket.display());
            }
        }
    }
    for dir in docker_cgroups() {
        remove_cgroup_tree(&dir);
    }
    remove_state_dirs();
    // dockerd removes it when it exits on SIGTERM, not when it is killed.
    match fs::remove_file(SOCKET) {
        Ok(()) => eprintln!("cleanup: removed {SOCKET}, left by dockerd"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("cleanup: removing {SOCKET}: {e}"),
    }
    // Made on demand, and again by whoever needs them next: removed when empty.
    let mut made = vec![
        PathBuf::from(PLUGIN_DIR),
        Path::new(PLUGIN_DIR).parent().expect("a parent").into(),
        Path::new(SHIM_SOCKET_ROOT).join("s"),
        SHIM_SOCKET_ROOT.into(),
    ];
    if !containerd_opt_before {
        made.extend([
            Path::new(CONTAINERD_OPT).join("bin"),
            Path::new(CONTAINERD_OPT).join("lib"),
            CONTAINERD_OPT.into(),
        ]);
    }
    for dir in made {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                ) => {}
            Err(e) => eprintln!("cleanup: removing {}: {e}", dir.display()),
        }
    }
}

/// The ids of our containers: those docker keeps (`<data root>/containers/<id>`) and those
/// a shim of ours serves (`-id ID` in its command line).
fn container_ids() -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir(Path::new(DATA_ROOT).join("containers"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for (_, cmdline) in our_processes() {
        let words: Vec<&str> = cmdline.split_whitespace().collect();
        if let Some(pair) = words.windows(2).find(|w| w[0] == "-id") {
            ids.push(pair[1].to_string());
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// Where containerd 1.6 puts the socket of a container's shim:
/// `<SHIM_SOCKET_ROOT>/s/<sha256 of "<containerd address>/<namespace>/<id>">`
/// (`SocketAddress` in runtime/v2/shim/util_unix.go); docker's namespace is `moby`. `None`,
/// said on stderr, if sha256sum (coreutils) fails: this runs in drops.
fn shim_socket(id: &str) -> Option<PathBuf> {
    let key = format!("{EXEC_ROOT}/containerd/containerd.sock/moby/{id}");
    let digest = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut sha| {
            sha.stdin
                .take()
                .ok_or_else(|| io::Error::other("no stdin pipe"))?
                .write_all(key.as_bytes())?;
            sha.wait_with_output()
        });
    let hex = match digest {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
        Err(e) => {
            eprintln!("cleanup: sha256sum for the shim socket of {id}: {e}");
            return None;
        }
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        eprintln!("cleanup: sha256sum gave `{hex}` for the shim socket of {id}");
        return None;
    }
    Some(Path::new(SHIM_SOCKET_ROOT).join("s").join(hex))
}

/// State Z in /proc/PID/stat (after the parenthesised comm, which may hold spaces).
fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            == Some("Z")
    })
}

/// Unmounts whatever is mounted below our directories (the containers' overlays and
/// network namespaces, the data root's own bind mount), then removes them.
fn remove_state_dirs() {
    remove_dirs_below_mounts(&[EXEC_ROOT, DATA_ROOT]);
}

fn log_path() -> PathBuf {
    Path::new(EXEC_ROOT).join("dockerd.log")
}

/// The end of dockerd's log without the gRPC client's chatter, for a panic message.
fn log_tail() -> String {
    let log = fs::read_to_string(log_path()).unwrap_or_default();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("module=grpc")).collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n  ");
    format!("\ndockerd's log ends:\n  {tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerd_keeps_to_our_directories_and_the_standard_socket() {
        let args = dockerd_args();
        for want in [
            "--data-root=/var/lib/fault-test-docker",
            "--exec-root=/run/fault-test-docker",
            "--pidfile=/run/fault-test-docker/dockerd.pid",
            "--host=unix:///var/run/docker.sock",
            "--iptables=false",
            "--bridge=none",
            "--exec-opt=native.cgroupdriver=cgroupfs",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        assert!(
            args.iter().all(|a| !a.contains('{')),
            "every placeholder is filled: {args:?}"
        );
        let config: serde_json::Value = serde_json::from_str(&daemon_json()).expect("JSON");
        assert_eq!(
            config["deprecated-key-path"],
            "/run/fault-test-docker/key.json"
        );
        // As containerd named a killed shim's socket here.
        assert_eq!(
            shim_socket("966a86a3412f62a7d5fa04545139b342788c631cea725fc094393fc86ef2648a"),
            Some(PathBuf::from(
                "/run/containerd/s/47d8b5c56c979fda77d93f0e39c550f66af7ba044bb507249175dbde3a8a07f5"
            ))
        );
        // tests/src/cri.rs's containerd must not take our processes, nor we its.
        assert!(!EXEC_ROOT.contains(crate::cri::RUN_DIR));
        assert!(!crate::cri::RUN_DIR.contains(EXEC_ROOT));
    }
}
