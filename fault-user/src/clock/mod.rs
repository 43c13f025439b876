//! Clock faults: skew, drift, jumps and jitter on the clocks a target's processes read.
//!
//! Programs read the time through the vDSO (`clock_gettime`, `gettimeofday`, `time`) without
//! entering the kernel, so no syscall hook sees those reads, and under lockdown no eBPF
//! program may rewrite what they return. So fault redirects the vDSO entry points of each
//! target process to code of its own, mapped into the process:
//!
//! - `vdso`: finds `[vdso]` in `/proc/PID/maps` and the entry points in its `.dynsym`;
//! - `reloc`: moves each entry point's first instructions into a trampoline (iced-x86);
//! - `stub`: the injected code, which calls the original vDSO code through the trampoline
//!   and adds the fault from a parameter page (`layout`), and which ends the fault by
//!   itself at the policy's deadline, so a SIGKILLed `fault apply` still ends it on time;
//! - `inject`: stops every thread with ptrace and makes system calls in the target;
//! - `seccomp`: checks those calls against the target's seccomp filters first;
//! - `patch`: puts it together for one process, and reverts it.
//!
//! [`Engine`] follows a policy's target cgroups: processes found at apply, and those that
//! appear later (forked children come patched already; an exec drops the patch, so an
//! exec'd process is patched anew: `exec` holds it stopped from its first instruction
//! until then, and a 250 ms rescan catches what the hold cannot), are patched; revert restores every process's original
//! bytes. What stays in a process after revert is the `memfd:fault-clock` mapping (12 KiB,
//! inert: the vDSO no longer jumps to it, and its expired flag is set) and the private copy
//! of the vDSO page the kernel made when it was written; a later apply reuses both.
//!
//! Reads that do not go through the vDSO (a raw `syscall(SYS_clock_gettime)`) are not
//! faulted.

pub mod calls;
pub mod exec;
mod fault;
pub mod inject;
pub mod injector;
pub mod layout;
pub mod patch;
pub mod reloc;
pub mod seccomp;
pub mod steps;
pub mod stub;
pub mod syscall_tp;
pub mod timers;
pub mod vdso;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::{ClockId, ClockRule};
use crate::target::{self, ResolvedTarget};
use layout::Plan;
use patch::Patched;

pub use fault::ClockFault;
pub use steps::{ClockStep, ClockSteps};

/// A patched process as the state file records it, so that `fault stop` can revert it after
/// the loader died: the pid, its start time (to know it is still the same process) and where
/// the mapping is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub pid: u32,
    pub start_time: u64,
    pub base: u64,
}

/// A clock rule as `fault status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleStatus {
    pub name: String,
    pub summary: String,
    /// The fault without noise at the time the status was written, in ns.
    #[serde(default)]
    pub steady_ns: i64,
}

/// What happened to one process, to tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Told {
    pub text: String,
    /// It could not be patched (a detail otherwise: the process was patched).
    pub refused: bool,
    pub pid: u32,
    /// The process's name, for the event log.
    pub comm: String,
    /// Why it was refused (the error alone, without the advice of `text`).
    pub why: String,
}

/// The clock faults of one apply.
pub struct Engine {
    rules: Vec<ClockRule>,
    plan: Plan,
    patched: BTreeMap<u32, Patched>,
    /// Processes that could not be patched, by (pid, start time), so each is reported once.
    refused: BTreeMap<(u32, u64), String>,
    /// Processes whose patch the injector's death cut short, tried once more.
    cut: std::collections::BTreeSet<(u32, u64)>,
    /// The helper that holds the targets under ptrace, started at the first patch.
    injector: Option<injector::Injector>,
    /// How many patches this engine made: each one's serial.
    serial: u64,
}

