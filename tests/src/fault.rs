//! Running the `fault` CLI under test.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::NamedTempFile;

use crate::{check_quietly, display, output_of, workspace_root};

/// Makes the record of the run `name` (whose loader is dead) say what a loader killed
/// before it recorded what it attached leaves: no filters, qdiscs or fq, not ready.
pub fn forget_attachments(name: &str) {
    let path = Path::new(STATE_DIR).join(format!("{name}.json"));
    let bytes = std::fs::read(&path).expect("read the record");
    let mut state: serde_json::Value = serde_json::from_slice(&bytes).expect("parse the record");
    for field in ["attachments", "qdiscs", "fq"] {
        state[field] = serde_json::json!([]);
    }
    state["ready"] = serde_json::json!(false);
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).expect("write the record");
}

/// Where `fault apply` announces an active policy: `<STATE_DIR>/<policy name>.json`.
pub const STATE_DIR: &str = "/run/fault";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const TERM_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test: `$FAULT_BIN`, else `<workspace>/target/release/fault`.
pub fn fault_bin() -> PathBuf {
    let path = fault_bin_unchecked();
    assert!(
        path.exists(),
        "{} not found: run `cargo xtask build` or set FAULT_BIN",
        path.display()
    );
    path
}

fn fault_bin_unchecked() -> PathBuf {
    std::env::var_os("FAULT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/fault"))
}

/// Runs `fault ARGS...` to completion; the caller checks the status.
pub fn fault<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    output_of(Command::new(fault_bin()).args(args).stdin(Stdio::null()))
}

/// Runs `fault ARGS...`, panics with its stderr unless it succeeds, returns stdout.
pub fn fault_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(fault_bin());
    cmd.args(args).stdin(Stdio::null());
    crate::check(&mut cmd)
}

