//! Delay on kernels without sch_fq: the egress program (`fault_tc_resend`) copies each
//! delayed packet into RESEND_RING with its departure time and drops the original silently;
//! this thread keeps the packets in a time-ordered queue and sends each one again at its
//! time, through a packet socket in the namespace it came from.
//!
//! A packet sent again meets the egress program a second time, which lets it go: it comes from
//! a packet socket, in the loader's cgroup. It goes through the interface's qdisc as any
//! packet would (and is segmented there if it is a GSO super-packet the device cannot take:
//! PACKET_QDISC_BYPASS would drop those). It carries a virtio-net header, so a packet whose
//! checksum the stack left to the device (CHECKSUM_PARTIAL), or a GSO super-packet, gets the
//! same offloads on the way out as it would have had.
//!
//! The thread refreshes RESEND_ALIVE every [`HEARTBEAT`]; the program only hands packets
//! over while that is recent, so if fault dies packets flow undelayed again within
//! [`fault_common::RESEND_STALE_NS`] instead of vanishing into a ring that nobody reads.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{Array, MapData, RingBuf},
    Ebpf,
};
use fault_common::{maps, ResendHeader, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

use crate::{sys::netns::in_netns, sys::time::monotonic_ns, target::Netns};

/// How often the thread tells the program it is alive.
const HEARTBEAT: Duration = Duration::from_millis(100);
/// Packets held at once; beyond this a delayed packet is dropped, as a full queue would.
const QUEUE_LIMIT: usize = 200_000;
const HEADER: usize = std::mem::size_of::<ResendHeader>();
/// Send buffer of each packet socket (bytes).
const SEND_BUFFER: libc::c_int = 64 << 20;

/// What the resender did, for the final report and the bench.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub sent: u64,
    /// Dropped: queue full, or no socket for the packet's namespace.
    pub dropped: u64,
    /// Sends the kernel refused, and the last reason.
    pub errors: u64,
    pub last_error: Option<i32>,
    /// CPU time of the resender thread (user + system), ns.
    pub cpu_ns: u64,
    /// How late packets left, summed (ns), for the mean.
    pub late_ns: u64,
}

/// The resender thread and the packet sockets it sends through (one per network namespace,
/// keyed by namespace cookie).
pub struct Resender {
    sockets: Arc<Mutex<HashMap<u64, OwnedFd>>>,
    stop: OwnedFd,
    thread: Option<JoinHandle<anyhow::Result<Stats>>>,
}

impl Resender {
    /// Takes RESEND_RING and RESEND_ALIVE out of `ebpf` and starts the thread; with
    /// `debug`, every packet it fails to send is printed.
    pub fn start(ebpf: &mut Ebpf, debug: bool) -> anyhow::Result<Self> {
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the object"))
        };
        let ring = RingBuf::try_from(take(ebpf, maps::RESEND_RING)?)?;
        let mut alive: Array<MapData, u64> = take(ebpf, maps::RESEND_ALIVE)?.try_into()?;
        alive
            .set(0, monotonic_ns(), 0)
            .context("set RESEND_ALIVE")?;
        let stop = eventfd()?;
        let sockets = Arc::new(Mutex::new(HashMap::new()));
        let thread = {
            let sockets = Arc::clone(&sockets);
            let stop = stop.try_clone()?;
            std::thread::Builder::new()
                .name("fault-resend".into())
                .spawn(move || run(ring, alive, stop, sockets, debug))?
        };
        Ok(Resender {
            sockets,
            stop,
            thread: Some(thread),
        })
    }

    /// Opens a packet socket in `netns`, for the packets delayed there.
    pub fn add_netns(&self, netns: &Netns) -> anyhow::Result<()> {
        let (cookie, fd) = in_netns(netns, packet_socket)?;
        self.sockets.lock().unwrap().insert(cookie, fd);
        Ok(())
    }

    /// Sends what is still queued at once, stops the thread and returns its figures.
    pub fn finish(mut self) -> anyhow::Result<Stats> {
        self.signal_stop();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("the resend thread panicked"),
            None => Ok(Stats::default()),
        }
    }

    fn signal_stop(&self) {
        let one = 1u64.to_ne_bytes();
        let _ = nix::unistd::write(self.stop.as_fd(), &one);
    }
}