impl Engine {
    /// Starts the faults' clock now; they end `duration` later.
    pub fn new(rules: &[ClockRule], duration: Duration) -> Self {
        let remaining = i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX);
        Engine {
            rules: rules.to_vec(),
            plan: Plan::new(rules, remaining, layout::now_ns),
            patched: BTreeMap::new(),
            refused: BTreeMap::new(),
            cut: Default::default(),
            injector: None,
            serial: 0,
        }
    }

    /// The parameters every patched process reads.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn is_active(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Patches every process in `targets` not patched yet, and forgets those that exited or
    /// exec'd (they are patched again if they are still there). Returns what to tell the
    /// user, one line per event.
    pub fn follow(&mut self, targets: &[ResolvedTarget]) -> Vec<Told> {
        if !self.is_active() {
            return Vec::new();
        }
        let mut lines = Vec::new();
        self.patched.retain(|&pid, p| {
            patch::start_time(pid) == Some(p.start_time) && patch::still_mapped(pid, p.base)
        });
        let own = std::process::id();
        for pid in target::pids(targets) {
            if pid == own || self.patched.contains_key(&pid) {
                continue;
            }
            let Some(start) = patch::start_time(pid) else {
                continue; // gone already
            };
            if self.refused.contains_key(&(pid, start)) {
                continue;
            }
            lines.extend(self.patch_one(pid, start, ""));
        }
        lines
    }

    /// Patches a process the exec hold stopped right after its exec (see [`exec`]); the
    /// caller lets it go afterwards, whatever this returns.
    pub fn patch_exec(&mut self, pid: u32) -> Vec<Told> {
        if !self.is_active() || pid == std::process::id() {
            return Vec::new();
        }
        let Some(start) = patch::start_time(pid) else {
            return Vec::new(); // killed while held
        };
        // The exec dropped any earlier patch (the rescan may have patched it meanwhile).
        if let Some(p) = self.patched.get(&pid) {
            if p.start_time == start && patch::still_mapped(pid, p.base) {
                return Vec::new();
            }
            self.patched.remove(&pid);
        }
        // Microseconds: the stop takes effect on the process's way back to user space.
        exec::wait_stopped(pid, Duration::from_millis(50));
        // A new program: what refused the old one may not refuse this one.
        self.refused.remove(&(pid, start));
        self.patch_one(pid, start, " at exec").into_iter().collect()
    }

    /// The running helper, started (or started again, if it died) on first use.
    fn injector(&mut self) -> std::io::Result<&mut injector::Injector> {
        if self.injector.is_none() {
            self.injector = Some(injector::Injector::spawn()?);
        }
        Ok(self.injector.as_mut().expect("just started"))
    }

    fn patch_one(&mut self, pid: u32, start: u64, when: &str) -> Option<Told> {
        // Leased like every page (see `crate::lease`): a patch the injector finishes after
        // the loader died ends within a lease, not at the policy's deadline.
        let until = layout::now_ns(libc::CLOCK_MONOTONIC as u32)
            .saturating_add(crate::lease::LEASE_NS as i64);
        let plan = self.plan.leased(until);
        let done = match self.injector() {
            Ok(helper) => helper.patch(pid, &plan),
            Err(e) => Err(patch::ProcessError {
                pid,
                comm: inject::comm(pid),
                kind: patch::PatchError::Injector(e),
            }),
        };
        let helper_died = done
            .as_ref()
            .is_err_and(|e| matches!(e.kind, patch::PatchError::Injector(_)));
        if helper_died {
            self.injector = None; // gone: the next patch starts another
        }
        match done {
            Ok(mut p) => {
                self.serial += 1;
                p.serial = self.serial;
                let line = if p.adopted {
                    format!(
                        "clock: process {pid} ({}) was patched already (forked from a \
                         patched parent, or left by an earlier run); parameters updated",
                        inject::comm(pid)
                    )
                } else {
                    format!(
                        "clock: patched process {pid} ({}){when}: {} thread(s) stopped for {:.2} ms",
                        inject::comm(pid),
                        p.threads,
                        p.stopped_us as f64 / 1000.0
                    )
                };
                self.patched.insert(pid, p);
                Some(Told {
                    text: line,
                    refused: false,
                    pid,
                    comm: inject::comm(pid),
                    why: String::new(),
                })
            }
            // A process that ended while being patched is no failure.
            Err(_) if patch::start_time(pid) != Some(start) => None,
            Err(e) => {
                let text = format!("{:#}", anyhow::Error::from(e));
                // Not the process's doing: the next rescan tries once more, with a new helper.
                let again = helper_died && self.cut.insert((pid, start));
                let line = if again {
                    format!("clock: warning: {text}; it is tried again at the next rescan")
                } else {
                    self.refused.insert((pid, start), text.clone());
                    format!("clock: warning: {text}; its clocks are not faulted")
                };
                Some(Told {
                    text: line,
                    refused: true,
                    pid,
                    comm: inject::comm(pid),
                    why: text,
                })
            }
        }
    }

    pub fn records(&self) -> Vec<Record> {
        self.patched
            .values()
            .map(|p| Record {
                pid: p.pid,
                start_time: p.start_time,
                base: p.base,
            })
            .collect()
    }

    /// Each patched process's page to lease, by (pid, start time, serial), with its base.
    pub fn leased(&self) -> Vec<((u32, u64, u64), u64)> {
        self.patched
            .values()
            .map(|p| ((p.pid, p.start_time, p.serial), p.base))
            .collect()
    }

    /// How many processes are patched and how many were refused.
    pub fn counts(&self) -> (usize, usize) {
        (self.patched.len(), self.refused.len())
    }

    pub fn rule_status(&self) -> Vec<RuleStatus> {
        rule_status(&self.rules, &self.plan)
    }

    /// Restores every patched process; returns the problems.
    pub fn revert_all(&mut self) -> Vec<String> {
        // Every fault ends at the first store, before any process is stopped.
        for p in self.patched.values() {
            p.shared().expire();
        }
        let mut problems = Vec::new();
        for (_, p) in std::mem::take(&mut self.patched) {
            let done = match self.injector() {
                Ok(helper) => helper.revert(&p),
                Err(e) => Err(patch::ProcessError {
                    pid: p.pid,
                    comm: inject::comm(p.pid),
                    kind: patch::PatchError::Injector(e),
                }),
            };
            let done = match done {
                // Without a helper this loader stops the threads itself.
                Err(e) if matches!(e.kind, patch::PatchError::Injector(_)) => {
                    self.injector = None;
                    patch::revert_patched(&p)
                }
                other => other,
            };
            if let Err(e) = done {
                problems.push(format!("{:#}", anyhow::Error::from(e)));
            }
        }
        self.injector = None;
        problems
    }
}

