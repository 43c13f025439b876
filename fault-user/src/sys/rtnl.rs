//! The rtnetlink requests fault makes of the kernel about links, qdiscs and namespace ids,
//! so that iproute2 (`ip`, `tc`) is not needed at run time.
//!
//! Every call opens its own socket, in the calling thread: the callers run on threads that
//! have entered a target's network namespace with `setns`, and a netlink socket talks to the
//! namespace it was opened in. The socket is synchronous, so no runtime is needed on those
//! threads.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use netlink_packet_core::{
    DecodeError, DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{LinkAttribute, LinkFlags, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What went wrong, with the kernel's errno kept (see [`RtnlError::errno`]) so that callers
/// can tell "already exists" (EEXIST) or "not there" (ENOENT, ENODEV) from real failures.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("open a netlink socket")]
    Socket { source: io::Error },
    #[error("{op}: talk to the kernel")]
    Io { op: &'static str, source: io::Error },
    /// The kernel refused: `source` holds its errno, `message` its extended ack, if any.
    #[error(
        "{op}{}{}: {source}{}",
        if ifname.is_empty() { "" } else { " on " },
        ifname,
        message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
    )]
    Request {
        op: &'static str,
        /// Empty for requests about the whole namespace.
        ifname: String,
        source: io::Error,
        message: Option<String>,
    },
    #[error("{op}: decode the kernel's reply")]
    Decode {
        op: &'static str,
        source: DecodeError,
    },
}

impl RtnlError {
    /// The errno the kernel (or the socket) answered with.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Socket { source }
            | RtnlError::Io { source, .. }
            | RtnlError::Request { source, .. } => source.raw_os_error(),
            RtnlError::Decode { .. } => None,
        }
    }
}

/// An interface of this namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_LINK: the interface this one is tied to (a veth's peer, a vlan's parent),
    /// counted in the namespace `peer_netnsid` names, or in this one when that is `None`.
    pub peer_index: Option<u32>,
    /// IFLA_LINK_NETNSID: the id this namespace gives the peer's, when that is another.
    pub peer_netnsid: Option<i32>,
    pub is_loopback: bool,
}

/// A qdisc as the kernel lists it; handles are `major << 16 | minor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    /// 0 for the kernel's default qdisc, which cannot be deleted.
    pub handle: u32,
    pub parent: u32,
}

const TC_H_ROOT: u32 = 0xFFFF_FFFF;
const CLSACT: TcHandle = TcHandle::CLSACT;
/// fq's attributes (include/uapi/linux/pkt_sched.h); the crate does not model fq's options.
const TCA_FQ_PLIMIT: u16 = 1;
const TCA_FQ_FLOW_PLIMIT: u16 = 2;
/// The extended ack's text (include/uapi/linux/netlink.h).
const NLMSGERR_ATTR_MSG: u16 = 1;

pub fn links() -> Result<Vec<Link>, RtnlError> {
    let replies = ask(
        "list links",
        "",
        NLM_F_DUMP,
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )?;
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
            _ => None,
        })
        .collect())
}

fn link_of(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        peer_index: None,
        peer_netnsid: None,
        is_loopback: msg.header.flags.contains(LinkFlags::Loopback),
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Link(i) if i != 0 => link.peer_index = Some(i),
            LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(id),
            _ => {}
        }
    }
    link
}

/// ENODEV when there is no such interface.
pub fn link_index(name: &str) -> Result<u32, RtnlError> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let replies = ask(
        "look up the interface",
        name,
        0,
        RouteNetlinkMessage::GetLink(msg),
    )?;
    replies
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
            _ => None,
        })
        .ok_or_else(|| no_reply("look up the interface", name))
}

