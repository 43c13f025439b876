//! Which capabilities this process has, and which a command needs, so that a missing one
//! is named before anything is touched instead of surfacing as a raw EPERM halfway.

use std::fmt;

/// A capability fault may need (numbers from linux/capability.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Kill = 5,
    NetAdmin = 12,
    SysPtrace = 19,
    DacOverride = 1,
    SysAdmin = 21,
    Bpf = 39,
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cap::Kill => "CAP_KILL",
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::SysPtrace => "CAP_SYS_PTRACE",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
            Cap::DacOverride => "CAP_DAC_OVERRIDE",
            Cap::Bpf => "CAP_BPF",
        })
    }
}

/// What `fault apply` needs for `policy`, each with what needs it.
pub fn for_apply(policy: &crate::policy::Policy) -> Vec<(Cap, &'static str)> {
    use crate::policy::StepKind;
    let mut needed = vec![
        (Cap::Bpf, "loading and pinning its eBPF programs and maps"),
        (
            Cap::SysAdmin,
            "entering the targets' network namespaces, mounting bpffs and tracing execs",
        ),
    ];
    let kinds = || policy.steps.iter().map(|s| &s.kind);
    let network = !policy.rules.is_empty()
        || kinds().any(|k| matches!(k, StepKind::Network | StepKind::Partition(_)));
    let clock = !policy.clock.is_empty() || kinds().any(|k| matches!(k, StepKind::Clock(_)));
    let pause = kinds().any(|k| matches!(k, StepKind::Pause { .. }));
    if network {
        needed.push((
            Cap::NetAdmin,
            "attaching programs to the targets' interfaces and installing qdiscs",
        ));
    }
    if clock {
        needed.push((
            Cap::SysPtrace,
            "patching the targets' clocks through ptrace",
        ));
    }
    if clock || pause {
        needed.push((Cap::Kill, "stopping and continuing the targets' processes"));
    }
    needed.extend(not_root());
    needed
}

/// What `fault stop` needs to take down what a run left.
pub fn for_stop() -> Vec<(Cap, &'static str)> {
    let mut needed = vec![
        (Cap::Kill, "signalling the run's loader"),
        (Cap::Bpf, "opening the run's pinned maps"),
        (Cap::NetAdmin, "removing the run's filters and qdiscs"),
        (Cap::SysPtrace, "restoring the targets' clocks"),
    ];
    needed.extend(not_root());
    needed
}

/// A user other than root also needs to write root's files (/run/fault, cgroup files).
fn not_root() -> Option<(Cap, &'static str)> {
    (!nix::unistd::geteuid().is_root()).then_some((
        Cap::DacOverride,
        "reading and writing /run/fault and the targets' cgroup files",
    ))
}

/// The effective set of this process, from /proc/self/status; `None` if unreadable.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Of `needed` (each with what needs it), those missing from the effective set `have`.
pub fn missing(have: u64, needed: &[(Cap, &'static str)]) -> Vec<(Cap, &'static str)> {
    needed
        .iter()
        .filter(|(cap, _)| have & (1u64 << *cap as u32) == 0)
        .copied()
        .collect()
}

/// One sentence naming each missing capability and what needs it; `None` when none is.
pub fn refusal(command: &str, needed: &[(Cap, &'static str)]) -> Option<String> {
    let gone = missing(effective().unwrap_or(0), needed);
    if gone.is_empty() {
        return None;
    }
    let each: Vec<String> = gone.iter().map(|(c, why)| format!("{c} ({why})")).collect();
    Some(format!(
        "{command} lacks {}; run it as root, or grant {}",
        each.join(", "),
        match gone.len() {
            1 => "it",
            _ => "them",
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_capability_is_named_with_what_needs_it() {
        let all = !0u64;
        let needed = [(Cap::Bpf, "load programs"), (Cap::NetAdmin, "attach them")];
        assert!(missing(all, &needed).is_empty());
        let without_net = all & !(1 << 12);
        assert_eq!(
            missing(without_net, &needed),
            vec![(Cap::NetAdmin, "attach them")]
        );
        assert_eq!(missing(0, &needed).len(), 2);
        assert_eq!(Cap::SysPtrace.to_string(), "CAP_SYS_PTRACE");
    }
}
