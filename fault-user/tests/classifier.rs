//! Tier 1: the real eBPF object, loaded with compiled policies, run on crafted frames through
//! `BPF_PROG_TEST_RUN`. Nothing is attached; the programs see exactly the bytes given.
//!
//! Test-run gives the packet a dummy socket in the calling task's cgroup, so this process's
//! own cgroup id in TARGETS makes the packets "the target's", and any other id makes them
//! untargeted. Needs root; without it each test says so and returns.

mod support;

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::Ebpf;
use fault::net::loader::{self, Tables};
use fault::policy;
use fault::sys::time::monotonic_ns;
use fault_common::{progs, RuleCounters};

/// The `skb->cb` words fault once used to mark its own copies (before the OWN_COPY map).
const OLD_OWN_COPY_CB: [u32; 2] = [0xfa17_c0b1, 0x5e1f_0d0e];
use support::packet::{frame, Frame, L4};
use support::{in_private_net, skip, test_run, unavailable, PrivateNet, SkbCtx};

/// What the tc programs return: `TCX_NEXT`/`TC_ACT_UNSPEC` to pass, and a redirect to
/// ifindex 0 (`TC_ACT_REDIRECT`) to drop silently.
const TC_NEXT: u32 = u32::MAX;
const TC_ACT_REDIRECT: u32 = 7;
/// What cgroup_skb programs return.
const CG_PASS: u32 = 1;
const CG_DROP: u32 = 0;
/// cgroup_skb egress: drop, reported to the stack as congestion.
const CG_DROP_CN: u32 = 2;

const PAYLOAD: &[u8] = b"fault classifier test payload, 48 bytes long...";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
}

/// The policy's rules compiled and loaded, with this process's cgroup targeted or not.
struct Loaded {
    ebpf: Ebpf,
    rules: usize,
}

impl Loaded {
    fn new(rules: &str, targeted: bool, deadline_ns: u64) -> Self {
        Self::load(rules, targeted, deadline_ns, false)
    }

    /// With the far-end program (`fault_tc_peer`) loaded too.
    fn with_peer(rules: &str) -> Self {
        Self::load(rules, true, 0, true)
    }

    fn load(rules: &str, targeted: bool, deadline_ns: u64, peer: bool) -> Self {
        let text = format!(
            "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata: {{name: classifier}}\nspec:\n  \
             duration: 1m\n  targets: [{{cgroup: /}}]\n  network:\n{rules}"
        );
        let policy = policy::parse(&text, Path::new("classifier-test.yaml"))
            .unwrap_or_else(|e| panic!("test policy refused: {e}\n{text}"));
        let lpm = policy::lpm_entries(&policy.rules).expect("compiles");
        let actions: Vec<_> = policy.rules.iter().map(|r| r.action).collect();
        // An id no cgroup has: the packets' cgroup is then not a target.
        let classes = [(
            if targeted {
                own_cgroup_id()
            } else {
                u64::MAX - 1
            },
            0,
        )];
        let ebpf = loader::load(&Tables {
            classes: &classes,
            lpm: &lpm,
            initial: &lpm,
            rules: &actions,
            deadline_ns,
            resend: false,
            peer,
            seed: 0,
        })
        .unwrap_or_else(|e| panic!("load the object: {e:#}"));
        Loaded {
            ebpf,
            rules: actions.len(),
        }
    }

    fn targeted(rules: &str) -> Self {
        Self::new(rules, true, 0)
    }

    /// An experiment's rules, every step on, with this process's cgroup in class `class`.
    fn experiment(text: &str, class: u8) -> Self {
        Self::seeded(text, class, 0)
    }

    fn seeded(text: &str, class: u8, seed: u64) -> Self {
        let policy = policy::parse(text, Path::new("classifier-experiment.yaml"))
            .unwrap_or_else(|e| panic!("test experiment refused: {e}\n{text}"));
        let lpm = policy::lpm_entries(&policy.rules).expect("compiles");
        let actions: Vec<_> = policy.rules.iter().map(|r| r.action).collect();
        let ebpf = loader::load(&Tables {
            classes: &[(own_cgroup_id(), class)],
            lpm: &lpm,
            initial: &lpm,
            rules: &actions,
            deadline_ns: 0,
            resend: false,
            peer: false,
            seed,
        })
        .unwrap_or_else(|e| panic!("load the object: {e:#}"));
        Loaded {
            ebpf,
            rules: actions.len(),
        }
    }

