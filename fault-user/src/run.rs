//! The commands: apply (load, attach, hold, revert), check, status and stop.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::anyhow;
use nix::{sys::signal::Signal, unistd::Pid};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    attach::{self, Direction},
    clock, loader, peer,
    policy::{self, Policy},
    report, resend,
    state::{self, RuleInfo, State},
    target,
};

/// A failed command and the exit code it maps to: 2 for an invalid policy or usage, 1 for
/// anything else.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub error: anyhow::Error,
}

pub fn invalid(error: impl Into<anyhow::Error>) -> CliError {
    CliError {
        code: 2,
        error: error.into(),
    }
}

pub fn failed(error: impl Into<anyhow::Error>) -> CliError {
    CliError {
        code: 1,
        error: error.into(),
    }
}

/// LPM trie entries: (prefix length, key, rule index).
type TrieEntries = Vec<(u32, fault_common::RuleKey, u32)>;

/// Parses, validates and compiles a policy without touching the kernel.
fn prepare(file: &Path) -> Result<(Policy, TrieEntries), CliError> {
    let policy = policy::load(file).map_err(invalid)?;
    let lpm = policy::lpm_entries(&policy.rules).map_err(invalid)?;
    Ok((policy, lpm))
}

pub fn check(files: &[PathBuf]) -> Result<(), CliError> {
    let mut errors = Vec::new();
    for f in files {
        match prepare(f) {
            Ok((p, lpm)) => println!(
                "{}: ok ({} rules, {} trie entries, {} clock rules, {} targets)",
                f.display(),
                p.rules.len(),
                lpm.len(),
                p.clock.len(),
                p.targets.len()
            ),
            Err(e) => errors.push(format!("{:#}", e.error)),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(invalid(anyhow!(errors.join("\n"))))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub async fn apply(file: &Path, dry_run: bool, interval: Duration) -> Result<(), CliError> {
    let (policy, lpm) = prepare(file)?;
    let resolved = target::resolve(&policy.targets)
        .map_err(|e| invalid(anyhow!("{}: {e}", file.display())))?;
    let mut directions = Vec::new();
    if policy.rules.iter().any(|r| r.egress) {
        directions.push(Direction::Egress);
    }
    if policy.rules.iter().any(|r| r.ingress) {
        directions.push(Direction::Ingress);
    }
    let tc_mode = if attach::use_tcx() { "tcx" } else { "clsact" };

    if dry_run {
        print_plan(&policy, &resolved, lpm.len(), tc_mode);
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(failed(anyhow!(
            "fault apply needs root (CAP_BPF and CAP_NET_ADMIN) to load and attach programs"
        )));
    }
    if let Ok(old) = State::read(&state::state_path(&policy.name)) {
        if old.loader_alive() {
            return Err(failed(anyhow!(
                "policy {} is already active (fault pid {}); `fault stop {}` ends it",
                policy.name,
                old.pid,
                policy.name
            )));
        }
        for p in cleanup_dead(&old) {
            eprintln!(
                "warning: cleaning up an earlier run of {}: {p}",
                policy.name
            );
        }
    }
    state::remove_pins(&policy.name).map_err(failed)?;

    // Signals are caught from here on, so a Ctrl-C during attach still reverts.
    let mut sigterm = signal(SignalKind::terminate()).map_err(failed)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(failed)?;

    let deadline_ns = loader::monotonic_ns() + policy.duration.as_nanos() as u64;
    let actions: Vec<_> = policy.rules.iter().map(|r| r.action).collect();
    // Delays and rates are departure times: fq holds packets until then where the kernel has
    // it, fault itself (crate::resend) where it does not.
    let timing = actions.iter().any(|a| a.schedules());
    let delay_path = timing.then(attach::DelayPath::choose);
    // Ingress delay holds packets at the far end of the targets' veths (crate::peer).
    let ingress_timing = policy
        .rules
        .iter()
        .any(|r| r.ingress && r.action.schedules());
    let peers = match ingress_timing {
        true => find_peers(file, &resolved)?,
        false => Vec::new(),
    };
    let use_resend = delay_path == Some(attach::DelayPath::Userspace);
    // A policy with clock rules only loads no eBPF program.
    let network = !policy.rules.is_empty();
    let mut ebpf = match network {
        true => Some(
            loader::load(&loader::Tables {
                cgroup_ids: &resolved.cgroup_ids,
                lpm: &lpm,
                rules: &actions,
                deadline_ns,
                resend: use_resend,
                peer: ingress_timing,
            })
            .map_err(failed)?,
        ),
        false => None,
    };
    let pin_dir = state::pin_dir(&policy.name).map_err(failed)?;
    let started = unix_now();
    let mut st = State {
        name: policy.name.clone(),
        ready: false,
        file: file.to_path_buf(),
        pid: std::process::id(),
        started_unix: started,
        deadline_unix: started + policy.duration.as_secs(),
        rules: policy
            .rules
            .iter()
            .map(|r| RuleInfo {
                name: r.name.clone(),
                summary: r.describe(),
            })
            .collect(),
        targets: resolved.targets.clone(),
        cgroup_ids: resolved.cgroup_ids.clone(),
        tc_mode: tc_mode.into(),
        attachments: Vec::new(),
        qdiscs: Vec::new(),
        ingress_cgroups: Vec::new(),
        fq: Vec::new(),
        clock_rules: Vec::new(),
        clock_processes: Vec::new(),
    };
    let pinned = ebpf.as_ref().map_or(Ok(()), |e| loader::pin(e, &pin_dir));
    let setup = pinned.and_then(|()| st.write());
    if let Err(e) = setup {
        let _ = state::remove_pins(&policy.name);
        let _ = st.remove_file();
        return Err(failed(e));
    }

    // The resender and its sockets are ready before the program hands it anything.
    let resender = match (use_resend, ebpf.as_mut()) {
        (true, Some(ebpf)) => {
            let started = resend::Resender::start(ebpf).and_then(|r| {
                for ns in resolved.netns.iter().chain(peers.iter().map(|p| &p.netns)) {
                    r.add_netns(ns)?;
                }
                Ok(r)
            });
            match started {
                Ok(r) => Some(r),
                Err(e) => {
                    let _ = state::remove_pins(&policy.name);
                    let _ = st.remove_file();
                    return Err(failed(e.context("start the userspace delay path")));
                }
            }
        }
        _ => None,
    };

    let cgroups: Vec<PathBuf> = resolved.targets.iter().map(|t| t.cgroup.clone()).collect();
    let mut attached = match ebpf.as_mut().map(|ebpf| {
        let mut all = attach::attach_all(ebpf, &resolved.netns, &cgroups, &directions)?;
        match attach::attach_peers(ebpf, &peers) {
            Ok(more) => {
                all.extend(more);
                Ok(all)
            }
            Err((more, e)) => {
                all.extend(more);
                Err((all, e))
            }
        }
    }) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err((partial, e))) => {
            for p in partial.detach() {
                eprintln!("warning: {p}");
            }
            let _ = state::remove_pins(&policy.name);
            let _ = st.remove_file();
            return Err(failed(e.context("attach")));
        }
    };
    if let Some(attached) = &attached {
        st.attachments = attached.records();
        st.qdiscs = attached.qdiscs.clone();
        st.ingress_cgroups = attached.cgroups();
    }
    // With fq, it becomes the root qdisc of the targets' interfaces while the policy runs.
    if delay_path == Some(attach::DelayPath::Fq) {
        match attach::install_fq_on(&fq_places(&resolved.netns, &peers)) {
            Ok(fq) => st.fq = fq,
            Err((partial, e)) => {
                let mut problems = attach::restore_fq(&partial);
                problems.extend(attached.map(attach::Attached::detach).unwrap_or_default());
                for p in problems {
                    eprintln!("warning: {p}");
                }
                let _ = state::remove_pins(&policy.name);
                let _ = st.remove_file();
                return Err(failed(e.context(
                    "delay and rate need sch_fq as the root qdisc (FAULT_DELAY_PATH=userspace \
                     uses fault's own, slower, path instead)",
                )));
            }
        }
    }
    // ---- clock faults (crate::clock): every process in the targets now, and (below, on
    // each rescan) every process that appears later.
    let mut clocks = clock::Engine::new(&policy.clock, policy.duration);
    // Attached before the first scan, so a process that execs meanwhile is held or found.
    let mut exec_watch = start_exec_watch(&clocks, &resolved, deadline_ns, &pin_dir);
    follow_clocks(&mut clocks, &resolved, &mut st);
    // ---- end of clock faults
    st.ready = true;
    if let Err(e) = st.write() {
        eprintln!("warning: {e:#}");
    }

    if network {
        println!(
            "fault: {} active for {}: egress via {} on {} interfaces in {} network namespace(s), ingress on {} cgroup(s); Ctrl-C reverts",
            policy.name,
            humantime::format_duration(policy.duration),
            tc_mode,
            st.attachments.len(),
            resolved.netns.len(),
            st.ingress_cgroups.len(),
        );
    }
    if clocks.is_active() {
        let (patched, refused) = clocks.counts();
        println!(
            "fault: {} clock faults active for {} in {patched} process(es) ({refused} refused); Ctrl-C reverts",
            policy.name,
            humantime::format_duration(policy.duration),
        );
    }
    if let Some(path) = delay_path {
        println!("  delay: {}", path.describe());
    }
    for p in &peers {
        println!(
            "  ingress delay: at {} (netns {}), the far end of {} in the target's namespace {}",
            p.ifname, p.netns.inode, p.target_ifname, p.target_netns
        );
    }
    for t in &resolved.targets {
        println!(
            "  target {} -> cgroup {} (id {})",
            t.label,
            t.cgroup.display(),
            t.cgroup_id
        );
    }

    let mut seen = Seen {
        ids: resolved.cgroup_ids.iter().copied().collect(),
        netns: resolved.netns.iter().map(|n| n.inode).collect(),
        egress: directions.contains(&Direction::Egress),
        fq: delay_path == Some(attach::DelayPath::Fq),
        resender: resender.as_ref(),
        ingress_timing,
    };
    let start = Instant::now();
    let end = tokio::time::Instant::now() + policy.duration;
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    // Processes that join a target, or start in a new network namespace, are picked up within
    // this period.
    let mut rescan = tokio::time::interval(Duration::from_millis(250));
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            _ = sigint.recv() => break "interrupted",
            _ = sigterm.recv() => break "terminated",
            _ = tokio::time::sleep_until(end) => break "duration elapsed",
            _ = rescan.tick() => {
                if let (Some(ebpf), Some(attached)) = (ebpf.as_mut(), attached.as_mut()) {
                    if let Err(e) = follow_targets(ebpf, &resolved, &mut seen, attached, &mut st) {
                        eprintln!("warning: following the targets: {e:#}");
                    }
                }
                follow_clocks(&mut clocks, &resolved, &mut st);
            }
            // ---- clock faults: processes the exec hold stopped (crate::clock::exec)
            held = async {
                match exec_watch.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(w) = exec_watch.as_mut() {
                    on_exec(w, held, &mut clocks, &mut st);
                }
            }
            // ---- end of clock faults
            _ = tick.tick(), if network => {
                if let Some(Ok(c)) = ebpf.as_ref().map(|e| loader::live_counters(e, policy.rules.len())) {
                    println!("[{:>5.0?}]", start.elapsed().as_secs_f64().round() as u64);
                    for l in report::counter_lines(&report::rule_reports(&st, &c)) {
                        println!("{l}");
                    }
                }
            }
        }
    };

    // Revert: clocks and links first, then the maps' pins and our records. The exec hold
    // goes first: nothing is stopped after this, and whoever it still holds goes on.
    if let Some(w) = exec_watch.take() {
        let pids = w.finish();
        if !pids.is_empty() {
            println!("fault: clock: let go {pids:?}, stopped at exec and not patched yet");
        }
    }
    let mut problems = clocks.revert_all();
    let final_counters = ebpf
        .as_ref()
        .and_then(|e| loader::live_counters(e, policy.rules.len()).ok());
    problems.extend(attached.map(attach::Attached::detach).unwrap_or_default());
    problems.extend(attach::restore_fq(&st.fq));
    let resent = resender.map(resend::Resender::finish);
    drop(ebpf);
    if let Err(e) = state::remove_pins(&policy.name) {
        problems.push(format!("{e:#}"));
    }
    if let Err(e) = st.remove_file() {
        problems.push(format!("{e:#}"));
    }
    println!(
        "fault: {} reverted ({reason}){}",
        policy.name,
        if network { "; final counters:" } else { "" }
    );
    if let Some(c) = final_counters {
        for l in report::counter_lines(&report::rule_reports(&st, &c)) {
            println!("{l}");
        }
    }
    match resent {
        Some(Ok(r)) => println!("{}", report::resend_line(&r)),
        Some(Err(e)) => problems.push(format!("userspace delay path: {e:#}")),
        None => {}
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(failed(anyhow!(
            "revert was incomplete:\n  {}",
            problems.join("\n  ")
        )))
    }
}

