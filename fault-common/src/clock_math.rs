//! The clock fault's parameters and its maths, in one place: the vDSO stub
//! (fault-user/src/clock/stub.rs) is machine code that must give the same results (its tests
//! check it against [`faulted_ns`]), and the system-call rewrite in fault-ebpf runs this code.
//!
//! With `e = max(0, t - start_ns)` for a true reading `t`, a reader gets
//! `t + offset + (e * drift_q >> DRIFT_SHIFT) + floor(e / every) * by + noise`, and just `t`
//! once `t >= deadline_ns`.

/// Clock ids 0..16 have a parameter slot; the vDSO serves 0-7 and 11 (TAI).
pub const CLOCK_SLOTS: usize = 16;
/// Where the parameter page holds the loader's lease: the true CLOCK_MONOTONIC time (ns)
/// at which every fault ends unless the loader renews it.
pub const MONO_DEADLINE_OFF: usize = 32;
/// Where the [`ClockParams`] of clock id 0 sit in the parameter page.
pub const CLOCKS_OFF: usize = 0x400;
/// Where the target-writable state starts (its expired flag first, then per clock id a
/// 64-byte line holding the last value returned).
pub const STATE_OFF: usize = 4096;
pub const LAST_OFF: usize = STATE_OFF + 64;

/// [`ClockParams::flags`]: the clock is faulted.
pub const FLAG_ACTIVE: u32 = 1;
/// The clock must not go backwards for a reader: the largest value returned is kept and
/// never less is returned.
pub const FLAG_CLAMP: u32 = 2;
/// A wall clock: its own reading cannot tell whether the deadline (in monotonic time) has
/// passed if the host's clock was stepped, so the stub also samples the true monotonic clock.
pub const FLAG_SAMPLE_MONO: u32 = 4;
/// The jumps are a strobe: `(floor(e / every) mod 2) * by` rather than `floor(e / every) * by`.
pub const FLAG_STROBE: u32 = 8;
/// The fault is an offset of whole seconds and nothing else (no drift, jumps or noise):
/// `time()` is the true `time()` plus `offset_sec`, which the stub's fast path uses.
pub const FLAG_WHOLE_SECONDS: u32 = 16;

/// Fraction bits of [`ClockParams::drift_q`]: the high half of a 128-bit product. 500,000
/// ppm (the most validation allows) is 2^63, held as `i64::MAX`.
pub const DRIFT_SHIFT: u8 = 64;

/// The hash that turns a reading into noise: its nanoseconds change on every call,
/// and a multiply by the golden ratio spreads them over the high bits.
pub const JITTER_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// The fault on one clock id.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClockParams {
    pub flags: u32,
    pub _pad: u32,
    /// This clock's true reading at apply: drift and jumps count from here.
    pub start_ns: i64,
    /// This clock's true reading at the policy's deadline.
    pub deadline_ns: i64,
    pub offset_ns: i64,
    /// Drift as a fixed-point fraction: ppm * 2^[`DRIFT_SHIFT`] / 10^6. Per nanosecond of
    /// `e` the drift term moves by at most one, so it never reverses a clock by itself.
    pub drift_q: i64,
    /// 0 without jumps.
    pub jump_every_ns: u64,
    /// floor((2^64 - 1) / every): the stub divides by multiplying.
    pub jump_recip: u64,
    pub jump_by_ns: i64,
    /// Noise is `jitter_base + floor(hash * jitter_span / 2^64)`; span 0 means none.
    pub jitter_span: u64,
    pub jitter_base: i64,
    /// `offset_ns` split as floor division by 10^9: most reads then need no division.
    pub offset_sec: i64,
    pub offset_nsec: i64,
    pub _reserved: [u64; 4],
}
const _: () = assert!(core::mem::size_of::<ClockParams>() == 128);

/// The high 64 bits of the unsigned 128-bit product, from 32-bit halves (eBPF has no
/// wider multiply).
#[inline(always)]
pub fn mul_hi_u64(a: u64, b: u64) -> u64 {
    let (a_lo, a_hi) = (a & 0xffff_ffff, opaque(a >> 32));
    let (b_lo, b_hi) = (b & 0xffff_ffff, b >> 32);
    let lo_lo = a_lo * b_lo;
    let hi_lo = a_hi * b_lo;
    let lo_hi = a_lo * b_hi;
    let cross = (lo_lo >> 32) + (hi_lo & 0xffff_ffff) + (lo_hi & 0xffff_ffff);
    a_hi * b_hi + (hi_lo >> 32) + (lo_hi >> 32) + (cross >> 32)
}

