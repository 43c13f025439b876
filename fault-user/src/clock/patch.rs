//! Patching one process: map the stub, point the vDSO entry points at it, and undo that.
//!
//! Patch, for a process seen for the first time:
//! 1. while it runs: read its maps and vDSO, find the entry points, choose where the mapping
//!    goes (the highest free gap below `[vvar]`, within reach of a `jmp rel32` and of the
//!    vDSO's RIP-relative data references) and build the trampolines;
//! 2. stop every thread; in one, run `mmap` (a placeholder holding the memfd's name),
//!    `memfd_create`, `mmap` of the memfd over the placeholder, two `mprotect`s and `close`;
//!    fault fills the memfd through `/proc/PID/fd/N` before it is mapped;
//! 3. move any thread caught inside the bytes about to be replaced to the same place in its
//!    trampoline, write each `jmp` through `/proc/PID/mem`, read it back, let the threads go.
//!
//! A process that already holds our mapping (a child forked after the patch, or a process
//! patched by an earlier run) is adopted: its parameters are rewritten, and its entry points
//! patched again if they were restored.
//!
//! Revert sets the expired flag (the stub returns true time from that store on), stops every
//! thread and writes the saved bytes back where the patch still stands. The mapping stays:
//! a thread may be inside the stub, or inside vDSO code called from it, and would crash on
//! return if it went; a later patch reuses it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::sync::OnceLock;

use super::inject::{self, comm, InjectError, Stopped};
use super::layout::{
    bytes_of, off, read_at, ClockParams, Entry, Header, Plan, CLOCKS_OFF, CODE_OFF, ENTRY_NAMES,
    FLAG_ACTIVE, MAGIC, MAP_SIZE, MEMFD_NAME, PAGE, STATE_OFF, TRAMP_OFF, TRAMP_SLOT, VERSION,
};
use super::reloc::{self, RelocError};
use super::seccomp;
use super::stub::{self, Stub, StubError};
use super::vdso::{self, ElfError, Mapping};

const SYS_CLOSE: i64 = 3;
const SYS_MMAP: i64 = 9;
const SYS_MPROTECT: i64 = 10;
const SYS_MUNMAP: i64 = 11;
const SYS_MEMFD_CREATE: i64 = 319;
/// The mapping goes at most this far from the vDSO: within the ±2 GiB a `jmp rel32` and a
/// RIP-relative displacement reach, with room for the vDSO's own size.
const MAX_DISTANCE: u64 = 3 << 29;