/// Where fq goes: every interface of the targets' namespaces, and the far end of each veth
/// that carries ingress delay.
fn fq_places(
    netns: &[target::Netns],
    peers: &[peer::Peer],
) -> Vec<(target::Netns, Option<String>)> {
    let mut on: Vec<_> = netns.iter().map(|n| (n.clone(), None)).collect();
    on.extend(
        peers
            .iter()
            .map(|p| (p.netns.clone(), Some(p.ifname.clone()))),
    );
    on
}

/// The far ends of the targets' veths, for ingress delay. A target in fault's own network
/// namespace (the host's) cannot have it: the far end of a host veth carries other traffic.
fn find_peers(file: &Path, resolved: &target::Resolved) -> Result<Vec<peer::Peer>, CliError> {
    let own = target::Netns::of_pid(std::process::id()).map_err(failed)?;
    for t in &resolved.targets {
        let shares = resolved
            .netns
            .iter()
            .any(|n| n.inode == own.inode && target::scan(std::slice::from_ref(t)).1.contains(n));
        if shares {
            return Err(invalid(anyhow!(
                "{}: target {} has processes in the host's network namespace; ingress delay, \
                 rate and reorder need a target in a network namespace of its own (a \
                 container, a pod), because they hold packets at the far end of its veth",
                file.display(),
                t.label
            )));
        }
    }
    // Everything entering the namespace is delayed: say so if others live there too.
    let targeted: std::collections::BTreeSet<u32> =
        target::pids(&resolved.targets).into_iter().collect();
    for ns in &resolved.netns {
        let others: Vec<u32> = target::netns_paths()
            .map(|(pid, _)| pid)
            .filter(|pid| *pid != 0 && !targeted.contains(pid))
            .filter(|pid| target::Netns::of_pid(*pid).is_ok_and(|n| n.inode == ns.inode))
            .collect();
        if let Some(pid) = others.first() {
            eprintln!(
                "warning: ingress delay holds everything entering network namespace {}, which \
                 {} process(es) outside the targets share (pid {pid} among them)",
                ns.inode,
                others.len()
            );
        }
    }
    peer::find(&resolved.netns)
        .map_err(|e| invalid(e.context(format!("{}: ingress delay", file.display()))))
}

