//! The memory fault maps into a target process, and the parameters its stub reads.
//!
//! One memfd (`memfd:fault-clock`), mapped shared near the target's vDSO, three pages:
//!
//! | offset | in the target | what |
//! |---|---|---|
//! | [`PARAMS_OFF`] | read-only | [`Header`] (saved vDSO bytes, deadline) and one [`ClockParams`] per clock id |
//! | [`STATE_OFF`]  | read-write | [`State`]: the expired flag and the last value returned per clock |
//! | [`CODE_OFF`]   | read-execute | the stub (see `stub.rs`) and, at [`TRAMP_OFF`], the relocated prologues |
//!
//! fault writes the parameters through its own shared mapping of the same memfd, so a change
//! is one store and never stops the target. A forked child shares the pages with its parent
//! (same memfd); an exec drops them.
//!
//! Everything here is `#[repr(C)]` with fixed-width fields: the machine code in `stub.rs`
//! reads it by the offsets `offset_of!` gives, and the sizes are pinned below.

use std::mem::{offset_of, size_of};

pub use fault_common::clock_math::{
    noise_ns, steady_ns, ClockParams, CLOCKS_OFF, CLOCK_SLOTS, DRIFT_SHIFT, FLAG_ACTIVE,
    FLAG_CLAMP, FLAG_SAMPLE_MONO, FLAG_STROBE, FLAG_WHOLE_SECONDS, JITTER_MUL,
};

use crate::policy::{ClockId, ClockRule};

pub const PAGE: usize = 4096;
pub const PARAMS_OFF: usize = 0;
pub const STATE_OFF: usize = PAGE;
pub const CODE_OFF: usize = 2 * PAGE;
pub const MAP_SIZE: usize = 3 * PAGE;
/// The three trampolines sit at the end of the code page, one slot each.
pub const TRAMP_OFF: usize = CODE_OFF + 0xc00;
pub const TRAMP_SLOT: usize = 0x80;

/// "fltclock" as little-endian bytes: tells our mapping from anything else in the target.
pub const MAGIC: u64 = u64::from_le_bytes(*b"fltclock");
/// Bumped whenever the layout or the stub's reading of it changes: a process patched by a
/// fault of another version is refused rather than misread.
pub const VERSION: u32 = 1;
/// The name `/proc/PID/maps` shows: `/memfd:fault-clock (deleted)`.
pub const MEMFD_NAME: &str = "fault-clock";

/// How often a wall-clock read samples the monotonic clock: when its low nanosecond bits are
/// all zero, so about one read in 64 (one in 8 for gettimeofday's microseconds).
pub const SAMPLE_MASK: u8 = 63;

/// The three entry points fault redirects, in [`Header::entries`] order.
pub const ENTRY_NAMES: [&str; 3] = ["__vdso_clock_gettime", "__vdso_gettimeofday", "__vdso_time"];
pub const CGT: usize = 0;
pub const GTOD: usize = 1;
pub const TIME: usize = 2;

/// One redirected vDSO entry point.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    /// Its address in the target.
    pub addr: u64,
    /// The 8 bytes at `addr` before the patch.
    pub saved: [u8; 8],
    /// What the patch writes there: `jmp rel32` to the stub, then saved bytes 5..8.
    pub patched: [u8; 8],
    /// Bytes of whole instructions moved into the trampoline (at least 5).
    pub stolen: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub magic: u64,
    pub version: u32,
    pub _pad: u32,
    /// Where the mapping starts in the target.
    pub base: u64,
    /// Where the target's vDSO starts, to tell a stale mapping (exec) from a live one.
    pub vdso_base: u64,
    /// True CLOCK_MONOTONIC time (ns) at which every fault ends, whatever fault does.
    pub mono_deadline_ns: i64,
    pub entries: [Entry; 3],
}

/// The target-writable page. Each value has a cache line of its own.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
pub struct State {
    /// Non-zero once the deadline passed (set by the stub) or fault reverted (set by fault):
    /// every reader gets true time from then on.
    pub expired: u64,
    /// The last second of `time()` at whose start the stub's fast path found the loader's
    /// monotonic lease still running (see stub.rs).
    pub checked_sec: i64,
    pub _pad: [u64; 6],
    /// The largest value returned per clock id, for [`FLAG_CLAMP`] clocks.
    pub last: [Line; CLOCK_SLOTS],
}

