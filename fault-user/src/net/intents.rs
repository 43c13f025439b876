//! cls_bpf filters written down before they are added.
//!
//! A filter on clsact outlives the loader, and the state file records it only once the
//! loader has attached everything (see `crate::engine`): a loader killed in between left a
//! filter no record named, and `fault stop` could not find it. So before each filter (and
//! the clsact qdisc it may need) goes on, the run appends an intent to
//! `/run/fault/NAME.intents`: the namespace, the interface, and the id of the program the
//! filter will run. `fault stop` removes from those interfaces every filter running that
//! program (no other run's filter runs it), and a qdisc fault may have added once it is empty.
//! The fq root qdisc that delays need is written down the same way before it replaces an
//! interface's default.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::programs::TcAttachType;
use serde::{Deserialize, Serialize};

use super::{
    clsact::{self, QdiscRecord},
    fq::{self, FqRecord},
};
use crate::{
    sys::{netns::in_netns, rtnl},
    target::Netns,
};

/// What a run is about to put on one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Intent {
    /// A cls_bpf filter on its egress.
    Filter(FilterIntent),
    /// fq as its root qdisc, in place of the device's default.
    Fq(FqRecord),
}

/// A cls_bpf filter a run is about to add to one interface's egress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterIntent {
    pub netns: Netns,
    pub ifname: String,
    /// The program the filter runs: a filter that runs another is not this run's.
    pub prog_id: u32,
    /// There was no clsact qdisc, so the run adds one.
    pub qdisc: bool,
}

/// Where a run writes its intents.
#[derive(Debug, Clone)]
pub struct Intents {
    path: PathBuf,
}

impl Intents {
    pub fn of(name: &str) -> Self {
        Intents {
            path: crate::state::intents_path(name),
        }
    }

    /// Appends `intent`; the write is done before this returns, so a kill after it leaves
    /// the line for `fault stop`.
    pub fn note(&self, intent: &Intent) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(intent)?;
        line.push(b'\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&line))
            .with_context(|| format!("write {}", self.path.display()))
    }

    pub fn remove(&self) -> anyhow::Result<()> {
        crate::state::remove_if_there(&self.path)
    }

    /// Every intent written, skipping a line cut short by a kill during its write.
    pub fn read(&self) -> Vec<Intent> {
        read_lines(&self.path)
    }
}

fn read_lines(path: &Path) -> Vec<Intent> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut intents: Vec<Intent> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    intents.dedup();
    intents
}

/// Removes, on each interface named in `intents`, the filters running the intended
/// program, then the clsact qdisc the run added there if nothing else is on it; and gives
/// an interface meant for fq its default root qdisc back if fq is there. Namespaces that
/// are gone took all of it with them.
pub fn remove_intended(intents: &[Intent]) -> Vec<String> {
    intents
        .iter()
        .filter_map(|i| match i {
            Intent::Filter(f) => remove_filters(f).err(),
            Intent::Fq(r) => fq::restore_if_fq(r).err(),
        })
        .collect()
}

/// [`remove_intended`] for one filter.
fn remove_filters(i: &FilterIntent) -> Result<(), String> {
    if !i.netns.is_current() {
        return Ok(());
    }
    in_netns(&i.netns, || remove_here(i))
        .map_err(|e| format!("remove the filters intended on {}: {e:#}", i.ifname))
}

/// [`remove_filters`] in the filter's namespace.
fn remove_here(i: &FilterIntent) -> anyhow::Result<()> {
    if !rtnl::has_clsact(&i.ifname)? {
        return Ok(());
    }
    let ours = rtnl::clsact_bpf_filters(&i.ifname, true)?
        .into_iter()
        .filter(|f| f.prog_id == i.prog_id);
    for f in ours {
        clsact::detach_here(&i.ifname, TcAttachType::Egress, f.priority, f.handle)?;
    }
    if i.qdisc {
        let q = QdiscRecord {
            netns: i.netns.clone(),
            ifname: i.ifname.clone(),
        };
        clsact::remove_here(&q)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cut_short_is_skipped_and_repeats_count_once() {
        let path = std::env::temp_dir().join(format!("fault-intents-{}", std::process::id()));
        let i = Intent::Filter(FilterIntent {
            netns: Netns { inode: 7, pid: 1 },
            ifname: "veth0".into(),
            prog_id: 42,
            qdisc: true,
        });
        let line = serde_json::to_string(&i).unwrap();
        let text = format!("{line}\n{line}\n{}", &line[..line.len() / 2]);
        std::fs::write(&path, text).unwrap();
        let read = read_lines(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read, vec![i]);
    }
}