/// Patches the clocks of target processes not patched yet and records them in the state
/// file, so that `fault stop` can restore them if this process dies.
fn follow_clocks(clocks: &mut clock::Engine, resolved: &target::Resolved, st: &mut State) {
    if !clocks.is_active() {
        return;
    }
    for line in clocks.follow(&resolved.targets) {
        println!("fault: {line}");
    }
    let records = clocks.records();
    if records != st.clock_processes || st.clock_rules.is_empty() {
        st.clock_processes = records;
        st.clock_rules = clocks.rule_status();
        if let Err(e) = st.write() {
            eprintln!("warning: {e:#}");
        }
    }
}

// ---- clock faults: the exec hold (crate::clock::exec)

/// Starts holding processes that exec in the targets until they are patched; where the
/// kernel refuses a step, says which and that the rescan covers them instead.
fn start_exec_watch(
    clocks: &clock::Engine,
    resolved: &target::Resolved,
    deadline_ns: u64,
    pin_dir: &Path,
) -> Option<clock::exec::ExecWatch> {
    if !clocks.is_active() {
        return None;
    }
    let cgroups: Vec<PathBuf> = resolved.targets.iter().map(|t| t.cgroup.clone()).collect();
    match clock::exec::ExecWatch::start(loader::OBJECT, &cgroups, deadline_ns, pin_dir) {
        Ok(w) => {
            if cgroups.len() > fault_common::EXEC_MAX_CGROUPS as usize {
                println!(
                    "fault: clock: warning: processes that exec are held in the first {} \
                     targets only; in the others they are patched by the 250 ms rescan",
                    fault_common::EXEC_MAX_CGROUPS
                );
            }
            Some(w)
        }
        Err(e) => {
            println!(
                "fault: clock: warning: cannot hold processes at exec ({:#}); falling back to \
                 the 250 ms rescan: a process that execs in a target reads true time until then",
                anyhow::Error::from(e)
            );
            None
        }
    }
}