/// RTM_GETNSID: the id this namespace gives the namespace behind `fd` (None when it has
/// none). Ids are how a veth names the namespace of its peer (`Link::peer_netnsid`).
pub fn nsid_of(fd: BorrowedFd<'_>) -> Result<Option<i32>, RtnlError> {
    let mut msg = NsidMessage::default();
    msg.attributes
        .push(NsidAttribute::Fd(fd.as_raw_fd() as u32));
    let replies = ask(
        "get the namespace id",
        "",
        0,
        RouteNetlinkMessage::GetNsId(msg),
    )?;
    let id = replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNsId(n) => Some(n.attributes),
            _ => None,
        })
        .flatten()
        .find_map(|a| match a {
            NsidAttribute::Id(id) => Some(id),
            _ => None,
        });
    // The kernel answers -1 (NETNSA_NSID_NOT_ASSIGNED) for a namespace it gave no id.
    Ok(id.filter(|id| *id >= 0))
}

/// The root qdisc (parent TC_H_ROOT), None if the device has none listed: a device that is
/// down has the built-in noop qdisc, which the kernel leaves out of its lists.
pub fn root_qdisc(ifname: &str) -> Result<Option<Qdisc>, RtnlError> {
    qdisc_under(ifname, TC_H_ROOT)
}

/// Whether the device has a clsact qdisc (an `ingress` one, in the same place, is not).
pub fn has_clsact(ifname: &str) -> Result<bool, RtnlError> {
    let q = qdisc_under(ifname, u32::from(CLSACT))?;
    Ok(q.is_some_and(|q| q.kind == "clsact"))
}

fn qdisc_under(ifname: &str, parent: u32) -> Result<Option<Qdisc>, RtnlError> {
    let index = link_index(ifname)?;
    let replies = ask(
        "list qdiscs",
        ifname,
        NLM_F_DUMP,
        RouteNetlinkMessage::GetQueueDiscipline(tc_message(index, TcHandle::UNSPEC)),
    )?;
    // The kernel lists every device's qdiscs whatever the request's ifindex.
    Ok(replies.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewQueueDiscipline(q)
            if q.header.index as u32 == index && u32::from(q.header.parent) == parent =>
        {
            Some(qdisc_of(q))
        }
        _ => None,
    }))
}

fn qdisc_of(msg: TcMessage) -> Qdisc {
    let kind = msg.attributes.into_iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k),
        _ => None,
    });
    Qdisc {
        kind: kind.unwrap_or_default(),
        handle: msg.header.handle.into(),
        parent: msg.header.parent.into(),
    }
}

/// Replaces the root qdisc with fq (the departure-time qdisc that delays need), with room
/// for `limit` packets in all and `flow_limit` a flow. ENOENT when the kernel has no fq.
pub fn replace_root_fq(ifname: &str, limit: u32, flow_limit: u32) -> Result<(), RtnlError> {
    replace_root(ifname, "fq", fq_options(limit, flow_limit))
}

fn fq_options(limit: u32, flow_limit: u32) -> Vec<TcOption> {
    [(TCA_FQ_PLIMIT, limit), (TCA_FQ_FLOW_PLIMIT, flow_limit)]
        .map(|(kind, v)| TcOption::Other(DefaultNla::new(kind, v.to_ne_bytes().to_vec())))
        .to_vec()
}

/// Replaces the root qdisc with one of `kind`; the kernel picks its handle.
fn replace_root(ifname: &str, kind: &str, options: Vec<TcOption>) -> Result<(), RtnlError> {
    let msg = root_message(link_index(ifname)?, kind, options);
    let flags = NLM_F_CREATE | NLM_F_REPLACE;
    let new = RouteNetlinkMessage::NewQueueDiscipline(msg);
    ask("replace the root qdisc", ifname, flags, new).map(drop)
}

/// Deleting the root qdisc gives the device back the kernel's default. ENOENT when the root
/// is already the default.
pub fn delete_root_qdisc(ifname: &str) -> Result<(), RtnlError> {
    let msg = tc_message(link_index(ifname)?, TcHandle::ROOT);
    let del = RouteNetlinkMessage::DelQueueDiscipline(msg);
    ask("delete the root qdisc", ifname, 0, del).map(drop)
}

