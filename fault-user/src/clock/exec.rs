//! Processes that exec inside a target, held from their first instruction until patched.
//!
//! The `fault_exec` program (fault-ebpf/src/exec.rs) stops a process that execs under a
//! target cgroup (SIGSTOP, before its first instruction), records it in the pinned
//! EXEC_HELD map and queues its pid in a ring buffer. [`ExecWatch`] hands the pids to the
//! engine, which patches each process, and then lets it go with SIGCONT, whether or not the
//! patch worked. So the new program's first clock read is already faulted.
//!
//! Safety: the program ends with the loader (its link is a file descriptor of the loader),
//! and stops holding within a second of its death in any case (the lease on its CONFIG,
//! see `crate::lease`). EXEC_HELD outlives it in bpffs, so the run's watchdog (see
//! `crate::watchdog`), `fault stop` or the next apply of the policy continues any process a
//! dead loader was holding ([`release_pinned`]).
//!
//! Side effect, documented: the exec'd process's parent may see a stop and a continue
//! (SIGCHLD with CLD_STOPPED, CLD_CONTINUED; `waitpid` with WUNTRACED/WCONTINUED).

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya::{
    maps::{Array, CgroupArray, HashMap, Map, MapData, RingBuf},
    programs::{raw_trace_point::RawTracePointLink, RawTracePoint},
    Ebpf, EbpfLoader,
};
use fault_common::{globals, maps, progs, Config, ExecEvent, EXEC_MAX_CGROUPS};

use crate::lease::ConfigLease;
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::io::unix::AsyncFd;

/// The raw tracepoint the program attaches to.
const TRACEPOINT: &str = "sched_process_exec";

/// A running exec hold: the program, its link and its maps.
pub struct ExecWatch {
    link: Option<RawTracePointLink>,
    /// The heartbeat's hold on this object's CONFIG, until the run takes it.
    lease: Option<ConfigLease>,
    ring: AsyncFd<RingBuf<MapData>>,
    held: HashMap<MapData, u32, u64>,
    /// Where EXEC_HELD is pinned, for `fault stop` and the watchdog while the hold runs.
    pin: PathBuf,
    /// Keeps the program loaded (the link holds it too).
    ebpf: Ebpf,
}

/// Why the hold could not start: which step the kernel refused.
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub struct StartError {
    pub step: String,
    #[source]
    pub source: anyhow::Error,
}

/// Names the step an error stopped at.
pub(super) fn step<E: Into<anyhow::Error>>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> StartError {
    let step = what.into();
    move |e| StartError {
        step,
        source: e.into(),
    }
}

/// The raw tracepoint program `name` of a loaded object.
pub(super) fn raw_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut RawTracePoint, StartError> {
    ebpf.program_mut(name)
        .context("program missing from the object")
        .and_then(|p| Ok(p.try_into()?))
        .map_err(step(format!("find program {name}")))
}

/// Puts the first [`EXEC_MAX_CGROUPS`] of `cgroups` in the hold's cgroup array, in order.
fn fill_cgroups(ebpf: &mut Ebpf, cgroups: &[PathBuf]) -> Result<(), StartError> {
    let mut array: CgroupArray<&mut MapData> = ebpf
        .map_mut(maps::EXEC_CGROUPS)
        .context("map missing from the object")
        .and_then(|m| Ok(m.try_into()?))
        .map_err(step(maps::EXEC_CGROUPS))?;
    for (i, path) in cgroups.iter().take(EXEC_MAX_CGROUPS as usize).enumerate() {
        let dir = std::fs::File::open(path)
            .with_context(|| format!("open {}", path.display()))
            .map_err(step(format!("fill {}", maps::EXEC_CGROUPS)))?;
        array
            .set(i as u32, dir.as_fd(), 0)
            .map_err(step(format!("fill {}", maps::EXEC_CGROUPS)))?;
    }
    Ok(())
}