/// Patches the processes the exec hold stopped, lets each go (also when the patch failed),
/// then records them.
fn on_exec(
    watch: &mut clock::exec::ExecWatch,
    held: Vec<fault_common::ExecEvent>,
    clocks: &mut clock::Engine,
    st: &mut State,
) {
    for e in &held {
        let lines = clocks.patch_exec(e.pid);
        watch.release(e.pid);
        let held_us = loader::monotonic_ns().saturating_sub(e.stopped_ns) / 1000;
        for line in &lines {
            println!("fault: {line}; held {:.2} ms", held_us as f64 / 1000.0);
        }
    }
    let records = clocks.records();
    if records != st.clock_processes {
        st.clock_processes = records;
        if let Err(e) = st.write() {
            eprintln!("warning: {e:#}");
        }
    }
}

// ---- end of clock faults

/// What an apply has already covered.
struct Seen<'a> {
    ids: std::collections::BTreeSet<u64>,
    netns: std::collections::BTreeSet<u64>,
    egress: bool,
    /// Whether delays go through fq (it goes on new namespaces' interfaces too)...
    fq: bool,
    /// ... or through the resender (which needs a socket in new namespaces).
    resender: Option<&'a resend::Resender>,
    /// Whether rules delay ingress (new namespaces' veths get the far-end program).
    ingress_timing: bool,
}

