//! Everything decided before anything is attached: the validated policy, its targets, the
//! compiled tables and, for network rules, how they go on this host. `fault apply --dry-run`
//! prints a plan and stops, so it runs exactly the checks `fault apply` runs.

use std::{path::Path, time::Duration};

use crate::{
    error::Error,
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
    /// How often the live view prints the counters.
    pub interval: Duration,
}

pub struct Plan {
    pub policy: Policy,
    pub lpm: TrieEntries,
    pub resolved: target::Resolved,
    /// `None` for a policy with clock rules only: no network program is loaded.
    pub net: Option<NetPlan>,
    pub options: Options,
}

/// Parses, validates and compiles a policy without touching the host.
pub fn compile(file: &Path) -> Result<(Policy, TrieEntries), Error> {
    let policy = policy::load(file)?;
    let lpm = policy::lpm_entries(&policy.rules)?;
    Ok((policy, lpm))
}

impl Plan {
    pub fn build(file: &Path, options: Options) -> Result<Plan, Error> {
        let (policy, lpm) = compile(file)?;
        let resolved = target::resolve(&policy.targets).map_err(|source| Error::Target {
            file: file.to_path_buf(),
            source,
        })?;
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