impl Drop for Resender {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.signal_stop();
            let _ = t.join();
        }
    }
}

fn eventfd() -> anyhow::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned from here on.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("eventfd");
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A packet socket in this thread's namespace that takes a virtio-net header, and the
/// namespace's cookie.
fn packet_socket() -> anyhow::Result<(u64, OwnedFd)> {
    // Protocol 0: the socket receives nothing.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("open a packet socket");
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // A packet stays charged to the socket until the receiving side has taken it; a burst of
    // packets due at one instant must not find the default 208 KiB full.
    for (level, opt, value, what) in [
        (
            libc::SOL_PACKET,
            libc::PACKET_VNET_HDR,
            1,
            "PACKET_VNET_HDR",
        ),
        (
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            SEND_BUFFER,
            "SO_SNDBUFFORCE",
        ),
    ] {
        let value: libc::c_int = value;
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                opt,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("set {what}"));
        }
    }
    let cookie = crate::sys::netns::socket_cookie(std::os::fd::AsFd::as_fd(&fd))
        .context("read the namespace cookie")?;
    Ok((cookie, fd))
}

/// A packet waiting for its departure time.
struct Held {
    header: ResendHeader,
    bytes: bytes::Bytes,
}

fn run(
    mut ring: RingBuf<MapData>,
    mut alive: Array<MapData, u64>,
    stop: OwnedFd,
    sockets: Arc<Mutex<HashMap<u64, OwnedFd>>>,
    debug: bool,
) -> anyhow::Result<Stats> {
    let timer = timerfd()?;
    let mut stats = Stats::default();
    // Ordered by departure time, then by arrival, so equal times keep their order.
    let mut queue: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut held: HashMap<u64, Held> = HashMap::new();
    let mut seq = 0u64;
    let mut next_beat = 0u64;
    let started_cpu = thread_cpu_ns();
    loop {
        // Take in what the program handed over.
        while let Some(item) = ring.next() {
            if item.len() < HEADER {
                continue;
            }
            let header: ResendHeader = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let end = HEADER + header.len as usize;
            if item.len() < end || held.len() >= QUEUE_LIMIT {
                stats.dropped += 1;
                continue;
            }
            queue.push(Reverse((header.depart_ns, seq)));
            held.insert(
                seq,
                Held {
                    header,
                    bytes: bytes::Bytes::copy_from_slice(&item[HEADER..end]),
                },
            );
            seq += 1;
        }
        // Send what is due, and everything once we are asked to stop.
        let stopping = readable(stop.as_raw_fd());
        let now = monotonic_ns();
        if !queue.is_empty() {
            let sockets = sockets.lock().unwrap();
            while let Some(Reverse((depart, id))) = queue.peek().copied() {
                if depart > now && !stopping {
                    break;
                }
                queue.pop();
                let Some(p) = held.remove(&id) else { continue };
                match sockets.get(&p.header.netns_cookie) {
                    None => stats.dropped += 1,
                    Some(fd) => match send(fd.as_raw_fd(), &p.header, &p.bytes) {
                        Ok(()) => {
                            stats.sent += 1;
                            stats.late_ns += now.saturating_sub(depart);
                        }
                        Err(e) => {
                            stats.errors += 1;
                            stats.last_error = e.raw_os_error();
                            if debug {
                                eprintln!("resend: {e}: {:?} len {}", p.header, p.bytes.len());
                            }
                        }
                    },
                }
            }
        }
        if stopping {
            let _ = alive.set(0, 0, 0);
            stats.cpu_ns = thread_cpu_ns().saturating_sub(started_cpu);
            return Ok(stats);
        }
        if now >= next_beat {
            let _ = alive.set(0, now, 0);
            next_beat = now + HEARTBEAT.as_nanos() as u64;
        }
        // Sleep until the next departure, the next heartbeat, a new packet or the stop.
        let wake = queue
            .peek()
            .map_or(next_beat, |Reverse((d, _))| (*d).min(next_beat));
        arm(timer.as_raw_fd(), wake)?;
        let mut fds = [
            libc::pollfd {
                fd: ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: timer.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return Err(io::Error::last_os_error()).context("poll");
        }
        if fds[1].revents != 0 {
            let mut buf = [0u8; 8];
            let _ = nix::unistd::read(timer.as_raw_fd(), &mut buf);
        }
    }
}

fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

fn timerfd() -> anyhow::Result<OwnedFd> {
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("timerfd_create");
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arms the timer for CLOCK_MONOTONIC time `at` (ns); a time already past fires at once.
fn arm(fd: RawFd, at: u64) -> anyhow::Result<()> {
    let at = at.max(1);
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: (at / 1_000_000_000) as libc::time_t,
            tv_nsec: (at % 1_000_000_000) as libc::c_long,
        },
    };
    let r =
        unsafe { libc::timerfd_settime(fd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::last_os_error()).context("timerfd_settime");
    }
    Ok(())
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h).
#[repr(C)]
#[derive(Default, Debug, PartialEq, Eq, Clone, Copy)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;