/// Covers processes and child cgroups that appeared in the targets since the last look: new
/// cgroup ids go into TARGETS, new network namespaces get the egress program. Ingress needs
/// nothing: cgroup programs apply to descendants by themselves.
fn follow_targets(
    ebpf: &mut aya::Ebpf,
    resolved: &target::Resolved,
    seen: &mut Seen<'_>,
    attached: &mut attach::Attached,
    st: &mut State,
) -> anyhow::Result<()> {
    let (ids, netns) = target::scan(&resolved.targets);
    let new_ids: Vec<u64> = ids.into_iter().filter(|i| !seen.ids.contains(i)).collect();
    if !new_ids.is_empty() {
        loader::add_targets(ebpf, &new_ids)?;
        seen.ids.extend(&new_ids);
    }
    let new_ns: Vec<target::Netns> = netns
        .into_iter()
        .filter(|n| !seen.netns.contains(&n.inode))
        .collect();
    if !seen.egress || new_ns.is_empty() {
        return Ok(());
    }
    seen.netns.extend(new_ns.iter().map(|n| n.inode));
    let (more, result) = match attach::attach_all(ebpf, &new_ns, &[], &[Direction::Egress]) {
        Ok(a) => (a, Ok(())),
        Err((a, e)) => (a, Err(e)),
    };
    st.attachments.extend(more.records());
    st.qdiscs.extend(more.qdiscs.clone());
    attached.extend(more);
    // Ingress delay at the far ends of the new namespaces' veths (a namespace of the host's
    // is never new, so it needs no check here).
    let result = result.and_then(|()| {
        if !seen.ingress_timing {
            return Ok(Vec::new());
        }
        let peers = peer::find(&new_ns)?;
        let (more, r) = match attach::attach_peers(ebpf, &peers) {
            Ok(a) => (a, Ok(())),
            Err((a, e)) => (a, Err(e)),
        };
        st.attachments.extend(more.records());
        st.qdiscs.extend(more.qdiscs.clone());
        attached.extend(more);
        r.map(|()| peers)
    });
    let result = result.and_then(|peers| {
        if let Some(r) = seen.resender {
            for n in new_ns.iter().chain(peers.iter().map(|p| &p.netns)) {
                r.add_netns(n)?;
            }
        }
        if !seen.fq {
            return Ok(());
        }
        match attach::install_fq_on(&fq_places(&new_ns, &peers)) {
            Ok(fq) => {
                st.fq.extend(fq);
                Ok(())
            }
            Err((fq, e)) => {
                st.fq.extend(fq);
                Err(e)
            }
        }
    });
    st.write()?;
    for n in &new_ns {
        println!(
            "fault: a target process appeared in network namespace {}; attached there",
            n.inode
        );
    }
    result
}

