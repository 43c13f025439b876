//! The agent's status file, `/run/fault/.agent/status.json`: which directory it watches and
//! each file's state, written whole after every reconcile that changed something, for
//! `fault status` and for scripts. The directory's name cannot be a policy's (a policy name
//! does not start with a dot).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::slot::FileState;
use crate::sys::{private, proc};

pub fn agent_dir() -> PathBuf {
    Path::new(crate::state::STATE_DIR).join(".agent")
}

pub fn status_path() -> PathBuf {
    agent_dir().join("status.json")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub pid_start: Option<u64>,
    pub dir: PathBuf,
    /// Counts the reconciles that changed something: a reader waits for it to move.
    pub generation: u64,
    pub files: Vec<FileStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileStatus {
    pub file: PathBuf,
    /// The policy's metadata.name; none for a file that does not parse.
    pub name: Option<String>,
    pub state: FileState,
    /// Of the content this state is for (see `agent::dir::content_hash`), in hex.
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loader_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl AgentStatus {
    pub fn write(&self) -> anyhow::Result<()> {
        private::dir(&agent_dir())?;
        let path = status_path();
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(self).context("encode the agent status")?;
        private::write(&tmp, &text)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))
    }

    /// The status of the agent that runs now, if one does.
    pub fn of_running_agent() -> Option<AgentStatus> {
        let text = std::fs::read(status_path()).ok()?;
        let s: AgentStatus = serde_json::from_slice(&text).ok()?;
        s.alive().then_some(s)
    }

    pub fn alive(&self) -> bool {
        self.pid_start
            .is_some_and(|start| proc::is_running(self.pid, start))
    }

    /// `fault status`'s lines for it.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "agent (pid {}) watching {}: {} file(s)",
            self.pid,
            self.dir.display(),
            self.files.len()
        )];
        for f in &self.files {
            let name = f.name.as_deref().unwrap_or("-");
            let mut line = format!("  {} ({name}): {}", f.file.display(), f.state.name());
            if let Some(pid) = f.loader_pid {
                line.push_str(&format!(", loader pid {pid}"));
            }
            if let Some(why) = &f.why {
                line.push_str(&format!(": {why}"));
            }
            out.push(line);
        }
        out
    }
}

/// Removes what a dead agent left (its status file); the loaders it ran are runs like any
/// other, for `fault stop`.
pub fn remove_if_dead() -> Option<PathBuf> {
    let text = std::fs::read(status_path()).ok()?;
    let s: AgentStatus = serde_json::from_slice(&text).ok()?;
    if s.alive() {
        return None;
    }
    std::fs::remove_file(status_path()).ok()?;
    Some(status_path())
}
