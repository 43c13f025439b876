//! fault's eBPF programs. One file per hook family: `tc` (egress network faults),
//! `cgroup_skb` (ingress network faults), `net`, what both share, `exec` (holds a
//! process that execs in a target until its clocks are patched), `clock_calls` (counts
//! the clock system calls the clock fault cannot reach) and `clock_rewrite` (rewrites the
//! results of raw clock reads, where the kernel lets eBPF write user memory).
// Built for the host (as a workspace member, by `cargo clippy --workspace`) it is an empty
// program; only the bpf target carries the programs.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod cgroup_skb;
#[cfg(target_arch = "bpf")]
mod clock_calls;
#[cfg(target_arch = "bpf")]
mod clock_rewrite;
#[cfg(target_arch = "bpf")]
mod edt;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod exec;
#[cfg(target_arch = "bpf")]
mod net;
#[cfg(target_arch = "bpf")]
mod resend;
#[cfg(target_arch = "bpf")]
mod tc;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this, so it is never called.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