impl ExecWatch {
    /// Loads and attaches the exec program for `cgroups` (at most [`EXEC_MAX_CGROUPS`]; the
    /// rest are left to the rescan), stopping nothing after `deadline_ns` (CLOCK_MONOTONIC),
    /// and pins EXEC_HELD in `pin_dir`.
    pub fn start(
        object: &[u8],
        cgroups: &[PathBuf],
        deadline_ns: u64,
        pin_dir: &Path,
    ) -> Result<Self, StartError> {
        let count = cgroups.len().min(EXEC_MAX_CGROUPS as usize) as u32;
        let mut loader = EbpfLoader::new();
        // Only the exec program is loaded from this copy of the object.
        crate::net::loader::smallest_network_maps(&mut loader);
        let mut ebpf = loader
            .override_global(globals::EXEC_DEADLINE_NS, &deadline_ns, true)
            .override_global(globals::EXEC_CGROUP_COUNT, &count, true)
            .load(object)
            .map_err(step("load the eBPF object for the exec hold"))?;

        fill_cgroups(&mut ebpf, cgroups)?;
        let held_map = ebpf
            .map(maps::EXEC_HELD)
            .context("map missing from the object")
            .map_err(step(maps::EXEC_HELD))?;
        crate::state::create_pin_dir(pin_dir).map_err(step(format!("pin {}", maps::EXEC_HELD)))?;
        let pin = pin_dir.join(maps::EXEC_HELD);
        held_map.pin(&pin).map_err(step(format!(
            "pin {} in {}",
            maps::EXEC_HELD,
            pin_dir.display()
        )))?;

        let prog = raw_tracepoint(&mut ebpf, progs::EXEC)?;
        // The verifier's log is part of the error's text, so a rejection shows it.
        prog.load()
            .map_err(step(format!("load program {}", progs::EXEC)))?;
        let id = prog
            .attach(TRACEPOINT)
            .map_err(step(format!("attach raw tracepoint {TRACEPOINT}")))?;
        let link = prog
            .take_link(id)
            .map_err(step(format!("attach raw tracepoint {TRACEPOINT}")))?;

        let take = |ebpf: &mut Ebpf, name: &str| -> Result<Map, StartError> {
            ebpf.take_map(name)
                .context("map missing from the object")
                .map_err(step(name.to_owned()))
        };
        let ring: RingBuf<MapData> = take(&mut ebpf, maps::EXEC_EVENTS)?
            .try_into()
            .map_err(step(maps::EXEC_EVENTS))?;
        // SAFETY: the AsyncFd owns the RingBuf, which owns the map's fd, so the fd stays
        // open (and is the same file) for as long as it is registered.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(step(format!("poll {}", maps::EXEC_EVENTS)))?;
        let held: HashMap<MapData, u32, u64> = take(&mut ebpf, maps::EXEC_HELD)?
            .try_into()
            .map_err(step(maps::EXEC_HELD))?;
        let lease = exec_lease(&mut ebpf, deadline_ns)?;
        Ok(ExecWatch {
            lease: Some(lease),
            link: Some(link),
            ring,
            held,
            pin,
            ebpf,
        })
    }

    /// Holds processes that exec in `cgroups` from now on, in place of the ones given at the
    /// start (as many, in the same order): a target that moved, like a container started
    /// again under its name, is held in its new cgroup.
    pub fn retarget(&mut self, cgroups: &[PathBuf]) -> Result<(), StartError> {
        fill_cgroups(&mut self.ebpf, cgroups)
    }