/// Per-rule counters of the single active policy, from `fault status --json`.
pub fn status_rules() -> Vec<serde_json::Value> {
    let out = fault(["status", "--json"]);
    assert!(out.status.success(), "fault status failed: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    v[0]["rules"].as_array().cloned().unwrap_or_default()
}

/// A policy written to a temporary `.yaml` file, deleted on drop with the run directory
/// its runs leave (`/run/fault/NAME/`: the event log, a detached loader's log).
pub struct PolicyFile {
    file: NamedTempFile,
    name: Option<String>,
}

impl PolicyFile {
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The run directory of the policy's runs.
    pub fn run_dir(&self) -> PathBuf {
        Path::new(STATE_DIR).join(self.name.as_deref().unwrap_or("-"))
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        if self.name.is_some() {
            let _ = std::fs::remove_dir_all(self.run_dir());
        }
    }
}

/// `metadata.name` of a policy, as the tests write them (`metadata: {name: x}` or a
/// `name:` line below `metadata:`).
fn policy_name(yaml: &str) -> Option<String> {
    let after = &yaml[yaml.find("metadata:")? + "metadata:".len()..];
    let value = &after[after.find("name:")? + "name:".len()..];
    let end = value.find(['}', ',', '\n']).unwrap_or(value.len());
    let name = value[..end].trim().trim_matches(['"', '\'']);
    (!name.is_empty() && !name.contains('/')).then(|| name.to_owned())
}

/// Writes `yaml` to a fresh temporary file.
pub fn write_policy(yaml: &str) -> PolicyFile {
    let mut file = tempfile::Builder::new()
        .prefix("fault-policy-")
        .suffix(".yaml")
        .tempfile()
        .expect("creating a temporary policy file");
    file.write_all(yaml.as_bytes())
        .expect("writing the policy file");
    PolicyFile {
        file,
        name: policy_name(yaml),
    }
}

/// `fault apply` running in the background. On drop: SIGTERM, up to 10 s to exit, SIGKILL,
/// then `fault stop --all` as a safety net; if the test is panicking, the log is printed.
pub struct FaultApply {
    child: Option<Child>,
    log: NamedTempFile,
    state_file: PathBuf,
    label: String,
}

impl FaultApply {
    /// Starts `fault apply POLICY`. `policy_name` is the policy's `name`, which names its
    /// state file (see [`FaultApply::wait_ready`]).
    pub fn start(policy: impl AsRef<Path>, policy_name: &str) -> Self {
        let policy = policy.as_ref().as_os_str();
        Self::start_args([OsStr::new("apply"), policy], policy_name)
    }

    /// Starts `fault apply -v POLICY`: every process patched gets a line in the log.
    pub fn start_verbose(policy: impl AsRef<Path>, policy_name: &str) -> Self {
        let policy = policy.as_ref().as_os_str();
        Self::start_args([OsStr::new("apply"), OsStr::new("-v"), policy], policy_name)
    }

    /// Starts `fault ARGS...` (for `apply` with extra options).
    pub fn start_args<I, S>(args: I, policy_name: &str) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::start_env(args, policy_name, &[])
    }

    /// Starts `fault ARGS...` with extra environment variables (FAULT_TC_MODE=clsact).
    pub fn start_env<I, S>(args: I, policy_name: &str, envs: &[(&str, &str)]) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log = tempfile::Builder::new()
            .prefix("fault-apply-")
            .suffix(".log")
            .tempfile()
            .expect("creating the apply log");
        let out = log.reopen().expect("reopening the apply log");
        let err = out.try_clone().expect("duplicating the log fd");
        let mut cmd = Command::new(fault_bin());
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        cmd.envs(envs.iter().copied());
        let label = display(&cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn `{label}`: {e}"));
        Self {
            child: Some(child),
            log,
            state_file: Path::new(STATE_DIR).join(format!("{policy_name}.json")),
            label,
        }
    }

    /// Waits until the state file says `"ready": true` (everything is attached); panics with
    /// the log if `fault` exits first or 30 s pass.
    pub fn wait_ready(&mut self) -> &mut Self {
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready = |p: &Path| {
            std::fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|v| v["ready"] == true)
        };
        while !ready(&self.state_file) {
            if let Some(status) = self.try_wait() {
                panic!(
                    "`{}` exited ({status}) before {} appeared:\n{}",
                    self.label,
                    self.state_file.display(),
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "`{}`: {} missing after {READY_TIMEOUT:?}:\n{}",
                self.label,
                self.state_file.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self
    }

    /// The state file this run announces itself in.
    pub fn state_file(&self) -> &Path {
        &self.state_file
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything `fault apply` printed so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_else(|e| format!("<no log: {e}>"))
    }

    /// The exit status if it has exited on its own (e.g. at the policy's deadline).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("running");
        child
            .try_wait()
            .unwrap_or_else(|e| panic!("waiting for `{}`: {e}", self.label))
    }

    /// Waits up to `timeout` for it to exit on its own; panics with the log otherwise.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "`{}` still running after {timeout:?}:\n{}",
                self.label,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait (10 s at most, then SIGKILL): returns how it exited and its log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let status = self
            .terminate()
            .unwrap_or_else(|e| panic!("waiting for `{}`: {e}", self.label));
        (status, self.log())
    }

    /// Never panics (it runs in drop).
    fn terminate(&mut self) -> std::io::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(std::io::Error::other("already stopped"));
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + TERM_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "cleanup: `{}` ignored SIGTERM for {TERM_TIMEOUT:?}; killing it",
            self.label
        );
        let _ = child.kill();
        child.wait()
    }
}

impl Drop for FaultApply {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Err(e) = self.terminate() {
                eprintln!("cleanup: stopping `{}`: {e}", self.label);
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- log of `{}` ---\n{}--- end of log ---",
                self.label,
                self.log()
            );
        }
        // Whatever the run left attached, this detaches it.
        check_quietly(
            Command::new(fault_bin_unchecked())
                .args(["stop", "--all"])
                .stdin(Stdio::null()),
        );
    }
}