fn print_plan(policy: &Policy, resolved: &target::Resolved, entries: usize, tc_mode: &str) {
    println!(
        "policy {} from {} for {}",
        policy.name,
        policy.file.display(),
        humantime::format_duration(policy.duration)
    );
    println!("targets:");
    for t in &resolved.targets {
        println!(
            "  {} -> cgroup {} (id {})",
            t.label,
            t.cgroup.display(),
            t.cgroup_id
        );
    }
    println!(
        "  cgroup ids matched (with descendants): {:?}",
        resolved.cgroup_ids
    );
    // Network namespaces and trie entries matter to network rules only.
    if !policy.rules.is_empty() {
        for ns in &resolved.netns {
            let ifaces = attach::in_netns(ns, || {
                Ok(nix::net::if_::if_nameindex()?
                    .iter()
                    .map(|i| format!("{}({})", i.name().to_string_lossy(), i.index()))
                    .collect::<Vec<_>>())
            })
            .map(|v| v.join(" "))
            .unwrap_or_else(|e| format!("(cannot list: {e:#})"));
            println!("  netns {} (via pid {}): {ifaces}", ns.inode, ns.pid);
        }
        if resolved.empty {
            println!(
                "  note: no process is in the targets yet; fault attaches in its own network namespace"
            );
        }
        println!("rules ({} trie entries, attach via {tc_mode}):", entries);
        for (i, r) in policy.rules.iter().enumerate() {
            println!("  [{i}] {}: {}", r.name, r.describe());
        }
    }
    if !policy.clock.is_empty() {
        println!(
            "clock rules (the vDSO of every process in the targets is redirected; {} now):",
            match target::pids(&resolved.targets).len() {
                1 => "1 process".to_owned(),
                n => format!("{n} processes"),
            }
        );
        for (i, r) in policy.clock.iter().enumerate() {
            println!("  [{i}] {}: {}", r.name, r.describe());
        }
    }
    println!("dry run: nothing attached");
}