/// The virtio-net header that gives a re-sent packet the offloads it had: checksum
/// completion when its transport checksum is not finished (the stack left it to the device),
/// and segmentation when it is a GSO super-packet.
pub fn vnet_header(h: &ResendHeader, bytes: &[u8]) -> VnetHdr {
    let l4 = h.l4_off as usize;
    let csum_offset = match h.proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => return VnetHdr::default(),
    };
    if l4 == 0 || bytes.len() < l4 + csum_offset + 2 {
        return VnetHdr::default();
    }
    let gso = h.gso_size != 0 && h.gso_segs > 1;
    if !gso && transport_checksum_ok(h, bytes) {
        return VnetHdr::default();
    }
    let mut v = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: l4 as u16,
        csum_offset: csum_offset as u16,
        ..VnetHdr::default()
    };
    if gso {
        let l4_len = match h.proto {
            PROTO_TCP => ((bytes[l4 + 12] >> 4) as usize) * 4,
            _ => 8,
        };
        v.gso_type = match (h.proto, h.family) {
            (PROTO_TCP, FAMILY_V6) => VIRTIO_NET_HDR_GSO_TCPV6,
            (PROTO_TCP, _) => VIRTIO_NET_HDR_GSO_TCPV4,
            _ => VIRTIO_NET_HDR_GSO_UDP_L4,
        };
        v.gso_size = h.gso_size;
        v.hdr_len = (l4 + l4_len) as u16;
    }
    v
}