#[repr(C, align(64))]
#[derive(Debug, Clone, Copy, Default)]
pub struct Line {
    pub value: i64,
    pub _pad: [u64; 7],
}

const _: () = assert!(size_of::<Entry>() == 32);
const _: () = assert!(size_of::<Header>() == 40 + 3 * 32);
const _: () = assert!(size_of::<Header>() <= CLOCKS_OFF);
const _: () = assert!(size_of::<ClockParams>() == 128);
const _: () = assert!(CLOCKS_OFF + CLOCK_SLOTS * size_of::<ClockParams>() <= PAGE);
const _: () = assert!(size_of::<State>() == 64 * (1 + CLOCK_SLOTS));
const _: () = assert!(size_of::<State>() <= PAGE);
// The system-call rewrite in fault-ebpf finds the state by fault_common's offsets.
const _: () = assert!(STATE_OFF == fault_common::clock_math::STATE_OFF);
const _: () = assert!(off::LAST == fault_common::clock_math::LAST_OFF);
const _: () = assert!(off::MONO_DEADLINE == fault_common::clock_math::MONO_DEADLINE_OFF);
const _: () = assert!(TRAMP_OFF + 3 * TRAMP_SLOT <= MAP_SIZE);

/// Field offsets the stub uses, from the start of the mapping.
pub mod off {
    use super::*;

    pub const MONO_DEADLINE: usize = PARAMS_OFF + offset_of!(Header, mono_deadline_ns);
    pub const EXPIRED: usize = STATE_OFF + offset_of!(State, expired);
    pub const CHECKED_SEC: usize = STATE_OFF + offset_of!(State, checked_sec);
    pub const LAST: usize = STATE_OFF + offset_of!(State, last);
    pub const FLAGS: usize = offset_of!(ClockParams, flags);
    pub const START: usize = offset_of!(ClockParams, start_ns);
    pub const DEADLINE: usize = offset_of!(ClockParams, deadline_ns);
    pub const OFFSET: usize = offset_of!(ClockParams, offset_ns);
    pub const DRIFT: usize = offset_of!(ClockParams, drift_q);
    pub const JUMP_EVERY: usize = offset_of!(ClockParams, jump_every_ns);
    pub const JUMP_RECIP: usize = offset_of!(ClockParams, jump_recip);
    pub const JUMP_BY: usize = offset_of!(ClockParams, jump_by_ns);
    pub const JITTER_SPAN: usize = offset_of!(ClockParams, jitter_span);
    pub const JITTER_BASE: usize = offset_of!(ClockParams, jitter_base);
    pub const OFFSET_SEC: usize = offset_of!(ClockParams, offset_sec);
    pub const OFFSET_NSEC: usize = offset_of!(ClockParams, offset_nsec);
}

/// Everything the stub reads, for every clock, as fault computes it once per apply. Every
/// process of the policy gets the same values, so they agree on the time they see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mono_deadline_ns: i64,
    pub clocks: [ClockParams; CLOCK_SLOTS],
}

impl Plan {
    /// The parameters for `rules` starting now (`now(clock id)` reads a clock's true time in
    /// ns) and ending `remaining_ns` later.
    pub fn new(rules: &[ClockRule], remaining_ns: i64, now: impl Fn(u32) -> i64) -> Self {
        let mut clocks = [ClockParams::default(); CLOCK_SLOTS];
        for rule in rules {
            for &clock in &rule.clocks {
                let id = clock.linux_id() as usize;
                let start = now(clock.linux_id());
                clocks[id] = params(rule, clock, start, start.saturating_add(remaining_ns));
            }
        }
        let mono = now(libc::CLOCK_MONOTONIC as u32);
        Plan {
            mono_deadline_ns: mono.saturating_add(remaining_ns),
            clocks,
        }
    }
}

impl Plan {
    /// The same parameters, acting until `until_mono` (CLOCK_MONOTONIC ns) at the latest:
    /// each active clock's deadline becomes its true reading that much later, never past
    /// its own (see `crate::lease`).
    pub fn leased(&self, until_mono: i64) -> Plan {
        let ahead = until_mono - now_ns(libc::CLOCK_MONOTONIC as u32);
        let mut out = self.clone();
        for (i, c) in out.clocks.iter_mut().enumerate() {
            if c.flags & FLAG_ACTIVE != 0 {
                c.deadline_ns = c.deadline_ns.min(now_ns(i as u32).saturating_add(ahead));
            }
        }
        out.mono_deadline_ns = self.mono_deadline_ns.min(until_mono);
        out
    }

