//! The clock system calls of patched processes that their clock fault cannot reach, counted
//! by the `fault_clock_calls` program (fault-ebpf/src/clock_calls.rs) and told by name.
//!
//! A process that reads a faulted clock by the system call rather than the vDSO reads true
//! time, and one that waits until an absolute time waits by the true clock, so a skew of
//! +1 h makes it wait an hour longer. Rewriting those calls takes `bpf_probe_write_user`;
//! where the kernel refuses it (lockdown), fault says so once per run and names each such
//! process when its first call is seen, in `fault apply`'s output and in `fault status`.
//!
//! Cost: while the program is attached, every system call of every process on the host
//! takes the kernel's slow path for tracepoints (BENCHMARKS.md; less where the program
//! sits on the clock calls' own tracepoints, see [`super::syscall_tp`]). So
//! it is attached in short windows only ([`WINDOW`]): when processes are patched, and
//! once every [`EVERY`] after that, about 3% of the time on a steady run. A process that
//! makes such calls less often than once per window may go unnamed.
//!
//! Safety: the program only counts, and its link is a file descriptor of the loader, so it
//! ends with the loader whatever the loader's death.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::{
    maps::{HashMap, MapData},
    programs::RawTracePoint,
    Ebpf, EbpfLoader,
};
use fault_common::{globals, maps, progs, ClockCalls, TimerKey, VdsoRange, CALL_NAMES};
use serde::{Deserialize, Serialize};

use super::exec::{step, StartError};
use super::syscall_tp::{Attached, Hook, COUNTED_CALLS, ENTER_CALLS};
use crate::policy::ClockRule;

/// How long the program stays attached each time.
pub const WINDOW: Duration = Duration::from_secs(2);
/// How often it is attached again on a steady run.
pub const EVERY: Duration = Duration::from_secs(60);

/// One process's counts, as `fault status` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallsRecord {
    pub pid: u32,
    pub comm: String,
    /// Reads of a faulted clock made as system calls: they read true time.
    pub raw_reads: u64,
    /// Waits until an absolute time: they end by the true clock.
    pub abs_waits: u64,
    /// The calls seen, by name.
    pub calls: Vec<String>,
}

impl CallsRecord {
    /// What it means, in one line.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.raw_reads > 0 {
            parts.push(format!(
                "{} clock read(s) made as system calls, which read true time",
                self.raw_reads
            ));
        }
        if self.abs_waits > 0 {
            parts.push(format!(
                "{} wait(s) until an absolute time, which end by the true clock",
                self.abs_waits
            ));
        }
        format!(
            "process {} ({}): {} ({})",
            self.pid,
            self.comm,
            parts.join("; "),
            self.calls.join(", ")
        )
    }
}

/// The loaded and attached program, and what was told of it.
pub struct CallWatch {
    /// The tracepoints the programs attach to on this kernel.
    hook: Hook,
    /// While a window is open: the attachment, and when the window closes.
    link: Option<(Attached, Instant)>,
    /// Where eBPF may write user memory: the rewrite's `sys_enter` and `sys_exit`
    /// attachments, for the whole run (they also count what they cannot rewrite).
    rewrite: Option<[Attached; 2]>,
    /// When the last window opened.
    opened: Instant,
    watched: HashMap<MapData, u32, VdsoRange>,
    calls: HashMap<MapData, u32, ClockCalls>,
    /// The clock of each known timer of a watched process.
    timers: HashMap<MapData, TimerKey, u32>,
    /// The processes named so far, with the kinds of call they were named for.
    told: BTreeMap<u32, u32>,
    /// Why eBPF may not write user memory here (see [`write_user_refused`]).
    refused: Option<String>,
    _ebpf: Ebpf,
}

/// Bit n for each clock id n the rules fault; `gettimeofday` and `time` read the realtime
/// clock (id 0).
pub fn clock_mask(rules: &[ClockRule]) -> u32 {
    rules
        .iter()
        .flat_map(|r| &r.clocks)
        .map(|c| c.linux_id())
        .filter(|&id| id < 32)
        .fold(0, |mask, id| mask | 1 << id)
}