/// Deletes the clsact qdisc, and with it every filter on its hooks. The kind is named so
/// that an `ingress` qdisc, which sits in the same place, is refused (EINVAL) rather than
/// deleted; a device whose clsact is gone answers EINVAL too, or ENOENT if it never had one.
pub fn delete_clsact(ifname: &str) -> Result<(), RtnlError> {
    let mut msg = tc_message(link_index(ifname)?, CLSACT);
    msg.attributes.push(TcAttribute::Kind("clsact".to_string()));
    let del = RouteNetlinkMessage::DelQueueDiscipline(msg);
    ask("delete the clsact qdisc", ifname, 0, del).map(drop)
}

/// The number of filters on clsact's ingress or egress hook, as `tc filter show` lists them
/// less its per-priority heading lines: a cls_bpf program counts once, a u32 filter once
/// for its hash table and once a key. 0 when there is no clsact.
pub fn clsact_filter_count(ifname: &str, egress: bool) -> Result<usize, RtnlError> {
    // Each priority's heading comes with handle 0; the filters under it have their own.
    Ok(clsact_filters(ifname, egress)?
        .iter()
        .filter(|m| {
            matches!(m, RouteNetlinkMessage::NewTrafficFilter(f) if u32::from(f.header.handle) != 0)
        })
        .count())
}

/// The kernel's dump of the filters on clsact's ingress or egress hook.
fn clsact_filters(ifname: &str, egress: bool) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
    let hook = TcHandle {
        major: CLSACT.major,
        minor: if egress {
            TcHandle::MIN_EGRESS
        } else {
            TcHandle::MIN_INGRESS
        },
    };
    let msg = tc_message(link_index(ifname)?, hook);
    let get = RouteNetlinkMessage::GetTrafficFilter(msg);
    ask("list filters", ifname, NLM_F_DUMP, get)
}

/// A cls_bpf filter on a clsact hook: where it is, and the program it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfFilter {
    pub priority: u16,
    pub handle: u32,
    pub prog_id: u32,
}

/// The cls_bpf filters on clsact's ingress or egress hook, with their programs' ids; none
/// when there is no clsact.
pub fn clsact_bpf_filters(ifname: &str, egress: bool) -> Result<Vec<BpfFilter>, RtnlError> {
    let replies = clsact_filters(ifname, egress)?;
    Ok(replies.iter().filter_map(bpf_filter).collect())
}

/// The filter a dump reply describes, if it is a cls_bpf one (not a priority's heading).
fn bpf_filter(m: &RouteNetlinkMessage) -> Option<BpfFilter> {
    let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
        return None;
    };
    let handle = u32::from(f.header.handle);
    let prog_id = f.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
            _ => None,
        }),
        _ => None,
    })?;
    // tcm_info holds the priority in its upper half, the protocol in its lower.
    let priority = (f.header.info >> 16) as u16;
    (handle != 0).then_some(BpfFilter {
        priority,
        handle,
        prog_id,
    })
}

fn root_message(index: u32, kind: &str, options: Vec<TcOption>) -> TcMessage {
    let mut msg = tc_message(index, TcHandle::ROOT);
    msg.attributes.push(TcAttribute::Kind(kind.to_string()));
    if !options.is_empty() {
        msg.attributes.push(TcAttribute::Options(options));
    }
    msg
}

fn tc_message(index: u32, parent: TcHandle) -> TcMessage {
    let mut msg = TcMessage::default();
    msg.header.index = index as i32;
    msg.header.parent = parent;
    msg
}

fn no_reply(op: &'static str, ifname: &str) -> RtnlError {
    RtnlError::Request {
        op,
        ifname: ifname.to_string(),
        source: io::Error::from_raw_os_error(libc::ENODATA),
        message: Some("the kernel sent no answer".to_string()),
    }
}

