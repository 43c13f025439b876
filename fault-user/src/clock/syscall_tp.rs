//! Attaching the clock-call programs to the clock calls' own tracepoints
//! (`syscalls:sys_enter_<name>`, `sys_exit_<name>`) rather than to the raw `sys_enter`.
//!
//! Any system-call tracepoint sends every system call of the host through the kernel's
//! slow path; on the raw tracepoint each one also runs the program, on the per-call ones
//! the kernel only tests a bit and goes on (BENCHMARKS.md, the clock section). The
//! per-call programs find the caller's registers with `bpf_task_pt_regs` (Linux 5.15):
//! where they do not load, or the events cannot be found, [`Hook::Raw`] keeps the raw
//! tracepoint and says why.
//!
//! The events are named by ids in tracefs. Where tracefs is not mounted, a short-lived
//! thread mounts it in a mount namespace of its own, reads the ids and ends, taking the
//! mount with it: nothing is mounted on the host.
//!
//! Each attachment is a perf event of the loader with the program set on it, so it ends
//! with the loader's file descriptors, whatever the loader's death.

use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::path::Path;

use anyhow::{anyhow, Context as _};
use aya::{
    programs::{raw_trace_point::RawTracePointLink, TracePoint},
    Ebpf,
};
use aya_obj::generated::{
    perf_event_attr, perf_type_id, PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF,
    PERF_FLAG_FD_CLOEXEC,
};

use super::exec::{raw_tracepoint, step, StartError};

/// The calls the rewrite looks at on entry (fault-ebpf/src/clock_calls.rs, `seen_at`): first
/// the reads and the waits, which a count looks at too, then those that only tell a timer's
/// clock.
pub const ENTER_CALLS: [&str; 13] = [
    "clock_gettime",
    "gettimeofday",
    "time",
    "futex",
    "timer_settime",
    "clock_nanosleep",
    "timerfd_settime",
    "timer_create",
    "timerfd_create",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
];

/// The calls the count looks at where nothing is rewritten: the reads and the waits.
pub const COUNTED_CALLS: &[&str] = ENTER_CALLS.split_at(7).0;

/// The one call the rewrite only counts, so it has nothing to finish at its exit.
const COUNTED_ONLY: &str = "time";

/// Where tracefs is looked for, in order; the first is where a private one is mounted.
const TRACEFS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// How the clock-call programs are attached on this kernel.
pub enum Hook {
    /// To the calls' own tracepoints: the event ids of [`ENTER_CALLS`] at their entry and
    /// at their exit (all but [`COUNTED_ONLY`]), by name.
    PerCall { enter: Ids, exit: Ids },
    /// To the raw `sys_enter` and `sys_exit`, and why the per-call ones are not used.
    Raw { why: String },
}

/// One attached program: a raw tracepoint link, or one perf event per call.
pub enum Attached {
    Raw(RawTracePointLink),
    PerCall(Vec<OwnedFd>),
}

impl Hook {
    /// Loads the per-call programs named `progs` of `ebpf` and finds the events; falls
    /// back to the raw tracepoint if either fails.
    pub fn choose(ebpf: &mut Ebpf, progs: &[&str]) -> Hook {
        // Older kernels are not even tried, so that their bpf() calls stay those of the raw
        // hook alone (5.10 under qemu's TCG has livelocked as raw tracepoints attached:
        // xtask/src/test.rs).
        if let Some((major, minor)) = kernel_version().filter(|&v| v < (5, 15)) {
            return Hook::Raw {
                why: format!("Linux {major}.{minor} has no bpf_task_pt_regs, which came in 5.15"),
            };
        }
        let loaded = progs.iter().try_for_each(|name| load(ebpf, name));
        let found = loaded.and_then(|()| event_ids());
        match found {
            Ok((enter, exit)) => Hook::PerCall { enter, exit },
            Err(e) => Hook::Raw {
                why: format!("{e:#}"),
            },
        }
    }

    /// Attaches program `per_call` at the entry of `calls` (at their exit when `exit`) or,
    /// on the raw tracepoint, program `raw`, loading it first.
    pub fn attach(
        &self,
        ebpf: &mut Ebpf,
        (per_call, raw): (&str, &str),
        calls: &[&str],
        exit: bool,
    ) -> Result<Attached, StartError> {
        let known = match self {
            Hook::PerCall { enter, exit: out } => match exit {
                true => out,
                false => enter,
            },
            Hook::Raw { .. } => return attach_raw(ebpf, raw, exit).map(Attached::Raw),
        };
        let ids = known.iter().filter(|(name, _)| calls.contains(name));
        let what = format!("attach program {per_call} to the clock calls' tracepoints");
        let prog = tracepoint(ebpf, per_call).map_err(step(what.clone()))?;
        let fd = prog.fd().map_err(step(what.clone()))?;
        let fd = fd.as_fd();
        ids.map(|&(_, id)| attach_event(fd, id))
            .collect::<anyhow::Result<Vec<_>>>()
            .map(Attached::PerCall)
            .map_err(step(what))
    }
}