/// Removes what a loader that is no longer running left: it ends injection through the
/// pinned CONFIG first, so even a filter we fail to remove is inert.
fn cleanup_dead(s: &State) -> Vec<String> {
    let mut problems = Vec::new();
    if let Ok(dir) = state::pin_dir(&s.name) {
        let _ = loader::expire_pinned(&dir);
        // Processes the dead loader held at exec go on (unpatched, or patched and reverted
        // below).
        clock::exec::release_pinned(&dir);
    }
    problems.extend(clock::revert_recorded(&s.clock_processes));
    problems.extend(attach::remove_recorded(&s.attachments, &s.qdiscs));
    problems.extend(attach::restore_fq(&s.fq));
    if let Err(e) = state::remove_pins(&s.name) {
        problems.push(format!("{e:#}"));
    }
    if let Err(e) = s.remove_file() {
        problems.push(format!("{e:#}"));
    }
    problems
}

pub fn stop(name: Option<&str>, all: bool) -> Result<(), CliError> {
    let states = State::all().map_err(failed)?;
    let chosen: Vec<&State> = states
        .iter()
        .filter(|s| all || Some(s.name.as_str()) == name)
        .collect();
    if let (Some(n), true) = (name, chosen.is_empty()) {
        let pins = state::pin_dir(n).map_err(failed)?;
        if !pins.exists() {
            return Err(failed(anyhow!("no active policy named {n}")));
        }
    }
    let mut problems = Vec::new();
    for s in chosen {
        if s.loader_alive() {
            // Ask the loader to revert; it knows the most about what it holds.
            let pid = Pid::from_raw(s.pid as i32);
            let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
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
        }
        if state::state_path(&s.name).exists() {
            problems.extend(cleanup_dead(s));
        }
        println!("fault: stopped {}", s.name);
    }
    // Pins without a state file (a loader killed between pinning and writing it).
    let root = state::pin_root().map_err(failed)?;
    let orphans: Vec<String> = std::fs::read_dir(&root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for o in orphans {
        if (all || Some(o.as_str()) == name) && !state::state_path(&o).exists() {
            if let Err(e) = state::remove_pins(&o) {
                problems.push(format!("{e:#}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(failed(anyhow!(
            "stop was incomplete:\n  {}",
            problems.join("\n  ")
        )))
    }
}

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
    rules: Vec<report::RuleReport>,
    clock_rules: &'a [clock::RuleStatus],
    clock_processes: usize,
}

pub fn status(json: bool) -> Result<(), CliError> {
    let states = State::all().map_err(failed)?;
    let now = unix_now() as i64;
    let mut entries = Vec::new();
    for s in &states {
        let dir = state::pin_dir(&s.name).map_err(failed)?;
        let counters = loader::pinned_counters(&dir, s.rules.len()).unwrap_or_default();
        entries.push(StatusEntry {
            name: &s.name,
            file: &s.file,
            loader_pid: s.pid,
            loader_alive: s.loader_alive(),
            seconds_left: (s.deadline_unix as i64 - now).max(0),
            tc_mode: &s.tc_mode,
            targets: &s.targets,
            attachments: s.attachments.len(),
            rules: report::rule_reports(s, &counters),
            clock_rules: &s.clock_rules,
            clock_processes: s.clock_processes.len(),
        });
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).map_err(failed)?
        );
        return Ok(());
    }
    if entries.is_empty() {
        println!("fault: nothing active");
    }
    for e in &entries {
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
        for t in e.targets {
            println!("  target {} (cgroup id {})", t.label, t.cgroup_id);
        }
        for l in report::counter_lines(&e.rules) {
            println!("{l}");
        }
        for l in report::clock_lines(e.clock_rules, e.clock_processes) {
            println!("{l}");
        }
    }
    Ok(())
}
