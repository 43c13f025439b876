//! `fault status`: what is active on this host, from the state files and pinned counters.

use std::path::Path;

use serde::Serialize;

use crate::{
    clock, display,
    error::{failed, Error},
    net::{attach::Mode, loader},
    state::{self, State},
    sys::time::unix_now,
    target,
};

#[derive(Serialize)]
struct StatusEntry<'a> {
    name: &'a str,
    file: &'a Path,
    loader_pid: u32,
    loader_alive: bool,
    seconds_left: i64,
    tc_mode: &'a str,
    targets: &'a [target::ResolvedTarget],
    attachments: usize,
    /// What of it still acts on the targets, in words.
    in_force: Vec<String>,
    rules: Vec<display::RuleReport>,
    clock_rules: &'a [clock::RuleStatus],
    clock_processes: usize,
    /// Target processes whose clock system calls the fault cannot reach.
    clock_calls: &'a [clock::calls::CallsRecord],
}

/// What still acts: everything while the loader runs. After its death nothing acts past
/// the heartbeat's lease (a second, see `crate::lease`); what it left in place, inert, waits
/// for `fault stop`.
fn in_force(s: &State, alive: bool, seconds_left: i64) -> Vec<String> {
    if seconds_left == 0 {
        return vec!["nothing: the deadline has passed".into()];
    }
    if alive {
        return vec!["everything in this record".into()];
    }
    let filters = s
        .attachments
        .iter()
        .filter(|a| matches!(a.mode, Mode::Clsact { .. }))
        .count();
    let mut out = vec![format!(
        "nothing acts: the faults ended within a second of the loader's death ({} tcx \
         link(s) and ingress on {} cgroup(s) went with it)",
        s.attachments.len() - filters,
        s.ingress_cgroups.len()
    )];
    let mut left = Vec::new();
    if filters > 0 {
        left.push(format!("{filters} clsact filter(s)"));
    }
    if !s.fq.is_empty() {
        left.push(format!("fq on {} interface(s)", s.fq.len()));
    }
    if !s.clock_processes.is_empty() {
        left.push(format!(
            "expired clock pages in {} process(es)",
            s.clock_processes.len()
        ));
    }
    if !left.is_empty() {
        out.push(format!("left in place, inert: {}", left.join(", ")));
    }
    // Nothing in the kernel ends a freeze: the watchdog thaws at the loader's death, and
    // this is what is still frozen if it could not.
    let frozen: Vec<String> = s
        .frozen
        .iter()
        .filter(|c| crate::pause::freeze::is_frozen(c).unwrap_or(false))
        .map(|c| c.display().to_string())
        .collect();
    if !frozen.is_empty() {
        out.push(format!(
            "still frozen (a pause step's cgroups; `fault stop {}` thaws them): {}",
            s.name,
            frozen.join(" ")
        ));
    }
    out
}

pub fn status(json: bool) -> Result<(), Error> {
    let states = State::all().map_err(failed("read the state files"))?;
    let now = unix_now() as i64;
    let mut entries = Vec::new();
    for s in &states {
        let dir = state::pin_dir(&s.name).map_err(failed("find the pins"))?;
        let counters = loader::pinned_counters(&dir, s.rules.len()).unwrap_or_default();
        let alive = s.loader_alive();
        let seconds_left = (s.deadline_unix as i64 - now).max(0);
        entries.push(StatusEntry {
            name: &s.name,
            file: &s.file,
            loader_pid: s.pid,
            loader_alive: alive,
            seconds_left,
            tc_mode: &s.tc_mode,
            targets: &s.targets,
            attachments: s.attachments.len(),
            in_force: in_force(s, alive, seconds_left),
            rules: display::rule_reports(&s.rules, &counters),
            clock_rules: &s.clock_rules,
            clock_processes: s.clock_processes.len(),
            clock_calls: &s.clock_calls,
        });
    }
    if json {
        let text = serde_json::to_string_pretty(&entries).map_err(failed("print the status"))?;
        println!("{text}");
        return Ok(());
    }
    let agent = crate::agent::AgentStatus::of_running_agent();
    if entries.is_empty() && agent.is_none() {
        println!("fault: nothing active");
    }
    for line in agent.iter().flat_map(|a| a.lines()) {
        println!("{line}");
    }
    entries.iter().for_each(print_entry);
    Ok(())
}

/// `fault status --agent`: the files the agent watches, as lines or as its status file.
pub fn agent_status(json: bool) -> Result<(), Error> {
    let Some(a) = crate::agent::AgentStatus::of_running_agent() else {
        return Err(failed("fault status --agent")(anyhow::anyhow!(
            "no agent runs on this host"
        )));
    };
    if json {
        let text = serde_json::to_string_pretty(&a).map_err(failed("print the status"))?;
        println!("{text}");
    } else {
        a.lines().iter().for_each(|l| println!("{l}"));
    }
    Ok(())
}

fn print_entry(e: &StatusEntry) {
    println!(
        "{} ({}): {}, {} s left, {} hooks via {}",
        e.name,
        e.file.display(),
        if e.loader_alive {
            format!("running as pid {}", e.loader_pid)
        } else {
            format!(
                "loader pid {} is gone; `fault stop {}` cleans up",
                e.loader_pid, e.name
            )
        },
        e.seconds_left,
        e.attachments,
        e.tc_mode
    );
    if !e.loader_alive {
        for l in &e.in_force {
            println!("  {l}");
        }
    }
    for t in e.targets {
        println!("  target {} (cgroup id {})", t.label, t.cgroup_id);
    }
    for l in display::counter_lines(&e.rules) {
        println!("{l}");
    }
    for l in display::clock_lines(e.clock_rules, e.clock_processes) {
        println!("{l}");
    }
    for c in e.clock_calls {
        println!("  clock: not reached: {}", c.describe());
    }
}
