//! Everything decided before anything is attached: the validated policy, its targets, the
//! compiled tables and, for network rules, how they go on this host. `fault apply --dry-run`
//! prints a plan and stops, so it runs exactly the checks `fault apply` runs.

use std::{path::Path, time::Duration};

use crate::{
    error::Error,
    groups::{self, Found},
    net::{self, NetPlan},
    policy::{self, Policy},
    sys::netns::in_netns,
    target,
};

/// LPM trie entries: (prefix length, key, rule index).
pub type TrieEntries = Vec<(u32, fault_common::RuleKey, u32)>;

/// How to run, as the command line says; nothing below it reads the environment.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// tcx or clsact; by what the kernel supports when `None`.
    pub tc_mode: Option<net::TcMode>,
    /// fq or the userspace path for delays; by whether the kernel has fq when `None`.
    pub delay_path: Option<net::DelayPath>,
    /// Print every packet the userspace delay path fails to send again.
    pub debug_resend: bool,
    /// Print one line per process patched, and the programs' rare events.
    pub verbose: bool,
    /// How often the live view prints the counters (and the event log samples them).
    pub interval: Duration,
    /// `--output json`: the events on stdout, no live view.
    pub json: bool,
    /// `--ready-file`: written once every fault is in place.
    pub ready_file: Option<std::path::PathBuf>,
    /// The pipe of `fault apply --detach` waiting for "ready".
    pub ready_fd: Option<i32>,
}

pub struct Plan {
    pub policy: Policy,
    pub lpm: TrieEntries,
    pub resolved: target::Resolved,
    /// `None` for a policy with clock rules only: no network program is loaded.
    pub net: Option<NetPlan>,
    pub options: Options,
    /// An experiment's groups as found on this host (empty for a policy).
    pub groups: Vec<Found>,
}

/// Parses, validates and compiles a policy without touching the host.
pub fn compile(file: &Path) -> Result<(Policy, TrieEntries), Error> {
    let policy = policy::load(file)?;
    let lpm = policy::lpm_entries(&policy.rules)?;
    Ok((policy, lpm))
}

/// An experiment on this host: its groups resolved, its partitions compiled into rules
/// (ahead of the network steps' rules, so a cut wins), and the steps this build cannot run
/// refused before anything is attached.
fn experiment(
    policy: &mut Policy,
    lpm: &mut TrieEntries,
) -> Result<(target::Resolved, Vec<Found>), Error> {
    let (resolved, found) = groups::resolve(policy)?;
    let mut rules = groups::partition_rules(policy, &found)?;
    rules.append(&mut policy.rules);
    policy.rules = rules;
    *lpm = policy::lpm_entries(&policy.rules)?;
    refuse_overlapping_clock_steps(policy)?;
    for step in &policy.steps {
        if let policy::StepKind::Pause { .. } = step.kind {
            let cgroups = step_cgroups(step, &found);
            crate::pause::check_cgroups(&cgroups).map_err(|reason| Error::Refused {
                file: policy.file.clone(),
                reason: format!("step {}: {reason}", step.name),
            })?;
        }
    }
    Ok((resolved, found))
}

/// `split-brain 0s..1m (flapping 5s on, 10s off): partition of primary, replicas`.
pub fn describe_step(s: &policy::Step, policy: &Policy) -> String {
    let d = humantime::format_duration;
    let w = &s.window;
    let flap = w
        .flap
        .map(|f| format!(" (flapping {} on, {} off)", d(f.on), d(f.off)))
        .unwrap_or_default();
    let names = |g: &[usize]| -> String {
        let n: Vec<&str> = g.iter().map(|&i| policy.groups[i].name.as_str()).collect();
        n.join(", ")
    };
    let what = match &s.kind {
        policy::StepKind::Partition(cuts) => {
            let c: Vec<String> = cuts
                .iter()
                .map(|c| {
                    format!(
                        "{}->{}",
                        policy.groups[c.from].name, policy.groups[c.to].name
                    )
                })
                .collect();
            format!("partition, cut {}", c.join(" "))
        }
        policy::StepKind::Pause { freeze, every } => format!(
            "pause {} for {} every {}",
            names(&s.groups),
            d(*freeze),
            d(*every)
        ),
        kind => format!("{} on {}", kind.name(), names(&s.groups)),
    };
    format!("{} {}..{}{flap}: {what}", s.name, d(w.at), d(w.end()))
}