    fn run(&self, prog: &str, frame: &[u8], ctx: &SkbCtx) -> support::Run {
        let program = self.ebpf.program(prog).expect("program in the object");
        let fd = program.fd().expect("program loaded");
        test_run(fd.as_fd(), frame, ctx).unwrap_or_else(|e| panic!("test-run {prog}: {e}"))
    }

    /// The egress program on a frame leaving through `net`'s veth.
    fn egress(&self, net: &PrivateNet, frame: &Frame) -> support::Run {
        self.run(
            progs::TC_EGRESS,
            &frame.bytes,
            &SkbCtx::new().ifindex(net.veth),
        )
    }

    /// The far-end program on a frame on its way into the target's namespace.
    fn at_peer(&self, net: &PrivateNet, frame: &Frame) -> support::Run {
        self.run(
            progs::TC_PEER,
            &frame.bytes,
            &SkbCtx::new().ifindex(net.veth),
        )
    }

    fn ingress(&self, net: &PrivateNet, frame: &Frame) -> support::Run {
        self.run(
            progs::CGROUP_INGRESS,
            &frame.bytes,
            &SkbCtx::new().ifindex(net.veth),
        )
    }

    fn counters(&self) -> Vec<RuleCounters> {
        loader::live_counters(&self.ebpf, self.rules).expect("read counters")
    }
}

/// The cgroup2 id (the directory's inode) of the cgroup this process is in.
fn own_cgroup_id() -> u64 {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 line");
    let mount = fault::sys::mounts::cgroup2_mount().expect("cgroup2 mounted");
    let dir = mount.join(rel.trim_start_matches('/'));
    std::fs::metadata(&dir)
        .unwrap_or_else(|e| panic!("stat {}: {e}", dir.display()))
        .ino()
}

fn tc_verdict(run: &support::Run, what: &str) -> Verdict {
    match run.retval {
        TC_NEXT => Verdict::Pass,
        TC_ACT_REDIRECT => Verdict::Drop,
        other => panic!("{what}: unexpected tc return code {other}"),
    }
}

fn cg_verdict(run: &support::Run, what: &str) -> Verdict {
    match run.retval {
        CG_PASS => Verdict::Pass,
        CG_DROP => Verdict::Drop,
        other => panic!("{what}: unexpected cgroup_skb return code {other}"),
    }
}

/// Returns early (with the reason) where the tests cannot run.
macro_rules! require_root {
    () => {
        if let Some(reason) = unavailable() {
            skip(&reason);
            return;
        }
    };
}

// Seen from the target: it is 10.1.0.1 / fd00:1::1, its peers are elsewhere.
const ME4: &str = "10.1.0.1";
const ME6: &str = "fd00:1::1";

fn tcp(sport: u16, dport: u16) -> L4 {
    L4::Tcp { sport, dport }
}

fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

/// An egress frame from the target to `peer`.
fn out_to(peer: &str, l4: L4) -> Frame {
    let me = if peer.contains(':') { ME6 } else { ME4 };
    frame(me, peer, l4, PAYLOAD)
}

/// An ingress frame from `peer` to the target.
fn in_from(peer: &str, l4: L4) -> Frame {
    let me = if peer.contains(':') { ME6 } else { ME4 };
    frame(peer, me, l4, PAYLOAD)
}

struct MatchCase {
    name: &'static str,
    frame: Frame,
    expected: Verdict,
}

fn case(name: &'static str, frame: Frame, expected: Verdict) -> MatchCase {
    MatchCase {
        name,
        frame,
        expected,
    }
}

