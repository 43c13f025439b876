//! Two runs giving the same processes faults of the same kind are refused, naming both.
//!
//! Faults of one kind from two runs do not compose into anything a user asked for: two
//! loss rules on one cgroup's packets multiply their chances, two delays race for the same
//! departure time, two clock patches share one parameter page, so the second run's offset
//! replaces the first's and either run's end takes both away. So each run records what it
//! claims (a kind and a cgroup) in its state file, and `fault apply` refuses a policy whose
//! claims meet a live run's: the same kind on the same cgroup, or on one inside the other.
//! Different kinds on one target (a network fault and a clock fault) are fine.
//! The check and the first write of the new run's record happen under one lock, so two
//! applies started together cannot both pass.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    error::{failed, Error},
    plan::Plan,
    policy::StepKind,
    state::{State, STATE_DIR},
};

/// The kinds of fault that collide with themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Network,
    Clock,
    Pause,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Clock => "clock",
            Kind::Pause => "pause",
        }
    }
}

/// One kind of fault a run gives the processes of one cgroup (and of the cgroups below).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Claim {
    pub kind: Kind,
    pub cgroup: PathBuf,
}

/// What `plan` claims: each kind of its rules (or steps) on each target it gives them.
pub fn of(plan: &Plan) -> Vec<Claim> {
    let policy = &plan.policy;
    let targets = &plan.resolved.targets;
    let mut out = Vec::new();
    let mut claim = |kind: Kind, class: Option<u8>| {
        for t in targets
            .iter()
            .filter(|t| class.is_none_or(|c| t.class == c))
        {
            out.push(Claim {
                kind,
                cgroup: t.cgroup.clone(),
            });
        }
    };
    if !policy.is_experiment() {
        if !policy.rules.is_empty() {
            claim(Kind::Network, None);
        }
        if !policy.clock.is_empty() {
            claim(Kind::Clock, None);
        }
    }
    for step in &policy.steps {
        let (kind, groups): (Kind, Vec<usize>) = match &step.kind {
            StepKind::Network => (Kind::Network, step.groups.clone()),
            StepKind::Partition(cuts) => (
                Kind::Network,
                cuts.iter().flat_map(|c| [c.from, c.to]).collect(),
            ),
            StepKind::Clock(_) => (Kind::Clock, step.groups.clone()),
            StepKind::Pause { .. } => (Kind::Pause, step.groups.clone()),
        };
        for g in groups {
            // Group `i`'s targets carry class `i + 1` (see `crate::policy::Policy::groups`).
            claim(kind, u8::try_from(g + 1).ok());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Whether one cgroup is the other or lies inside it.
fn nested(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// The first of `mine` that meets one of `theirs`: (mine, theirs).
pub fn first_clash<'a>(mine: &'a [Claim], theirs: &'a [Claim]) -> Option<(&'a Claim, &'a Claim)> {
    mine.iter().find_map(|m| {
        theirs
            .iter()
            .find(|t| t.kind == m.kind && nested(&m.cgroup, &t.cgroup))
            .map(|t| (m, t))
    })
}

/// Held from the check until the new run's record is written (see [`claim`]).
pub struct ClaimLock {
    _file: std::fs::File,
}

/// Refuses `plan` if a live run of another name claims what it claims; otherwise returns
/// the lock to hold until this run's record (with its claims) is written.
pub fn claim(plan: &Plan) -> Result<ClaimLock, Error> {
    crate::sys::private::dir(std::path::Path::new(STATE_DIR))
        .map_err(failed("make the state directory"))?;
    // The directory itself is the lock: no file of its own to leave behind.
    let file = std::fs::File::open(STATE_DIR).map_err(failed(format!("open {STATE_DIR}")))?;
    // SAFETY: flock on a descriptor this function owns; it is released when the file closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(failed(format!("lock {STATE_DIR}"))(
            std::io::Error::last_os_error(),
        ));
    }
    let mine = of(plan);
    let (states, _) = State::scan().map_err(failed("read the state files"))?;
    for other in states
        .iter()
        .filter(|s| s.name != plan.policy.name && s.loader_alive())
    {
        if let Some((m, t)) = first_clash(&mine, &other.claims) {
            return Err(Error::Refused {
                file: plan.policy.file.clone(),
                reason: format!(
                    "{} would give {} {} faults, and run {} (fault pid {}) gives {} {} faults \
                     already: two runs of one kind on the same processes add up or override \
                     each other; `fault stop {}` first, or target other processes",
                    plan.policy.name,
                    m.cgroup.display(),
                    m.kind.name(),
                    other.name,
                    other.pid,
                    t.cgroup.display(),
                    t.kind.name(),
                    other.name
                ),
            });
        }
    }
    Ok(ClaimLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(kind: Kind, cgroup: &str) -> Claim {
        Claim {
            kind,
            cgroup: PathBuf::from(cgroup),
        }
    }

    #[test]
    fn the_same_kind_on_the_same_or_a_nested_cgroup_clashes() {
        let mine = [c(Kind::Network, "/cg/a"), c(Kind::Clock, "/cg/b")];
        assert!(first_clash(&mine, &[c(Kind::Network, "/cg/a")]).is_some());
        assert!(first_clash(&mine, &[c(Kind::Network, "/cg")]).is_some());
        assert!(first_clash(&mine, &[c(Kind::Clock, "/cg/b/inner")]).is_some());
        // Another kind, a sibling, a name that only starts alike: no clash.
        assert!(first_clash(&mine, &[c(Kind::Clock, "/cg/a")]).is_none());
        assert!(first_clash(&mine, &[c(Kind::Network, "/cg/c")]).is_none());
        assert!(first_clash(&mine, &[c(Kind::Network, "/cg/ab")]).is_none());
        assert!(first_clash(&mine, &[c(Kind::Pause, "/cg/a")]).is_none());
    }
}
