//! The code fault injects: replacements for the three vDSO entry points, assembled here with
//! iced-x86's code assembler.
//!
//! Each replacement calls the original vDSO code through its trampoline (the relocated
//! prologue, at [`TRAMP_OFF`]), so the true time costs what it always did, then adds the
//! fault read from the parameter page (see `layout.rs`):
//!
//! ```text
//! t' = t + offset + drift(e) + jumps(e) + noise(nsec)      e = max(0, t - start)
//! ```
//!
//! and returns `t` unchanged once the deadline has passed. The code is position independent
//! (calls and data are addressed relative to the code itself), so the same bytes serve every
//! process; only the trampolines differ.
//!
//! Cost is what matters here (the goal is at most 1.25x an untouched read, about 4 ns), so:
//! the fault is applied inline in each entry, on the caller's (seconds, nanoseconds) with
//! the offset pre-split, so that the usual read needs no division; only a result whose
//! nanoseconds leave [0, 2·10^9), a clamped clock, or a jump, takes the full split.
//!
//! Registers: `r12` = clock id and `r13` = the caller's pointer (callee-saved, they live
//! across the call to the original); after it, `r11` = start of the code page, `r10` = the
//! clock's [`ClockParams`](super::layout::ClockParams), `rax`/`rdx` = seconds/nanoseconds.
//! Each entry keeps a frame pointer, so profilers can unwind through it, and the stack
//! 16-byte aligned at every call.

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, IcedError};

use super::layout::{
    off, CGT, CLOCKS_OFF, CLOCK_SLOTS, CODE_OFF, FLAG_ACTIVE, FLAG_CLAMP, FLAG_SAMPLE_MONO,
    FLAG_STROBE, FLAG_WHOLE_SECONDS, GTOD, JITTER_MUL, SAMPLE_MASK, TIME, TRAMP_OFF, TRAMP_SLOT,
};

const NS: i32 = 1_000_000_000;
/// u = t + BIAS is never negative for any reading the validated policies can produce
/// (|fault| stays within years), so floor division of a signed value becomes an unsigned one.
const SPLIT_BIAS: u64 = 1_000_000_000 << 32;
/// floor(u / 10^9) = ((u >> 9) * SPLIT_MUL) >> (64 + 11), for every u64 (as compilers do it).
const SPLIT_MUL: u64 = 19_342_813_113_834_067;
/// floor(n / 1000) = (n * USEC_MUL) >> 38 for every n < 2^32.
const USEC_MUL: i32 = 274_877_907;

/// The assembled stub: its bytes (placed at [`CODE_OFF`]) and where each entry starts,
/// relative to [`CODE_OFF`], in `layout::ENTRY_NAMES` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stub {
    pub code: Vec<u8>,
    pub entries: [usize; 3],
}

