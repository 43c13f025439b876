//! The agent's event log, `/run/fault/.agent/events.jsonl`: one JSON object a line for each
//! thing that happened to a file (an experiment started, in force, reverted, ended; a file
//! found invalid), written whole; the same said on stderr for `journalctl` or `kubectl logs`.

use std::{fs::File, io::Write as _, path::Path};

use serde::Serialize;

use super::slot::Happened;

#[derive(Serialize)]
struct Line<'a> {
    wall: String,
    file: &'a Path,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    took_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<&'a str>,
}

pub struct AgentLog {
    file: Option<File>,
}

impl AgentLog {
    pub fn open() -> anyhow::Result<AgentLog> {
        let dir = super::status::agent_dir();
        crate::sys::private::dir(&dir)?;
        let file = crate::sys::private::create(&dir.join("events.jsonl"))?;
        Ok(AgentLog { file: Some(file) })
    }

    pub fn write(&mut self, file: &Path, h: &Happened) {
        let line = line(file, h);
        eprintln!("fault agent: {}", say(&line));
        let Some(f) = &mut self.file else { return };
        let mut text = serde_json::to_vec(&line).unwrap_or_default();
        text.push(b'\n');
        if let Err(e) = f.write_all(&text) {
            eprintln!("fault agent: warning: the event log: {e}; it is not written from here on");
            self.file = None;
        }
    }
}

fn line<'a>(file: &'a Path, h: &'a Happened) -> Line<'a> {
    let (event, name, pid, took_ms, why) = match h {
        Happened::Started { name, pid } => ("started", Some(name), Some(*pid), None, None),
        Happened::Applied { name, took } => (
            "applied",
            Some(name),
            None,
            Some(took.as_millis() as u64),
            None,
        ),
        Happened::Stopping { name } => ("stopping", Some(name), None, None, None),
        Happened::Reverted { name } => ("reverted", Some(name), None, None, None),
        Happened::Ended { name, state, why } => (state.name(), Some(name), None, None, Some(why)),
        Happened::Invalid { why } => ("invalid", None, None, None, Some(why)),
        Happened::StartFailed { why } => ("start_failed", None, None, None, Some(why)),
    };
    Line {
        wall: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        file,
        event,
        name: name.map(String::as_str),
        pid,
        took_ms,
        why: why.map(String::as_str),
    }
}

/// The line in words.
fn say(l: &Line) -> String {
    let mut s = format!("{}: {}", l.file.display(), l.event);
    if let Some(n) = l.name {
        s.push_str(&format!(" {n}"));
    }
    if let Some(p) = l.pid {
        s.push_str(&format!(" (loader pid {p})"));
    }
    if let Some(t) = l.took_ms {
        s.push_str(&format!(" in {t} ms"));
    }
    if let Some(w) = l.why {
        s.push_str(&format!(": {w}"));
    }
    s
}