/// Runs each policy's cases through `verdict_of` and reports every mismatch at once.
fn check_matches(
    direction: &str,
    table: Vec<(&str, Vec<MatchCase>)>,
    verdict_of: impl Fn(&Loaded, &PrivateNet, &Frame, &str) -> Verdict + Sync,
) {
    in_private_net(|net| {
        let mut wrong = Vec::new();
        for (matches, cases) in table {
            let loaded = Loaded::targeted(&format!(
                "    - direction: {direction}\n      match: {matches}\n      \
                 drop: {{probability: 100%}}\n"
            ));
            for c in &cases {
                let got = verdict_of(&loaded, net, &c.frame, c.name);
                if got != c.expected {
                    wrong.push(format!(
                        "match {matches}: {}: expected {:?}, got {got:?}",
                        c.name, c.expected
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
    });
}

/// One packet of a match table: (name, egress frame, ingress frame, verdict).
type BothWays = (&'static str, Frame, Frame, Verdict);

fn match_table() -> Vec<(&'static str, Vec<BothWays>)> {
    use Verdict::{Drop, Pass};
    // The peer's address and port are the same in both directions.
    let both = |name, peer: &str, l4_out: L4, l4_in: L4, v| {
        (name, out_to(peer, l4_out), in_from(peer, l4_in), v)
    };
    vec![
        (
            "{protocol: tcp, local_ports: [2380]}",
            vec![
                both(
                    "v4 to our 2380",
                    "10.2.0.2",
                    tcp(2380, 40000),
                    tcp(40000, 2380),
                    Drop,
                ),
                both(
                    "v6 to our 2380",
                    "fd00:2::2",
                    tcp(2380, 40000),
                    tcp(40000, 2380),
                    Drop,
                ),
                both(
                    "v4 to the peer's 2380",
                    "10.2.0.2",
                    tcp(40000, 2380),
                    tcp(2380, 40000),
                    Pass,
                ),
                both(
                    "v4 udp to our 2380",
                    "10.2.0.2",
                    udp(2380, 40000),
                    udp(40000, 2380),
                    Pass,
                ),
            ],
        ),
        (
            "{protocol: tcp, ports: [80], local_ports: [2380]}",
            vec![
                both("both ports", "10.2.0.2", tcp(2380, 80), tcp(80, 2380), Drop),
                both(
                    "peer port only",
                    "10.2.0.2",
                    tcp(40000, 80),
                    tcp(80, 40000),
                    Pass,
                ),
                both(
                    "local port only",
                    "10.2.0.2",
                    tcp(2380, 81),
                    tcp(81, 2380),
                    Pass,
                ),
            ],
        ),
        (
            "{}",
            vec![
                both("v4 udp", "10.2.0.2", udp(40000, 53), udp(53, 40000), Drop),
                both("v4 tcp", "10.2.0.2", tcp(40000, 80), tcp(80, 40000), Drop),
                both("v4 icmp", "10.2.0.2", L4::Icmp, L4::Icmp, Drop),
                both("v6 udp", "fd00:2::2", udp(40000, 53), udp(53, 40000), Drop),
                both("v6 tcp", "fd00:2::2", tcp(40000, 80), tcp(80, 40000), Drop),
                both("v6 icmp", "fd00:2::2", L4::Icmp, L4::Icmp, Drop),
            ],
        ),
        (
            "{protocol: udp}",
            vec![
                both("v4 udp", "10.2.0.2", udp(40000, 53), udp(53, 40000), Drop),
                both("v6 udp", "fd00:2::2", udp(40000, 53), udp(53, 40000), Drop),
                both("v4 tcp", "10.2.0.2", tcp(40000, 53), tcp(53, 40000), Pass),
                both("v6 icmp", "fd00:2::2", L4::Icmp, L4::Icmp, Pass),
            ],
        ),
        (
            "{protocol: tcp}",
            vec![
                both("v4 tcp", "10.2.0.2", tcp(40000, 80), tcp(80, 40000), Drop),
                both("v6 tcp", "fd00:2::2", tcp(40000, 80), tcp(80, 40000), Drop),
                both("v4 udp", "10.2.0.2", udp(40000, 80), udp(80, 40000), Pass),
            ],
        ),
        (
            "{protocol: icmp}",
            vec![
                both("v4 icmp", "10.2.0.2", L4::Icmp, L4::Icmp, Drop),
                both("v6 icmp", "fd00:2::2", L4::Icmp, L4::Icmp, Drop),
                both("v4 udp", "10.2.0.2", udp(40000, 53), udp(53, 40000), Pass),
            ],
        ),
        (
            "{cidrs: [10.2.0.0/16, \"fd00:2::/32\"]}",
            vec![
                both(
                    "v4 inside",
                    "10.2.9.9",
                    udp(40000, 53),
                    udp(53, 40000),
                    Drop,
                ),
                both(
                    "v4 outside",
                    "10.3.0.1",
                    udp(40000, 53),
                    udp(53, 40000),
                    Pass,
                ),
                both(
                    "v6 inside",
                    "fd00:2::9",
                    tcp(40000, 80),
                    tcp(80, 40000),
                    Drop,
                ),
                both(
                    "v6 outside",
                    "fd00:3::1",
                    tcp(40000, 80),
                    tcp(80, 40000),
                    Pass,
                ),
            ],
        ),
        (
            "{ports: [5432, \"6000-6100\"]}",
            vec![
                both(
                    "tcp 5432",
                    "10.2.0.2",
                    tcp(40000, 5432),
                    tcp(5432, 40000),
                    Drop,
                ),
                both(
                    "udp 6050",
                    "fd00:2::2",
                    udp(40000, 6050),
                    udp(6050, 40000),
                    Drop,
                ),
                both(
                    "tcp 6100",
                    "10.2.0.2",
                    tcp(40000, 6100),
                    tcp(6100, 40000),
                    Drop,
                ),
                both(
                    "tcp 5433",
                    "10.2.0.2",
                    tcp(40000, 5433),
                    tcp(5433, 40000),
                    Pass,
                ),
                both(
                    "udp 6101",
                    "10.2.0.2",
                    udp(40000, 6101),
                    udp(6101, 40000),
                    Pass,
                ),
                both("icmp", "10.2.0.2", L4::Icmp, L4::Icmp, Pass),
                // The target's own port is not the peer's port.
                both(
                    "own 5432",
                    "10.2.0.2",
                    tcp(5432, 40000),
                    tcp(40000, 5432),
                    Pass,
                ),
            ],
        ),
        (
            "{protocol: udp, cidrs: [10.2.0.2], ports: [53]}",
            vec![
                both(
                    "all three",
                    "10.2.0.2",
                    udp(40000, 53),
                    udp(53, 40000),
                    Drop,
                ),
                both("tcp", "10.2.0.2", tcp(40000, 53), tcp(53, 40000), Pass),
                both(
                    "other host",
                    "10.2.0.3",
                    udp(40000, 53),
                    udp(53, 40000),
                    Pass,
                ),
                both(
                    "other port",
                    "10.2.0.2",
                    udp(40000, 54),
                    udp(54, 40000),
                    Pass,
                ),
            ],
        ),
    ]
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Egress,
    Ingress,
}

/// The match table as seen in one direction: each case with that direction's frame.
fn table_for(direction: Direction) -> Vec<(&'static str, Vec<MatchCase>)> {
    match_table()
        .into_iter()
        .map(|(m, cases)| {
            let cases = cases
                .into_iter()
                .map(|(name, out, inbound, v)| match direction {
                    Direction::Egress => case(name, out, v),
                    Direction::Ingress => case(name, inbound, v),
                })
                .collect();
            (m, cases)
        })
        .collect()
}

#[test]
fn egress_match_fields_decide_what_is_dropped() {
    require_root!();
    let table = table_for(Direction::Egress);
    check_matches("egress", table, |l, net, f, name| {
        tc_verdict(&l.egress(net, f), name)
    });
}

#[test]
fn ingress_match_fields_decide_what_is_dropped() {
    require_root!();
    let table = table_for(Direction::Ingress);
    check_matches("ingress", table, |l, net, f, name| {
        cg_verdict(&l.ingress(net, f), name)
    });
}

/// Rules that drop everything they match are judged at the sockets on egress too (the
/// cgroup program a target's new namespace cannot escape): a drop with congestion
/// notification there; anything less certain is left to the TC program.
#[test]
fn certain_drops_are_also_judged_at_the_sockets_on_egress() {
    require_root!();
    in_private_net(|net| {
        for (action, expected) in [
            ("partition: true", CG_DROP_CN),
            ("drop: {probability: 100%, correlation: 50%}", CG_DROP_CN),
            ("drop: {probability: 99%}", CG_PASS),
            ("delay: {latency: 10ms}", CG_PASS),
        ] {
            let l = Loaded::targeted(&format!(
                "    - direction: egress\n      match: {{protocol: udp}}\n      {action}\n"
            ));
            for (peer, l4, want) in [
                ("10.2.0.2", udp(40000, 53), expected),
                ("fd00:2::2", udp(40000, 53), expected),
                ("10.2.0.2", tcp(40000, 53), CG_PASS),
            ] {
                let f = out_to(peer, l4);
                let run = l.run(
                    progs::CGROUP_EGRESS,
                    &f.bytes,
                    &SkbCtx::new().ifindex(net.veth),
                );
                assert_eq!(run.retval, want, "{action}: {peer} {l4:?}");
            }
        }
    });
}

#[test]
fn drop_probability_zero_and_hundred_percent() {
    require_root!();
    in_private_net(|net| {
        for (probability, expected, dropped) in
            [("0%", Verdict::Pass, 0), ("100%", Verdict::Drop, 20)]
        {
            let l = Loaded::targeted(&format!(
                "    - direction: egress\n      drop: {{probability: {probability}}}\n"
            ));
            for i in 0..20u16 {
                let f = out_to("10.2.0.2", udp(40000 + i, 53));
                let run = l.egress(net, &f);
                assert_eq!(
                    tc_verdict(&run, probability),
                    expected,
                    "drop {probability}"
                );
            }
            let c = l.counters();
            assert_eq!(
                (c[0].seen, c[0].dropped),
                (20, dropped),
                "drop {probability}"
            );
        }
    });
}

/// The bytes that differ between two frames of equal length.
fn differing(a: &[u8], b: &[u8]) -> Vec<usize> {
    assert_eq!(a.len(), b.len(), "the program changed the frame's length");
    (0..a.len()).filter(|&i| a[i] != b[i]).collect()
}

#[test]
fn corruption_flips_one_payload_word_and_fixes_or_keeps_the_checksum() {
    require_root!();
    let frames = [
        ("v4 udp", out_to("10.2.0.2", udp(40000, 53))),
        ("v4 tcp", out_to("10.2.0.2", tcp(40000, 80))),
        ("v4 icmp", out_to("10.2.0.2", L4::Icmp)),
        ("v6 udp", out_to("fd00:2::2", udp(40000, 53))),
        ("v6 tcp", out_to("fd00:2::2", tcp(40000, 80))),
        ("v6 icmp", out_to("fd00:2::2", L4::Icmp)),
    ];
    in_private_net(|net| {
        for (checksum, verifies) in [("fix", true), ("keep", false)] {
            let l = Loaded::targeted(&format!(
                "    - direction: egress\n      \
                 corrupt: {{probability: 100%, checksum: {checksum}}}\n"
            ));
            for (name, f) in &frames {
                let what = format!("{name}, checksum {checksum}");
                assert!(
                    f.checksum_ok(&f.bytes),
                    "{what}: the crafted frame is valid"
                );
                let run = l.egress(net, f);
                assert_eq!(tc_verdict(&run, &what), Verdict::Pass, "{what}");
                let changed = differing(&f.bytes, &run.data);
                let csum = f.csum_off()..f.csum_off() + 2;
                let payload: Vec<usize> = changed
                    .iter()
                    .copied()
                    .filter(|i| !csum.contains(i))
                    .collect();
                assert!(!payload.is_empty(), "{what}: nothing corrupted");
                let word = (payload[0] - f.payload_off) / 2;
                assert!(
                    payload
                        .iter()
                        .all(|&i| i >= f.payload_off && (i - f.payload_off) / 2 == word),
                    "{what}: expected one 16-bit payload word changed, bytes {changed:?} \
                     changed (payload from {})",
                    f.payload_off
                );
                assert_eq!(
                    f.checksum_ok(&run.data),
                    verifies,
                    "{what}: the transport checksum verifies after corruption"
                );
            }
            let c = l.counters();
            assert_eq!(c[0].corrupted, frames.len() as u64, "checksum {checksum}");
        }
    });
}

#[test]
fn duplication_is_counted_and_the_original_passes() {
    require_root!();
    in_private_net(|net| {
        let l = Loaded::targeted("    - direction: egress\n      duplicate: {probability: 100%}\n");
        for peer in ["10.2.0.2", "fd00:2::2"] {
            let f = out_to(peer, udp(40000, 53));
            let run = l.egress(net, &f);
            assert_eq!(tc_verdict(&run, peer), Verdict::Pass, "{peer}");
            assert_eq!(run.data, f.bytes, "{peer}: the original is unchanged");
        }
        let c = l.counters();
        assert_eq!(
            (c[0].seen, c[0].duplicated, c[0].errors),
            (2, 2, 0),
            "one copy sent per packet: {c:?}"
        );
    });
}

/// The programs for kernels before 5.18 (no `bpf_skb_set_tstamp`) write the departure time
/// into `skb->tstamp` themselves and hand the packet itself to fq, on the way out and at
/// the far end. They load on this kernel too, so they are proven here on every kernel.
#[test]
fn before_5_18_the_departure_time_is_written_into_the_packet_itself() {
    require_root!();
    in_private_net(|net| {
        let mut l = Loaded::with_peer(
            "    - direction: both\n      match: {protocol: udp}\n      delay: {latency: 50ms}\n",
        );
        for name in [progs::TC_EGRESS_DIRECT, progs::TC_PEER_DIRECT] {
            let prog: &mut aya::programs::SchedClassifier = l
                .ebpf
                .program_mut(name)
                .expect("in the object")
                .try_into()
                .expect("a classifier");
            prog.load().unwrap_or_else(|e| panic!("load {name}: {e:#}"));
        }
        for (name, f) in [
            (progs::TC_EGRESS_DIRECT, out_to("10.2.0.2", udp(40000, 53))),
            (progs::TC_PEER_DIRECT, in_from("10.2.0.2", udp(53, 40000))),
        ] {
            let before = monotonic_ns();
            let run = l.run(name, &f.bytes, &SkbCtx::new().ifindex(net.veth));
            let after = monotonic_ns();
            assert_eq!(
                tc_verdict(&run, name),
                Verdict::Pass,
                "{name}: the packet goes on to fq"
            );
            let delay = 50_000_000;
            assert!(
                (before + delay..=after + delay).contains(&run.tstamp),
                "{name}: departure {} outside [{}, {}]",
                run.tstamp,
                before + delay,
                after + delay
            );
        }
        let c = l.counters();
        assert_eq!((c[0].delayed, c[0].errors), (2, 0), "{c:?}");
    });
}

/// Keeps the programs' log messages (see fault-user/src/program_log.rs) for a test to read.
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        self.0.lock().unwrap().push(record.args().to_string());
    }

    fn flush(&self) {}
}

/// A helper that fails (here, a copy sent to a device that is down) is told through the
/// programs' log once per CPU, not once per packet; the counters count every one.
#[test]
fn a_failing_helper_is_logged_once_not_per_packet() {
    require_root!();
    in_private_net(|net| {
        let out = std::process::Command::new("ip")
            .args(["link", "set", "fault-tr0", "down"])
            .output()
            .expect("run ip");
        assert!(out.status.success(), "{out:?}");
        let mut l =
            Loaded::targeted("    - direction: egress\n      duplicate: {probability: 100%}\n");
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut logger =
            aya_log::EbpfLogger::init_with_logger(&mut l.ebpf, Capture(messages.clone()))
                .expect("the object has a log ring");
        for i in 0..50 {
            let run = l.egress(net, &out_to("10.2.0.2", udp(40000 + i, 53)));
            assert_eq!(tc_verdict(&run, "copy to a down device"), Verdict::Pass);
        }
        logger.flush();
        let c = l.counters();
        assert_eq!(
            (c[0].seen, c[0].duplicated, c[0].errors),
            (50, 0, 50),
            "{c:?}"
        );
        let got = messages.lock().unwrap().clone();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            !got.is_empty() && got.len() <= cpus,
            "one message per CPU at most: {got:?}"
        );
        assert!(
            got.iter()
                .all(|m| m.contains("rule 0: bpf_clone_redirect failed")),
            "{got:?}"
        );
    });
}

#[test]
fn untargeted_cgroups_and_expired_policies_pass_untouched() {
    require_root!();
    let rules = "    - direction: egress\n      drop: {probability: 100%}\n";
    let cases = [
        ("untargeted cgroup", Loaded::new(rules, false, 0)),
        // 1 ns after boot: long past.
        ("expired deadline", Loaded::new(rules, true, 1)),
        (
            "deadline ahead",
            Loaded::new(rules, true, loader::monotonic_ns() + 60_000_000_000),
        ),
    ];
    in_private_net(|net| {
        for (name, l) in &cases {
            let f = out_to("10.2.0.2", udp(40000, 53));
            let run = l.egress(net, &f);
            let (expected, seen) = match *name {
                "deadline ahead" => (Verdict::Drop, 1),
                _ => (Verdict::Pass, 0),
            };
            assert_eq!(tc_verdict(&run, name), expected, "{name}");
            assert_eq!(run.data, f.bytes, "{name}: frame unchanged");
            assert_eq!(l.counters()[0].seen, seen, "{name}: counted as seen");
        }
        // The ingress program has no cgroup test of its own (it is attached to the target
        // cgroup) but stops at the deadline too.
        let f = in_from("10.2.0.2", udp(53, 40000));
        let run = cases[1].1.ingress(net, &f);
        assert_eq!(
            cg_verdict(&run, "ingress"),
            Verdict::Pass,
            "ingress after the deadline"
        );
    });
}

/// In an experiment each group's packets find only the rules of the steps that target that
/// group: the class TARGETS holds for the sending (or receiving) cgroup is part of the key.
#[test]
fn each_group_finds_only_its_own_steps_rules() {
    require_root!();
    let text = "apiVersion: fault/v1\nkind: Experiment\nmetadata: {name: classes}\nspec:\n  \
                duration: 1m\n  groups:\n    a: [{cgroup: ga}]\n    b: [{cgroup: gb}]\n  steps:\n    \
                - {name: cut-a, at: 0s, for: 1m, targets: a, network: [{direction: both, drop: {probability: 100%}}]}\n    \
                - {name: cut-b, at: 0s, for: 1m, targets: b, network: [{direction: both, match: {cidrs: [192.0.2.0/24]}, drop: {probability: 100%}}]}\n";
    in_private_net(|net| {
        for (class, expected) in [(1, Verdict::Drop), (2, Verdict::Pass), (0, Verdict::Pass)] {
            let l = Loaded::experiment(text, class);
            let out = l.egress(net, &out_to("10.2.0.2", udp(40000, 53)));
            assert_eq!(
                tc_verdict(&out, "egress"),
                expected,
                "egress, class {class}"
            );
            let inn = l.ingress(net, &in_from("10.2.0.2", udp(53, 40000)));
            assert_eq!(
                cg_verdict(&inn, "ingress"),
                expected,
                "ingress, class {class}"
            );
            let seen: Vec<u64> = l.counters().iter().map(|c| c.seen).collect();
            let want = match class {
                1 => vec![2, 0],
                _ => vec![0, 0],
            };
            assert_eq!(seen, want, "class {class}: counted by rule");
        }
    });
}

/// Packets on their way to the target are corrupted and duplicated at the far end of its
/// veth, before they enter its namespace (the socket-side program may do neither).
#[test]
fn ingress_corruption_and_duplication_happen_at_the_far_end() {
    require_root!();
    in_private_net(|net| {
        let l = Loaded::with_peer(
            "    - direction: ingress\n      corrupt: {probability: 100%}\n      \
             duplicate: {probability: 100%}\n",
        );
        let f = in_from("10.2.0.2", udp(53, 40000));
        let run = l.at_peer(net, &f);
        assert_eq!(tc_verdict(&run, "peer"), Verdict::Pass);
        assert!(
            !differing(&f.bytes, &run.data).is_empty(),
            "payload corrupted"
        );
        assert!(f.checksum_ok(&run.data), "checksum fixed");
        let c = l.counters();
        assert_eq!(
            (c[0].corrupted, c[0].duplicated, c[0].errors),
            (1, 1, 0),
            "{c:?}"
        );
    });
}

/// With a seed, the n-th decision of a rule is the n-th number of its stream: two loads give
/// the same drops, and the drops are exactly what the stream says.
#[test]
fn a_seed_makes_every_drop_decision_repeat() {
    require_root!();
    let text = "apiVersion: fault/v1\nkind: Experiment\nmetadata: {name: seeded}\nspec:\n  \
                duration: 1m\n  seed: 42\n  groups:\n    a: [{cgroup: ga}]\n  steps:\n    \
                - {name: loss, at: 0s, for: 1m, targets: a, network: [{direction: egress, drop: {probability: 50%}}]}\n";
    let seed = fault::net::kernel_seed(42);
    let threshold = fault_common::PROB_ONE / 2;
    let expected: Vec<bool> = (0..200)
        .map(|n| u64::from(fault_common::seeded_draw(seed, 0, n)) < threshold)
        .collect();
    in_private_net(|net| {
        for run in 0..2 {
            let l = Loaded::seeded(text, 1, seed);
            let got: Vec<bool> = (0..200u16)
                .map(|i| {
                    let r = l.egress(net, &out_to("10.2.0.2", udp(40000 + i, 53)));
                    tc_verdict(&r, "seeded") == Verdict::Drop
                })
                .collect();
            assert_eq!(got, expected, "run {run}: drops follow the seeded stream");
        }
        let dropped = expected.iter().filter(|d| **d).count();
        assert!(
            (70..130).contains(&dropped),
            "{dropped} of 200 dropped at 50%"
        );
    });
}

/// Whatever `skb->cb` holds when a packet reaches the program, the packet is judged: the
/// words fault once used to mark its own copies included.
#[test]
fn control_buffer_contents_do_not_exempt_a_packet() {
    require_root!();
    in_private_net(|net| {
        let l = Loaded::targeted("    - direction: egress\n      drop: {probability: 100%}\n");
        let f = out_to("10.2.0.2", L4::Icmp);
        let cbs = [
            [0; 5],
            [OLD_OWN_COPY_CB[0], OLD_OWN_COPY_CB[1], 0, 0, 0],
            [u32::MAX; 5],
        ];
        for cb in cbs {
            let run = l.run(
                progs::TC_EGRESS,
                &f.bytes,
                &SkbCtx::new().ifindex(net.veth).cb(cb),
            );
            assert_eq!(tc_verdict(&run, "cb"), Verdict::Drop, "cb {cb:x?}");
        }
    });
}

/// Test-run puts a packet on loopback unless the context names another device.
const LOOPBACK_IFINDEX: u32 = 1;

#[test]
fn loopback_is_left_alone_unless_the_rule_asks_for_it() {
    require_root!();
    in_private_net(|net| {
        let mut wrong = Vec::new();
        for (extra, on_lo) in [("", Verdict::Pass), (", loopback: true", Verdict::Drop)] {
            for direction in ["egress", "ingress"] {
                let l = Loaded::targeted(&format!(
                    "    - direction: {direction}\n      match: {{protocol: udp{extra}}}\n      \
                     drop: {{probability: 100%}}\n"
                ));
                for (me, port) in [("127.0.0.1", 53), ("::1", 53), (ME4, 53)] {
                    let f = frame(me, me, udp(40000, port), PAYLOAD);
                    for (device, ifindex, expected) in [
                        ("lo", LOOPBACK_IFINDEX, on_lo),
                        ("veth", net.veth, Verdict::Drop),
                    ] {
                        let what = format!("{direction} {me} on {device}, match {{udp{extra}}}");
                        let ctx = SkbCtx::new().ifindex(ifindex);
                        let got = match direction {
                            "egress" => tc_verdict(&l.run(progs::TC_EGRESS, &f.bytes, &ctx), &what),
                            _ => cg_verdict(&l.run(progs::CGROUP_INGRESS, &f.bytes, &ctx), &what),
                        };
                        if got != expected {
                            wrong.push(format!("{what}: expected {expected:?}, got {got:?}"));
                        }
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
    });
}

/// A rule without loopback that comes first does not hide a later one with it: packets on
/// `lo` are looked up among loopback rules only.
#[test]
fn on_loopback_the_first_loopback_rule_wins() {
    require_root!();
    in_private_net(|net| {
        let l = Loaded::targeted(
            "    - direction: egress\n      match: {protocol: udp}\n      \
             drop: {probability: 0%}\n    \
             - direction: egress\n      match: {loopback: true}\n      \
             drop: {probability: 100%}\n",
        );
        let f = frame("127.0.0.1", "127.0.0.1", udp(40000, 53), PAYLOAD);
        let lo = SkbCtx::new().ifindex(LOOPBACK_IFINDEX);
        let run = l.run(progs::TC_EGRESS, &f.bytes, &lo);
        assert_eq!(
            tc_verdict(&run, "lo"),
            Verdict::Drop,
            "on lo rule 1 applies"
        );
        let run = l.egress(net, &out_to("10.2.0.2", udp(40000, 53)));
        assert_eq!(
            tc_verdict(&run, "veth"),
            Verdict::Pass,
            "elsewhere rule 0 does"
        );
        let seen: Vec<u64> = l.counters().iter().map(|c| c.seen).collect();
        assert_eq!(seen, [1, 1], "one packet for each rule");
    });
}