#[derive(Debug, thiserror::Error)]
pub enum StubError {
    #[error("assembling the clock stub")]
    Asm(#[from] IcedError),
    #[error("the clock stub takes {0} bytes, more than the space before the trampolines")]
    TooBig(usize),
}

/// Displacement of a mapping offset from `r11` (the start of the code page).
fn d(offset: usize) -> i64 {
    offset as i64 - CODE_OFF as i64
}

/// Where trampoline `slot` lives, as an address in the same frame the code is assembled in.
fn tramp(ip: u64, slot: usize) -> u64 {
    ip - CODE_OFF as u64 + (TRAMP_OFF + slot * TRAMP_SLOT) as u64
}

/// Assembles the stub as if the code page started at `ip` (any value gives the same bytes;
/// tests check that).
pub fn assemble_at(ip: u64) -> Result<Stub, StubError> {
    let mut a = CodeAssembler::new(64)?;
    let mut cgt = a.create_label();
    let mut gtod = a.create_label();
    let mut time = a.create_label();

    // int clock_gettime(clockid_t clk, struct timespec *ts); first, so its label is also
    // the start of the code page.
    a.set_label(&mut cgt)?;
    let code_start = cgt;
    prologue(&mut a)?;
    let mut out = a.create_label();
    let mut done = a.create_label();
    a.mov(r12d, edi)?;
    a.mov(r13, rsi)?;
    a.call(tramp(ip, CGT))?;
    a.test(eax, eax)?;
    a.jnz(out)?;
    a.cmp(r12d, (CLOCK_SLOTS - 1) as i32)?;
    a.ja(out)?;
    a.lea(r11, ptr(code_start))?;
    a.mov(r10, r12)?;
    a.shl(r10, 7)?; // size_of::<ClockParams>() == 128
    a.lea(r10, ptr(r11 + r10 + d(CLOCKS_OFF)))?;
    a.test(dword_ptr(r10 + off::FLAGS), FLAG_ACTIVE)?;
    a.jz(out)?;
    a.mov(rax, qword_ptr(r13))?;
    a.mov(rdx, qword_ptr(r13 + 8))?;
    emit_apply(&mut a, ip, &mut done)?;
    a.mov(qword_ptr(r13), rax)?;
    a.mov(qword_ptr(r13 + 8), rdx)?;
    a.xor(eax, eax)?;
    a.set_label(&mut out)?;
    epilogue(&mut a)?;

    // int gettimeofday(struct timeval *tv, struct timezone *tz): the realtime clock's fault.
    a.set_label(&mut gtod)?;
    prologue(&mut a)?;
    let mut out = a.create_label();
    let mut done = a.create_label();
    a.mov(r13, rdi)?;
    a.call(tramp(ip, GTOD))?; // rdi and rsi are still the caller's
    a.test(eax, eax)?;
    a.jnz(out)?;
    a.test(r13, r13)?;
    a.jz(out)?;
    a.xor(r12d, r12d)?;
    a.lea(r11, ptr(code_start))?;
    a.lea(r10, ptr(r11 + d(CLOCKS_OFF)))?;
    a.test(dword_ptr(r10 + off::FLAGS), FLAG_ACTIVE)?;
    a.jz(out)?;
    a.mov(rax, qword_ptr(r13))?;
    a.imul_3(rdx, qword_ptr(r13 + 8), 1000)?;
    emit_apply(&mut a, ip, &mut done)?;
    a.mov(qword_ptr(r13), rax)?;
    a.imul_3(rdx, rdx, USEC_MUL)?;
    a.shr(rdx, 38)?;
    a.mov(qword_ptr(r13 + 8), rdx)?;
    a.xor(eax, eax)?;
    a.set_label(&mut out)?;
    epilogue(&mut a)?;

    // time_t time(time_t *tloc): built from the coarse realtime clock, which is where the
    // vDSO's own time() takes its seconds, so a fractional offset rounds the same way.
    a.set_label(&mut time)?;
    // Realtime not faulted: the original time() (a single load) as it is.
    a.lea(r11, ptr(code_start))?;
    a.test(
        dword_ptr(r11 + d(CLOCKS_OFF) + off::FLAGS as i64),
        FLAG_ACTIVE,
    )?;
    a.jz(tramp(ip, TIME))?;
    let mut out = a.create_label();
    let mut store = a.create_label();
    let mut fallback = a.create_label();
    let mut full = a.create_label();
    let mut framed = a.create_label();
    let mut new_second = a.create_label();
    emit_whole_seconds_time(&mut a, ip, code_start, &mut framed, &mut new_second)?;
    a.set_label(&mut new_second)?;
    prologue(&mut a)?;
    a.sub(rsp, 16)?; // a timespec of our own; rsp stays 16-byte aligned
    a.mov(r13, rdi)?;
    emit_lease_check(&mut a, ip, code_start, &mut store)?;
    a.jmp(full)?;
    a.set_label(&mut framed)?;
    prologue(&mut a)?;
    a.sub(rsp, 16)?;
    a.mov(r13, rdi)?;
    a.set_label(&mut full)?;
    a.mov(edi, libc::CLOCK_REALTIME_COARSE)?;
    a.mov(rsi, rsp)?;
    a.call(tramp(ip, CGT))?;
    a.test(eax, eax)?;
    a.jnz(fallback)?;
    a.xor(r12d, r12d)?;
    a.lea(r11, ptr(code_start))?;
    a.lea(r10, ptr(r11 + d(CLOCKS_OFF)))?;
    a.mov(rax, qword_ptr(rsp))?;
    a.mov(rdx, qword_ptr(rsp + 8))?;
    a.test(dword_ptr(r10 + off::FLAGS), FLAG_ACTIVE)?;
    a.jz(store)?;
    emit_apply(&mut a, ip, &mut store)?;
    a.test(r13, r13)?;
    a.jz(out)?;
    a.mov(qword_ptr(r13), rax)?;
    a.set_label(&mut out)?;
    a.add(rsp, 16)?;
    epilogue(&mut a)?;
    a.set_label(&mut fallback)?;
    a.mov(rdi, r13)?;
    a.call(tramp(ip, TIME))?;
    a.jmp(out)?;

    let result = a.assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let at = |label: &CodeLabel| -> Result<usize, IcedError> {
        Ok((result.label_ip(label)? - ip) as usize)
    };
    let entries = [at(&cgt)?, at(&gtod)?, at(&time)?];
    let code = result.inner.code_buffer;
    if CODE_OFF + code.len() > TRAMP_OFF {
        return Err(StubError::TooBig(code.len()));
    }
    Ok(Stub { code, entries })
}

/// time()'s fast path, for a realtime fault of whole seconds alone ([`FLAG_WHOLE_SECONDS`]):
/// the original time() (one load) plus `offset_sec`, with no clock_gettime, no arithmetic
/// on nanoseconds and no frame of its own (a leaf, like the vDSO's code). It keeps both of
/// the full path's ends: the realtime deadline (a second that may reach it goes the full
/// way, at `framed`) and the loader's monotonic lease, looked at once per second of time():
/// a second other than the one recorded in the state page goes to `new_second` (rax = the
/// true seconds, rdi = the caller's pointer), which looks and records. Entered with r11 =
/// the start of the code page.
fn emit_whole_seconds_time(
    a: &mut CodeAssembler,
    ip: u64,
    code_start: CodeLabel,
    framed: &mut CodeLabel,
    new_second: &mut CodeLabel,
) -> Result<(), IcedError> {
    let mut put = a.create_label();
    let mut done = a.create_label();
    let realtime = d(CLOCKS_OFF);
    a.test(
        dword_ptr(r11 + realtime + off::FLAGS as i64),
        FLAG_WHOLE_SECONDS,
    )?;
    a.jz(*framed)?;
    a.push(rdi)?; // the caller's pointer; and rsp is 16-byte aligned for the call
    a.xor(edi, edi)?;
    a.call(tramp(ip, TIME))?; // rax = true seconds
    a.pop(rdi)?;
    a.lea(r11, ptr(code_start))?;
    a.cmp(qword_ptr(r11 + d(off::EXPIRED)), 0)?;
    a.jne(put)?;
    a.cmp(rax, qword_ptr(r11 + d(off::CHECKED_SEC)))?;
    a.jne(*new_second)?;
    // Whole of this second before the deadline, or the full path decides.
    a.lea(rcx, ptr(rax + 1))?;
    a.imul_3(rcx, rcx, NS)?;
    a.cmp(rcx, qword_ptr(r11 + realtime + off::DEADLINE as i64))?;
    a.jge(*framed)?;
    a.add(rax, qword_ptr(r11 + realtime + off::OFFSET_SEC as i64))?;
    a.set_label(&mut put)?;
    a.test(rdi, rdi)?;
    a.jz(done)?;
    a.mov(qword_ptr(rdi), rax)?;
    a.set_label(&mut done)?;
    a.ret()
}

/// The first time() of a second on the fast path, in a frame (r13 = the caller's pointer,
/// rax = the true seconds, a timespec at rsp): if the loader's monotonic lease has run out
/// the fault ends (on to `store` with the true seconds); else the second is recorded and
/// this falls through.
fn emit_lease_check(
    a: &mut CodeAssembler,
    ip: u64,
    code_start: CodeLabel,
    store: &mut CodeLabel,
) -> Result<(), IcedError> {
    let mut ended = a.create_label();
    let mut go_on = a.create_label();
    a.mov(r12, rax)?;
    a.mov(edi, libc::CLOCK_MONOTONIC_COARSE)?;
    a.mov(rsi, rsp)?;
    a.call(tramp(ip, CGT))?;
    a.test(eax, eax)?;
    a.jnz(go_on)?; // the full path decides
    a.imul_3(rcx, qword_ptr(rsp), NS)?;
    a.add(rcx, qword_ptr(rsp + 8))?;
    a.lea(r11, ptr(code_start))?;
    a.mov(rax, r12)?;
    a.cmp(rcx, qword_ptr(r11 + d(off::MONO_DEADLINE)))?;
    a.jge(ended)?;
    a.mov(qword_ptr(r11 + d(off::CHECKED_SEC)), rax)?;
    a.jmp(go_on)?;
    a.set_label(&mut ended)?;
    a.mov(qword_ptr(r11 + d(off::EXPIRED)), 1)?;
    a.jmp(*store)?;
    a.set_label(&mut go_on)
}

/// The stub as it is placed in every target.
pub fn assemble() -> Result<Stub, StubError> {
    assemble_at(CODE_OFF as u64)
}

fn prologue(a: &mut CodeAssembler) -> Result<(), IcedError> {
    // Entered with rsp = 8 (mod 16); three pushes make it 0 again for our calls.
    a.push(rbp)?;
    a.mov(rbp, rsp)?;
    a.push(r12)?;
    a.push(r13)
}

fn epilogue(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.pop(r13)?;
    a.pop(r12)?;
    a.pop(rbp)?;
    a.ret()
}

/// The fault, inline: rax = seconds, rdx = nanoseconds of the true reading (r10, r11, r12
/// as above) -> rax, rdx faulted, then on at `exit`, which the caller sets right after.
/// Clobbers rcx, rsi, rdi, r8, r9.
fn emit_apply(a: &mut CodeAssembler, ip: u64, exit: &mut CodeLabel) -> Result<(), IcedError> {
    let mut expire = a.create_label();
    let mut truth = a.create_label();
    let mut go = a.create_label();
    let mut e_ok = a.create_label();
    let mut sampled = a.create_label();
    let mut no_jump = a.create_label();
    let mut q_ok = a.create_label();
    let mut no_strobe = a.create_label();
    let mut no_jitter = a.create_label();
    let mut clamp = a.create_label();
    let mut retry = a.create_label();
    let mut keep_last = a.create_label();

    a.mov(rsi, rax)?; // seconds
    a.mov(rdi, rdx)?; // nanoseconds
    a.imul_3(r9, rax, NS)?;
    a.add(r9, rdx)?; // t
    a.cmp(qword_ptr(r11 + d(off::EXPIRED)), 0)?;
    a.jne(truth)?;
    a.cmp(r9, qword_ptr(r10 + off::DEADLINE))?;
    a.jge(expire)?;
    // A wall clock cannot see the deadline by itself if the host's clock was stepped back:
    // now and then, ask the true monotonic clock (coarse: a few ns).
    a.test(dword_ptr(r10 + off::FLAGS), FLAG_SAMPLE_MONO)?;
    a.jz(go)?;
    a.test(r9b, SAMPLE_MASK as i32)?;
    a.jnz(go)?;
    a.sub(rsp, 64)?; // a timespec, five saved registers, alignment
    a.mov(qword_ptr(rsp + 16), rsi)?;
    a.mov(qword_ptr(rsp + 24), rdi)?;
    a.mov(qword_ptr(rsp + 32), r9)?;
    a.mov(qword_ptr(rsp + 40), r10)?;
    a.mov(qword_ptr(rsp + 48), r11)?;
    a.mov(edi, libc::CLOCK_MONOTONIC_COARSE)?;
    a.mov(rsi, rsp)?;
    a.call(tramp(ip, CGT))?;
    a.mov(rsi, qword_ptr(rsp + 16))?;
    a.mov(rdi, qword_ptr(rsp + 24))?;
    a.mov(r9, qword_ptr(rsp + 32))?;
    a.mov(r10, qword_ptr(rsp + 40))?;
    a.mov(r11, qword_ptr(rsp + 48))?;
    a.test(eax, eax)?;
    a.jnz(sampled)?;
    a.imul_3(rcx, qword_ptr(rsp), NS)?;
    a.add(rcx, qword_ptr(rsp + 8))?;
    a.cmp(rcx, qword_ptr(r11 + d(off::MONO_DEADLINE)))?;
    a.jl(sampled)?;
    a.add(rsp, 64)?;
    a.jmp(expire)?;
    a.set_label(&mut sampled)?;
    a.add(rsp, 64)?;

    a.set_label(&mut go)?;
    a.mov(rcx, r9)?;
    a.sub(rcx, qword_ptr(r10 + off::START))?;
    // e = max(0, t - start); a branch (predicted) rather than a cmov keeps the usual path
    // free of the extra dependency
    a.jns(e_ok)?;
    a.xor(ecx, ecx)?;
    a.set_label(&mut e_ok)?;
    // drift: the high half of the 128-bit product e * drift_q (a 0.64 fixed-point
    // fraction); r8 sums the fault beyond the offset
    a.mov(rax, rcx)?;
    a.imul(qword_ptr(r10 + off::DRIFT))?;
    a.mov(r8, rdx)?;
    // jumps: floor(e / every) * by, dividing by a multiply (see layout::floor_div)
    a.mov(rax, qword_ptr(r10 + off::JUMP_RECIP))?;
    a.test(rax, rax)?;
    a.jz(no_jump)?;
    a.mul(rcx)?;
    a.lea(rax, ptr(rdx + 1))?;
    a.imul_2(rax, qword_ptr(r10 + off::JUMP_EVERY))?;
    a.cmp(rax, rcx)?;
    a.ja(q_ok)?;
    a.inc(rdx)?;
    a.set_label(&mut q_ok)?;
    // a strobe: by during every other interval only
    a.test(dword_ptr(r10 + off::FLAGS), FLAG_STROBE)?;
    a.jz(no_strobe)?;
    a.and(rdx, 1)?;
    a.set_label(&mut no_strobe)?;
    a.imul_2(rdx, qword_ptr(r10 + off::JUMP_BY))?;
    a.add(r8, rdx)?;
    a.set_label(&mut no_jump)?;
    // noise: base + floor(span * hash(nsec) / 2^64)
    a.mov(rax, qword_ptr(r10 + off::JITTER_SPAN))?;
    a.test(rax, rax)?;
    a.jz(no_jitter)?;
    a.mov(rdx, JITTER_MUL)?;
    a.imul_2(rdx, rdi)?;
    a.mul(rdx)?;
    a.add(rdx, qword_ptr(r10 + off::JITTER_BASE))?;
    a.add(r8, rdx)?;
    a.set_label(&mut no_jitter)?;
    a.test(dword_ptr(r10 + off::FLAGS), FLAG_CLAMP)?;
    a.jnz(clamp)?;
    // The usual case: nanoseconds + the offset's + the rest stay within [0, 2·10^9).
    a.mov(rdx, rdi)?;
    a.add(rdx, qword_ptr(r10 + off::OFFSET_NSEC))?;
    a.add(rdx, r8)?;
    a.mov(rax, rsi)?;
    a.add(rax, qword_ptr(r10 + off::OFFSET_SEC))?;
    a.cmp(rdx, NS)?;
    a.jb(*exit)?; // unsigned: 0 <= n < 10^9
    a.sub(rdx, NS)?;
    a.inc(rax)?;
    a.cmp(rdx, NS)?;
    a.jb(*exit)?;
    // Anything else: t' = t + offset + rest, split by (multiplying) division.
    a.lea(rax, ptr(r9 + r8))?;
    a.add(rax, qword_ptr(r10 + off::OFFSET))?;
    emit_split(a)?;
    a.jmp(*exit)?;

    // Never below what this clock returned before: an atomic max on its last value.
    a.set_label(&mut clamp)?;
    a.lea(rax, ptr(r9 + r8))?;
    a.add(rax, qword_ptr(r10 + off::OFFSET))?;
    a.mov(rcx, r12)?;
    a.shl(rcx, 6)?; // one cache line per clock
    a.lea(rcx, ptr(r11 + rcx + d(off::LAST)))?;
    a.mov(rdx, rax)?; // new
    a.mov(rax, qword_ptr(rcx))?; // last
    a.set_label(&mut retry)?;
    a.cmp(rdx, rax)?;
    a.jle(keep_last)?;
    a.lock().cmpxchg(qword_ptr(rcx), rdx)?; // rax = the current last if someone got there first
    a.jne(retry)?;
    a.mov(rax, rdx)?;
    a.set_label(&mut keep_last)?;
    emit_split(a)?;
    a.jmp(*exit)?;

    a.set_label(&mut expire)?;
    a.mov(qword_ptr(r11 + d(off::EXPIRED)), 1)?;
    a.set_label(&mut truth)?;
    a.mov(rax, rsi)?;
    a.mov(rdx, rdi)?;
    a.set_label(exit)
}

/// rax = signed ns -> rax = seconds, rdx = nanoseconds in [0, 10^9) (floor). Clobbers rcx.
fn emit_split(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(rcx, SPLIT_BIAS)?;
    a.add(rax, rcx)?;
    a.mov(rcx, rax)?;
    a.shr(rax, 9)?;
    a.mov(rdx, SPLIT_MUL)?;
    a.mul(rdx)?;
    a.shr(rdx, 11)?; // q = u / 10^9
    a.imul_3(rax, rdx, NS)?;
    a.sub(rcx, rax)?; // u - q * 10^9
    a.mov(rax, rdx)?;
    a.mov(rdx, rcx)?;
    a.mov(rcx, 1u64 << 32)?;
    a.sub(rax, rcx) // undo the bias: BIAS / 10^9 = 2^32
}

#[cfg(test)]
mod tests {
    //! The generated machine code, run in this process against a fake "original vDSO" whose
    //! readings the test chooses: every path of the stub, checked against the arithmetic in
    //! `layout.rs`.

    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::clock::layout::{
        bytes_of, steady_ns, Header, Plan, CLOCKS_OFF, FLAG_CLAMP, MAP_SIZE, PARAMS_OFF, STATE_OFF,
    };
    use crate::policy::{ClockId, ClockJumps, ClockRule};