impl CallWatch {
    /// Loads the program for the clocks in `mask` and attaches it.
    pub fn start(mask: u32) -> Result<Self, StartError> {
        Self::start_with(mask, false)
    }

    /// [`Self::start`], on the raw `sys_enter` whatever the kernel offers when `raw` (for
    /// measuring the two side by side).
    pub fn start_with(mask: u32, raw: bool) -> Result<Self, StartError> {
        let object = crate::net::loader::OBJECT;
        let mut loader = EbpfLoader::new();
        crate::net::loader::smallest_network_maps(&mut loader);
        let mut ebpf = loader
            .override_global(globals::CLOCK_CALLS_MASK, &mask, true)
            .load(object)
            .map_err(step("load the eBPF object for counting clock system calls"))?;
        let refused = write_user_refused(&mut ebpf);
        let per_call: &[&str] = match refused {
            Some(_) => &[progs::CLOCK_CALLS_TP],
            None => &[
                progs::CLOCK_CALLS_TP,
                progs::CLOCK_REWRITE_ENTER_TP,
                progs::CLOCK_REWRITE_EXIT_TP,
            ],
        };
        let hook = match raw {
            true => Hook::Raw {
                why: "asked for".into(),
            },
            false => Hook::choose(&mut ebpf, per_call),
        };
        if let Hook::Raw { .. } = &hook {
            let prog = super::exec::raw_tracepoint(&mut ebpf, progs::CLOCK_CALLS)?;
            prog.load()
                .map_err(step(format!("load program {}", progs::CLOCK_CALLS)))?;
        }
        if let (Hook::Raw { why }, false) = (&hook, raw) {
            eprintln!(
                "fault: clock: note: the clock-call hooks use the raw sys_enter tracepoint, \
                 which every system call on the host pays while attached ({why})"
            );
        }
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .context("map missing from the object")
                .map_err(step(name.to_owned()))
        };
        let watched = take(maps::CLOCK_WATCHED)?
            .try_into()
            .map_err(step(maps::CLOCK_WATCHED))?;
        let calls = take(maps::CLOCK_CALLS)?
            .try_into()
            .map_err(step(maps::CLOCK_CALLS))?;
        let timers = take(maps::TIMER_CLOCKS)?
            .try_into()
            .map_err(step(maps::TIMER_CLOCKS))?;
        let rewrite = match refused {
            Some(_) => None,
            None => Some(attach_rewrite(&mut ebpf, &hook)?),
        };
        let mut watch = CallWatch {
            hook,
            link: None,
            rewrite,
            opened: Instant::now(),
            watched,
            calls,
            timers,
            told: BTreeMap::new(),
            refused,
            _ebpf: ebpf,
        };
        watch.open_window()?;
        Ok(watch)
    }

    /// Why eBPF may not write user memory here, or `None` when it may.
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Whether raw clock reads are rewritten (where eBPF may write user memory).
    pub fn rewrites(&self) -> bool {
        self.rewrite.is_some()
    }

    /// The tracepoints the programs attach to on this kernel.
    pub fn hook(&self) -> &Hook {
        &self.hook
    }

    /// Attaches the program for a [`WINDOW`] from now (longer, if one is open already).
    /// The rewrite, where there is one, counts all the time instead.
    pub fn open_window(&mut self) -> Result<(), StartError> {
        if self.rewrite.is_some() {
            return Ok(());
        }
        let until = Instant::now() + WINDOW;
        self.opened = Instant::now();
        if let Some((_, end)) = self.link.as_mut() {
            *end = until;
            return Ok(());
        }
        let link = self.hook.attach(
            &mut self._ebpf,
            (progs::CLOCK_CALLS_TP, progs::CLOCK_CALLS),
            COUNTED_CALLS,
            false,
        )?;
        self.link = Some((link, until));
        Ok(())
    }

    /// Closes a window whose time is up, and opens one every [`EVERY`].
    pub fn tick(&mut self) {
        if self
            .link
            .as_ref()
            .is_some_and(|(_, end)| Instant::now() >= *end)
        {
            self.link = None;
        }
        if self.link.is_none() && self.opened.elapsed() >= EVERY {
            if let Err(e) = self.open_window() {
                eprintln!("fault: clock: warning: {:#}", anyhow::Error::from(e));
            }
        }
    }

    /// Counts exactly the processes in `procs` from now on (the patched ones, each with
    /// the base of its clock parameter page, which the rewrite reads); a window opens for
    /// those new to it, and the timers they made before are looked up.
    pub fn watch(&mut self, procs: &[(u32, u64)]) {
        let known: Vec<u32> = self.watched.keys().flatten().collect();
        let pids: Vec<u32> = procs.iter().map(|&(pid, _)| pid).collect();
        let gone: Vec<u32> = known
            .iter()
            .copied()
            .filter(|p| !pids.contains(p))
            .collect();
        for pid in &gone {
            let _ = self.watched.remove(pid);
            let _ = self.calls.remove(pid);
            self.told.remove(pid);
        }
        self.forget_timers(&gone);
        let mut new = false;
        for &(pid, base) in procs.iter().filter(|(p, _)| !known.contains(p)) {
            let Some(vdso) = vdso_of(pid, base) else {
                continue;
            };
            // Full (CLOCK_CALLS_MAX processes): this one is not counted.
            if self.watched.insert(pid, vdso, 0).is_err() {
                continue;
            }
            new = true;
            // Read after the insert: a timer made from now on is recorded at its creation.
            for (key, clock) in super::timers::timers_of(pid) {
                let _ = self.timers.insert(key, clock, 0);
            }
        }
        if new {
            if let Err(e) = self.open_window() {
                eprintln!("fault: clock: warning: {:#}", anyhow::Error::from(e));
            }
        }
        self.tick();
    }

    /// Drops the timers of processes no longer watched (a pid may come back as another).
    fn forget_timers(&mut self, gone: &[u32]) {
        if gone.is_empty() {
            return;
        }
        let stale: Vec<TimerKey> = self
            .timers
            .keys()
            .flatten()
            .filter(|k| gone.contains(&k.tgid))
            .collect();
        for key in &stale {
            let _ = self.timers.remove(key);
        }
    }

    /// Every counted process's calls so far.
    pub fn records(&self) -> Vec<CallsRecord> {
        let mut out: Vec<CallsRecord> = self
            .calls
            .iter()
            .flatten()
            .map(|(pid, c)| record(pid, &c))
            .collect();
        out.sort_by_key(|r| r.pid);
        out
    }

    /// The processes seen making a kind of call they were not named for yet.
    pub fn news(&mut self) -> Vec<CallsRecord> {
        let mut out = Vec::new();
        for (pid, c) in self.calls.iter().flatten() {
            let told = self.told.entry(pid).or_insert(0);
            if c.kinds & !*told != 0 {
                *told |= c.kinds;
                out.push(record(pid, &c));
            }
        }
        out
    }
}

