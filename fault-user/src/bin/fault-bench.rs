//! Per-packet cost of fault's classifiers, measured in the kernel with BPF_PROG_TEST_RUN.
//! Run by `cargo xtask bench` (needs root); prints a Markdown table.
//!
//! Each case loads the programs with N rules (a /24 and a port of its own each, as a big
//! policy would have) and runs a UDP packet that no rule matches through them a million
//! times; the kernel reports the mean time per run.

use std::os::fd::{AsFd as _, BorrowedFd};

use anyhow::bail;
use fault::{
    net::{loader, test_run::SkbCtx},
    policy,
};
use fault_common::progs;

const REPEAT: u32 = 1_000_000;

fn main() -> anyhow::Result<()> {
    let packet = udp_packet();
    let own = own_cgroup_id()?;
    println!(
        "| rules | trie entries | egress, untargeted socket (ns) | egress, targeted socket, \
         no rule matches (ns) | ingress, no rule matches (ns) |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for n in [1usize, 1_000, 10_000] {
        let p = policy::parse(&policy_text(n), std::path::Path::new("bench.yaml"))?;
        let lpm = policy::lpm_entries(&p.rules)?;
        let actions: Vec<_> = p.rules.iter().map(|r| r.action).collect();
        let mut row = vec![n.to_string(), lpm.len().to_string()];
        // BPF_PROG_TEST_RUN gives the packet a dummy socket in the caller's cgroup: listing
        // that cgroup as a target makes the egress program go on to the rule lookup.
        for (target, ingress) in [(u64::MAX, false), (own, false), (own, true)] {
            let ebpf = loader::load(&loader::Tables {
                classes: &[(target, 0)],
                lpm: &lpm,
                initial: &lpm,
                rules: &actions,
                deadline_ns: 0,
                resend: false,
                peer: false,
                seed: 0,
            })?;
            let name = if ingress {
                progs::CGROUP_INGRESS
            } else {
                loader::egress_program(&ebpf)
            };
            let program = ebpf.program(name).expect("in the object");
            let fd = program.fd()?;
            let mut runs = (0..5)
                .map(|_| test_run(fd.as_fd(), &packet))
                .collect::<anyhow::Result<Vec<u32>>>()?;
            runs.sort_unstable();
            row.push(runs[2].to_string());
        }
        println!("| {} |", row.join(" | "));
    }
    Ok(())
}

/// The cgroup id of this process: the inode of its cgroup2 directory.
fn own_cgroup_id() -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let Some(rel) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
        bail!("this process is in no cgroup2 cgroup");
    };
    let dir = fault::sys::mounts::cgroup2_mount()?.join(rel.trim_start_matches('/'));
    Ok(std::fs::metadata(dir)?.ino())
}

/// A policy with `n` UDP rules in both directions, each for its own /24 and port.
fn policy_text(n: usize) -> String {
    let mut s = String::from(
        "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {name: bench}\nspec:\n  \
         duration: 1m\n  targets: [{pid: 1}]\n  network:\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "    - {{direction: both, match: {{protocol: udp, cidrs: [10.{}.{}.0/24], \
             ports: [{}]}}, drop: {{probability: 1%}}}}\n",
            i / 256 % 256,
            i % 256,
            1000 + i
        ));
    }
    s
}

/// Ethernet + IPv4 + UDP to 192.0.2.1:9 (a documentation address no rule names).
fn udp_packet() -> Vec<u8> {
    let mut p = vec![0u8; 14 + 20 + 8 + 64];
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut p[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20u16 + 8 + 64).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[10, 200, 0, 1]);
    ip[16..20].copy_from_slice(&[192, 0, 2, 1]);
    let udp = &mut p[34..42];
    udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(8u16 + 64).to_be_bytes());
    p
}

/// The index of a device of this namespace other than loopback (packets that match no rule
/// never leave, so any will do).
fn device_index() -> anyhow::Result<u32> {
    nix::net::if_::if_nameindex()?
        .iter()
        .find(|i| i.name().to_bytes() != b"lo")
        .map(|i| i.index())
        .ok_or_else(|| anyhow::anyhow!("no network device besides lo to run the packets on"))
}

/// The kernel's mean nanoseconds per run of program `fd` over `data`, on a device that is
/// not loopback: without one, test-run puts the packet on `lo`, which the programs leave
/// alone before any lookup.
fn test_run(fd: BorrowedFd<'_>, data: &[u8]) -> anyhow::Result<u32> {
    let ctx = SkbCtx::new().ifindex(device_index()?);
    let run = fault::net::test_run::test_run(fd, data, &ctx, REPEAT)
        .map_err(|e| anyhow::anyhow!("BPF_PROG_TEST_RUN: {e}"))?;
    if std::env::var_os("FAULT_BENCH_DEBUG").is_some() {
        eprintln!("retval {} duration {}", run.retval as i32, run.duration_ns);
    }
    Ok(run.duration_ns)
}
