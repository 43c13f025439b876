//! Where ingress delay happens: the far end of a target namespace's veth.
//!
//! A packet on its way to a target can only be held before it enters the target's namespace:
//! once there, nothing queues it. Every packet that leaves the far end of the target's veth
//! is on its way in, so fault attaches `fault_tc_peer` to that interface's egress, with fq as
//! its root qdisc (or the userspace path). This needs the target in a namespace of its own:
//! the far end of a veth of the host's namespace carries other hosts' traffic.
//!
//! The far end is found with the kernel's namespace ids: a veth reports its peer's ifindex
//! and the id (nsid) its own namespace gives the peer's namespace; each namespace fault can
//! open is asked for the id the target's namespace gives it (RTM_GETNSID), and the one whose
//! id matches holds the peer. Interface indexes alone do not tell, as each namespace counts
//! its own.

use std::{fs::File, os::fd::AsFd, path::PathBuf};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::{
    sys::{netns::in_netns, rtnl},
    target::Netns,
};

/// The far end of a target namespace's veth.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Peer {
    /// The namespace that holds it, and its name there.
    pub netns: Netns,
    pub ifname: String,
    /// Inode of the target's namespace, and the veth's name on that side.
    pub target_netns: u64,
    pub target_ifname: String,
}

/// The far ends of the veths of each namespace in `targets`. A namespace with no veth whose
/// far end is in another namespace is an error: ingress delay has nowhere to happen.
pub fn find(targets: &[Netns]) -> anyhow::Result<Vec<Peer>> {
    let candidates = Netns::all();
    let mut peers = Vec::new();
    for target in targets {
        let paths: Vec<(Netns, PathBuf)> = candidates
            .iter()
            .filter(|(n, _)| n.inode != target.inode)
            .cloned()
            .collect();
        // In the target's namespace: its veths, and the id it gives each other namespace.
        let (links, ids) = in_netns(target, || {
            let links: Vec<rtnl::Link> = rtnl::links()?
                .into_iter()
                .filter(|l| l.peer_netnsid.is_some() && l.peer_index.is_some())
                .collect();
            let mut ids = Vec::new();
            for (n, path) in &paths {
                if let Ok(f) = File::open(path) {
                    if let Ok(Some(id)) = rtnl::nsid_of(f.as_fd()) {
                        ids.push((n.clone(), id));
                    }
                }
            }
            Ok((links, ids))
        })?;
        let mut found = false;
        for link in links {
            let Some((netns, _)) = ids.iter().find(|(_, id)| Some(*id) == link.peer_netnsid) else {
                continue;
            };
            let index = link.peer_index.unwrap_or_default();
            let far = in_netns(netns, || {
                Ok(rtnl::links()?
                    .into_iter()
                    .find(|l| l.index == index)
                    .map(|l| l.name))
            })?;
            if let Some(ifname) = far {
                found = true;
                peers.push(Peer {
                    netns: netns.clone(),
                    ifname,
                    target_netns: target.inode,
                    target_ifname: link.name,
                });
            }
        }
        if !found {
            bail!(
                "network namespace {} has no veth to another namespace; ingress delay holds \
                 packets at the far end of the target's veth",
                target.inode
            );
        }
    }
    Ok(peers)
}
