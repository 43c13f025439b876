//! The shape most privileged tests share: two hosts joined by a veth pair, and a target
//! cgroup with a resident process on the first.

use std::process::Command;

use crate::{spawn_in, Cgroup, ChildGuard, Netns, VethPair};

/// Two hosts: `a` (where the target lives) and `b` (its peer).
pub struct Hosts {
    pub a: Netns,
    pub b: Netns,
    pub veth: VethPair,
}

/// Hosts `<net>.<subnet>.1` (a) and `<net>.<subnet>.2` (b), e.g. `hosts("loss", "10.77", 11)`.
pub fn hosts(label: &str, net: &str, subnet: u8) -> Hosts {
    let a = Netns::new(&format!("{label}-a"));
    let b = Netns::new(&format!("{label}-b"));
    let veth = VethPair::new(
        &a,
        &format!("{net}.{subnet}.1/24"),
        &b,
        &format!("{net}.{subnet}.2/24"),
    );
    Hosts { a, b, veth }
}

/// A process that keeps the target present in `ns`, as a service's processes would be before
/// anyone applies a fault to it (fault attaches where the targets' processes are).
pub fn anchor(cgroup: &Cgroup, ns: &Netns) -> ChildGuard {
    let mut sleep = Command::new("sleep");
    sleep.arg("600");
    spawn_in(Some(cgroup), Some(ns), sleep)
}