    /// The plan as bytes, for fault's injector process: the deadline, then each clock's
    /// parameters as the page holds them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.mono_deadline_ns.to_le_bytes().to_vec();
        for c in &self.clocks {
            out.extend_from_slice(bytes_of(c));
        }
        out
    }

    /// The plan [`Plan::encode`] made; `None` for bytes of another size.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let size = size_of::<ClockParams>();
        if bytes.len() != 8 + CLOCK_SLOTS * size {
            return None;
        }
        let mut clocks = [ClockParams::default(); CLOCK_SLOTS];
        for (i, c) in clocks.iter_mut().enumerate() {
            *c = read_at(bytes, 8 + i * size)?;
        }
        Some(Plan {
            mono_deadline_ns: i64::from_le_bytes(bytes[..8].try_into().ok()?),
            clocks,
        })
    }
}

fn params(rule: &ClockRule, clock: ClockId, start_ns: i64, deadline_ns: i64) -> ClockParams {
    let guarded = clock.never_backwards() && !rule.allow_backwards;
    let mut flags = FLAG_ACTIVE;
    if !clock.never_backwards() {
        flags |= FLAG_SAMPLE_MONO;
    }
    let (jitter_span, jitter_base) = match rule.jitter_ns {
        0 => (0, 0),
        // A guarded clock only lags: with the clamp, every value it returns is at most the
        // true time, so nothing it returned is ahead of what it reads after the fault ends.
        amp if guarded => {
            flags |= FLAG_CLAMP;
            (amp + 1, -(amp as i64))
        }
        amp => (2 * amp + 1, -(amp as i64)),
    };
    let (jump_every_ns, jump_recip, jump_by_ns) = match rule.jumps {
        Some(j) => (j.every_ns, u64::MAX / j.every_ns, j.by_ns),
        None => (0, 0, 0),
    };
    if rule.jumps.is_some_and(|j| j.strobe) {
        flags |= FLAG_STROBE;
    }
    if rule.offset_ns % 1_000_000_000 == 0
        && rule.drift_ppm == 0.0
        && rule.jumps.is_none()
        && rule.jitter_ns == 0
    {
        flags |= FLAG_WHOLE_SECONDS;
    }
    ClockParams {
        flags,
        _pad: 0,
        start_ns,
        deadline_ns,
        offset_ns: rule.offset_ns,
        // `as` saturates: +500,000 ppm becomes i64::MAX, 2^-63 short of exact.
        drift_q: (rule.drift_ppm * 2f64.powi(i32::from(DRIFT_SHIFT)) / 1e6).round() as i64,
        jump_every_ns,
        jump_recip,
        jump_by_ns,
        jitter_span,
        jitter_base,
        offset_sec: rule.offset_ns.div_euclid(1_000_000_000),
        offset_nsec: rule.offset_ns.rem_euclid(1_000_000_000),
        _reserved: [0; 4],
    }
}

/// floor(e / d) from `recip = floor((2^64 - 1) / d)`, as the stub does it: the high half of
/// `e * recip` is at most one short, and one compare fixes that.
pub fn floor_div(e: u64, d: u64, recip: u64) -> u64 {
    let q = ((u128::from(e) * u128::from(recip)) >> 64) as u64;
    if (q + 1).wrapping_mul(d) <= e {
        q + 1
    } else {
        q
    }
}

/// Reads a clock of this process (never patched: fault does not target itself).
pub fn now_ns(clock: u32) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock as libc::clockid_t, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// The bytes of a header, a parameter slot or the state page, to write into the memfd.
pub fn bytes_of<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: every T used here is a #[repr(C)] struct of integers with explicit padding
    // fields, so all its bytes are initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Reads a `T` from `bytes` at `offset` (unaligned).