    /// What the fake original returns, per clock id, in ns.
    static FAKE: [AtomicI64; 16] = [const { AtomicI64::new(0) }; 16];
    /// The stub tests share FAKE.
    static SERIAL: Mutex<()> = Mutex::new(());

    extern "C" fn fake_cgt(clk: i32, ts: *mut libc::timespec) -> i32 {
        let Some(slot) = FAKE.get(clk as usize) else {
            return -22;
        };
        let ns = slot.load(Ordering::Relaxed);
        // SAFETY: the stub passes the caller's pointer (or its own stack slot).
        unsafe {
            (*ts).tv_sec = ns.div_euclid(1_000_000_000);
            (*ts).tv_nsec = ns.rem_euclid(1_000_000_000);
        }
        0
    }

    extern "C" fn fake_gtod(tv: *mut libc::timeval, _tz: *mut libc::c_void) -> i32 {
        let ns = FAKE[0].load(Ordering::Relaxed);
        if !tv.is_null() {
            // SAFETY: a valid pointer from the test.
            unsafe {
                (*tv).tv_sec = ns.div_euclid(1_000_000_000);
                (*tv).tv_usec = ns.rem_euclid(1_000_000_000) / 1000;
            }
        }
        0
    }

    extern "C" fn fake_time(tloc: *mut i64) -> i64 {
        let s = FAKE[5].load(Ordering::Relaxed).div_euclid(1_000_000_000);
        if !tloc.is_null() {
            // SAFETY: a valid pointer from the test.
            unsafe { *tloc = s };
        }
        s
    }

