//! Putting the programs on interfaces and cgroups, as owned values that take them off again.
//!
//! Egress: the TC program on the interfaces of the targets' network namespaces. Ingress: a
//! cgroup_skb program on each target cgroup. Every attachment is a guard: dropping it
//! detaches the program (in the namespace it was attached in), so an early return or a panic
//! cannot leave half a fault behind. `Attached::detach` does the same in order and returns
//! the problems instead of printing them.
//!
//! tcx links are file descriptors of ours, so the kernel detaches them by itself when fault
//! exits, however it exits. cls_bpf filters on clsact outlive the process: they are recorded
//! in the state file so that `fault stop` can remove them, and written down as intents
//! before they are added, for a loader killed before its record (see `super::intents`).

use std::{fs::File, path::PathBuf};

use anyhow::Context as _;
use aya::{
    programs::{
        cgroup_skb::CgroupSkbLink,
        links::{CgroupAttachMode, Link as _},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
        CgroupSkb, CgroupSkbAttachType, LinkOrder, SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use fault_common::progs;
use serde::{Deserialize, Serialize};

use super::{
    clsact::Clsact,
    intents::{FilterIntent, Intent, Intents},
    tc_mode::TcMode,
};
use crate::{sys::netns::in_netns, target::Netns};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
}

impl Direction {
    pub(super) fn attach_type(self) -> TcAttachType {
        match self {
            Direction::Egress => TcAttachType::Egress,
            Direction::Ingress => TcAttachType::Ingress,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Mode {
    /// A tcx link, owned by the loader's file descriptor.
    Tcx,
    /// A cls_bpf filter on clsact, found again by priority and handle.
    Clsact { priority: u16, handle: u32 },
}

/// One program on one interface, as recorded in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub netns: Netns,
    pub ifname: String,
    pub direction: Direction,
    #[serde(flatten)]
    pub mode: Mode,
}

impl Record {
    pub(super) fn describe(&self) -> String {
        format!(
            "{:?} program on {} (netns {})",
            self.direction, self.ifname, self.netns.inode
        )
        .to_lowercase()
    }
}

/// A TC program on one interface; dropping it detaches it there.
pub struct TcLink {
    pub record: Record,
    link: Option<SchedClassifierLink>,
}

impl TcLink {
    fn take_down(&mut self) -> Result<(), String> {
        let Some(link) = self.link.take() else {
            return Ok(());
        };
        let what = self.record.describe();
        if self.record.mode == Mode::Tcx {
            // Closing a tcx link detaches it, in whatever namespace we are.
            return link.detach().map_err(|e| format!("detach {what}: {e}"));
        }
        match in_netns(&self.record.netns, move || Ok(link.detach())) {
            Ok(r) => r.map_err(|e| format!("detach {what}: {e}")),
            // The namespace is gone, and with it every filter that was in it.
            Err(_) if !self.record.netns.is_current() => Ok(()),
            Err(e) => Err(format!("detach {what}: {e:#}")),
        }
    }
}

impl Drop for TcLink {
    fn drop(&mut self) {
        if let Err(p) = self.take_down() {
            eprintln!("fault: warning: {p}");
        }
    }
}

/// The ingress program on one cgroup; dropping it detaches it.
pub struct CgroupLink {
    pub path: PathBuf,
    pub direction: Direction,
    link: Option<CgroupSkbLink>,
}

impl CgroupLink {
    fn take_down(&mut self) -> Result<(), String> {
        match self.link.take().map(CgroupSkbLink::detach) {
            Some(Err(e)) => Err(format!(
                "detach the {:?} program from {}: {e}",
                self.direction,
                self.path.display()
            )
            .to_lowercase()),
            _ => Ok(()),
        }
    }
}

impl Drop for CgroupLink {
    fn drop(&mut self) {
        if let Err(p) = self.take_down() {
            eprintln!("fault: warning: {p}");
        }
    }
}

/// The live attachments of one run. Fields drop in order: programs before the qdiscs
/// that carry them.
#[derive(Default)]
pub struct Attached {
    cgroups: Vec<CgroupLink>,
    links: Vec<TcLink>,
    qdiscs: Vec<Clsact>,
    /// Where each cls_bpf filter is written down before it is added.
    intents: Option<Intents>,
}

impl Attached {
    /// The cgroups with a program for `direction`.
    pub fn cgroups(&self, direction: Direction) -> Vec<PathBuf> {
        self.cgroups
            .iter()
            .filter(|c| c.direction == direction)
            .map(|c| c.path.clone())
            .collect()
    }

    /// Writes each cls_bpf filter to `intents` before adding it (see `super::intents`).
    pub fn note_intents(&mut self, intents: Intents) {
        self.intents = Some(intents);
    }

    pub fn records(&self) -> Vec<Record> {
        self.links.iter().map(|l| l.record.clone()).collect()
    }

    pub fn qdisc_records(&self) -> Vec<super::clsact::QdiscRecord> {
        self.qdiscs.iter().map(|q| q.record.clone()).collect()
    }

    /// Detaches everything and removes the qdiscs fault added; problems are collected
    /// rather than stopping halfway.
    pub fn detach(mut self) -> Vec<String> {
        let mut problems: Vec<String> = Vec::new();
        problems.extend(self.cgroups.iter_mut().filter_map(|c| c.take_down().err()));
        problems.extend(self.links.iter_mut().filter_map(|l| l.take_down().err()));
        problems.extend(self.qdiscs.iter_mut().filter_map(|q| q.take_down().err()));
        problems
    }

    /// Links a cgroup program to each cgroup: the ingress one, or the egress one for
    /// certain drops.
    pub fn attach_cgroups(
        &mut self,
        ebpf: &mut Ebpf,
        cgroups: &[PathBuf],
        direction: Direction,
    ) -> anyhow::Result<()> {
        let (name, kind) = match direction {
            Direction::Ingress => (progs::CGROUP_INGRESS, CgroupSkbAttachType::Ingress),
            Direction::Egress => (progs::CGROUP_EGRESS, CgroupSkbAttachType::Egress),
        };
        let prog: &mut CgroupSkb = ebpf
            .program_mut(name)
            .context("program missing from the object")?
            .try_into()?;
        for path in cgroups {
            let dir = File::open(path).with_context(|| format!("open {}", path.display()))?;
            // On kernels >= 5.7 aya makes a bpf_link, which always runs beside other programs
            // on the cgroup and refuses explicit flags; `Single` is the mode that sends none.
            let id = prog
                .attach(dir, kind, CgroupAttachMode::Single)
                .with_context(|| format!("attach {name} to {}", path.display()))?;
            self.cgroups.push(CgroupLink {
                path: path.clone(),
                direction,
                link: Some(prog.take_link(id)?),
            });
        }
        Ok(())
    }

    /// Attaches `program` to the egress of `interfaces` in `ns` (every interface for
    /// `None`, loopback only when `loopback`). What was attached before an error stays in
    /// `self`.
    pub fn attach_egress(
        &mut self,
        ebpf: &mut Ebpf,
        program: &str,
        ns: &Netns,
        interfaces: Option<&[String]>,
        tc: TcMode,
        loopback: bool,
    ) -> anyhow::Result<()> {
        let intend = match (tc, &self.intents) {
            (TcMode::Clsact, Some(intents)) => Some((intents, program_id(ebpf, program)?)),
            _ => None,
        };
        // One thread in the namespace for all its interfaces; it stops at the first error,
        // and what it attached before that is kept (and so taken off when `self` drops).
        let attempts = in_netns(ns, || {
            let ifaces = match interfaces {
                Some(list) => list.to_vec(),
                None => crate::sys::netns::interfaces()?,
            };
            let mut attempts = Vec::new();
            for ifname in ifaces.into_iter().filter(|i| loopback || i != "lo") {
                if let Some((intents, prog_id)) = intend {
                    intents.note(&Intent::Filter(FilterIntent {
                        netns: ns.clone(),
                        ifname: ifname.clone(),
                        prog_id,
                        qdisc: !crate::sys::rtnl::has_clsact(&ifname)?,
                    }))?;
                }
                let qdisc = match tc {
                    TcMode::Clsact => Clsact::ensure(ns, &ifname),
                    TcMode::Tcx => Ok(None),
                };
                let attempt = match qdisc {
                    Ok(qdisc) => (qdisc, attach_here(ebpf, program, &ifname, tc)),
                    Err(e) => (None, Err(e)),
                };
                let failed = attempt.1.is_err();
                attempts.push((ifname, attempt));
                if failed {
                    break;
                }
            }
            Ok(attempts)
        })?;
        for (ifname, (qdisc, link)) in attempts {
            self.qdiscs.extend(qdisc);
            let (link, mode) = link?;
            self.links.push(TcLink {
                record: Record {
                    netns: ns.clone(),
                    ifname,
                    direction: Direction::Egress,
                    mode,
                },
                link: Some(link),
            });
        }
        Ok(())
    }

    /// Lets go of what was attached in a namespace that is gone while its inode number now
    /// names another: its filters and qdiscs went with it, and taking them down now would
    /// reach into the new one. A tcx link is only closed: its descriptor names the old
    /// device's link, which the kernel already took off when the device went.
    pub fn forget_netns(&mut self, inode: u64) {
        let gone = |ns: &Netns| ns.inode == inode;
        for l in self.links.iter_mut().filter(|l| gone(&l.record.netns)) {
            match l.record.mode {
                Mode::Tcx => drop(l.link.take()),
                // Its detach would delete a filter by index, wherever this thread is.
                Mode::Clsact { .. } => std::mem::forget(l.link.take()),
            }
        }
        self.links.retain(|l| !gone(&l.record.netns));
        for q in self.qdiscs.iter_mut().filter(|q| gone(&q.record.netns)) {
            q.forget();
        }
        self.qdiscs.retain(|q| !gone(&q.record.netns));
    }

    /// The interfaces the TC programs are on, as `name@netns`.
    pub fn interfaces(&self) -> Vec<String> {
        self.links
            .iter()
            .map(|l| format!("{}@{}", l.record.ifname, l.record.netns.inode))
            .collect()
    }
}

/// The kernel's id of the loaded `program`.
fn program_id(ebpf: &Ebpf, program: &str) -> anyhow::Result<u32> {
    let prog = ebpf
        .program(program)
        .context("program missing from the object")?;
    Ok(prog.info()?.id())
}

/// Attaches `program` to the egress of `ifname` in this thread's namespace.
fn attach_here(
    ebpf: &mut Ebpf,
    program: &str,
    ifname: &str,
    tc: TcMode,
) -> anyhow::Result<(SchedClassifierLink, Mode)> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(program)
        .context("program missing from the object")?
        .try_into()?;
    let options = match tc {
        TcMode::Tcx => TcAttachOptions::TcxOrder(LinkOrder::default()),
        TcMode::Clsact => TcAttachOptions::Netlink(NlOptions::default()),
    };
    let id = prog
        .attach_with_options(ifname, TcAttachType::Egress, options)
        .with_context(|| format!("attach the egress program to {ifname}"))?;
    let link = prog.take_link(id)?;
    let mode = match tc {
        TcMode::Tcx => Mode::Tcx,
        TcMode::Clsact => Mode::Clsact {
            priority: link.priority()?,
            handle: link.handle()?.into(),
        },
    };
    Ok((link, mode))
}
