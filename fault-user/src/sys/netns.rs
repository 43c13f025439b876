//! Working inside another network namespace.
//!
//! Netlink and interface names work in the namespace of the calling thread, so everything
//! that talks to an interface of a target runs on a short-lived thread that joined the
//! target's namespace first; the rest of fault stays where it is.

use std::fs::File;

use anyhow::{bail, Context as _};
use nix::sched::CloneFlags;

use crate::target::Netns;

/// Runs `f` on a new thread that has joined `netns`.
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

/// The interfaces of the calling thread's namespace, by name.
pub fn interfaces() -> anyhow::Result<Vec<String>> {
    Ok(nix::net::if_::if_nameindex()
        .context("list the interfaces")?
        .iter()
        .map(|i| i.name().to_string_lossy().into_owned())
        .collect())
}
