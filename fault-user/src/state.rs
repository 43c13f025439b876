//! What an active `fault apply` leaves on the host, so that a fresh process can report on it
//! (`fault status`) and remove it (`fault stop`), also after the loader died.
//!
//! - `/run/fault/<policy>.json`: the loader's pid, the deadline, the rules, every
//!   attachment and every process whose clocks are patched (tmpfs: a reboot clears it, as it
//!   clears the kernel state it describes).
//! - `<bpffs>/fault/<policy>/`: the pinned COUNTERS and CONFIG maps.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    clock,
    net::{attach::Record, clsact::QdiscRecord, fq::FqRecord},
    policy::Policy,
    sys::{mounts as sysfs, private, proc},
    target::ResolvedTarget,
};

pub const STATE_DIR: &str = "/run/fault";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    /// False while attaching; true once every program is in place.
    #[serde(default)]
    pub ready: bool,
    pub file: PathBuf,
    pub pid: u32,
    /// The loader's start time (see `crate::sys::proc`): with the pid, it tells the loader
    /// from a process that was given its pid later.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// Wall-clock start and deadline (seconds since the epoch), for people.
    pub started_unix: u64,
    pub deadline_unix: u64,
    pub rules: Vec<RuleInfo>,
    pub targets: Vec<ResolvedTarget>,
    pub cgroup_ids: Vec<u64>,
    pub tc_mode: String,
    pub attachments: Vec<Record>,
    pub qdiscs: Vec<QdiscRecord>,
    /// Cgroups with the ingress program (links: they end with the loader).
    #[serde(default)]
    pub ingress_cgroups: Vec<PathBuf>,
    /// Interfaces whose default root qdisc fault replaced with fq for delays.
    #[serde(default)]
    pub fq: Vec<FqRecord>,
    /// Clock rules, and the processes whose vDSO is redirected: `fault stop` restores them
    /// when the loader cannot (see `crate::clock`).
    #[serde(default)]
    pub clock_rules: Vec<clock::RuleStatus>,
    #[serde(default)]
    pub clock_processes: Vec<clock::Record>,
    /// Target processes seen reading a faulted clock by system calls or waiting until an
    /// absolute time, which the clock fault cannot reach (see `crate::clock::calls`).
    #[serde(default)]
    pub clock_calls: Vec<clock::calls::CallsRecord>,
    /// Cgroups this run may have frozen (pauses), recorded before the first freeze: after
    /// the loader's death, the watchdog and `fault stop` thaw them (see `crate::pause`).
    #[serde(default)]
    pub frozen: Vec<PathBuf>,
    /// What kinds of fault this run gives which cgroups: another run may not give them the
    /// same kind (see `crate::collide`).
    #[serde(default)]
    pub claims: Vec<crate::collide::Claim>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleInfo {
    pub name: String,
    pub summary: String,
}

impl RuleInfo {
    pub fn of(policy: &Policy) -> Vec<RuleInfo> {
        policy
            .rules
            .iter()
            .map(|r| RuleInfo {
                name: r.name.clone(),
                summary: r.describe(),
            })
            .collect()
    }
}

pub fn state_path(name: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{name}.json"))
}

/// The cls_bpf filters a run was about to add (see `crate::net::intents`).
pub fn intents_path(name: &str) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{name}.intents"))
}

pub fn pin_root() -> anyhow::Result<PathBuf> {
    Ok(sysfs::bpffs_mount()
        .context("find or mount bpffs")?
        .join("fault"))
}

/// Makes a run's pin directory, and the root it is in, for root alone.
pub fn create_pin_dir(dir: &Path) -> anyhow::Result<()> {
    if let Some(root) = dir.parent() {
        private::dir(root)?;
    }
    private::dir(dir)
}

pub fn pin_dir(name: &str) -> anyhow::Result<PathBuf> {
    Ok(pin_root()?.join(name))
}

impl State {
    pub fn write(&self) -> anyhow::Result<()> {
        private::dir(Path::new(STATE_DIR))?;
        let path = state_path(&self.name);
        // Write then rename, so a reader never sees half a file.
        let tmp = tmp_path(&self.name);
        private::write(&tmp, &serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }

    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))
    }

    /// All recorded states, sorted by name. One damaged record must not hide the others:
    /// it is told and skipped (`fault stop` removes it).
    pub fn all() -> anyhow::Result<Vec<Self>> {
        let (states, damaged) = Self::scan()?;
        for (name, e) in &damaged {
            warn_damaged(name, e);
        }
        Ok(states)
    }

    /// The records that parse, sorted by name, and the names of those that do not, with why.
    pub fn scan() -> anyhow::Result<(Vec<Self>, Vec<Damaged>)> {
        let (mut states, mut damaged) = (Vec::new(), Vec::new());
        let entries = match std::fs::read_dir(STATE_DIR) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((states, damaged)),
            Err(e) => return Err(e).context(format!("read {STATE_DIR}")),
        };
        for p in entries.flatten().map(|e| e.path()) {
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match Self::read(&p) {
                Ok(s) => states.push(s),
                Err(e) => {
                    let name = p.file_stem().unwrap_or_default().to_string_lossy();
                    damaged.push((name.into_owned(), e));
                }
            }
        }
        states.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((states, damaged))
    }

    /// Whether the loader that wrote this is still running: the same process (by start
    /// time), or for a record without one, a process whose program is named `fault`.
    pub fn loader_alive(&self) -> bool {
        if let Some(start) = self.pid_start {
            return proc::is_running(self.pid, start);
        }
        std::fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|c| {
            c.split(|&b| b == 0).next().is_some_and(|argv0| {
                Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(argv0))
                    .file_name()
                    .is_some_and(|n| n == "fault")
            })
        })
    }

    /// Removes the state file, the intents beside it, and the half-written copy a loader
    /// killed while writing it may have left.
    pub fn remove_file(&self) -> anyhow::Result<()> {
        remove_if_there(&intents_path(&self.name))?;
        remove_if_there(&tmp_path(&self.name))?;
        remove_if_there(&state_path(&self.name))
    }
}

/// A record that does not parse: its name, and why.
pub type Damaged = (String, anyhow::Error);

/// Tells of a record that does not parse, and how to remove it.
pub fn warn_damaged(name: &str, e: &anyhow::Error) {
    eprintln!("fault: warning: {e:#}; skipped (`fault stop {name}` removes it)");
}

fn tmp_path(name: &str) -> PathBuf {
    state_path(name).with_extension("json.tmp")
}

pub fn remove_if_there(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Names whose only record is a half-written state file: a loader killed during its very
/// first write (with a record beside it, the record's own cleanup removes it).
pub fn orphan_tmp_names() -> Vec<String> {
    let entries = std::fs::read_dir(STATE_DIR).into_iter().flatten().flatten();
    entries
        .filter_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            file.strip_suffix(".json.tmp").map(str::to_owned)
        })
        .filter(|name| !state_path(name).exists())
        .collect()
}

/// Removes the half-written state file of `name`.
pub fn remove_orphan_tmp(name: &str) -> anyhow::Result<()> {
    remove_if_there(&tmp_path(name))
}

/// Removes a policy's pin directory (unpinning its maps) if it exists.
pub fn remove_pins(name: &str) -> anyhow::Result<()> {
    let dir = pin_dir(name)?;
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", dir.display()))
        }
        _ => {
            // Leave no empty parent behind either.
            let _ = std::fs::remove_dir(pin_root()?);
            Ok(())
        }
    }
}
