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

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    process::Command,
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::{sys::netns::in_netns, target::Netns};

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

/// An interface as `ip -j link show` lists it.
#[derive(Debug, Deserialize)]
struct Link {
    ifindex: u32,
    ifname: String,
    /// For a link to another namespace: the peer's index, and the id of its namespace.
    link_index: Option<u32>,
    link_netnsid: Option<i32>,
}

fn links_here() -> anyhow::Result<Vec<Link>> {
    let out = Command::new("ip")
        .args(["-j", "link", "show"])
        .output()
        .context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip -j link show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("parse ip -j link show")
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
            let links: Vec<Link> = links_here()?
                .into_iter()
                .filter(|l| l.link_netnsid.is_some() && l.link_index.is_some())
                .collect();
            let mut ids = Vec::new();
            for (n, path) in &paths {
                if let Ok(f) = File::open(path) {
                    if let Ok(Some(id)) = nsid_of(&f) {
                        ids.push((n.clone(), id));
                    }
                }
            }
            Ok((links, ids))
        })?;
        let mut found = false;
        for link in links {
            let Some((netns, _)) = ids.iter().find(|(_, id)| Some(*id) == link.link_netnsid) else {
                continue;
            };
            let index = link.link_index.unwrap_or_default();
            let far = in_netns(netns, || {
                Ok(links_here()?
                    .into_iter()
                    .find(|l| l.ifindex == index)
                    .map(|l| l.ifname))
            })?;
            if let Some(ifname) = far {
                found = true;
                peers.push(Peer {
                    netns: netns.clone(),
                    ifname,
                    target_netns: target.inode,
                    target_ifname: link.ifname,
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

/// The id this thread's namespace gives the namespace `ns` (RTM_GETNSID), if it gave one.
fn nsid_of(ns: &File) -> io::Result<Option<i32>> {
    const NETNSA_NSID: u16 = 1;
    const NETNSA_FD: u16 = 3;
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr (16) + rtgenmsg padded to 4 + one u32 attribute (8).
    let mut req = [0u8; 28];
    req[0..4].copy_from_slice(&28u32.to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETNSID.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNSPEC as u8;
    req[20..22].copy_from_slice(&8u16.to_ne_bytes());
    req[22..24].copy_from_slice(&NETNSA_FD.to_ne_bytes());
    req[24..28].copy_from_slice(&(ns.as_raw_fd() as u32).to_ne_bytes());
    let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 256];
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let reply = &buf[..n as usize];
    if reply.len() < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != libc::RTM_NEWNSID {
        return Ok(None);
    }
    // Attributes follow the header and the padded rtgenmsg.
    let mut at = 20;
    while at + 4 <= reply.len() {
        let len = u16::from_ne_bytes([reply[at], reply[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([reply[at + 2], reply[at + 3]]);
        if len < 4 || at + len > reply.len() {
            break;
        }
        if kind == NETNSA_NSID && len >= 8 {
            let id = i32::from_ne_bytes(reply[at + 4..at + 8].try_into().unwrap());
            return Ok((id >= 0).then_some(id));
        }
        at += (len + 3) & !3;
    }
    Ok(None)
}
