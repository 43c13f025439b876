//! fq as the root qdisc for delays (EDT), and the choice between it and the userspace path.

use std::process::Command;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use super::intents::{Intent, Intents};
use crate::{
    sys::{netns::in_netns, rtnl},
    target::Netns,
};

/// A root qdisc fault replaced with fq for delays (EDT), to be given back on revert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FqRecord {
    pub netns: Netns,
    pub ifname: String,
    /// What was there: always the kernel's default for the device (fault replaces nothing
    /// else), which deleting our root qdisc brings back.
    pub previous: String,
}

/// How delayed packets are held: by fq, or by fault in userspace where the kernel has no fq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DelayPath {
    Fq,
    Userspace,
}

impl DelayPath {
    /// What `forced` says, else fq where the kernel has it (forcing one compares the two
    /// on one kernel).
    pub fn choose(forced: Option<DelayPath>) -> Self {
        match forced {
            Some(path) => path,
            None if fq_available() => DelayPath::Fq,
            None => DelayPath::Userspace,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            DelayPath::Fq if super::loader::before_set_tstamp() => {
                "departure times held by fq (the interfaces' root qdisc while the policy runs); \
                 this kernel predates bpf_skb_set_tstamp (5.18), so the time is written into \
                 the packet itself and a delayed packet stays charged to its socket while fq \
                 holds it: a TCP flow under a delay is held to its socket's send budget per \
                 delay, and sends less than over a slow link"
            }
            DelayPath::Fq => {
                "departure times held by fq (the interfaces' root qdisc while the policy runs)"
            }
            DelayPath::Userspace => {
                "held and sent again by fault in userspace (this kernel has no sch_fq): \
                 each delayed packet is copied to fault and sent again, which took 40 to \
                 200 us of CPU per packet on a 2-core VM (BENCHMARKS.md); the figures for \
                 this run are printed at the end"
            }
        }
    }
}

/// Whether this kernel has the fq qdisc: loaded, built in, or loadable.
pub fn fq_available() -> bool {
    if std::path::Path::new("/sys/module/sch_fq").exists() {
        return true;
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let builtin = std::fs::read_to_string(format!("/lib/modules/{release}/modules.builtin"));
    if builtin.is_ok_and(|b| b.lines().any(|l| l.ends_with("/sch_fq.ko"))) {
        return true;
    }
    Command::new("modprobe")
        .args(["-q", "sch_fq"])
        .status()
        .is_ok_and(|s| s.success())
        && std::path::Path::new("/sys/module/sch_fq").exists()
}

/// An interface whose root qdisc fault made fq; dropping it gives the default back.
pub struct Fq {
    pub record: FqRecord,
    present: bool,
}

impl Fq {
    /// Lets go without restoring anything: the qdisc went with its namespace.
    pub fn forget(&mut self) {
        self.present = false;
    }

    pub fn take_down(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.present) {
            return Ok(());
        }
        restore(&self.record).map_err(|e| format!("restore the root qdisc: {e:#}"))
    }
}

impl Drop for Fq {
    fn drop(&mut self) {
        if let Err(p) = self.take_down() {
            eprintln!("fault: warning: {p}");
        }
    }
}

/// Makes fq the root qdisc of each (namespace, interface), or of every interface of the
/// namespace for `None`, so that departure times written by the egress program are
/// honoured. An interface already under fq is left as it is; one whose root qdisc someone
/// configured is refused rather than overwritten. What was installed before an error is
/// pushed to `out` (and so restored when it drops).
pub fn install(
    places: &[(Netns, Option<String>)],
    intents: &Intents,
    out: &mut Vec<Fq>,
) -> anyhow::Result<()> {
    for (ns, only) in places {
        // One thread in the namespace for all its interfaces, stopping at the first error.
        let (installed, failed) = in_netns(ns, || {
            let ifaces = match only {
                Some(name) => vec![name.clone()],
                None => crate::sys::netns::interfaces()?,
            };
            let mut installed = Vec::new();
            for ifname in ifaces {
                match fq_here(ns, &ifname, intents) {
                    Ok(Some(previous)) => installed.push((ifname, previous)),
                    Ok(None) => {}
                    Err(e) => return Ok((installed, Some(e))),
                }
            }
            Ok((installed, None))
        })?;
        out.extend(installed.into_iter().map(|(ifname, previous)| Fq {
            record: FqRecord {
                netns: ns.clone(),
                ifname,
                previous,
            },
            present: true,
        }));
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(())
}

/// The root qdisc of `ifname` in this thread's namespace: (kind, handle). A device that is
/// down lists none, which is its default too: kind "".
fn root_qdisc(ifname: &str) -> anyhow::Result<(String, u32)> {
    Ok(rtnl::root_qdisc(ifname)?.map_or((String::new(), 0), |q| (q.kind, q.handle)))
}

fn fq_here(ns: &Netns, ifname: &str, intents: &Intents) -> anyhow::Result<Option<String>> {
    let (kind, handle) = root_qdisc(ifname)?;
    if kind == "fq" {
        return Ok(None);
    }
    if handle != 0 {
        bail!(
            "{ifname} has a configured root qdisc ({kind} {:x}:); delay needs fq there, \
             and fault does not replace a qdisc it cannot restore exactly",
            handle >> 16
        );
    }
    intents.note(&Intent::Fq(FqRecord {
        netns: ns.clone(),
        ifname: ifname.to_string(),
        previous: kind.clone(),
    }))?;
    // fq's defaults (100 packets a flow, 10,000 in all) would cap a delayed flow at
    // 100 packets per delay; room for 10,000 a flow lets a flow run at full speed through
    // a 100 ms delay, as a real path's bandwidth-delay product would.
    rtnl::replace_root_fq(ifname, 100_000, 10_000)
        .with_context(|| format!("install fq on {ifname} (delay needs the sch_fq qdisc)"))?;
    Ok(Some(kind))
}

/// Gives interfaces a dead loader left under fq their default root qdisc back.
pub fn restore_recorded(records: &[FqRecord]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| restore_if_fq(r).err())
        .collect()
}

/// Gives an interface a dead loader put (or meant to put) under fq its default root qdisc
/// back, if fq is there: the loader may have died before it replaced the default, or after
/// it gave it back, and its intents name what its record does too.
pub fn restore_if_fq(r: &FqRecord) -> Result<(), String> {
    if !r.netns.is_current() {
        return Ok(());
    }
    in_netns(&r.netns, || match root_qdisc(&r.ifname)?.0 == "fq" {
        true => restore_here(r),
        false => Ok(()),
    })
    .map_err(|e| format!("restore the root qdisc of {}: {e:#}", r.ifname))
}

fn restore(r: &FqRecord) -> anyhow::Result<()> {
    if !r.netns.is_current() {
        return Ok(());
    }
    in_netns(&r.netns, || restore_here(r))
}

/// [`restore`] in the calling thread's namespace, which is `r`'s.
fn restore_here(r: &FqRecord) -> anyhow::Result<()> {
    rtnl::delete_root_qdisc(&r.ifname)?;
    let (kind, _) = root_qdisc(&r.ifname)?;
    if kind != r.previous {
        bail!(
            "{} came back with {kind}, expected {}",
            r.ifname,
            r.previous
        );
    }
    Ok(())
}