fn record(pid: u32, c: &ClockCalls) -> CallsRecord {
    CallsRecord {
        pid,
        comm: super::inject::comm(pid),
        raw_reads: c.raw_reads,
        abs_waits: c.abs_waits,
        calls: names(c.kinds),
    }
}

fn names(kinds: u32) -> Vec<String> {
    CALL_NAMES
        .iter()
        .filter(|(bit, _)| kinds & bit != 0)
        .map(|(_, name)| name.to_string())
        .collect()
}

fn vdso_of(pid: u32, page: u64) -> Option<VdsoRange> {
    let maps = super::vdso::maps(pid).ok()?;
    let m = maps.iter().find(|m| m.name == "[vdso]")?;
    Some(VdsoRange {
        start: m.start,
        end: m.end,
        page,
    })
}

/// Loads and attaches the rewrite's two programs, from the object `ebpf`.
fn attach_rewrite(ebpf: &mut Ebpf, hook: &Hook) -> Result<[Attached; 2], StartError> {
    // sys_exit first: a read noted at sys_enter is then always rewritten.
    let exit = hook.attach(
        ebpf,
        (progs::CLOCK_REWRITE_EXIT_TP, progs::CLOCK_REWRITE_EXIT),
        &ENTER_CALLS,
        true,
    )?;
    let enter = hook.attach(
        ebpf,
        (progs::CLOCK_REWRITE_ENTER_TP, progs::CLOCK_REWRITE_ENTER),
        &ENTER_CALLS,
        false,
    )?;
    Ok([enter, exit])
}