/// What went wrong with one process; shown as `process PID (comm): ...`.
#[derive(Debug, thiserror::Error)]
#[error("process {pid} ({comm})")]
pub struct ProcessError {
    pub pid: u32,
    pub comm: String,
    #[source]
    pub kind: PatchError,
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error("{op}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("has no vDSO mapped, so there is no clock code to redirect")]
    NoVdso,
    #[error("reading its vDSO")]
    Elf(#[source] ElfError),
    #[error("relocating the start of {entry}")]
    Reloc {
        entry: &'static str,
        #[source]
        source: RelocError,
    },
    #[error("{entry} already starts with a jump that is not fault's (another tool patched it?); left alone")]
    Foreign { entry: &'static str },
    #[error("no free {MAP_SIZE}-byte gap within 1.5 GiB of the vDSO for the stub")]
    NoRoom,
    #[error("{call} failed in the process with errno {errno} ({})", io::Error::from_raw_os_error(*errno))]
    Remote { call: &'static str, errno: i32 },
    #[error(transparent)]
    Seccomp(#[from] seccomp::Blocked),
    #[error("holds a fault-clock mapping of layout version {found}, this fault writes version {VERSION}; stop the fault that patched it first")]
    Incompatible { found: u32 },
    #[error("the stub")]
    Stub(#[from] StubError),
    /// What fault's injector process said went wrong (see `super::injector`).
    #[error("{0}")]
    Relayed(String),
    #[error("asking fault's injector process")]
    Injector(#[source] io::Error),
    #[error("exec'd a new program while it was being patched")]
    Execd,
}

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> PatchError {
    let op = op.into();
    move |source| PatchError::Io { op, source }
}

/// The stub bytes, assembled once per run.
fn stub() -> Result<&'static Stub, PatchError> {
    static STUB: OnceLock<Result<Stub, String>> = OnceLock::new();
    match STUB.get_or_init(|| stub::assemble().map_err(|e| format!("{e:#}"))) {
        Ok(s) => Ok(s),
        Err(e) => Err(PatchError::Io {
            op: format!("assembling the clock stub: {e}"),
            source: io::Error::other("assembler"),
        }),
    }
}

/// The start time of a process (field 22 of `/proc/PID/stat`, in clock ticks since boot):
/// with the pid, it names one process even after the pid is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    crate::sys::proc::start_time(pid)
}

/// fault's own shared mapping of a target's memfd: writing here is writing the target's
/// parameter page.
pub struct Shared {
    ptr: *mut u8,
}

// SAFETY: the mapping is plain shared memory owned by this value; nothing in it is tied to a
// thread.
unsafe impl Send for Shared {}

impl Shared {
    fn map(file: &File) -> io::Result<Self> {
        // SAFETY: a new shared mapping of a file we hold open; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAP_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Shared { ptr: ptr.cast() })
    }

    /// Opens the mapping at `base` in `pid` through `/proc/PID/map_files`.
    pub fn open(pid: u32, base: u64) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(map_file(pid, base))?;
        Self::map(&file)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: MAP_SIZE bytes mapped for as long as self lives. The target may change
        // the state page concurrently; fault only reads the header and parameters, which
        // only fault writes.
        unsafe { std::slice::from_raw_parts(self.ptr, MAP_SIZE) }
    }

    pub fn header(&self) -> Header {
        read_at(self.bytes(), 0).unwrap_or_default()
    }

    fn write(&self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= MAP_SIZE, "write inside the mapping");
        // SAFETY: inside the mapping (checked above).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len()) }
    }

    fn expired(&self) -> &std::sync::atomic::AtomicU64 {
        // SAFETY: State::expired is an aligned u64 at STATE_OFF, shared with the target,
        // which only ever accesses it atomically (aligned 8-byte loads and stores).
        unsafe {
            &*self
                .ptr
                .add(STATE_OFF)
                .cast::<std::sync::atomic::AtomicU64>()
        }
    }

    /// From this store on, every reader in the target gets true time.
    pub fn expire(&self) {
        self.expired().store(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Writes the plan's parameters; readers ignore them while the expired flag is set, so
    /// they never see half of an update.
    fn set_plan(&self, plan: &Plan) {
        let mut clocks = Vec::with_capacity(plan.clocks.len() * 128);
        for c in &plan.clocks {
            clocks.extend_from_slice(bytes_of(c));
        }
        let mut header = self.header();
        // The deadlines are the heartbeat's (see `renew`): the same parameters with other
        // deadlines need no rewrite.
        let mut leased = plan.clone();
        for (i, c) in leased.clocks.iter_mut().enumerate() {
            let at = CLOCKS_OFF + i * size_of::<ClockParams>();
            let now: Option<ClockParams> = read_at(self.bytes(), at);
            c.deadline_ns = now.map_or(c.deadline_ns, |p| p.deadline_ns);
        }
        let mut wanted = Vec::with_capacity(clocks.len());
        for c in &leased.clocks {
            wanted.extend_from_slice(bytes_of(c));
        }
        let same = self.bytes()[CLOCKS_OFF..CLOCKS_OFF + wanted.len()] == wanted[..];
        if same && self.expired().load(std::sync::atomic::Ordering::SeqCst) == 0 {
            return;
        }
        self.expire();
        header.mono_deadline_ns = plan.mono_deadline_ns;
        self.write(0, bytes_of(&header));
        self.write(CLOCKS_OFF, &clocks);
        self.expired().store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Lets the faults act until `until_mono` (CLOCK_MONOTONIC ns) and never past the plan's
    /// deadlines: each active clock's deadline becomes its true reading that much later.
    /// One aligned 8-byte store per clock, which the stub reads in one load.
    pub fn renew(&self, plan: &Plan, until_mono: i64) {
        let leased = plan.leased(until_mono);
        for (i, c) in leased.clocks.iter().enumerate() {
            if c.flags & FLAG_ACTIVE == 0 {
                continue;
            }
            self.store_i64(
                CLOCKS_OFF + i * size_of::<ClockParams>() + off::DEADLINE,
                c.deadline_ns,
            );
        }
        self.store_i64(off::MONO_DEADLINE, leased.mono_deadline_ns);
    }

    fn store_i64(&self, at: usize, value: i64) {
        assert!(
            at.is_multiple_of(8) && at + 8 <= MAP_SIZE,
            "an aligned store inside the mapping"
        );
        // SAFETY: aligned, inside the mapping; only fault writes the parameter page, and
        // the stub reads each deadline with one 8-byte load.
        unsafe {
            (*self.ptr.add(at).cast::<std::sync::atomic::AtomicI64>())
                .store(value, std::sync::atomic::Ordering::SeqCst)
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: our own mapping of MAP_SIZE bytes.
        unsafe { libc::munmap(self.ptr.cast(), MAP_SIZE) };
    }
}

/// The memfd through `/proc/PID/map_files`, named by the mapping's first page: the two
/// `mprotect`s split the mapping into one entry per page, each opening the same memfd.
fn map_file(pid: u32, base: u64) -> String {
    format!("/proc/{pid}/map_files/{base:x}-{:x}", base + PAGE as u64)
}

/// Whether the process still holds fault's mapping at `base` (an exec drops it, and the
/// new program may have a file of its own mapped there).
pub fn still_mapped(pid: u32, base: u64) -> bool {
    std::fs::read_link(map_file(pid, base)).is_ok_and(|f| {
        f.to_string_lossy()
            .starts_with(&format!("/memfd:{MEMFD_NAME}"))
    })
}

/// A patched process, held by the engine until revert.
pub struct Patched {
    pub pid: u32,
    pub start_time: u64,
    pub base: u64,
    /// Came patched from its parent (fork), so fault made no system call in it.
    pub adopted: bool,
    /// How long its threads were stopped (0 when adopted).
    pub stopped_us: u64,
    pub threads: usize,
    /// Which patch of the run this is (see `super::Engine`); 0 until the engine numbers it.
    pub serial: u64,
    shared: Shared,
}

impl Patched {
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The loader's view of a process another process (the injector) patched: the same
    /// parameter page, opened again through `/proc/PID/map_files`.
    pub fn reopen(
        pid: u32,
        start_time: u64,
        base: u64,
        adopted: bool,
        stopped_us: u64,
        threads: usize,
    ) -> Result<Self, ProcessError> {
        let shared = Shared::open(pid, base).map_err(|e| ProcessError {
            pid,
            comm: comm(pid),
            kind: io_err("opening its fault-clock mapping")(e),
        })?;
        Ok(Patched {
            pid,
            start_time,
            base,
            adopted,
            stopped_us,
            threads,
            serial: 0,
            shared,
        })
    }
}

fn is_special(m: &Mapping) -> bool {
    m.name.starts_with("[vvar") || m.name == "[vdso]"
}

fn ours(m: &Mapping) -> bool {
    m.name.starts_with(&format!("/memfd:{MEMFD_NAME}"))
}

/// A free [`MAP_SIZE`]-byte gap near the vDSO's pages, a guard page away from every
/// neighbour: the highest below them, else (a process whose thread stacks fill the space
/// below) the lowest above them.
fn pick_base(maps: &[Mapping]) -> Option<u64> {
    let low = maps
        .iter()
        .filter(|m| is_special(m))
        .map(|m| m.start)
        .min()?;
    let high = maps.iter().filter(|m| is_special(m)).map(|m| m.end).max()?;
    let guard = PAGE as u64;
    let size = MAP_SIZE as u64;
    let clash = |start: u64, end: u64| {
        maps.iter()
            .find(|m| m.start < end + guard && m.end + guard > start)
    };
    let mut end = low.checked_sub(guard)?;
    while let Some(start) = end.checked_sub(size).filter(|s| low - s <= MAX_DISTANCE) {
        match clash(start, end) {
            Some(m) => end = m.start.saturating_sub(guard),
            None => return Some(start),
        }
    }
    let mut start = high + guard;
    while start + size - high <= MAX_DISTANCE {
        match clash(start, start + size) {
            Some(m) => start = m.end + guard,
            None => return Some(start),
        }
    }
    None
}

/// Patches `pid` (or adopts it), so that its clock reads follow `plan`.
pub fn patch(pid: u32, plan: &Plan) -> Result<Patched, ProcessError> {
    // An exec between the first look and the stop: the new program is patched instead.
    let patched = match patch_inner(pid, plan) {
        Err(PatchError::Execd) => patch_inner(pid, plan),
        done => done,
    };
    patched.map_err(|kind| ProcessError {
        pid,
        comm: comm(pid),
        kind,
    })
}

fn patch_inner(pid: u32, plan: &Plan) -> Result<Patched, PatchError> {
    let start_time = start_time(pid).ok_or(InjectError::Gone { pid })?;
    let stub = stub()?;
    let maps = vdso::maps(pid).map_err(io_err("reading its memory map"))?;
    let v = maps
        .iter()
        .find(|m| m.name == "[vdso]")
        .ok_or(PatchError::NoVdso)?;
    let image = inject::read_mem(pid, v.start, (v.end - v.start) as usize)
        .map_err(io_err("reading its vDSO"))?;

    let existing = maps.iter().find(|m| ours(m)).map(|m| m.start);
    let shared_existing = match existing {
        Some(base) => {
            let shared =
                Shared::open(pid, base).map_err(io_err("opening its fault-clock mapping"))?;
            let h = shared.header();
            if h.magic != MAGIC || h.version != VERSION {
                return Err(PatchError::Incompatible { found: h.version });
            }
            Some(shared)
        }
        None => None,
    };
    let base = match existing {
        Some(b) => b,
        None => pick_base(&maps).ok_or(PatchError::NoRoom)?,
    };

    // The header and trampolines, built while the process runs.
    let (mut header, mut code, all_patched) =
        build(plan, stub, &image, v, base, shared_existing.as_ref())?;

    if let Some(shared) = shared_existing {
        if all_patched {
            // A fork of a patched process, or one an earlier run left patched: new
            // parameters, and nothing to stop.
            shared.set_plan(plan);
            return Ok(Patched {
                pid,
                start_time,
                base,
                adopted: true,
                stopped_us: 0,
                threads: 0,
                serial: 0,
                shared,
            });
        }
        let started = std::time::Instant::now();
        let world = Stopped::stop(pid)?;
        if !still_mapped(pid, base) {
            return Err(PatchError::Execd);
        }
        if shared.bytes()[CODE_OFF..] != code[..] {
            shared.write(CODE_OFF, &code);
        }
        shared.write(0, bytes_of(&header));
        shared.set_plan(plan);
        return complete(world, &header, started, start_time, base, shared);
    }

    let syscall_insn = find_syscall(&image)
        .map(|o| v.start + o as u64)
        .ok_or(PatchError::NoVdso)?;
    let started = std::time::Instant::now();
    let mut world = Stopped::stop(pid)?;
    // A thread may have mapped memory (a malloc arena, a stack) since the maps were read.
    let maps = vdso::maps(pid).map_err(io_err("reading its memory map"))?;
    if !maps
        .iter()
        .any(|m| m.name == "[vdso]" && m.start == v.start)
    {
        // It exec'd: what was read before the stop is another program's.
        return Err(PatchError::Execd);
    }
    let base = match pick_base(&maps) {
        Some(now) if now == base => base,
        Some(now) => {
            (header, code, _) = build(plan, stub, &image, v, now, None)?;
            now
        }
        None => return Err(PatchError::NoRoom),
    };
    let t = world.pick_thread();
    let calls = injected_calls(base, syscall_insn);
    seccomp::check(pid, world.threads[t].tid, &calls)?;
    let shared = map_stub(&mut world, t, syscall_insn, base, |shared| {
        shared.write(CODE_OFF, &code);
        shared.write(0, bytes_of(&header));
        shared.set_plan(plan);
    })?;
    complete(world, &header, started, start_time, base, shared)
}

/// The last steps of a patch, with the stub in place: write the jumps, let the threads go,
/// and say what was done.
fn complete(
    mut world: Stopped,
    header: &Header,
    started: std::time::Instant,
    start_time: u64,
    base: u64,
    shared: Shared,
) -> Result<Patched, PatchError> {
    finish(&mut world, header)?;
    let (pid, threads) = (world.pid, world.threads.len());
    world.detach()?;
    Ok(Patched {
        pid,
        start_time,
        base,
        adopted: false,
        stopped_us: started.elapsed().as_micros() as u64,
        threads,
        serial: 0,
        shared,
    })
}

/// The header (saved and patched bytes of each entry) and the code page for a mapping at
/// `base`; the flag says whether every entry is patched already (by us).
fn build(
    plan: &Plan,
    stub: &Stub,
    image: &[u8],
    v: &Mapping,
    base: u64,
    existing: Option<&Shared>,
) -> Result<(Header, Vec<u8>, bool), PatchError> {
    let shared_existing = existing;
    let mut header = Header {
        magic: MAGIC,
        version: VERSION,
        _pad: 0,
        base,
        vdso_base: v.start,
        mono_deadline_ns: plan.mono_deadline_ns,
        entries: [Entry::default(); 3],
    };
    let mut tramps = vec![0u8; 3 * TRAMP_SLOT];
    let mut all_patched = true;
    for (i, name) in ENTRY_NAMES.into_iter().enumerate() {
        let sym = vdso::symbol(image, name).map_err(PatchError::Elf)?;
        let off = sym.offset as usize;
        let func = image
            .get(off..off + sym.size as usize)
            .ok_or(PatchError::Elf(ElfError::Truncated {
                what: "a function",
                len: image.len(),
            }))?;
        let entry = v.start + sym.offset;
        let current: [u8; 8] = image
            .get(off..off + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or(PatchError::NoVdso)?;
        let stub_at = base + (CODE_OFF + stub.entries[i]) as u64;
        let jmp = reloc::jmp_rel32(entry, stub_at).ok_or(PatchError::NoRoom)?;
        if current[0] == 0xe9 {
            // Patched already: by us (its saved bytes are in the mapping) or by someone else.
            let known = shared_existing
                .as_ref()
                .map(|s| s.header().entries[i])
                .filter(|e| e.addr == entry && e.patched == current);
            let Some(known) = known else {
                return Err(PatchError::Foreign { entry: name });
            };
            header.entries[i] = known;
            let t = reloc::relocate(
                &known.saved_function(func),
                entry,
                tramp_addr(base, i),
                TRAMP_SLOT,
            )
            .map_err(|source| PatchError::Reloc {
                entry: name,
                source,
            })?;
            tramps[i * TRAMP_SLOT..i * TRAMP_SLOT + t.code.len()].copy_from_slice(&t.code);
            continue;
        }
        all_patched = false;
        let t =
            reloc::relocate(func, entry, tramp_addr(base, i), TRAMP_SLOT).map_err(|source| {
                PatchError::Reloc {
                    entry: name,
                    source,
                }
            })?;
        tramps[i * TRAMP_SLOT..i * TRAMP_SLOT + t.code.len()].copy_from_slice(&t.code);
        let mut patched = current;
        patched[..5].copy_from_slice(&jmp);
        header.entries[i] = Entry {
            addr: entry,
            saved: current,
            patched,
            stolen: t.stolen as u32,
            _pad: 0,
        };
    }
    let mut code = vec![0u8; MAP_SIZE - CODE_OFF];
    code[..stub.code.len()].copy_from_slice(&stub.code);
    code[TRAMP_OFF - CODE_OFF..TRAMP_OFF - CODE_OFF + tramps.len()].copy_from_slice(&tramps);
    Ok((header, code, all_patched))
}

impl Entry {
    /// The function's bytes as they were before the patch (the saved word in front).
    fn saved_function(&self, func: &[u8]) -> Vec<u8> {
        let mut f = func.to_vec();
        let n = f.len().min(8);
        f[..n].copy_from_slice(&self.saved[..n]);
        f
    }
}

fn tramp_addr(base: u64, i: usize) -> u64 {
    base + (TRAMP_OFF + i * TRAMP_SLOT) as u64
}

/// The system calls [`map_stub`] makes, as seccomp sees them.
fn injected_calls(base: u64, ip: u64) -> Vec<seccomp::Call> {
    let call = |nr: i64, args: [u64; 6]| seccomp::Call {
        name: match nr {
            SYS_MMAP => "mmap",
            SYS_MEMFD_CREATE => "memfd_create",
            SYS_MPROTECT => "mprotect",
            SYS_CLOSE => "close",
            _ => "munmap",
        },
        nr: nr as i32,
        ip: ip + 2,
        args,
    };
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    vec![
        call(SYS_MMAP, [base, MAP_SIZE as u64, rw, anon, u64::MAX, 0]),
        call(
            SYS_MEMFD_CREATE,
            [base, libc::MFD_CLOEXEC as u64, 0, 0, 0, 0],
        ),
        call(
            SYS_MMAP,
            [
                base,
                MAP_SIZE as u64,
                libc::PROT_READ as u64,
                (libc::MAP_SHARED | libc::MAP_FIXED) as u64,
                3,
                0,
            ],
        ),
        call(
            SYS_MPROTECT,
            [base + STATE_OFF as u64, PAGE as u64, rw, 0, 0, 0],
        ),
        call(
            SYS_MPROTECT,
            [
                base + CODE_OFF as u64,
                PAGE as u64,
                (libc::PROT_READ | libc::PROT_EXEC) as u64,
                0,
                0,
                0,
            ],
        ),
        call(SYS_CLOSE, [3, 0, 0, 0, 0, 0]),
        call(SYS_MUNMAP, [base, MAP_SIZE as u64, 0, 0, 0, 0]),
    ]
}

/// Creates the memfd in the target, fills it (through `fill`) and maps it at `base`. On
/// failure the target is left as it was (placeholder unmapped, descriptor closed).
fn map_stub(
    world: &mut Stopped,
    t: usize,
    insn: u64,
    base: u64,
    fill: impl FnOnce(&Shared),
) -> Result<Shared, PatchError> {
    let pid = world.pid;
    let size = MAP_SIZE as u64;
    let sys = |w: &mut Stopped, call: &'static str, nr: i64, args: [u64; 6]| {
        let r = w.syscall(t, insn, nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(PatchError::Remote {
                call,
                errno: -r as i32,
            });
        }
        Ok(r)
    };
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let placeholder = sys(world, "mmap", SYS_MMAP, [base, size, rw, anon, u64::MAX, 0])?;
    if let Some(hold) = super::injector::test_hold() {
        // The test hook: every thread stopped, one call made.
        std::thread::sleep(hold);
    }
    if placeholder as u64 != base {
        // A kernel without MAP_FIXED_NOREPLACE took it as a hint.
        let _ = world.syscall(t, insn, SYS_MUNMAP, [placeholder as u64, size, 0, 0, 0, 0]);
        return Err(PatchError::NoRoom);
    }
    let mut fd = None;
    let result = (|| {
        let mut name = MEMFD_NAME.as_bytes().to_vec();
        name.push(0);
        inject::write_mem(pid, base, &name).map_err(io_err("writing the memfd's name"))?;
        let n = sys(
            world,
            "memfd_create",
            SYS_MEMFD_CREATE,
            [base, libc::MFD_CLOEXEC as u64, 0, 0, 0, 0],
        )?;
        fd = Some(n as u64);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/fd/{n}"))
            .map_err(io_err("opening the memfd"))?;
        file.set_len(MAP_SIZE as u64)
            .map_err(io_err("sizing the memfd"))?;
        let shared = Shared::map(&file).map_err(io_err("mapping the memfd"))?;
        fill(&shared);
        let flags = (libc::MAP_SHARED | libc::MAP_FIXED) as u64;
        let ro = libc::PROT_READ as u64;
        let at = sys(
            world,
            "mmap",
            SYS_MMAP,
            [base, size, ro, flags, n as u64, 0],
        )?;
        if at as u64 != base {
            return Err(PatchError::NoRoom);
        }
        let state = base + STATE_OFF as u64;
        sys(
            world,
            "mprotect",
            SYS_MPROTECT,
            [state, PAGE as u64, rw, 0, 0, 0],
        )?;
        let rx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        let code = base + CODE_OFF as u64;
        sys(
            world,
            "mprotect",
            SYS_MPROTECT,
            [code, PAGE as u64, rx, 0, 0, 0],
        )?;
        Ok(shared)
    })();
    if let Some(fd) = fd {
        // The mapping keeps the memfd alive; the descriptor would only leak into the program.
        let _ = world.syscall(t, insn, SYS_CLOSE, [fd, 0, 0, 0, 0, 0]);
    }
    if result.is_err() {
        let _ = world.syscall(t, insn, SYS_MUNMAP, [base, size, 0, 0, 0, 0]);
    }
    result
}

/// With every thread stopped: moves threads out of the bytes about to change, writes the
/// jumps, and checks them.
fn finish(world: &mut Stopped, header: &Header) -> Result<(), PatchError> {
    let pid = world.pid;
    for t in &mut world.threads {
        for (i, e) in header.entries.iter().enumerate() {
            let rip = t.regs.rip;
            if rip > e.addr && rip < e.addr + u64::from(e.stolen) {
                // Relocation keeps every instruction's length and offset.
                t.regs.rip = tramp_addr(header.base, i) + (rip - e.addr);
                t.dirty = true;
            }
        }
    }
    for e in &header.entries {
        let now = inject::read_mem(pid, e.addr, 8).map_err(io_err("reading a vDSO entry"))?;
        if now == e.patched {
            continue;
        }
        inject::write_mem(pid, e.addr, &e.patched).map_err(io_err("patching the vDSO"))?;
        let check = inject::read_mem(pid, e.addr, 8).map_err(io_err("reading a vDSO entry"))?;
        if check != e.patched {
            return Err(PatchError::Io {
                op: "patching the vDSO".into(),
                source: io::Error::other("the write did not stick"),
            });
        }
    }
    Ok(())
}

/// The offset of a `syscall` instruction in the vDSO image (its fallback paths make one).
fn find_syscall(image: &[u8]) -> Option<usize> {
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};
    let text = vdso::symbol(image, ENTRY_NAMES[0]).ok()?;
    let start = text.offset as usize;
    let func = image.get(start..start + text.size as usize)?;
    let mut d = Decoder::with_ip(64, func, start as u64, DecoderOptions::NONE);
    d.iter()
        .find(|i| i.mnemonic() == Mnemonic::Syscall)
        .map(|i| i.ip() as usize)
        .or_else(|| image.windows(2).position(|w| w == [0x0f, 0x05]))
}

/// Restores the original vDSO bytes of a process patched at `base`, if it is still the
/// process that was patched (`start_time`). The fault ends with the first store, before the
/// process is even stopped. Returns false when there was nothing left to restore.
pub fn revert(pid: u32, start_time: u64, base: u64) -> Result<bool, ProcessError> {
    revert_inner(pid, start_time, base, None).map_err(|kind| ProcessError {
        pid,
        comm: comm(pid),
        kind,
    })
}

/// [`revert`] for a process this run holds.
/// Restores `pid` if it holds a fault-clock mapping whose entries still jump to it,
/// whoever patched it (a patch a dead loader's injector finished after the loader died is
/// on no record). False when there was nothing to restore.
pub fn revert_found(pid: u32) -> Result<bool, ProcessError> {
    let Ok(maps) = vdso::maps(pid) else {
        return Ok(false); // gone
    };
    let (Some(m), Some(start)) = (maps.iter().find(|m| ours(m)), start_time(pid)) else {
        return Ok(false);
    };
    revert(pid, start, m.start)
}

pub fn revert_patched(p: &Patched) -> Result<bool, ProcessError> {
    revert_inner(p.pid, p.start_time, p.base, Some(&p.shared)).map_err(|kind| ProcessError {
        pid: p.pid,
        comm: comm(p.pid),
        kind,
    })
}

fn revert_inner(
    pid: u32,
    start_time: u64,
    base: u64,
    held: Option<&Shared>,
) -> Result<bool, PatchError> {
    if self::start_time(pid) != Some(start_time) {
        return Ok(false); // exited (or the pid is another process now)
    }
    let opened;
    let shared = match held {
        Some(s) => s,
        None => match Shared::open(pid, base) {
            Ok(s) => {
                opened = s;
                &opened
            }
            // Exec dropped the mapping, and the patch with it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("opening its fault-clock mapping")(e)),
        },
    };
    let header = shared.header();
    if header.magic != MAGIC {
        return Ok(false);
    }
    shared.expire();
    if !still_mapped(pid, base) {
        return Ok(false);
    }
    let still: Vec<&Entry> = header
        .entries
        .iter()
        .filter(|e| inject::read_mem(pid, e.addr, 8).is_ok_and(|b| b == e.patched))
        .collect();
    if still.is_empty() {
        return Ok(false);
    }
    let world = match Stopped::stop(pid) {
        Ok(w) => w,
        Err(InjectError::Gone { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    for e in still {
        // Checked again now that nothing runs.
        let now = inject::read_mem(pid, e.addr, 8).map_err(io_err("reading a vDSO entry"))?;
        if now == e.patched {
            inject::write_mem(pid, e.addr, &e.saved).map_err(io_err("restoring the vDSO"))?;
        }
    }
    world.detach()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(start: u64, end: u64, name: &str) -> Mapping {
        Mapping {
            start,
            end,
            perms: "r--p".into(),
            name: name.into(),
        }
    }

    #[test]
    fn the_stub_goes_in_the_highest_gap_below_vvar() {
        let maps = vec![
            m(0x7f00_0000_0000, 0x7f00_0010_0000, "/lib/libc.so.6"),
            m(0x7f00_0fff_a000, 0x7f00_0fff_c000, ""),
            m(0x7f00_1000_0000, 0x7f00_1000_4000, "[vvar]"),
            m(0x7f00_1000_4000, 0x7f00_1000_6000, "[vvar_vclock]"),
            m(0x7f00_1000_6000, 0x7f00_1000_8000, "[vdso]"),
        ];
        // Right below [vvar] an anonymous mapping sits in the way (with guard pages).
        let base = pick_base(&maps).unwrap();
        assert_eq!(base + MAP_SIZE as u64, 0x7f00_0fff_a000 - PAGE as u64);
        let free = vec![m(0x7f00_1000_0000, 0x7f00_1000_4000, "[vvar]")];
        assert_eq!(
            pick_base(&free).unwrap(),
            0x7f00_1000_0000 - PAGE as u64 - MAP_SIZE as u64
        );
        assert_eq!(pick_base(&[]), None, "no vDSO, nowhere to go");
        // Thread stacks fill the 1.5 GiB below: the gap above the vDSO it is.
        let full = vec![
            m(0x7f00_1000_0000 - (2 << 30), 0x7f00_1000_0000, "stacks"),
            m(0x7f00_1000_0000, 0x7f00_1000_4000, "[vvar]"),
            m(0x7f00_1000_6000, 0x7f00_1000_8000, "[vdso]"),
            m(0x7f00_1000_a000, 0x7f00_1000_b000, "x"),
        ];
        assert_eq!(pick_base(&full).unwrap(), 0x7f00_1000_c000);
    }

    #[test]
    fn start_time_names_this_process() {
        let ours = start_time(std::process::id()).unwrap();
        assert!(ours > 0);
        assert_eq!(start_time(std::process::id()), Some(ours));
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn the_injected_calls_are_the_ones_map_stub_makes() {
        let calls = injected_calls(0x7000_0000, 0x7fff_0000);
        let names: Vec<_> = calls.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "mmap",
                "memfd_create",
                "mmap",
                "mprotect",
                "mprotect",
                "close",
                "munmap"
            ]
        );
    }
}