fn rule_status(rules: &[ClockRule], plan: &Plan) -> Vec<RuleStatus> {
    rules
        .iter()
        .map(|r| {
            let first: ClockId = r.clocks[0];
            let params = &plan.clocks[first.linux_id() as usize];
            let now = layout::now_ns(first.linux_id());
            RuleStatus {
                name: r.name.clone(),
                summary: r.describe(),
                steady_ns: if now < params.deadline_ns {
                    layout::steady_ns(params, now)
                } else {
                    0
                },
            }
        })
        .collect()
}

/// Reverts what a loader that is gone left patched in its targets beyond its record: a
/// patch its injector finished after it died. Returns the problems.
pub fn revert_unrecorded(targets: &[ResolvedTarget], records: &[Record]) -> Vec<String> {
    target::pids(targets)
        .into_iter()
        .filter(|pid| !records.iter().any(|r| r.pid == *pid))
        .filter_map(|pid| patch::revert_found(pid).err())
        .map(|e| format!("{:#}", anyhow::Error::from(e)))
        .collect()
}

/// Reverts processes a loader that is gone had patched; returns the problems.
pub fn revert_recorded(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| patch::revert(r.pid, r.start_time, r.base).err())
        .map(|e| format!("{:#}", anyhow::Error::from(e)))
        .collect()
}