    /// Waits for processes stopped at exec; returns them (cancel-safe: nothing is taken
    /// from the ring until it is readable, and then everything at once).
    pub async fn next(&mut self) -> Vec<ExecEvent> {
        let Ok(mut guard) = self.ring.readable_mut().await else {
            // Polling a ring buffer fd does not fail; if it did, stop asking.
            return std::future::pending().await;
        };
        let mut out = Vec::new();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if let Some(e) = parse(&item) {
                out.push(e);
            }
        }
        guard.clear_ready();
        out
    }

    /// The lease that keeps the hold going (see `crate::lease`): a hold whose loader died
    /// stops holding within a lease.
    pub fn take_lease(&mut self) -> Option<ConfigLease> {
        self.lease.take()
    }

    /// The reader of the exec program's rare events (see `crate::program_log`).
    pub fn log_reader(&mut self, verbose: bool) -> Result<crate::program_log::LogReader, String> {
        crate::program_log::LogReader::start(&mut self.ebpf, verbose)
    }

    /// Lets a held process go.
    pub fn release(&mut self, pid: u32) {
        cont(pid);
        let _ = self.held.remove(&pid);
    }

    /// Detaches the program (nothing is stopped from here on), then lets go every process
    /// still held, also those whose event was not read yet. Returns the pids let go.
    pub fn finish(mut self) -> Vec<u32> {
        drop(self.link.take());
        let pids: Vec<u32> = self.held.keys().flatten().collect();
        for &pid in &pids {
            self.release(pid);
        }
        // Nothing is held any more: the pin would only stand in the way of the next hold
        // of the same run (an experiment's next clock step).
        let _ = std::fs::remove_file(&self.pin);
        pids
    }
}

/// This object's CONFIG, set to the policy's deadline: the program checks it too.
fn exec_lease(ebpf: &mut Ebpf, deadline_ns: u64) -> Result<ConfigLease, StartError> {
    let map = ebpf
        .take_map(maps::CONFIG)
        .context("map missing from the object")
        .map_err(step(maps::CONFIG))?;
    let mut config: Array<MapData, Config> = map.try_into().map_err(step(maps::CONFIG))?;
    let c = Config {
        deadline_ns,
        ..Config::default()
    };
    config
        .set(0, c, 0)
        .map_err(step(format!("write {}", maps::CONFIG)))?;
    Ok(ConfigLease {
        config,
        deadline_ns,
    })
}

/// Waits until the SIGSTOP sent at exec has stopped `pid` (state `T`), at most `timeout`.
/// Patching earlier would seize it with the signal still pending, and the stop would then
/// land in the middle of the system calls fault makes in it. False on timeout (someone
/// continued it, or it died): the patch then proceeds on a running process, as for any other.
pub fn wait_stopped(pid: u32, timeout: std::time::Duration) -> bool {
    let until = std::time::Instant::now() + timeout;
    loop {
        match crate::sys::proc::state(pid) {
            Some('T') => return true,
            None | Some('Z' | 'X') => return false,
            _ if std::time::Instant::now() > until => return false,
            _ => std::thread::yield_now(),
        }
    }
}

fn parse(bytes: &[u8]) -> Option<ExecEvent> {
    let raw: [u8; size_of::<ExecEvent>()] = bytes.get(..size_of::<ExecEvent>())?.try_into().ok()?;
    // SAFETY: ExecEvent is repr(C) plain integers; every bit pattern is valid.
    Some(unsafe { std::mem::transmute::<[u8; size_of::<ExecEvent>()], ExecEvent>(raw) })
}

fn cont(pid: u32) {
    // A process that is gone needs nothing.
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
}

/// Lets go every process a policy's exec hold still records in its pinned EXEC_HELD (the
/// loader died while holding them). Returns the pids, or nothing when there is no pin.
pub fn release_pinned(pin_dir: &Path) -> Vec<u32> {
    let Ok(data) = MapData::from_pin(pin_dir.join(maps::EXEC_HELD)) else {
        return Vec::new();
    };
    let Ok(mut held) = HashMap::<MapData, u32, u64>::try_from(Map::HashMap(data)) else {
        return Vec::new();
    };
    let entries: Vec<(u32, u64)> = held.iter().flatten().collect();
    let mut pids = Vec::new();
    for (pid, stopped_ns) in entries {
        // Continued if it is still the process the program stopped (started before the
        // stop: a pid reused since is someone else's), in any state but gone: stopped, `t`
        // while fault's injector still patches it (the SIGCONT ends the stop it returns to
        // when let go), or not stopped yet (the SIGSTOP is delivered on its way back to
        // user space; a SIGCONT discards it while pending).
        if !matches!(crate::sys::proc::state(pid), None | Some('Z' | 'X'))
            && crate::sys::proc::started_before(pid, stopped_ns)
        {
            cont(pid);
            pids.push(pid);
        }
        let _ = held.remove(&pid);
    }
    pids
}