/// Why eBPF may not write user memory on this kernel (`bpf_probe_write_user`, which
/// lockdown refuses), or `None` when it may: learnt by loading, from the object `ebpf`,
/// a program that calls it.
fn write_user_refused(ebpf: &mut Ebpf) -> Option<String> {
    let prog: Result<&mut RawTracePoint, _> = match ebpf.program_mut(progs::WRITE_USER_PROBE) {
        Some(p) => p.try_into(),
        None => {
            return Some(format!(
                "{} is missing from the object",
                progs::WRITE_USER_PROBE
            ))
        }
    };
    match prog.map(|p| p.load()) {
        Ok(Ok(())) => None,
        // Under lockdown the kernel offers the helper to no program: the verifier then
        // names it as one this program type cannot use.
        Ok(Err(e)) if format!("{e:#}").contains("bpf_probe_write_user") => {
            Some(match lockdown_mode() {
                Some(mode) => format!("lockdown={mode} refuses bpf_probe_write_user"),
                None => "this kernel's lockdown refuses bpf_probe_write_user".into(),
            })
        }
        Ok(Err(e)) => Some(format!(
            "a program calling bpf_probe_write_user did not load: {e}"
        )),
        Err(e) => Some(e.to_string()),
    }
}

/// The kernel's lockdown mode, from securityfs or the command line.
fn lockdown_mode() -> Option<String> {
    if let Ok(text) = std::fs::read_to_string("/sys/kernel/security/lockdown") {
        let mode = text.split_whitespace().find(|w| w.starts_with('['))?;
        return Some(mode.trim_matches(|c| c == '[' || c == ']').to_owned());
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("lockdown="))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ClockId;

    #[test]
    fn the_mask_has_a_bit_per_faulted_clock_id() {
        let rule = |clocks: Vec<ClockId>| ClockRule {
            name: "r".into(),
            clocks,
            offset_ns: 1,
            drift_ppm: 0.0,
            jumps: None,
            jitter_ns: 0,
            allow_backwards: false,
        };
        let rules = [
            rule(vec![ClockId::Realtime, ClockId::Monotonic]),
            rule(vec![ClockId::Boottime]),
        ];
        assert_eq!(clock_mask(&rules), 1 << 0 | 1 << 1 | 1 << 7);
        assert_eq!(clock_mask(&[]), 0);
    }

    #[test]
    fn a_record_says_what_each_count_means() {
        let r = CallsRecord {
            pid: 7,
            comm: "app".into(),
            raw_reads: 3,
            abs_waits: 0,
            calls: names(fault_common::CALL_CLOCK_GETTIME | fault_common::CALL_TIME),
        };
        assert_eq!(
            r.describe(),
            "process 7 (app): 3 clock read(s) made as system calls, which read true time \
             (clock_gettime, time)"
        );
        let w = CallsRecord {
            raw_reads: 0,
            abs_waits: 2,
            calls: names(fault_common::CALL_FUTEX),
            ..r
        };
        assert!(w.describe().ends_with(
            "2 wait(s) until an absolute time, which end by the true clock \
             (futex(FUTEX_CLOCK_REALTIME))"
        ));
    }
}