/// On eBPF, hides a value from LLVM, which would otherwise see the 128-bit product in
/// [`mul_hi_u64`] and call a runtime routine eBPF does not have.
#[inline(always)]
fn opaque(v: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: a read of a local that was just written.
        unsafe { core::ptr::read_volatile(&v) }
    }
    #[cfg(not(target_arch = "bpf"))]
    v
}

/// The high 64 bits of the signed 128-bit product (what x86's `imul` leaves in rdx).
#[inline(always)]
pub fn mul_hi_i64(a: i64, b: i64) -> i64 {
    let mut hi = mul_hi_u64(a as u64, b as u64);
    if a < 0 {
        hi = hi.wrapping_sub(b as u64);
    }
    if b < 0 {
        hi = hi.wrapping_sub(a as u64);
    }
    hi as i64
}

/// The fault (ns) added to a true reading `t` before noise and the clamp, whatever the
/// flags and the deadline.
#[inline(always)]
pub fn steady_ns(p: &ClockParams, t: i64) -> i64 {
    let e = t.wrapping_sub(p.start_ns).max(0);
    let mut add = p.offset_ns.wrapping_add(mul_hi_i64(e, p.drift_q));
    if let Some(mut q) = (e as u64).checked_div(p.jump_every_ns) {
        if p.flags & FLAG_STROBE != 0 {
            q &= 1;
        }
        add = add.wrapping_add((q as i64).wrapping_mul(p.jump_by_ns));
    }
    add
}

/// The noise for a true reading whose nanosecond part is `nsec`.
#[inline(always)]
pub fn noise_ns(p: &ClockParams, nsec: u64) -> i64 {
    if p.jitter_span == 0 {
        return 0;
    }
    let hash = nsec.wrapping_mul(JITTER_MUL);
    (mul_hi_u64(p.jitter_span, hash) as i64).wrapping_add(p.jitter_base)
}

/// What the fault adds to a true reading `t` (ns) whose nanoseconds are `nsec`, or `None`
/// when the clock is not faulted or its deadline has passed. Without `noise`, the jitter
/// term is left out (a deadline handed to the kernel is translated by the steady fault).
#[inline(always)]
pub fn fault_ns(p: &ClockParams, t: i64, nsec: u64, noise: bool) -> Option<i64> {
    if p.flags & FLAG_ACTIVE == 0 || t >= p.deadline_ns {
        return None;
    }
    let add = steady_ns(p, t);
    Some(match noise {
        true => add.wrapping_add(noise_ns(p, nsec)),
        false => add,
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn the_high_halves_match_128_bit_products() {
        let values = [
            0u64,
            1,
            2,
            0xffff_ffff,
            0x1_0000_0000,
            0x9e37_79b9_7f4a_7c15,
            u64::MAX,
            u64::MAX / 3,
            1 << 63,
            123_456_789_012_345,
        ];
        for &a in &values {
            for &b in &values {
                let want = ((a as u128 * b as u128) >> 64) as u64;
                assert_eq!(mul_hi_u64(a, b), want, "{a} * {b}");
                let (sa, sb) = (a as i64, b as i64);
                let want = ((sa as i128 * sb as i128) >> 64) as i64;
                assert_eq!(mul_hi_i64(sa, sb), want, "{sa} * {sb}");
            }
        }
    }

    #[test]
    fn offset_drift_jumps_and_the_deadline() {
        let p = ClockParams {
            flags: FLAG_ACTIVE,
            start_ns: 1_000,
            deadline_ns: 1_000_000_000_000,
            offset_ns: -5_000_000_000,
            drift_q: i64::MAX, // 500,000 ppm
            jump_every_ns: 1_000_000,
            jump_by_ns: 7,
            ..Default::default()
        };
        assert_eq!(fault_ns(&p, 500, 0, true), Some(-5_000_000_000));
        // e = 10^7: drift about 5 * 10^6, 10 jumps of 7
        let got = fault_ns(&p, 10_001_000, 0, true).unwrap();
        assert_eq!(got, -5_000_000_000 + 4_999_999 + 70);
        assert_eq!(fault_ns(&p, 1_000_000_000_000, 0, true), None);
        let off = ClockParams { flags: 0, ..p };
        assert_eq!(fault_ns(&off, 0, 0, true), None);
    }

    #[test]
    fn noise_stays_within_its_span_and_is_left_out_when_asked() {
        let p = ClockParams {
            flags: FLAG_ACTIVE,
            deadline_ns: i64::MAX,
            jitter_span: 1_000,
            jitter_base: -500,
            ..Default::default()
        };
        for nsec in (0..1_000_000_000u64).step_by(7_777_777) {
            let n = fault_ns(&p, 0, nsec, true).unwrap();
            assert!((-500..500).contains(&n), "{n}");
            assert_eq!(fault_ns(&p, 0, nsec, false), Some(0));
        }
    }
}