    /// The three pages in this process, with trampolines that jump to the fakes.
    struct Mapped {
        base: *mut u8,
        stub: Stub,
    }

    impl Mapped {
        fn new() -> Self {
            // SAFETY: a fresh anonymous mapping; checked below.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    MAP_SIZE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED);
            let base = base.cast::<u8>();
            let stub = assemble().unwrap();
            let mut page = vec![0u8; MAP_SIZE];
            page[CODE_OFF..CODE_OFF + stub.code.len()].copy_from_slice(&stub.code);
            let fakes = [
                fake_cgt as extern "C" fn(i32, *mut libc::timespec) -> i32 as usize,
                fake_gtod as extern "C" fn(*mut libc::timeval, *mut libc::c_void) -> i32 as usize,
                fake_time as extern "C" fn(*mut i64) -> i64 as usize,
            ];
            for (slot, target) in fakes.into_iter().enumerate() {
                // jmp qword [rip+0]; dq target
                let at = TRAMP_OFF + slot * TRAMP_SLOT;
                page[at..at + 6].copy_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
                page[at + 6..at + 14].copy_from_slice(&(target as u64).to_le_bytes());
            }
            // SAFETY: page and the mapping are both MAP_SIZE bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(page.as_ptr(), base, MAP_SIZE);
                let code = base.add(CODE_OFF).cast();
                assert_eq!(
                    libc::mprotect(code, 4096, libc::PROT_READ | libc::PROT_EXEC),
                    0
                );
            }
            Mapped { base, stub }
        }

