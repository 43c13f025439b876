//! Attaching the programs, and taking them off again.
//!
//! Egress: the TC program on every interface of the targets' network namespaces. Ingress: a
//! cgroup_skb program on each target cgroup (a link, so it goes when fault's descriptors go).
//!
//! For TC, kernels >= 6.6 get tcx links: they are file descriptors of ours, so the kernel detaches
//! them by itself when fault exits, however it exits. Older kernels get cls_bpf filters on a
//! clsact qdisc, which outlive the process: those are recorded in the state file so that
//! `fault stop` can remove them, and the in-kernel deadline makes them inert meanwhile.
//!
//! Netlink works in the namespace of the calling thread, so everything that talks to an
//! interface runs on a short-lived thread that has joined the target's namespace first.

use std::{fs::File, path::PathBuf, process::Command};

use anyhow::{bail, Context as _};
use aya::{
    programs::{
        cgroup_skb::CgroupSkbLink,
        links::{CgroupAttachMode, Link as _},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        CgroupSkb, CgroupSkbAttachType, LinkOrder, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
    Ebpf,
};
use fault_common::progs;
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use crate::target::Netns;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Egress,
    Ingress,
}

impl Direction {
    fn attach_type(self) -> TcAttachType {
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

/// A clsact qdisc that fault added and so must remove.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QdiscRecord {
    pub netns: Netns,
    pub ifname: String,
}

/// Which TC mechanism to use. tcx where the kernel has it (>= 6.6), clsact before; the
/// environment variable FAULT_TC_MODE=clsact forces the old path, which tests use to cover it
/// on new kernels too.
pub fn use_tcx() -> bool {
    if std::env::var("FAULT_TC_MODE").is_ok_and(|m| m == "clsact") {
        return false;
    }
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// The live attachments of one `fault apply`.
#[derive(Default)]
pub struct Attached {
    links: Vec<(Record, SchedClassifierLink)>,
    cgroup_links: Vec<(PathBuf, CgroupSkbLink)>,
    pub qdiscs: Vec<QdiscRecord>,
}

impl Attached {
    pub fn extend(&mut self, other: Attached) {
        self.links.extend(other.links);
        self.cgroup_links.extend(other.cgroup_links);
        self.qdiscs.extend(other.qdiscs);
    }

    /// The cgroups with an ingress program.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        self.cgroup_links.iter().map(|(p, _)| p.clone()).collect()
    }

    pub fn records(&self) -> Vec<Record> {
        self.links.iter().map(|(r, _)| r.clone()).collect()
    }

    /// Detaches everything, in each namespace, and removes the qdiscs we added. Problems are
    /// collected rather than stopping halfway.
    pub fn detach(self) -> Vec<String> {
        let mut problems = Vec::new();
        for (path, link) in self.cgroup_links {
            if let Err(e) = link.detach() {
                problems.push(format!(
                    "detach the ingress program from {}: {e}",
                    path.display()
                ));
            }
        }
        let mut by_netns: Vec<(Netns, Vec<(Record, SchedClassifierLink)>)> = Vec::new();
        for (record, link) in self.links {
            if record.mode == Mode::Tcx {
                // Closing a tcx link detaches it, in whatever namespace we are.
                if let Err(e) = link.detach() {
                    problems.push(format!("detach {}: {e}", describe(&record)));
                }
                continue;
            }
            match by_netns.iter_mut().find(|(n, _)| *n == record.netns) {
                Some((_, v)) => v.push((record, link)),
                None => by_netns.push((record.netns.clone(), vec![(record, link)])),
            }
        }
        for (netns, links) in by_netns {
            let res = in_netns(&netns, move || {
                let mut problems = Vec::new();
                for (record, link) in links {
                    if let Err(e) = link.detach() {
                        problems.push(format!("detach {}: {e}", describe(&record)));
                    }
                }
                Ok(problems)
            });
            match res {
                Ok(p) => problems.extend(p),
                // The namespace is gone, and with it every filter that was in it.
                Err(_) if !netns.is_current() => {}
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        problems.extend(remove_qdiscs(&self.qdiscs));
        problems
    }
}

fn describe(r: &Record) -> String {
    format!(
        "{:?} program on {} (netns {})",
        r.direction, r.ifname, r.netns.inode
    )
    .to_lowercase()
}

/// Runs `f` on a new thread that has joined `netns`. Threads do not share a namespace
/// change, so the rest of the process stays where it is.
pub fn in_netns<T: Send>(
    netns: &Netns,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let Some(path) = netns.locate() else {
        bail!(
            "the network namespace {} is gone (no process or bind mount names it)",
            netns.inode
        );
    };
    let file = File::open(&path)
        .with_context(|| format!("open the network namespace {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("join the network namespace {}", netns.inode))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("a thread working in netns {} panicked", netns.inode))
    })
}

/// Attaches the egress program to every interface of every namespace and the ingress program
/// to every target cgroup, as the directions ask. On error, what was attached so far is
/// returned with it so that the caller can take it off again.
pub fn attach_all(
    ebpf: &mut Ebpf,
    netns: &[Netns],
    cgroups: &[PathBuf],
    directions: &[Direction],
) -> Result<Attached, (Attached, anyhow::Error)> {
    let tcx = use_tcx();
    let mut attached = Attached::default();
    if directions.contains(&Direction::Ingress) {
        if let Err(e) = attach_cgroups(ebpf, cgroups, &mut attached) {
            return Err((attached, e));
        }
    }
    if !directions.contains(&Direction::Egress) {
        return Ok(attached);
    }
    for ns in netns {
        let res = in_netns(ns, || {
            let mut local = Attached::default();
            let r = attach_here(ebpf, ns, tcx, &mut local);
            Ok((local, r))
        });
        match res {
            Ok((local, r)) => {
                attached.links.extend(local.links);
                attached.qdiscs.extend(local.qdiscs);
                if let Err(e) = r {
                    return Err((attached, e));
                }
            }
            Err(e) => return Err((attached, e)),
        }
    }
    Ok(attached)
}

fn attach_cgroups(ebpf: &mut Ebpf, cgroups: &[PathBuf], out: &mut Attached) -> anyhow::Result<()> {
    let prog: &mut CgroupSkb = ebpf
        .program_mut(progs::CGROUP_INGRESS)
        .context("program missing from the object")?
        .try_into()?;
    for path in cgroups {
        let dir = File::open(path).with_context(|| format!("open {}", path.display()))?;
        // On kernels >= 5.7 aya makes a bpf_link, which always runs beside other programs
        // on the cgroup and refuses explicit flags; `Single` is the mode that sends none.
        let id = prog
            .attach(dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
            .with_context(|| format!("attach the ingress program to {}", path.display()))?;
        out.cgroup_links.push((path.clone(), prog.take_link(id)?));
    }
    Ok(())
}

fn attach_here(ebpf: &mut Ebpf, ns: &Netns, tcx: bool, out: &mut Attached) -> anyhow::Result<()> {
    let ifaces: Vec<String> = nix::net::if_::if_nameindex()
        .context("list the interfaces")?
        .iter()
        .map(|i| i.name().to_string_lossy().into_owned())
        .collect();
    let program = crate::loader::egress_program(ebpf);
    for ifname in &ifaces {
        attach_one(ebpf, program, ns, ifname, tcx, out)?;
    }
    Ok(())
}

/// Attaches `program` to the egress of `ifname` in this thread's namespace (`ns`).
fn attach_one(
    ebpf: &mut Ebpf,
    program: &str,
    ns: &Netns,
    ifname: &str,
    tcx: bool,
    out: &mut Attached,
) -> anyhow::Result<()> {
    let dir = Direction::Egress;
    if !tcx {
        match tc::qdisc_add_clsact(ifname) {
            Ok(()) => out.qdiscs.push(QdiscRecord {
                netns: ns.clone(),
                ifname: ifname.to_string(),
            }),
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e).with_context(|| format!("add a clsact qdisc to {ifname}")),
        }
    }
    let prog: &mut SchedClassifier = ebpf
        .program_mut(program)
        .context("program missing from the object")?
        .try_into()?;
    let options = if tcx {
        TcAttachOptions::TcxOrder(LinkOrder::default())
    } else {
        TcAttachOptions::Netlink(NlOptions::default())
    };
    let id = prog
        .attach_with_options(ifname, dir.attach_type(), options)
        .with_context(|| format!("attach the {dir:?} program to {ifname}"))?;
    let link = prog.take_link(id)?;
    let mode = if tcx {
        Mode::Tcx
    } else {
        Mode::Clsact {
            priority: link.priority()?,
            handle: link.handle()?.into(),
        }
    };
    out.links.push((
        Record {
            netns: ns.clone(),
            ifname: ifname.to_string(),
            direction: dir,
            mode,
        },
        link,
    ));
    Ok(())
}

/// Attaches the ingress-delay program to the egress of each far end (see `crate::peer`).
pub fn attach_peers(
    ebpf: &mut Ebpf,
    peers: &[crate::peer::Peer],
) -> Result<Attached, (Attached, anyhow::Error)> {
    let tcx = use_tcx();
    let program = crate::loader::peer_program(ebpf);
    let mut attached = Attached::default();
    for p in peers {
        let res = in_netns(&p.netns, || {
            let mut local = Attached::default();
            let r = attach_one(ebpf, program, &p.netns, &p.ifname, tcx, &mut local);
            Ok((local, r))
        });
        match res {
            Ok((local, r)) => {
                attached.extend(local);
                if let Err(e) = r {
                    return Err((attached, e));
                }
            }
            Err(e) => return Err((attached, e)),
        }
    }
    Ok(attached)
}

/// Removes clsact filters recorded by a loader that is no longer running (tcx links went
/// with its file descriptors), then the qdiscs it added.
pub fn remove_recorded(records: &[Record], qdiscs: &[QdiscRecord]) -> Vec<String> {
    let mut problems = Vec::new();
    for r in records {
        let Mode::Clsact { priority, handle } = r.mode else {
            continue;
        };
        if !r.netns.is_current() {
            continue;
        }
        let res = in_netns(&r.netns, || {
            let link = SchedClassifierLink::attached(
                &r.ifname,
                r.direction.attach_type(),
                priority,
                TcHandle::from(handle),
                None,
            )?;
            link.detach()?;
            Ok(())
        });
        if let Err(e) = res {
            problems.push(format!("detach {}: {e:#}", describe(r)));
        }
    }
    problems.extend(remove_qdiscs(qdiscs));
    problems
}

/// Removes the clsact qdiscs we added, unless someone else has put filters on them since.
fn remove_qdiscs(qdiscs: &[QdiscRecord]) -> Vec<String> {
    let mut problems = Vec::new();
    for q in qdiscs {
        if !q.netns.is_current() {
            continue;
        }
        let res = in_netns(&q.netns, || {
            // A forked child runs in the namespace of the thread that forked it.
            let busy = ["ingress", "egress"].iter().any(|hook| {
                Command::new("tc")
                    .args(["filter", "show", "dev", &q.ifname, *hook])
                    .output()
                    .is_ok_and(|o| !o.stdout.is_empty())
            });
            if busy {
                bail!(
                    "clsact on {} still has filters of others; left in place",
                    q.ifname
                );
            }
            let out = Command::new("tc")
                .args(["qdisc", "del", "dev", &q.ifname, "clsact"])
                .output()
                .context("run tc")?;
            if !out.status.success() {
                bail!(
                    "tc qdisc del dev {} clsact: {}",
                    q.ifname,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        });
        if let Err(e) = res {
            problems.push(format!("{e:#}"));
        }
    }
    problems
}

/// A root qdisc fault replaced with fq for delays (EDT), to be given back on revert.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FqRecord {
    pub netns: Netns,
    pub ifname: String,
    /// What was there: always the kernel's default for the device (fault replaces nothing
    /// else), which deleting our root qdisc brings back.
    pub previous: String,
}

/// How delayed packets are held: by fq, or by fault in userspace where the kernel has no fq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayPath {
    Fq,
    Userspace,
}

impl DelayPath {
    /// fq where the kernel has it; `FAULT_DELAY_PATH=userspace` forces the other path (to
    /// compare the two on one kernel).
    pub fn choose() -> Self {
        match std::env::var("FAULT_DELAY_PATH").as_deref() {
            Ok("userspace") => DelayPath::Userspace,
            Ok("fq") => DelayPath::Fq,
            _ if fq_available() => DelayPath::Fq,
            _ => DelayPath::Userspace,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
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

/// Makes fq the root qdisc of every interface in `netns`, so that departure times written by
/// the egress program are honoured. An interface already under fq is left as it is; one
/// whose root qdisc someone configured is refused rather than overwritten.
pub fn install_fq(netns: &[Netns]) -> Result<Vec<FqRecord>, (Vec<FqRecord>, anyhow::Error)> {
    let all: Vec<(Netns, Option<String>)> = netns.iter().map(|n| (n.clone(), None)).collect();
    install_fq_on(&all)
}

/// [`install_fq`] for single interfaces: (namespace, interface), or every interface of the
/// namespace for `None`.
pub fn install_fq_on(
    targets: &[(Netns, Option<String>)],
) -> Result<Vec<FqRecord>, (Vec<FqRecord>, anyhow::Error)> {
    let mut done = Vec::new();
    for (ns, only) in targets {
        let res = in_netns(ns, || {
            let mut here = Vec::new();
            let ifaces: Vec<String> = match only {
                Some(name) => vec![name.clone()],
                None => nix::net::if_::if_nameindex()
                    .context("list the interfaces")?
                    .iter()
                    .map(|i| i.name().to_string_lossy().into_owned())
                    .collect(),
            };
            for ifname in ifaces {
                match fq_here(&ifname) {
                    Ok(Some(previous)) => here.push(FqRecord {
                        netns: ns.clone(),
                        ifname,
                        previous,
                    }),
                    Ok(None) => {}
                    Err(e) => return Ok((here, Some(e))),
                }
            }
            Ok((here, None))
        });
        match res {
            Ok((here, None)) => done.extend(here),
            Ok((here, Some(e))) => {
                done.extend(here);
                return Err((done, e));
            }
            Err(e) => return Err((done, e)),
        }
    }
    Ok(done)
}

/// The root qdisc of `ifname` in this thread's namespace: (kind, handle).
fn root_qdisc(ifname: &str) -> anyhow::Result<(String, String)> {
    let out = Command::new("tc")
        .args(["-j", "qdisc", "show", "dev", ifname, "root"])
        .output()
        .context("run tc")?;
    if !out.status.success() {
        bail!(
            "tc qdisc show dev {ifname}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("parse tc -j")?;
    let root = v
        .as_array()
        .and_then(|a| a.iter().find(|q| q["root"] == true).or(a.first()))
        .with_context(|| format!("no root qdisc on {ifname}"))?;
    Ok((
        root["kind"].as_str().unwrap_or_default().to_string(),
        root["handle"].as_str().unwrap_or_default().to_string(),
    ))
}

fn fq_here(ifname: &str) -> anyhow::Result<Option<String>> {
    let (kind, handle) = root_qdisc(ifname)?;
    if kind == "fq" {
        return Ok(None);
    }
    if handle != "0:" {
        bail!(
            "{ifname} has a configured root qdisc ({kind} {handle}); delay needs fq there, \
             and fault does not replace a qdisc it cannot restore exactly"
        );
    }
    // fq's defaults (100 packets a flow, 10,000 in all) would cap a delayed flow at
    // 100 packets per delay; room for 10,000 a flow lets a flow run at full speed through
    // a 100 ms delay, as a real path's bandwidth-delay product would.
    let out = Command::new("tc")
        .args([
            "qdisc",
            "replace",
            "dev",
            ifname,
            "root",
            "fq",
            "limit",
            "100000",
            "flow_limit",
            "10000",
        ])
        .output()
        .context("run tc")?;
    if !out.status.success() {
        bail!(
            "install fq on {ifname} (delay needs the sch_fq qdisc): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(Some(kind))
}

/// Gives every interface back its default root qdisc.
pub fn restore_fq(records: &[FqRecord]) -> Vec<String> {
    let mut problems = Vec::new();
    for r in records {
        if !r.netns.is_current() {
            continue;
        }
        let res = in_netns(&r.netns, || {
            let out = Command::new("tc")
                .args(["qdisc", "del", "dev", &r.ifname, "root"])
                .output()
                .context("run tc")?;
            if !out.status.success() {
                bail!(
                    "tc qdisc del dev {} root: {}",
                    r.ifname,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let (kind, _) = root_qdisc(&r.ifname)?;
            if kind != r.previous {
                bail!(
                    "{} came back with {kind}, expected {}",
                    r.ifname,
                    r.previous
                );
            }
            Ok(())
        });
        if let Err(e) = res {
            problems.push(format!("restore the root qdisc: {e:#}"));
        }
    }
    problems
}