/// Clock steps run one at a time (each patches its processes when it goes on, and the
/// state file records one set of patched processes).
fn refuse_overlapping_clock_steps(policy: &Policy) -> Result<(), Error> {
    let clocks: Vec<&policy::Step> = policy
        .steps
        .iter()
        .filter(|s| matches!(s.kind, policy::StepKind::Clock(_)))
        .collect();
    for (i, a) in clocks.iter().enumerate() {
        for b in &clocks[i + 1..] {
            if a.window.at < b.window.end() && b.window.at < a.window.end() {
                return Err(Error::Refused {
                    file: policy.file.clone(),
                    reason: format!(
                        "clock steps {} and {} overlap in time; this build runs one clock step \
                         at a time, so move one of them",
                        a.name, b.name
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The cgroups of a step's target groups.
pub fn step_cgroups(step: &policy::Step, found: &[Found]) -> Vec<std::path::PathBuf> {
    step.groups
        .iter()
        .flat_map(|&g| found[g].resolved.targets.iter().map(|t| t.cgroup.clone()))
        .collect()
}

impl Plan {
    /// The experiment's pause steps, with the cgroups they freeze.
    pub fn pause_steps(&self) -> Vec<crate::pause::PauseStep> {
        let steps = &self.policy.steps;
        steps
            .iter()
            .filter_map(|step| match step.kind {
                policy::StepKind::Pause { freeze, every } => Some(crate::pause::PauseStep {
                    step: step.name.clone(),
                    window: step.window,
                    freeze,
                    every,
                    cgroups: step_cgroups(step, &self.groups),
                }),
                _ => None,
            })
            .collect()
    }

    /// The experiment's clock steps, with the targets of their groups.
    pub fn clock_steps(&self) -> Vec<crate::clock::ClockStep> {
        self.policy
            .steps
            .iter()
            .filter_map(|step| match &step.kind {
                policy::StepKind::Clock(rules) => Some(crate::clock::ClockStep {
                    name: step.name.clone(),
                    window: step.window,
                    rules: rules.clone(),
                    targets: step
                        .groups
                        .iter()
                        .flat_map(|&g| self.groups[g].resolved.targets.clone())
                        .collect(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The experiment's probes, `from` resolved to the group's first target cgroup.
    pub fn probe_specs(&self) -> Vec<crate::probe::ProbeSpec> {
        let from = |g: usize| {
            let targets = &self.groups.get(g)?.resolved.targets;
            targets.first().map(|t| t.cgroup.clone())
        };
        self.policy
            .probes
            .iter()
            .map(|p| crate::probe::ProbeSpec {
                name: p.name.clone(),
                check: p.check.clone(),
                from: p.from.and_then(from),
                every: p.every,
                timeout: p.timeout,
            })
            .collect()
    }

    pub fn abort_rules(&self) -> Vec<crate::probe::AbortRule> {
        self.policy.aborts.clone()
    }

    pub fn build(file: &Path, options: Options) -> Result<Plan, Error> {
        let (mut policy, mut lpm) = compile(file)?;
        // Before the targets are looked at: resolving them reads other users' processes, and
        // a missing capability is better named than met as EACCES on the way.
        let needed = crate::sys::caps::for_apply(&policy);
        if let Some(why) = crate::sys::caps::refusal("fault apply", &needed) {
            return Err(crate::error::failed(policy.name.clone())(anyhow::anyhow!(
                why
            )));
        }
        crate::guard::check_pids(&policy)?;
        let (resolved, found) = match policy.is_experiment() {
            true => experiment(&mut policy, &mut lpm)?,
            false => {
                let resolved =
                    target::resolve(&policy.targets).map_err(|source| Error::Target {
                        file: file.to_path_buf(),
                        source,
                    })?;
                (resolved, Vec::new())
            }
        };
        crate::guard::check(&policy, &resolved)?;
        let net = match policy.rules.is_empty() {
            true => None,
            false => Some(NetPlan::build(&policy, &resolved, &options)?),
        };
        Ok(Plan {
            policy,
            lpm,
            resolved,
            net,
            options,
            groups: found,
        })
    }

    pub fn print(&self) {
        let policy = &self.policy;
        println!(
            "policy {} from {} for {}",
            policy.name,
            policy.file.display(),
            humantime::format_duration(policy.duration)
        );
        println!("targets:");
        for t in &self.resolved.targets {
            println!(
                "  {} -> cgroup {} (id {})",
                t.label,
                t.cgroup.display(),
                t.cgroup_id
            );
        }
        println!(
            "  cgroup ids matched (with descendants): {:?}",
            self.resolved.cgroup_ids
        );
        if policy.is_experiment() {
            self.print_timeline();
        }
        if let Some(net) = &self.net {
            self.print_net(net);
        }
        if !policy.clock.is_empty() {
            self.print_clock();
        }
        println!("dry run: nothing attached");
    }

    fn print_net(&self, net: &NetPlan) {
        for ns in &self.resolved.netns {
            let ifaces = in_netns(ns, crate::sys::netns::interfaces)
                .map(|v| v.join(" "))
                .unwrap_or_else(|e| format!("(cannot list: {e:#})"));
            println!("  netns {} (via pid {}): {ifaces}", ns.inode, ns.pid);
        }
        if self.resolved.empty {
            println!(
                "  note: no process is in the targets yet; fault attaches in its own network namespace"
            );
        }
        println!(
            "rules ({} trie entries, attach via {}):",
            self.lpm.len(),
            net.tc.name()
        );
        for (i, r) in self.policy.rules.iter().enumerate() {
            println!("  [{i}] {}: {}", r.name, r.describe());
        }
        for line in net.describe() {
            println!("  {line}");
        }
    }

    fn print_timeline(&self) {
        for line in groups::describe(&self.groups) {
            println!("  {line}");
        }
        if let Some(seed) = self.policy.seed {
            println!("seed {seed}");
        }
        println!("steps:");
        for s in &self.policy.steps {
            println!("  {}", describe_step(s, &self.policy));
        }
        for p in &self.policy.probes {
            println!(
                "probe {}: every {}, timeout {}",
                p.name,
                humantime::format_duration(p.every),
                humantime::format_duration(p.timeout)
            );
        }
    }

    fn print_clock(&self) {
        println!(
            "clock rules (the vDSO of every process in the targets is redirected; {} now):",
            match target::pids(&self.resolved.targets).len() {
                1 => "1 process".to_owned(),
                n => format!("{n} processes"),
            }
        );
        for (i, r) in self.policy.clock.iter().enumerate() {
            println!("  [{i}] {}: {}", r.name, r.describe());
        }
    }
}