        fn set(&self, plan: &Plan) {
            let header = Header {
                mono_deadline_ns: plan.mono_deadline_ns,
                ..Header::default()
            };
            self.write(PARAMS_OFF, bytes_of(&header));
            for (i, c) in plan.clocks.iter().enumerate() {
                self.write(CLOCKS_OFF + i * 128, bytes_of(c));
            }
            self.write(STATE_OFF, &[0u8; 4096]);
        }

        fn write(&self, at: usize, bytes: &[u8]) {
            assert!(at + bytes.len() <= CODE_OFF);
            // SAFETY: inside the RW part of our mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(at), bytes.len())
            };
        }

        fn expired(&self) -> u64 {
            // SAFETY: the state page is mapped and 8-byte aligned.
            unsafe { std::ptr::read_volatile(self.base.add(STATE_OFF).cast::<u64>()) }
        }

        fn checked_sec(&self) -> i64 {
            // SAFETY: as for expired.
            unsafe { std::ptr::read_volatile(self.base.add(off::CHECKED_SEC).cast::<i64>()) }
        }

        fn entry(&self, i: usize) -> usize {
            self.base as usize + CODE_OFF + self.stub.entries[i]
        }

        fn cgt(&self, clk: i32) -> (i32, i64) {
            // SAFETY: the entry follows the C ABI of clock_gettime.
            let f: extern "C" fn(i32, *mut libc::timespec) -> i32 =
                unsafe { std::mem::transmute(self.entry(CGT)) };
            let mut ts = libc::timespec {
                tv_sec: -1,
                tv_nsec: -1,
            };
            let r = f(clk, &mut ts);
            assert!((0..1_000_000_000).contains(&ts.tv_nsec) || r != 0, "{ts:?}");
            (r, ts.tv_sec * 1_000_000_000 + ts.tv_nsec)
        }

