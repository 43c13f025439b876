//! Ethernet frames with IPv4/IPv6 and TCP/UDP/ICMP, checksums filled in, for the programs
//! to classify.

use std::net::IpAddr;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

/// The transport header to build; ICMP becomes ICMPv6 under IPv6.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp { sport: u16, dport: u16 },
    Udp { sport: u16, dport: u16 },
    Icmp,
}

/// A built frame and where its parts start.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub l3_off: usize,
    pub l4_off: usize,
    pub payload_off: usize,
}

impl Frame {
    /// The IP protocol number of the transport header.
    pub fn proto(&self) -> u8 {
        match self.bytes[12..14] {
            [0x08, 0x00] => self.bytes[self.l3_off + 9],
            _ => self.bytes[self.l3_off + 6],
        }
    }

    /// Offset of the transport checksum field.
    pub fn csum_off(&self) -> usize {
        self.l4_off
            + match self.proto() {
                PROTO_TCP => 16,
                PROTO_UDP => 6,
                _ => 2,
            }
    }

    /// Whether the transport checksum of `bytes` (this frame, possibly altered) verifies.
    pub fn checksum_ok(&self, bytes: &[u8]) -> bool {
        l4_sum(bytes, self.l3_off, self.l4_off) == 0xffff
    }
}

/// A frame from `src` to `dst` (both of one family) carrying `payload`.
pub fn frame(src: &str, dst: &str, l4: L4, payload: &[u8]) -> Frame {
    let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let v6 = src.is_ipv6();
    assert_eq!(
        v6,
        dst.is_ipv6(),
        "{src} and {dst} are of different families"
    );
    let (proto, mut l4_bytes) = match l4 {
        L4::Tcp { sport, dport } => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..8].copy_from_slice(&1u32.to_be_bytes());
            h[12] = 5 << 4;
            h[13] = 0x18; // PSH, ACK
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            (PROTO_TCP, h)
        }
        L4::Udp { sport, dport } => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            (PROTO_UDP, h)
        }
        L4::Icmp => {
            // Echo request, id 1, sequence 1.
            let kind = if v6 { 128 } else { 8 };
            let h = vec![kind, 0, 0, 0, 0, 1, 0, 1];
            (if v6 { PROTO_ICMPV6 } else { PROTO_ICMP }, h)
        }
    };
    let l4_len = l4_bytes.len() + payload.len();
    l4_bytes.extend_from_slice(payload);

    let mut bytes = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            bytes.extend_from_slice(&[0x08, 0x00]);
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let sum = !fold(sum16(&h, 0));
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            bytes.extend_from_slice(&[0x86, 0xdd]);
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(l4_len as u16).to_be_bytes());
            h.extend_from_slice(&[proto, 64]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h
        }
        _ => unreachable!("families checked above"),
    };
    let l3_off = bytes.len();
    bytes.extend_from_slice(&ip);
    let l4_off = bytes.len();
    let payload_off = l4_off + (l4_bytes.len() - payload.len());
    bytes.extend_from_slice(&l4_bytes);
    let mut f = Frame {
        bytes,
        l3_off,
        l4_off,
        payload_off,
    };
    let sum = !l4_sum(&f.bytes, l3_off, l4_off);
    // UDP sends an all-zero sum as all ones (zero means "no checksum").
    let sum = if sum == 0 && proto == PROTO_UDP {
        0xffff
    } else {
        sum
    };
    let at = f.csum_off();
    f.bytes[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The one's complement sum over the transport segment and, except for ICMPv4, the pseudo
/// header: 0xffff when the checksum in the segment is right.
fn l4_sum(bytes: &[u8], l3: usize, l4: usize) -> u16 {
    let segment = &bytes[l4..];
    let proto = match bytes[12..14] {
        [0x08, 0x00] => bytes[l3 + 9],
        _ => bytes[l3 + 6],
    };
    let mut sum = sum16(segment, 0);
    match bytes[12..14] {
        [0x08, 0x00] if proto == PROTO_ICMP => {}
        [0x08, 0x00] => {
            sum = sum16(&bytes[l3 + 12..l3 + 20], sum);
            sum += u32::from(proto) + segment.len() as u32;
        }
        _ => {
            sum = sum16(&bytes[l3 + 8..l3 + 40], sum);
            sum += u32::from(proto) + segment.len() as u32;
        }
    }
    fold(sum)
}

fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}
