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

/// The namespace cookie of the socket `fd` (SO_NETNS_COOKIE, Linux 5.14): unlike an inode
/// number, which the kernel gives again once a namespace is gone, a cookie names one
/// namespace for the life of the machine.
pub fn socket_cookie(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which is that large.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    match r {
        0 => Ok(cookie),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The cookie of `netns` (see [`socket_cookie`]); `None` where the kernel has none to give
/// (before 5.14) or the namespace is gone.
pub fn cookie(netns: &Netns) -> Option<u64> {
    in_netns(netns, || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        Ok(socket_cookie(std::os::fd::AsFd::as_fd(&socket))?)
    })
    .ok()
}
