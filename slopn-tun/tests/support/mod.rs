//! What the TUN device tests share: a namespace per test, devices with offload, packets of
//! one flow with valid checksums, and a capture of what the namespace's stack receives.
// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::net::IpAddr;
use std::time::Duration;

use slopn_tun::netns::{self, Namespace};
use slopn_tun::{Tun, TunConfig};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs `body` on a thread inside a network namespace of its own (removed afterwards), or
/// skips `test` saying why (fails under CI).
pub fn in_namespace(test: &str, suffix: &str, body: impl FnOnce(&Namespace) + Send) {
    if !netns::runnable(test) {
        return;
    }
    let ns = Namespace::create(format!("{}-{suffix}", netns::unique_prefix())).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter().unwrap();
            body(&ns);
        })
        .join()
        .unwrap();
    });
}

/// A TUN device with offload and the given addresses, MTU 1400.
pub fn offload_tun(name: &str, addresses: &[(&str, u8)]) -> Tun {
    Tun::open(&TunConfig {
        name: Some(name.into()),
        mtu: 1400,
        addresses: addresses.iter().map(|(a, len)| (ip(a), *len)).collect(),
        offload: true,
    })
    .unwrap()
}

/// The packets the hostile-batch test starts from.
#[derive(Clone, Copy)]
pub enum Kind {
    Tcp4,
    Udp4,
    Tcp6,
    Udp6,
}

impl Kind {
    pub fn l3_len(self) -> usize {
        match self {
            Kind::Tcp4 | Kind::Udp4 => 20,
            Kind::Tcp6 | Kind::Udp6 => 40,
        }
    }
}

/// A TCP segment 10.9.0.2:40000 -> 10.9.0.1:5001 with valid checksums: ACK, and PSH on the
/// last one, as a sender's segmentation leaves them.
pub fn tcp_segment(index: u32, seq: u32, payload: usize, last: bool) -> Vec<u8> {
    segment(Kind::Tcp4, index, seq, payload, last)
}

/// One packet of a flow from 10.9.0.2 / fd00:9::2 port 40000 to 10.9.0.1 / fd00:9::1 port
/// 5001 with valid checksums: TCP segments carry ACK (and PSH on the last one) and `seq`;
/// UDP datagrams are all the same size, as a sender's segmentation leaves them.
pub fn segment(kind: Kind, index: u32, seq: u32, payload: usize, last: bool) -> Vec<u8> {
    let l3 = kind.l3_len();
    let tcp = matches!(kind, Kind::Tcp4 | Kind::Tcp6);
    let l4 = if tcp { 20 } else { 8 };
    let mut p = vec![0u8; l3 + l4 + payload];
    if l3 == 20 {
        p[0] = 0x45;
        p[4..6].copy_from_slice(&(0x100 + index as u16).to_be_bytes());
        p[6] = 0x40; // don't fragment
        p[8] = 64;
        p[9] = if tcp { 6 } else { 17 };
        p[12..16].copy_from_slice(&[10, 9, 0, 2]);
        p[16..20].copy_from_slice(&[10, 9, 0, 1]);
    } else {
        p[0] = 0x60;
        p[6] = if tcp { 6 } else { 17 };
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd00:9::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd00:9::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    }
    set_ip_length(&mut p);
    p[l3..l3 + 2].copy_from_slice(&40000u16.to_be_bytes());
    p[l3 + 2..l3 + 4].copy_from_slice(&5001u16.to_be_bytes());
    if tcp {
        p[l3 + 4..l3 + 8].copy_from_slice(&seq.to_be_bytes());
        p[l3 + 8..l3 + 12].copy_from_slice(&1u32.to_be_bytes());
        p[l3 + 12] = 5 << 4;
        p[l3 + 13] = if last { 0x18 } else { 0x10 };
        p[l3 + 14..l3 + 16].copy_from_slice(&65535u16.to_be_bytes());
    } else {
        p[l3 + 4..l3 + 6].copy_from_slice(&((l4 + payload) as u16).to_be_bytes());
    }
    for (i, b) in p[l3 + l4..].iter_mut().enumerate() {
        *b = (i as u32 + seq) as u8;
    }
    fix_checksums(&mut p);
    p
}

/// Sets the IPv4 total length or the IPv6 payload length to the packet's length.
pub fn set_ip_length(p: &mut [u8]) {
    let len = p.len();
    match p.first().map(|b| b >> 4) {
        Some(4) if len >= 4 => p[2..4].copy_from_slice(&(len as u16).to_be_bytes()),
        Some(6) if len >= 40 => p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes()),
        _ => {}
    }
}

/// Recomputes the IPv4 header checksum and the TCP or UDP checksum of a (possibly mangled)
/// packet where its lengths allow.
pub fn fix_checksums(p: &mut [u8]) {
    let (l3, protocol, pseudo) = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < ihl {
                return;
            }
            p[10..12].fill(0);
            let sum = checksum(&p[..ihl], 0);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            (ihl, p[9], p[12..20].to_vec())
        }
        Some(6) if p.len() >= 40 => (40, p[6], p[8..40].to_vec()),
        _ => return,
    };
    let at = match protocol {
        6 => l3 + 16,
        17 => l3 + 6,
        _ => return,
    };
    if p.len() < at + 2 {
        return;
    }
    let mut pseudo = pseudo;
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&((p.len() - l3) as u16).to_be_bytes());
    p[at..at + 2].fill(0);
    let sum = checksum(&p[l3..], checksum_partial(&pseudo));
    p[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

pub fn checksum_partial(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The Internet checksum of `data`, starting from the partial sum `initial`.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial + checksum_partial(data);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An `AF_PACKET` socket that sees every packet the namespace's stack receives, as the TUN
/// device hands it over (coalesced packets whole).
pub fn capture() -> socket2::Socket {
    let capture = socket2::Socket::new(
        socket2::Domain::PACKET,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::from(i32::from(
            (libc::ETH_P_ALL as u16).to_be(),
        ))),
    )
    .unwrap();
    capture
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    capture.set_recv_buffer_size(8 << 20).unwrap();
    capture
}