pub fn read_at<T: Copy>(bytes: &[u8], offset: usize) -> Option<T> {
    let end = offset.checked_add(size_of::<T>())?;
    let src = bytes.get(offset..end)?;
    // SAFETY: src holds size_of::<T>() bytes; T is plain old data (integers only).
    Some(unsafe { std::ptr::read_unaligned(src.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_crosses_to_the_injector_unchanged() {
        let mut plan = Plan::new(&[], 5_000_000_000, |id| 1_000 + i64::from(id));
        plan.clocks[3].deadline_ns = -7;
        plan.clocks[15].deadline_ns = i64::MAX;
        let bytes = plan.encode();
        assert_eq!(Plan::decode(&bytes), Some(plan));
        assert_eq!(Plan::decode(&bytes[1..]), None);
        assert_eq!(Plan::decode(&[]), None);
    }

    #[test]
    fn floor_div_by_reciprocal_is_exact() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for d in [
            1_000_000u64,
            30_000_000_000,
            1,
            7,
            999_999_937,
            u64::MAX / 3,
        ] {
            let r = u64::MAX / d;
            for e in [0, 1, d - 1, d, d + 1, 2 * d.min(u64::MAX / 2), u64::MAX / 2] {
                assert_eq!(floor_div(e, d, r), e / d, "{e} / {d}");
            }
            for _ in 0..10_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let e = x >> 1;
                assert_eq!(floor_div(e, d, r), e / d, "{e} / {d}");
            }
        }
    }

    #[test]
    fn drift_in_fixed_point_matches_ppm() {
        let rule = ClockRule {
            name: "r".into(),
            clocks: vec![ClockId::Realtime],
            offset_ns: -2_000_000_000,
            drift_ppm: 500.0,
            jumps: Some(crate::policy::ClockJumps {
                strobe: false,
                every_ns: 30_000_000_000,
                by_ns: -1_000_000_000,
            }),
            jitter_ns: 0,
            allow_backwards: false,
        };
        let p = params(&rule, ClockId::Realtime, 1_000, i64::MAX);
        let near = |got: i64, want: i64| assert!((got - want).abs() <= 1, "{got} vs {want}");
        // 10 s in: -2 s, +5 ms of drift, no jump yet.
        near(
            steady_ns(&p, 1_000 + 10_000_000_000),
            -2_000_000_000 + 5_000_000,
        );
        // 30 s in: the first jump.
        near(
            steady_ns(&p, 1_000 + 30_000_000_000),
            -2_000_000_000 + 15_000_000 - 1_000_000_000,
        );
        // Before the start: only the offset.
        assert_eq!(steady_ns(&p, 0), -2_000_000_000);
        // 10,000 ppm over 10 s is 100 ms.
        let fast = ClockRule {
            drift_ppm: 10_000.0,
            jumps: None,
            offset_ns: 0,
            ..rule
        };
        let p = params(&fast, ClockId::Realtime, 0, i64::MAX);
        near(steady_ns(&p, 10_000_000_000), 100_000_000);
    }

    #[test]
    fn guarded_clocks_only_lag_and_are_clamped() {
        let rule = ClockRule {
            name: "m".into(),
            clocks: vec![ClockId::Monotonic, ClockId::Realtime],
            offset_ns: 0,
            drift_ppm: 0.0,
            jumps: None,
            jitter_ns: 2_000_000,
            allow_backwards: false,
        };
        let mono = params(&rule, ClockId::Monotonic, 0, i64::MAX);
        assert_eq!(mono.flags, FLAG_ACTIVE | FLAG_CLAMP);
        let wall = params(&rule, ClockId::Realtime, 0, i64::MAX);
        assert_eq!(wall.flags, FLAG_ACTIVE | FLAG_SAMPLE_MONO);
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        let (mut wlo, mut whi) = (i64::MAX, i64::MIN);
        for t in (0..2_000_000i64).map(|i| i * 37 % 1_000_000_000) {
            let n = noise_ns(&mono, t as u64);
            lo = lo.min(n);
            hi = hi.max(n);
            let w = noise_ns(&wall, t as u64);
            wlo = wlo.min(w);
            whi = whi.max(w);
        }
        assert!(
            hi <= 0 && lo >= -2_000_000,
            "monotonic noise in [-2ms, 0]: {lo}..{hi}"
        );
        assert!(
            lo < -1_900_000 && hi > -100_000,
            "spread over the range: {lo}..{hi}"
        );
        assert!(wlo >= -2_000_000 && whi <= 2_000_000, "{wlo}..{whi}");
        assert!(wlo < -1_900_000 && whi > 1_900_000, "{wlo}..{whi}");
    }
}
