//! The event log's files: `/run/fault/NAME/events.jsonl` (always), `--events FILE`, and
//! stdout for `--output json`. A line is written whole with one `write`, so a reader (`tail
//! -f`, `fault report` of a live run) never sees half of one.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use super::{event::Event, Reason, Record};

pub const EVENTS_FILE: &str = "events.jsonl";

/// The directory of a run's files: its event log, the log of a detached loader.
pub fn run_dir(policy: &str) -> PathBuf {
    Path::new(crate::state::STATE_DIR).join(policy)
}

pub fn events_path(policy: &str) -> PathBuf {
    run_dir(policy).join(EVENTS_FILE)
}

/// Left by `fault stop` before it signals a live loader, so the loader tells "stopped"
/// from any other SIGTERM.
pub fn stop_marker(policy: &str) -> PathBuf {
    run_dir(policy).join("stop-requested")
}

pub struct EventLog {
    files: Vec<(PathBuf, File)>,
    /// `--output json`: the original stdout, which only the events go to.
    stdout: Option<File>,
    /// Each file's first write error is told once.
    told: Vec<PathBuf>,
}

impl EventLog {
    /// The run's own log (emptied: a run replaces the previous one's) and `extra`
    /// (appended to, so one file can collect several runs).
    pub fn open(policy: &str, extra: Option<&Path>, stdout: bool) -> anyhow::Result<EventLog> {
        let dir = run_dir(policy);
        crate::sys::private::dir(&dir)?;
        let own = events_path(policy);
        let mut files = vec![(own.clone(), crate::sys::private::create(&own)?)];
        if let Some(p) = extra {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("open the events file {}", p.display()))?;
            files.push((p.to_path_buf(), f));
        }
        Ok(EventLog {
            files,
            stdout: if stdout { Some(take_stdout()?) } else { None },
            told: Vec::new(),
        })
    }

    pub fn nowhere() -> EventLog {
        EventLog {
            files: Vec::new(),
            stdout: None,
            told: Vec::new(),
        }
    }

    pub fn write(&mut self, record: &Record) {
        let mut line = serde_json::to_string(record).unwrap_or_default();
        line.push('\n');
        for (path, f) in &mut self.files {
            if let Err(e) = f.write_all(line.as_bytes()) {
                if !self.told.contains(path) {
                    eprintln!("fault: warning: writing {}: {e}", path.display());
                    self.told.push(path.clone());
                }
            }
        }
        if let Some(out) = &mut self.stdout {
            let _ = out.write_all(line.as_bytes());
        }
    }
}

/// Keeps stdout for the events alone: returns it as a file, and points fd 1 at stderr, so
/// every other line fault prints goes there.
fn take_stdout() -> anyhow::Result<File> {
    use std::os::fd::AsFd as _;
    let out = std::io::stdout();
    out.lock().flush().context("flush stdout")?;
    let events = out
        .as_fd()
        .try_clone_to_owned()
        .context("duplicate stdout")?;
    nix::unistd::dup2(2, 1).context("point stdout at stderr")?;
    Ok(File::from(events))
}

/// Ends the log of a run whose loader died (the watchdog, `fault stop`): appends a
/// `reverted` event unless the log has one already. A run without a log is left alone.
pub fn append_end(
    policy: &str,
    reason: Reason,
    detail: String,
    rules: Vec<super::event::RuleCounts>,
) {
    let path = events_path(policy);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let ended = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str::<Record>(l).ok())
        .is_some_and(|r| matches!(r.event, Event::Reverted { .. }));
    if ended {
        return;
    }
    let record = Record::now(Event::Reverted {
        reason,
        detail,
        rules,
        probes: Vec::new(),
    });
    let mut line = serde_json::to_string(&record).unwrap_or_default();
    line.push('\n');
    if let Ok(mut f) = OpenOptions::new().append(true).open(&path) {
        let _ = f.write_all(line.as_bytes());
    }
}