/// Sends one request and gathers what the kernel sends back until it is done: the
/// messages of a dump, or a request's reply (if any) and its ack.
fn ask(
    op: &'static str,
    ifname: &str,
    flags: u16,
    msg: RouteNetlinkMessage,
) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
    let sock = open()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    let io = |source| RtnlError::Io { op, source };
    sock.send(&buf, 0).map_err(io)?;
    let mut replies = Vec::new();
    loop {
        let (data, _) = sock.recv_from_full().map_err(io)?;
        if receive(op, ifname, &data, &mut replies)? {
            return Ok(replies);
        }
    }
}

/// Adds the messages of one datagram to `replies`; true once the kernel is done.
fn receive(
    op: &'static str,
    ifname: &str,
    mut data: &[u8],
    replies: &mut Vec<RouteNetlinkMessage>,
) -> Result<bool, RtnlError> {
    while !data.is_empty() {
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(data)
            .map_err(|source| RtnlError::Decode { op, source })?;
        let len = (msg.header.length as usize).next_multiple_of(4);
        data = data.get(len..).unwrap_or_default();
        let refused = |code: i32, tlvs: &[u8]| RtnlError::Request {
            op,
            ifname: ifname.to_string(),
            source: io::Error::from_raw_os_error(code.abs()),
            message: ack_message(tlvs),
        };
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => replies.push(m),
            NetlinkPayload::Done(d) if d.code < 0 => return Err(refused(d.code, &d.extended_ack)),
            NetlinkPayload::Error(e) if e.code.is_some() => {
                // With NETLINK_CAP_ACK only the request's header comes back, then the TLVs.
                return Err(refused(
                    e.raw_code(),
                    e.header.get(16..).unwrap_or_default(),
                ));
            }
            NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => return Ok(true),
            _ => {}
        }
    }
    Ok(false)
}

