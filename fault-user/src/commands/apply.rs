//! `fault apply`: plan, then run the plan's fault kinds through the engine.

use std::path::Path;

use anyhow::anyhow;

use super::cleanup::cleanup_dead;
use crate::{
    cli::{ApplyArgs, Output},
    clock::{ClockFault, ClockSteps},
    engine::{self, Fault, Run},
    error::{failed, Error},
    lease::Lease,
    net::NetFault,
    observe::{Observer, Sinks},
    pause::PauseFault,
    plan::{Options, Plan},
    state::{self, RuleInfo, State},
    sys::{proc, time},
};

/// What the command line asks of a run.
fn options(args: &ApplyArgs) -> Options {
    Options {
        tc_mode: args.tc_mode,
        delay_path: args.delay_path,
        debug_resend: args.debug_resend,
        verbose: args.verbose,
        interval: args.interval,
        json: args.output == Output::Json,
        ready_file: args.ready_file.clone(),
        ready_fd: args.ready_fd,
    }
}

pub async fn apply(args: ApplyArgs) -> Result<(), Error> {
    super::detach::keep_ready_fd_private(args.ready_fd);
    let file = args.file.as_path();
    let plan = Plan::build(file, options(&args))?;
    if args.dry_run {
        drop(crate::collide::claim(&plan)?);
        plan.print();
        return Ok(());
    }
    // Before anything is put in place: a Ctrl-C from here on reverts what is by then
    // (earlier, its default action ends a loader that has done nothing yet).
    let signals = crate::engine::Signals::install()?;
    take_over(&plan.policy.name)?;
    let claim = crate::collide::claim(&plan)?;
    tell_reach(&plan);
    let sinks = Sinks {
        events: args.events.clone(),
        stdout: plan.options.json,
        metrics: args.metrics,
    };
    let observer =
        Observer::open(&plan.policy.name, &sinks).map_err(failed("start the event log"))?;
    if let Some(addr) = observer.metrics_addr() {
        eprintln!("fault: metrics at http://{addr}/metrics");
    }
    let live_in_place = crate::observe::live::in_place(plan.options.json);
    for w in plan.net.iter().flat_map(|n| &n.warnings) {
        eprintln!("warning: {w}");
    }
    let run = Run {
        pin_dir: state::pin_dir(&plan.policy.name).map_err(failed("find bpffs"))?,
        deadline_ns: time::monotonic_ns() + plan.policy.duration.as_nanos() as u64,
        lease: Lease::start().map_err(failed("start the heartbeat thread"))?,
        started: std::time::Instant::now(),
        observer,
        live_in_place,
        plan,
        moved: Vec::new(),
    };
    let state = new_state(&run, file);
    // Written under the claim's lock, so another apply sees what this one claims.
    state.write().map_err(failed("write the state file"))?;
    drop(claim);
    let mut kinds: Vec<Box<dyn Fault>> = Vec::new();
    if run.plan.net.is_some() {
        kinds.push(Box::new(NetFault::new(&run)));
    }
    if !run.plan.policy.clock.is_empty() {
        kinds.push(Box::new(ClockFault::new(&run)));
    }
    let clocks = run.plan.clock_steps();
    if !clocks.is_empty() {
        kinds.push(Box::new(ClockSteps::new(clocks)));
    }
    let pauses = run.plan.pause_steps();
    if !pauses.is_empty() {
        kinds.push(Box::new(PauseFault::new(pauses)));
    }
    engine::run(run, kinds, state, signals).await
}

/// What the run will touch, said before it touches anything.
fn tell_reach(plan: &Plan) {
    let r = &plan.resolved;
    let netns = if r.empty { 0 } else { r.netns.len() };
    eprintln!(
        "fault: {} will fault {} process(es) in {} target cgroup(s), in {netns} network namespace(s)",
        plan.policy.name,
        crate::target::pids(&r.targets).len(),
        r.targets.len(),
    );
}

/// Refuses a policy whose loader still runs; cleans up after one that died.
fn take_over(name: &str) -> Result<(), Error> {
    if let Ok(old) = State::read(&state::state_path(name)) {
        if old.loader_alive() {
            return Err(failed("fault apply")(anyhow!(
                "policy {name} is already active (fault pid {}); `fault stop {name}` ends it",
                old.pid
            )));
        }
        for p in cleanup_dead(&old) {
            eprintln!("warning: cleaning up an earlier run of {name}: {p}");
        }
    }
    let _ = std::fs::remove_file(crate::observe::stop_marker(name));
    state::remove_pins(name).map_err(failed("remove stale pins"))
}

fn new_state(run: &Run, file: &Path) -> State {
    let plan = &run.plan;
    let started = time::unix_now();
    let pid = std::process::id();
    State {
        name: plan.policy.name.clone(),
        ready: false,
        file: file.to_path_buf(),
        pid,
        pid_start: proc::start_time(pid),
        started_unix: started,
        deadline_unix: started + plan.policy.duration.as_secs(),
        rules: RuleInfo::of(&plan.policy),
        targets: plan.resolved.targets.clone(),
        cgroup_ids: plan.resolved.cgroup_ids.clone(),
        tc_mode: plan.net.as_ref().map_or("none", |n| n.tc.name()).into(),
        attachments: Vec::new(),
        qdiscs: Vec::new(),
        ingress_cgroups: Vec::new(),
        fq: Vec::new(),
        clock_rules: Vec::new(),
        clock_processes: Vec::new(),
        clock_calls: Vec::new(),
        frozen: Vec::new(),
        claims: crate::collide::of(plan),
    }
}