/// This kernel's (major, minor) version.
fn kernel_version() -> Option<(u32, u32)> {
    let uname = nix::sys::utsname::uname().ok()?;
    let release = uname.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn tracepoint<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut TracePoint> {
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?;
    Ok(prog.try_into()?)
}

fn load(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<()> {
    let prog = tracepoint(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("load program {name}"))?;
    }
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf, name: &str, exit: bool) -> Result<RawTracePointLink, StartError> {
    let tracepoint = if exit { "sys_exit" } else { "sys_enter" };
    let prog = raw_tracepoint(ebpf, name)?;
    if prog.fd().is_err() {
        prog.load().map_err(step(format!("load program {name}")))?;
    }
    let what = format!("attach raw tracepoint {tracepoint}");
    let id = prog.attach(tracepoint).map_err(step(what.clone()))?;
    prog.take_link(id).map_err(step(what))
}

/// Opens the tracepoint event `id` on every CPU and runs program `prog` at each hit.
fn attach_event(prog: BorrowedFd<'_>, id: u64) -> anyhow::Result<OwnedFd> {
    // SAFETY: a plain C struct, all zeros is its empty value.
    let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = perf_type_id::PERF_TYPE_TRACEPOINT as u32;
    attr.size = std::mem::size_of::<perf_event_attr>() as u32;
    attr.config = id;
    attr.__bindgen_anon_1.sample_period = 1;
    attr.__bindgen_anon_2.wakeup_events = 1;
    // SAFETY: the attribute outlives the call; pid -1 with cpu 0 is the whole system for
    // a tracepoint's program, which runs wherever the tracepoint is hit.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const perf_event_attr,
            -1,
            0,
            -1,
            PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("perf_event_open event {id}"));
    }
    // SAFETY: a new descriptor, ours alone.
    let event = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let ioctl = |request: u32, arg: libc::c_int, what: &str| {
        // SAFETY: requests on our own perf event descriptor.
        match unsafe { libc::ioctl(event.as_raw_fd(), request as libc::c_ulong, arg) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()).context(format!("{what} on event {id}")),
        }
    };
    ioctl(PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd(), "set the program")?;
    ioctl(PERF_EVENT_IOC_ENABLE, 0, "enable")?;
    Ok(event)
}

/// Event ids of calls, by name.
type Ids = Vec<(&'static str, u64)>;

/// The event ids of the `sys_enter_<name>` and `sys_exit_<name>` tracepoints of the calls
/// the programs watch, read from one tracefs (mounted privately once, where needed).
fn event_ids() -> anyhow::Result<(Ids, Ids)> {
    let read = |root: &Path| -> anyhow::Result<(Ids, Ids)> {
        let ids = |dir: &str| -> anyhow::Result<Ids> {
            ENTER_CALLS
                .iter()
                .filter(|&&n| dir == "enter" || n != COUNTED_ONLY)
                .map(|&n| Ok((n, read_id(root, dir, n)?)))
                .collect()
        };
        Ok((ids("enter")?, ids("exit")?))
    };
    match TRACEFS.iter().map(Path::new).find(|p| mounted(p)) {
        Some(root) => read(root),
        None => in_private_tracefs(read),
    }
}

fn mounted(root: &Path) -> bool {
    root.join("events/syscalls").is_dir()
}

fn read_id(root: &Path, dir: &str, name: &str) -> anyhow::Result<u64> {
    let path = root.join(format!("events/syscalls/sys_{dir}_{name}/id"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: not an event id: {text:?}", path.display()))
}

/// Runs `read` on a tracefs mounted at [`TRACEFS`]\[0\] in a mount namespace of a thread
/// of its own, which ends with the thread.
fn in_private_tracefs<T: Send>(
    read: impl FnOnce(&Path) -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};
    let root = Path::new(TRACEFS[0]);
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNS).context("unshare the mount namespace")?;
            let none: Option<&str> = None;
            let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
            mount(none, "/", none, private, none).context("make the mounts private")?;
            mount(
                Some("tracefs"),
                root,
                Some("tracefs"),
                MsFlags::empty(),
                none,
            )
            .with_context(|| format!("mount tracefs at {} (privately)", root.display()))?;
            read(root)
        })
        .join()
        .map_err(|_| anyhow!("the thread reading tracefs panicked"))?
    })
}