/// The kernel's explanation in an extended ack, which is what `tc` printed after "Error:".
fn ack_message(tlvs: &[u8]) -> Option<String> {
    NlasIterator::new(tlvs).flatten().find_map(|nla| {
        (nla.kind() == NLMSGERR_ATTR_MSG).then(|| {
            let text = nla.value().split(|b| *b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(text).into_owned()
        })
    })
}

fn open() -> Result<Socket, RtnlError> {
    let socket = |source| RtnlError::Socket { source };
    let sock = Socket::new(NETLINK_ROUTE).map_err(socket)?;
    sock.connect(&SocketAddr::new(0, 0)).map_err(socket)?;
    // Errors then carry the kernel's text and not a copy of the request.
    sock.set_ext_ack(true).map_err(socket)?;
    sock.set_cap_ack(true).map_err(socket)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use std::{fs::File, os::fd::AsFd, process::Command, thread};

    use netlink_packet_core::NLM_F_EXCL;
    use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkInfo};
    use nix::{
        sched::{setns, unshare, CloneFlags},
        unistd::Uid,
    };

    use super::*;

    /// Runs `f` on a thread of its own in a fresh network namespace, which goes with the
    /// thread; None, with the reason printed, where this process may not make one.
    fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let run = thread::spawn(move || match unshare(CloneFlags::CLONE_NEWNET) {
            Ok(()) => Some(f()),
            Err(e) => {
                eprintln!("skipped: unshare(CLONE_NEWNET): {e}");
                None
            }
        });
        run.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// A second namespace, kept alive by the returned file after its thread is gone.
    fn spare_netns() -> File {
        thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare a second namespace");
            File::open("/proc/thread-self/ns/net").expect("open its ns file")
        })
        .join()
        .unwrap()
    }

    /// Runs `f` in the namespace behind `ns`, on a thread of its own.
    fn in_netns<T: Send + 'static>(ns: &File, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = ns.try_clone().unwrap();
        thread::spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// A veth pair, the peer in the namespace behind `peer_ns` if given.
    fn add_veth(name: &str, peer: &str, peer_ns: Option<&File>) {
        let mut far = LinkMessage::default();
        far.attributes.push(LinkAttribute::IfName(peer.to_string()));
        if let Some(ns) = peer_ns {
            far.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(far))),
        ]));
        let new = RouteNetlinkMessage::NewLink(msg);
        ask("add a veth", name, NLM_F_CREATE | NLM_F_EXCL, new).unwrap();
    }

    fn set_up(name: &str) {
        let mut msg = LinkMessage::default();
        msg.header.index = link_index(name).unwrap();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        ask("set up", name, 0, RouteNetlinkMessage::SetLink(msg)).unwrap();
    }

    fn add_clsact(name: &str) {
        let mut msg = tc_message(link_index(name).unwrap(), CLSACT);
        msg.header.handle = TcHandle {
            major: CLSACT.major,
            minor: 0,
        };
        msg.attributes.push(TcAttribute::Kind("clsact".to_string()));
        let new = RouteNetlinkMessage::NewQueueDiscipline(msg);
        ask("add clsact", name, NLM_F_CREATE | NLM_F_EXCL, new).unwrap();
    }

    /// A veth pair whose ends are both up, so that each has its default root qdisc.
    fn veth_up() {
        add_veth("v0", "v1", None);
        set_up("v0");
        set_up("v1");
    }

    /// fq cannot be tried on a kernel without it, so its request is held to what
    /// `tc qdisc replace dev X root fq limit 100000 flow_limit 10000` sends (strace).
    #[test]
    #[cfg(target_endian = "little")]
    fn fq_request_is_the_one_tc_sends() {
        let msg = root_message(3, "fq", fq_options(100_000, 10_000));
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let new = RouteNetlinkMessage::NewQueueDiscipline(msg);
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(new));
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        #[rustfmt::skip]
        let tc: [u8; 48] = [
            0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
            0, 0, 0, 0, 7, 0, 1, 0, b'f', b'q', 0, 0, 20, 0, 2, 0,
            8, 0, 1, 0, 0xa0, 0x86, 1, 0, 8, 0, 2, 0, 0x10, 0x27, 0, 0,
        ];
        assert_eq!(&buf[..8], &[64, 0, 0, 0, 36, 0, 5, 5]);
        assert_eq!(&buf[16..], &tc);
    }

    #[test]
    fn links_lists_loopback() {
        in_new_netns(|| {
            let links = links().unwrap();
            let lo = links.iter().find(|l| l.name == "lo").expect("lo listed");
            assert!(lo.is_loopback);
            assert_eq!((lo.peer_index, lo.peer_netnsid), (None, None));
            assert_eq!(link_index("lo").unwrap(), lo.index);
        });
    }

    #[test]
    fn link_index_of_a_missing_interface_is_enodev() {
        in_new_netns(|| {
            let e = link_index("nosuch0").unwrap_err();
            assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
            assert!(matches!(&e, RtnlError::Request { ifname, .. } if ifname == "nosuch0"));
        });
    }

    #[test]
    fn veth_in_one_namespace_names_its_peer_without_nsid() {
        in_new_netns(|| {
            add_veth("v0", "v1", None);
            let links = links().unwrap();
            let end = |n: &str| links.iter().find(|l| l.name == n).unwrap().clone();
            let (v0, v1) = (end("v0"), end("v1"));
            assert_eq!(v0.peer_index, Some(v1.index));
            assert_eq!(v1.peer_index, Some(v0.index));
            assert_eq!((v0.peer_netnsid, v0.is_loopback), (None, false));
        });
    }

    #[test]
    fn veth_across_namespaces_gives_the_nsid_that_nsid_of_reads() {
        if !Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let other = spare_netns();
        let far_ns = other.try_clone().unwrap();
        let near = in_new_netns(move || {
            assert_eq!(
                nsid_of(far_ns.as_fd()).unwrap(),
                None,
                "no id before the veth"
            );
            add_veth("v0", "v1", Some(&far_ns));
            let v0 = links()
                .unwrap()
                .into_iter()
                .find(|l| l.name == "v0")
                .unwrap();
            let id = nsid_of(far_ns.as_fd()).unwrap();
            assert!(id.is_some());
            assert_eq!(v0.peer_netnsid, id);
            v0
        });
        let Some(v0) = near else { return };
        let far = in_netns(&other, || links().unwrap());
        let v1 = far
            .iter()
            .find(|l| l.name == "v1")
            .expect("v1 in the other namespace");
        assert_eq!(v0.peer_index, Some(v1.index));
        assert!(v1.peer_netnsid.is_some());
        assert!(!far.iter().any(|l| l.name == "v0"));
    }

    #[test]
    fn root_qdisc_is_default_until_replaced_and_back_after_delete() {
        in_new_netns(|| {
            add_veth("v0", "v1", None);
            assert_eq!(
                root_qdisc("v0").unwrap(),
                None,
                "a device that is down lists none"
            );
            set_up("v0");
            set_up("v1");
            let default = root_qdisc("v0").unwrap().expect("a root qdisc once up");
            assert_eq!((default.handle, default.parent), (0, TC_H_ROOT));
            assert_eq!(default.kind, "noqueue");

            replace_root("v0", "pfifo", Vec::new()).unwrap();
            let pfifo = root_qdisc("v0").unwrap().unwrap();
            assert_eq!(pfifo.kind, "pfifo");
            assert_ne!(pfifo.handle, 0);
            assert_eq!(
                root_qdisc("v1").unwrap(),
                Some(default.clone()),
                "v1 untouched"
            );

            delete_root_qdisc("v0").unwrap();
            assert_eq!(root_qdisc("v0").unwrap(), Some(default));
            let again = delete_root_qdisc("v0").unwrap_err();
            assert_eq!(again.errno(), Some(libc::ENOENT), "{again}");
        });
    }

    #[test]
    fn replace_root_fq_installs_fq() {
        in_new_netns(|| {
            veth_up();
            match replace_root_fq("v0", 100_000, 10_000) {
                Err(e) if e.errno() == Some(libc::ENOENT) => {
                    eprintln!("skipped: this kernel has no sch_fq ({e})");
                    return;
                }
                res => res.unwrap(),
            }
            let fq = root_qdisc("v0").unwrap().unwrap();
            assert_eq!(fq.kind, "fq");
            delete_root_qdisc("v0").unwrap();
            assert_eq!(root_qdisc("v0").unwrap().unwrap().kind, "noqueue");
        });
    }

    #[test]
    fn clsact_filters_are_counted_and_clsact_deleted() {
        in_new_netns(|| {
            veth_up();
            add_clsact("v0");
            assert_eq!(clsact_filter_count("v0", false).unwrap(), 0);
            assert_eq!(clsact_filter_count("v0", true).unwrap(), 0);
            // A forked child works in the namespace of the thread that forked it.
            let tc = Command::new("tc")
                .args(["filter", "add", "dev", "v0", "egress", "protocol", "all"])
                .args(["prio", "1", "u32", "match", "u32", "0", "0"])
                .status();
            match tc {
                Ok(s) if s.success() => {
                    assert!(clsact_filter_count("v0", true).unwrap() > 0);
                    assert_eq!(clsact_filter_count("v0", false).unwrap(), 0);
                }
                other => eprintln!("filter part skipped: tc filter add: {other:?}"),
            }
            delete_clsact("v0").unwrap();
            assert_eq!(clsact_filter_count("v0", true).unwrap(), 0);
            let again = delete_clsact("v0").unwrap_err();
            eprintln!("deleting clsact again: {again}");
            assert!(matches!(again.errno(), Some(libc::EINVAL | libc::ENOENT)));
        });
    }

    #[test]
    fn delete_clsact_leaves_an_ingress_qdisc() {
        in_new_netns(|| {
            veth_up();
            let ingress = Command::new("tc")
                .args(["qdisc", "add", "dev", "v0", "ingress"])
                .status();
            if !ingress.as_ref().is_ok_and(|s| s.success()) {
                eprintln!("skipped: tc qdisc add ingress: {ingress:?}");
                return;
            }
            let e = delete_clsact("v0").unwrap_err();
            assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
        });
    }
}