/// Whether the TCP/UDP checksum in `bytes` is complete and right (an IPv4 UDP checksum of 0
/// means "none" and counts as complete).
pub fn transport_checksum_ok(h: &ResendHeader, bytes: &[u8]) -> bool {
    let l4 = h.l4_off as usize;
    let segment = &bytes[l4..];
    let mut sum: u64 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    let ip = h.l3_off as usize;
    match h.family {
        FAMILY_V4 if l4 >= ip + 20 => {
            if h.proto == PROTO_UDP && segment.len() >= 8 && segment[6..8] == [0, 0] {
                return true;
            }
            add(&bytes[ip + 12..ip + 20]);
        }
        FAMILY_V6 if l4 >= ip + 40 => add(&bytes[ip + 8..ip + 40]),
        _ => return false,
    }
    add(&(segment.len() as u32).to_be_bytes());
    add(&[0, h.proto]);
    add(segment);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

fn send(fd: RawFd, h: &ResendHeader, bytes: &[u8]) -> io::Result<()> {
    let vnet = vnet_header(h, bytes);
    let ethertype: u16 = match h.family {
        FAMILY_V6 => 0x86dd,
        _ => 0x0800,
    };
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ethertype.to_be();
    addr.sll_ifindex = h.ifindex as i32;
    let mut iov = [
        libc::iovec {
            iov_base: (&vnet as *const VnetHdr).cast_mut().cast(),
            iov_len: std::mem::size_of::<VnetHdr>(),
        },
        libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        },
    ];
    let msg = libc::msghdr {
        msg_name: (&mut addr as *mut libc::sockaddr_ll).cast(),
        msg_namelen: std::mem::size_of::<libc::sockaddr_ll>() as u32,
        msg_iov: iov.as_mut_ptr(),
        msg_iovlen: iov.len(),
        msg_control: std::ptr::null_mut(),
        msg_controllen: 0,
        msg_flags: 0,
    };
    // Blocking, but briefly: a full send buffer drains as the receiver takes packets.
    for _ in 0..100 {
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                unsafe { libc::poll(&mut p, 1, 1) };
            }
            _ => return Err(e),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOBUFS))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame from 10.0.0.1:1000 to 10.0.0.2:2000 with `payload`,
    /// its UDP checksum complete.
    fn udp_frame(payload: &[u8]) -> (ResendHeader, Vec<u8>) {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let total = 20 + 8 + payload.len();
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        f.extend(ip);
        let mut udp = vec![0u8; 8];
        udp[0..2].copy_from_slice(&1000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&2000u16.to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(payload);
        // RFC 1071 sum over the pseudo-header and the datagram.
        let mut sum: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + udp.len() as u32;
        for c in udp.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        udp[6..8].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        f.extend(udp);
        let h = ResendHeader {
            len: f.len() as u32,
            l3_off: 14,
            l4_off: 34,
            proto: PROTO_UDP,
            family: FAMILY_V4,
            ..ResendHeader::default()
        };
        (h, f)
    }

    #[test]
    fn a_complete_checksum_needs_no_offload() {
        let (h, f) = udp_frame(b"hello, odd");
        assert!(transport_checksum_ok(&h, &f));
        assert_eq!(vnet_header(&h, &f), VnetHdr::default());
    }

    #[test]
    fn an_unfinished_checksum_is_left_to_the_device() {
        let (h, mut f) = udp_frame(b"hello");
        // CHECKSUM_PARTIAL: the field holds only the pseudo-header's sum.
        f[40..42].copy_from_slice(&0x1234u16.to_be_bytes());
        assert!(!transport_checksum_ok(&h, &f));
        let v = vnet_header(&h, &f);
        assert_eq!(v.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!((v.csum_start, v.csum_offset), (34, 6));
        assert_eq!(v.gso_type, 0);
    }

    #[test]
    fn a_udp_checksum_of_zero_means_none() {
        let (h, mut f) = udp_frame(b"hello");
        f[40..42].copy_from_slice(&[0, 0]);
        assert!(transport_checksum_ok(&h, &f));
    }

    #[test]
    fn a_gso_tcp_packet_keeps_its_segmentation() {
        // Ethernet + IPv6 + a TCP header of 32 bytes (data offset 8) + payload.
        let mut f = vec![0u8; 14 + 40 + 32 + 3000];
        f[14] = 0x60;
        f[14 + 40 + 12] = 8 << 4;
        let h = ResendHeader {
            len: f.len() as u32,
            l3_off: 14,
            l4_off: 54,
            gso_size: 1428,
            gso_segs: 3,
            proto: PROTO_TCP,
            family: FAMILY_V6,
            ..ResendHeader::default()
        };
        let v = vnet_header(&h, &f);
        assert_eq!(v.flags, VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(v.gso_type, VIRTIO_NET_HDR_GSO_TCPV6);
        assert_eq!((v.gso_size, v.hdr_len), (1428, 54 + 32));
        assert_eq!((v.csum_start, v.csum_offset), (54, 16));
    }

    #[test]
    fn other_protocols_go_as_they_are() {
        let (mut h, f) = udp_frame(b"x");
        h.proto = 1;
        assert_eq!(vnet_header(&h, &f), VnetHdr::default());
    }
}