        fn gtod(&self) -> i64 {
            // SAFETY: the entry follows the C ABI of gettimeofday.
            let f: extern "C" fn(*mut libc::timeval, *mut libc::c_void) -> i32 =
                unsafe { std::mem::transmute(self.entry(GTOD)) };
            let mut tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            };
            assert_eq!(f(&mut tv, std::ptr::null_mut()), 0);
            assert_eq!(f(std::ptr::null_mut(), std::ptr::null_mut()), 0);
            assert!((0..1_000_000).contains(&tv.tv_usec));
            tv.tv_sec * 1_000_000 + tv.tv_usec
        }

        fn time(&self) -> i64 {
            // SAFETY: the entry follows the C ABI of time.
            let f: extern "C" fn(*mut i64) -> i64 =
                unsafe { std::mem::transmute(self.entry(TIME)) };
            let mut t = 0;
            let r = f(&mut t);
            assert_eq!(r, t);
            assert_eq!(f(std::ptr::null_mut()), r);
            r
        }
    }

    impl Drop for Mapped {
        fn drop(&mut self) {
            // SAFETY: our own mapping.
            unsafe { libc::munmap(self.base.cast(), MAP_SIZE) };
        }
    }

    fn rule(clocks: &[ClockId]) -> ClockRule {
        ClockRule {
            name: "t".into(),
            clocks: clocks.to_vec(),
            offset_ns: 0,
            drift_ppm: 0.0,
            jumps: None,
            jitter_ns: 0,
            allow_backwards: false,
        }
    }

    const T0: i64 = 1_795_640_011_500_000_000;
    const M0: i64 = 1_800_000_000_000;

    fn set_fake(wall: i64, mono: i64) {
        for id in [0, 5, 11] {
            FAKE[id].store(wall, Ordering::Relaxed);
        }
        for id in [1, 4, 6, 7] {
            FAKE[id].store(mono, Ordering::Relaxed);
        }
    }

    /// A plan whose clocks all start at T0 / M0 and last `remaining` ns.
    fn plan(rules: &[ClockRule], remaining: i64) -> Plan {
        Plan::new(rules, remaining, |id| match id {
            0 | 5 | 11 => T0,
            _ => M0,
        })
    }

    #[test]
    fn the_code_does_not_depend_on_where_it_is() {
        assert_eq!(
            assemble_at(0x2000).unwrap(),
            assemble_at(0x7fff_1234_5000).unwrap()
        );
        assert!(assemble().unwrap().code.len() < TRAMP_OFF - CODE_OFF);
    }

    #[test]
    fn untouched_clocks_and_errors_pass_through() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let m = Mapped::new();
        m.set(&plan(&[rule(&[ClockId::Realtime])], 60_000_000_000));
        set_fake(T0 + 123, M0 + 456);
        assert_eq!(m.cgt(1), (0, M0 + 456), "monotonic is not in the rule");
        assert_eq!(
            m.cgt(99).0,
            -22,
            "the original's error comes back unchanged"
        );
        assert_eq!(m.cgt(0), (0, T0 + 123), "an empty rule changes nothing");
    }

    #[test]
    fn a_strobe_flips_ahead_and_back() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let m = Mapped::new();
        let mut r = rule(&[ClockId::Realtime]);
        r.jumps = Some(ClockJumps {
            strobe: true,
            every_ns: 200_000_000,
            by_ns: 5_000_000_000,
        });
        let p = plan(&[r], 3_600_000_000_000);
        m.set(&p);
        // Intervals of 200 ms from the start: true, +5 s, true, +5 s, ...
        for (e, ahead) in [
            (0i64, false),
            (199_999_999, false),
            (200_000_000, true),
            (399_999_999, true),
            (400_000_000, false),
            (600_000_001, true),
            (10_000_000_000, false),
            (10_200_000_000, true),
        ] {
            set_fake(T0 + e, M0 + e);
            let want = T0 + e + if ahead { 5_000_000_000 } else { 0 };
            assert_eq!(m.cgt(0), (0, want), "{e} ns in");
            assert_eq!(steady_ns(&p.clocks[0], T0 + e), want - T0 - e);
        }
    }

    #[test]
    fn offset_drift_and_jumps_follow_the_formula() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let m = Mapped::new();
        let mut r = rule(&[ClockId::Realtime, ClockId::Monotonic]);
        r.offset_ns = -2_000_000_000;
        r.drift_ppm = 500.0;
        r.jumps = Some(ClockJumps {
            strobe: false,
            every_ns: 30_000_000_000,
            by_ns: -1_000_000_000,
        });
        r.allow_backwards = true;
        let p = plan(&[r], 3_600_000_000_000);
        m.set(&p);
        for e in [
            0i64,
            1,
            999_999_999,
            10_000_000_000,
            29_999_999_999,
            30_000_000_000,
            95_000_000_017,
        ] {
            set_fake(T0 + e, M0 + e);
            let want = T0 + e + steady_ns(&p.clocks[0], T0 + e);
            assert_eq!(m.cgt(0), (0, want), "realtime {e} ns in");
            assert_eq!(m.cgt(1), (0, M0 + e + steady_ns(&p.clocks[1], M0 + e)));
            // gettimeofday reads whole microseconds, and the fault is added to those.
            let us = (T0 + e).div_euclid(1000) * 1000;
            let want_us = (us + steady_ns(&p.clocks[0], us)).div_euclid(1000);
            assert_eq!(m.gtod(), want_us, "gettimeofday {e} ns in");
            assert_eq!(m.time(), want.div_euclid(1_000_000_000), "time {e} ns in");
        }
        set_fake(T0 + 10_000_000_000, M0);
        let got = m.cgt(0).1 - (T0 + 10_000_000_000 - 2_000_000_000 + 5_000_000);
        assert!(
            got.abs() <= 1,
            "500 ppm over 10 s is 5 ms (off by {got} ns)"
        );
        // Before the start point (a reading from before apply): the offset alone.
        set_fake(T0 - 5, M0 - 5);
        assert_eq!(m.cgt(0).1, T0 - 5 - 2_000_000_000);
    }

    #[test]
    fn fractional_negative_offsets_floor_correctly() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let m = Mapped::new();
        let mut r = rule(&[ClockId::Realtime]);
        r.offset_ns = -1_500_000_001;
        m.set(&plan(&[r], 60_000_000_000));
        for nsec in [0, 1, 499_999_999, 500_000_000, 500_000_001, 999_999_999] {
            set_fake(T0 - 500_000_000 + nsec, M0);
            let want = T0 - 500_000_000 + nsec - 1_500_000_001;
            assert_eq!(m.cgt(0).1, want);
            assert_eq!(m.time(), want.div_euclid(1_000_000_000));
        }
    }

    #[test]
    fn the_deadline_ends_the_fault_for_good() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let m = Mapped::new();
        let mut r = rule(&[ClockId::Realtime, ClockId::Boottime]);
        r.offset_ns = 7_000_000_000;
        m.set(&plan(&[r], 10_000_000_000));
        set_fake(T0 + 9_999_999_999, M0 + 9_999_999_999);
        assert_eq!(m.cgt(7).1, M0 + 9_999_999_999 + 7_000_000_000);
        assert_eq!(m.expired(), 0);
        // Boottime reaches its deadline: every clock reads true time from then on.
        set_fake(T0 + 1, M0 + 10_000_000_000);
        assert_eq!(m.cgt(7).1, M0 + 10_000_000_000);
        assert_eq!(m.expired(), 1);
        assert_eq!(m.cgt(0).1, T0 + 1, "realtime ends with it");
    }

    #[test]
    fn time_under_a_whole_second_offset_is_the_true_time_plus_seconds_until_either_end() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let m = Mapped::new();
        let mut r = rule(&[ClockId::Realtime]);
        r.offset_ns = -2_000_000_000;
        let p = plan(&[r.clone()], 10_000_000_000);
        assert_ne!(p.clocks[0].flags & FLAG_WHOLE_SECONDS, 0);
        m.set(&p);
        let sec = |ns: i64| ns.div_euclid(1_000_000_000);
        // The fast path: the first call of a second looks at the lease and records it.
        set_fake(T0 + 3_000_000_000, M0 + 3_000_000_000);
        assert_eq!(m.time(), sec(T0) + 1);
        assert_eq!(m.checked_sec(), sec(T0) + 3, "the fast path's record");
        // A second that may reach the realtime deadline (T0 + 10 s) goes the full way,
        // which still faults before the deadline and ends the fault at it.
        set_fake(T0 + 9_500_000_000, M0 + 9_500_000_000);
        assert_eq!(m.time(), sec(T0 + 9_500_000_000) - 2);
        assert_eq!(m.expired(), 0);
        set_fake(T0 + 10_000_000_000, M0 + 9_600_000_000);
        assert_eq!(m.time(), sec(T0 + 10_000_000_000));
        assert_eq!(m.expired(), 1);
        // The loader's lease ran out while the wall clock, stepped back an hour, is far
        // from its deadline: the first call of the second sees it.
        let m = Mapped::new();
        m.set(&p);
        let wall = T0 - 3_600_000_000_000;
        set_fake(wall, M0 + 10_000_000_000);
        assert_eq!(m.time(), sec(wall));
        assert_eq!(m.expired(), 1);
        // A fraction of a second, drift, jumps or noise take the full path.
        for f in [
            |r: &mut ClockRule| r.offset_ns = 1_500_000_000,
            |r: &mut ClockRule| r.drift_ppm = 1.0,
            |r: &mut ClockRule| r.jitter_ns = 1,
        ] {
            let mut r = r.clone();
            f(&mut r);
            assert_eq!(plan(&[r], 1).clocks[0].flags & FLAG_WHOLE_SECONDS, 0);
        }
    }

    #[test]
    fn a_wall_clock_stepped_back_still_sees_the_monotonic_deadline() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let m = Mapped::new();
        let mut r = rule(&[ClockId::Realtime]);
        r.offset_ns = 3_000_000_000;
        m.set(&plan(&[r], 10_000_000_000));
        // The host's wall clock went back an hour; the monotonic clock is past the deadline.
        let wall = T0 - 3_600_000_000_000;
        set_fake(wall + 1, M0 + 11_000_000_000);
        assert_eq!(m.cgt(0).1, wall + 1 + 3_000_000_000, "not a sampled read");
        let sampled = (wall & !(SAMPLE_MASK as i64)) + 64;
        set_fake(sampled, M0 + 11_000_000_000);
        assert_eq!(
            m.cgt(0).1,
            sampled,
            "a read with its low bits zero asks the monotonic clock"
        );
        assert_eq!(m.expired(), 1);
    }

    #[test]
    fn guarded_monotonic_jitter_never_goes_back_and_stays_in_range() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let m = Mapped::new();
        let mut r = rule(&[ClockId::Monotonic, ClockId::Realtime]);
        r.jitter_ns = 2_000_000;
        let p = plan(&[r], 3_600_000_000_000);
        assert_ne!(p.clocks[1].flags & FLAG_CLAMP, 0);
        m.set(&p);
        // Dense reads (13 ns apart): the clamp holds the clock still rather than let it back.
        let mut prev = i64::MIN;
        let (mut wlo, mut whi) = (i64::MAX, i64::MIN);
        for i in 0..200_000i64 {
            let t = M0 + i * 13;
            set_fake(T0 + i * 13, t);
            let (_, got) = m.cgt(1);
            assert!(got >= prev, "monotonic went back from {prev} to {got}");
            assert!(got <= t, "a guarded clock only lags: {got} > {t}");
            prev = got;
            let (_, wall) = m.cgt(0);
            wlo = wlo.min(wall - (T0 + i * 13));
            whi = whi.max(wall - (T0 + i * 13));
        }
        assert!(
            wlo >= -2_000_000 && whi <= 2_000_000,
            "wall noise {wlo}..{whi}"
        );
        // Sparse reads (5 ms apart, more than the amplitude): the lag spreads over [-2ms, 0].
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for i in 0..2_000i64 {
            let t = M0 + 10_000_000_000 + i * 5_000_017;
            set_fake(T0, t);
            let (_, got) = m.cgt(1);
            assert!(got >= prev && got <= t, "{prev} <= {got} <= {t}");
            prev = got;
            lo = lo.min(got - t);
            hi = hi.max(got - t);
        }
        assert!(
            (-2_000_000..-1_900_000).contains(&lo) && hi > -100_000,
            "lag spread {lo}..{hi}"
        );
        assert!(
            wlo < -1_900_000 && whi > 1_900_000,
            "wall noise spread {wlo}..{whi}"
        );
    }

    #[test]
    fn split_handles_every_sign_and_size() {
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let m = Mapped::new();
        let mut r = rule(&[ClockId::Realtime]);
        r.allow_backwards = true;
        for offset in [
            -T0 - 1,
            -T0,
            -1,
            1,
            999_999_999,
            1_000_000_000,
            315_360_000_000_000_000,
        ] {
            r.offset_ns = offset;
            m.set(&plan(std::slice::from_ref(&r), 60_000_000_000));
            for t in [T0, T0 + 999_999_999] {
                set_fake(t, M0);
                assert_eq!(m.cgt(0).1, t + offset, "offset {offset} at {t}");
            }
        }
    }
}
