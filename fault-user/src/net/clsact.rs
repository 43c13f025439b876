//! The clsact qdisc that cls_bpf filters need on kernels without tcx: added where missing,
//! removed again by its guard, and found again from the state file after a loader died.

use anyhow::{bail, Context as _};
use aya::programs::{
    links::Link as _,
    tc::{self, SchedClassifierLink, TcHandle},
    ProgramError, TcAttachType,
};
use serde::{Deserialize, Serialize};

use super::attach::{Mode, Record};
use crate::{
    sys::{netns::in_netns, rtnl},
    target::Netns,
};

/// A clsact qdisc that fault added and so must remove.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QdiscRecord {
    pub netns: Netns,
    pub ifname: String,
}

/// A clsact qdisc fault added; dropping it removes it (unless others' filters are on it).
pub struct Clsact {
    pub record: QdiscRecord,
    present: bool,
}

impl Clsact {
    /// Lets go without removing anything: the qdisc went with its namespace.
    pub fn forget(&mut self) {
        self.present = false;
    }

    /// Adds clsact to `ifname` in this thread's namespace (`ns`); `None` if it was there.
    pub fn ensure(ns: &Netns, ifname: &str) -> anyhow::Result<Option<Clsact>> {
        match tc::qdisc_add_clsact(ifname) {
            Ok(()) => Ok(Some(Clsact {
                record: QdiscRecord {
                    netns: ns.clone(),
                    ifname: ifname.to_string(),
                },
                present: true,
            })),
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("add a clsact qdisc to {ifname}")),
        }
    }

    pub(super) fn take_down(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.present) {
            return Ok(());
        }
        remove(&self.record).map_err(|e| format!("{e:#}"))
    }
}

impl Drop for Clsact {
    fn drop(&mut self) {
        if let Err(p) = self.take_down() {
            eprintln!("fault: warning: {p}");
        }
    }
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
            // A loader killed while it reverted may have deleted the qdisc, and the
            // filter with it, before it could remove its record.
            if !rtnl::has_clsact(&r.ifname)? {
                return Ok(());
            }
            // Gone already: the killed loader had detached it before its qdisc.
            detach_here(&r.ifname, r.direction.attach_type(), priority, handle)
        });
        if let Err(e) = res {
            problems.push(format!("detach {}: {e:#}", r.describe()));
        }
    }
    problems.extend(
        qdiscs
            .iter()
            .filter_map(|q| remove(q).err().map(|e| format!("{e:#}"))),
    );
    problems
}

/// Detaches the cls_bpf filter at (`priority`, `handle`) on `ifname`'s `hook`, in this
/// thread's namespace; one that is gone already is no error.
pub(super) fn detach_here(
    ifname: &str,
    hook: TcAttachType,
    priority: u16,
    handle: u32,
) -> anyhow::Result<()> {
    let link = SchedClassifierLink::attached(ifname, hook, priority, TcHandle::from(handle), None)?;
    match link.detach() {
        Err(ProgramError::NetlinkError(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => Ok(r?),
    }
}

/// Removes a clsact qdisc we added, unless someone else has put filters on it since.
fn remove(q: &QdiscRecord) -> anyhow::Result<()> {
    if !q.netns.is_current() {
        return Ok(());
    }
    in_netns(&q.netns, || remove_here(q))
}

/// [`remove`] in the calling thread's namespace, which is `q`'s.
pub(super) fn remove_here(q: &QdiscRecord) -> anyhow::Result<()> {
    if !rtnl::has_clsact(&q.ifname)? {
        return Ok(());
    }
    let busy =
        rtnl::clsact_filter_count(&q.ifname, false)? + rtnl::clsact_filter_count(&q.ifname, true)?;
    if busy > 0 {
        bail!(
            "clsact on {} still has filters of others; left in place",
            q.ifname
        );
    }
    Ok(rtnl::delete_clsact(&q.ifname)?)
}
