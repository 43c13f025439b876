//! `fault stop`: asks a live loader to revert, and removes what a dead one left.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use nix::{sys::signal::Signal, unistd::Pid};

use super::cleanup::cleanup_dead;
use crate::{
    error::{failed, incomplete, Error},
    net::intents::{self, Intents},
    observe,
    state::{self, State},
};

pub fn stop(name: Option<&str>, all: bool) -> Result<(), Error> {
    if let Some(n) = name {
        crate::policy::check_name(n).map_err(|why| Error::Usage(format!("fault stop: {why}")))?;
    }
    // /run/fault is root's alone: a user who may not read it is told what is missing.
    let (states, damaged) = State::scan().map_err(|e| {
        match crate::sys::caps::refusal("fault stop", &crate::sys::caps::for_stop()) {
            Some(why) => failed("fault stop")(anyhow!(why)),
            None => failed("read the state files")(e),
        }
    })?;
    let chosen: Vec<&State> = states
        .iter()
        .filter(|s| all || Some(s.name.as_str()) == name)
        .collect();
    let mut unreadable = Vec::new();
    for (n, e) in damaged {
        match all || Some(n.as_str()) == name {
            true => unreadable.push(n),
            false => state::warn_damaged(&n, &e),
        }
    }
    if let (Some(n), true) = (name, chosen.is_empty()) {
        let pins = state::pin_dir(n).map_err(failed("find the pins"))?;
        let half_written = state::orphan_tmp_names().iter().any(|o| o == n);
        if !pins.exists() && !half_written && unreadable.is_empty() {
            return Err(failed("fault stop")(anyhow!("no active policy named {n}")));
        }
    }
    if !chosen.is_empty() || !unreadable.is_empty() || name.is_some() {
        if let Some(why) = crate::sys::caps::refusal("fault stop", &crate::sys::caps::for_stop()) {
            return Err(failed("fault stop")(anyhow!(why)));
        }
    }
    let mut problems = Vec::new();
    for n in &unreadable {
        // Nothing in it can be trusted: what it recorded is left as it is; its pins go below.
        // Its intents are a file of their own, and their filters are found by program.
        let intents = Intents::of(n);
        problems.extend(intents::remove_intended(&intents.read()));
        if let Err(e) = intents.remove() {
            problems.push(format!("{e:#}"));
        }
        match std::fs::remove_file(state::state_path(n)) {
            Ok(()) => println!("fault: removed the unreadable record of {n}"),
            Err(e) => problems.push(format!("remove the record of {n}: {e}")),
        }
    }
    for s in chosen {
        if s.loader_alive() {
            mark_stop(&s.name);
            end_loader(s)?;
        }
        if state::state_path(&s.name).exists() {
            problems.extend(cleanup_dead(s));
            observe::append_end(
                &s.name,
                observe::Reason::LoaderDied,
                format!(
                    "the loader (pid {}) died without reverting; fault stop removed what it left",
                    s.pid
                ),
                Vec::new(),
            );
        }
        println!("fault: stopped {}", s.name);
    }
    problems.extend(remove_orphan_pins(name, all)?);
    if all {
        tell_agent();
    }
    for n in state::orphan_tmp_names() {
        if all || Some(n.as_str()) == name {
            if let Err(e) = state::remove_orphan_tmp(&n) {
                problems.push(format!("{e:#}"));
            }
        }
    }
    incomplete("stop", problems)
}

/// A dead agent's status goes; a live one is told of (it runs a stopped file again only
/// once the file changes).
fn tell_agent() {
    if let Some(p) = crate::agent::remove_if_dead() {
        println!("fault: removed a dead agent's status {}", p.display());
    }
    if let Some(a) = crate::agent::AgentStatus::of_running_agent() {
        println!(
            "fault: the agent (pid {}) still watches {}: it applies a file again when the \
             file changes; SIGTERM ends it",
            a.pid,
            a.dir.display()
        );
    }
}

/// Tells the loader the SIGTERM it is about to get is `fault stop`'s, for its event log.
fn mark_stop(name: &str) {
    let marker = observe::stop_marker(name);
    if let Some(dir) = marker.parent() {
        let _ = crate::sys::private::dir(dir);
    }
    let _ = crate::sys::private::write(&marker, format!("{}\n", std::process::id()).as_bytes());
}

/// Asks the loader to revert (it knows the most about what it holds), and kills it if it
/// has not within 10 s.
fn end_loader(s: &State) -> Result<(), Error> {
    let pid = Pid::from_raw(s.pid as i32);
    nix::sys::signal::kill(pid, Signal::SIGTERM).map_err(failed(format!(
        "signal the loader of {} (pid {})",
        s.name, s.pid
    )))?;
    let until = Instant::now() + Duration::from_secs(10);
    while s.loader_alive() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    if s.loader_alive() {
        eprintln!("fault: pid {} did not exit within 10 s; killing it", s.pid);
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        while s.loader_alive() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Pins without a state file (a loader killed between pinning and writing it).
fn remove_orphan_pins(name: Option<&str>, all: bool) -> Result<Vec<String>, Error> {
    let root = state::pin_root().map_err(failed("find the pins"))?;
    let orphans: Vec<String> = std::fs::read_dir(&root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut problems = Vec::new();
    for o in orphans {
        if (all || Some(o.as_str()) == name) && !state::state_path(&o).exists() {
            if let Err(e) = state::remove_pins(&o) {
                problems.push(format!("{e:#}"));
            }
        }
    }
    Ok(problems)
}
