//! Child processes placed in a cgroup and/or a network namespace, and the traffic probe.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{display, enter_cgroup, enter_netns, Cgroup, Netns};

/// A spawned child, killed (SIGKILL) and reaped on drop if still running.
pub struct ChildGuard {
    child: Option<Child>,
    label: String,
}

/// Where a spawned process goes before it execs: a cgroup v2 directory and a network
/// namespace file (under /run/netns, or /proc/PID/ns/net), each optional. The harness's own
/// [`Cgroup`] and [`Netns`] give one through [`Place::new`], a pod's container another.
#[derive(Clone, Debug, Default)]
pub struct Place {
    /// The cgroup v2 directory the child joins.
    pub cgroup: Option<PathBuf>,
    /// The network namespace the child enters.
    pub netns: Option<PathBuf>,
}

impl Place {
    /// The place of a test cgroup and a test namespace.
    pub fn new(cgroup: Option<&Cgroup>, netns: Option<&Netns>) -> Self {
        Self {
            cgroup: cgroup.map(|c| c.path().to_path_buf()),
            netns: netns.map(|n| n.path().to_path_buf()),
        }
    }
}

/// Spawns `cmd` after moving it into `cgroup` and then into `netns` (see [`spawn_at`]).
pub fn spawn_in(cgroup: Option<&Cgroup>, netns: Option<&Netns>, cmd: Command) -> ChildGuard {
    spawn_at(&Place::new(cgroup, netns), cmd)
}

/// Spawns `cmd` after moving it into the place's cgroup and then into its network namespace
/// (cgroup first: the move writes to cgroupfs, which must happen before anything else the
/// child does).
pub fn spawn_at(place: &Place, mut cmd: Command) -> ChildGuard {
    if let Some(cgroup) = &place.cgroup {
        enter_cgroup(&mut cmd, cgroup);
    }
    if let Some(netns) = &place.netns {
        enter_netns(&mut cmd, netns);
    }
    let label = display(&cmd);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn `{label}`: {e}"));
    ChildGuard {
        child: Some(child),
        label,
    }
}

/// [`spawn_in`], then [`ChildGuard::wait_output`].
pub fn run_in(
    cgroup: Option<&Cgroup>,
    netns: Option<&Netns>,
    cmd: Command,
    timeout: Duration,
) -> Output {
    spawn_in(cgroup, netns, cmd).wait_output(timeout)
}

/// [`spawn_at`], then [`ChildGuard::wait_output`].
pub fn run_at(place: &Place, cmd: Command, timeout: Duration) -> Output {
    spawn_at(place, cmd).wait_output(timeout)
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    /// The command line, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn child(&self) -> &Child {
        self.child.as_ref().expect("child present until consumed")
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until consumed")
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let label = self.label.clone();
        self.child_mut()
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for `{label}`: {e}"))
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(self.pid() as i32, signal) };
    }

    /// Waits (10 s at most) until a socket bound to `port` shows up in the child's network
    /// namespace: a TCP listener or any UDP socket. Use it before starting a client.
    pub fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "`{}` exited ({status}) before listening on port {port}",
                    self.label
                );
            }
            if is_listening(self.pid(), port) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{}` not listening on port {port} after 10 s",
                self.label
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for exit, collecting stdout and stderr if they were piped. Past `timeout` the
    /// child is killed and the call panics with what it printed so far.
    pub fn wait_output(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("child present until consumed");
        // Drained on threads so a chatty child cannot block on a full pipe while we wait.
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Err(e) => panic!("waiting for `{}`: {e}", self.label),
            }
        };
        let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        let (stdout, stderr) = (collect(stdout), collect(stderr));
        match status {
            Some(status) => Output {
                status,
                stdout,
                stderr,
            },
            None => panic!(
                "`{}` still running after {timeout:?}; killed. stdout: {} stderr: {}",
                self.label,
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails harmlessly when it has exited already; wait reaps it either way.
            let _ = child.kill();
            if let Err(e) = child.wait() {
                eprintln!("cleanup: reaping `{}`: {e}", self.label);
            }
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Whether /proc/PID/net (the view of PID's network namespace) has a TCP listener or a UDP
/// socket on `port`.
fn is_listening(pid: u32, port: u16) -> bool {
    let wanted = format!("{port:04X}");
    let tables = [
        ("tcp", true),
        ("tcp6", true),
        ("udp", false),
        ("udp6", false),
    ];
    tables.iter().any(|(table, tcp)| {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            return false;
        };
        text.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // fields: sl local_address rem_address st ...; local is HEXADDR:HEXPORT
            let local_port = fields.get(1).and_then(|a| a.rsplit(':').next());
            let state = fields.get(3).copied();
            // 0A is TCP_LISTEN
            local_port == Some(wanted.as_str()) && (!tcp || state == Some("0A"))
        })
    })
}

/// The fault-probe binary: `$FAULT_PROBE`, else next to the test executable's `deps/` folder
/// (where cargo puts a package's binaries when it builds its integration tests).
pub fn probe_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("FAULT_PROBE") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in <target>/<profile>/deps");
    let probe = profile_dir.join("fault-probe");
    assert!(
        probe.exists(),
        "{} not found: build it with `cargo build -p fault-tests --bins` or set FAULT_PROBE",
        probe.display()
    );
    probe
}

/// A `fault-probe <args>` command with stdout and stderr piped, ready for [`spawn_in`].
pub fn probe(args: &[&str]) -> Command {
    let mut cmd = Command::new(probe_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The JSON report a probe printed as its last line; panics if it failed or printed none.
pub fn probe_json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "probe failed ({}): {stderr}{stdout}",
        out.status
    );
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    let last = last.unwrap_or_else(|| panic!("probe printed nothing; stderr: {stderr}"));
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("probe printed `{last}`, not JSON ({e}); stderr: {stderr}"))
}

/// The vDSO image of `pid`, read from its memory.
pub fn vdso_of(pid: u32) -> Vec<u8> {
    use std::os::unix::fs::FileExt as _;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let line = maps
        .lines()
        .find(|l| l.ends_with("[vdso]"))
        .expect("a vDSO mapping");
    let (lo, hi) = line
        .split_whitespace()
        .next()
        .unwrap()
        .split_once('-')
        .unwrap();
    let lo = u64::from_str_radix(lo, 16).unwrap();
    let hi = u64::from_str_radix(hi, 16).unwrap();
    let mut buf = vec![0; (hi - lo) as usize];
    std::fs::File::open(format!("/proc/{pid}/mem"))
        .expect("mem")
        .read_exact_at(&mut buf, lo)
        .expect("read the vDSO");
    buf
}
