//! A real TUN device and real routes, inside a network namespace of the test's own.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use slopn_tun::netns::{self, Namespace};
use slopn_tun::{Routes, Tun, TunConfig, TunError};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn tun_device_addresses_mtu_routes_and_packets() {
    in_namespace("tun_device_addresses_mtu_routes_and_packets", "tun", |ns| {
        let config = TunConfig {
            name: Some("slopn-t0".into()),
            mtu: 1380,
            addresses: vec![(ip("10.9.0.1"), 24)],
            offload: true,
        };
        let mut tun = Tun::open(&config).unwrap();
        assert_eq!(tun.name(), "slopn-t0");
        let link = ns.ip(&["-o", "link", "show", "dev", "slopn-t0"]).unwrap();
        assert!(link.contains("mtu 1380") && link.contains(",UP"), "{link}");
        let addrs = ns.ip(&["-o", "addr", "show", "dev", "slopn-t0"]).unwrap();
        assert!(addrs.contains("10.9.0.1/24"), "{addrs}");

        tun.set_mtu(1300).unwrap();
        assert_eq!(tun.mtu().unwrap(), 1300);
        tun.set_addresses(&[(ip("10.9.0.2"), 32), (ip("fd00:9::2"), 64)])
            .unwrap();
        let addrs = ns.ip(&["-o", "addr", "show", "dev", "slopn-t0"]).unwrap();
        assert!(
            addrs.contains("10.9.0.2/32") && addrs.contains("fd00:9::2/64"),
            "{addrs}"
        );
        assert!(!addrs.contains("10.9.0.1/24"), "{addrs}");

        // Routes come and go.
        let mut routes = Routes::new("slopn-t0");
        routes
            .set(&[
                "10.50.0.0/16".parse().unwrap(),
                "fd00:50::/48".parse().unwrap(),
            ])
            .unwrap();
        let table = ns.ip(&["route", "show"]).unwrap();
        assert!(table.contains("10.50.0.0/16 dev slopn-t0"), "{table}");
        routes.set(&["10.60.0.0/16".parse().unwrap()]).unwrap();
        let table = ns.ip(&["route", "show"]).unwrap();
        assert!(
            !table.contains("10.50.0.0/16") && table.contains("10.60.0.0/16"),
            "{table}"
        );

        // A packet routed into the device comes out of it.
        let mut ping = ns
            .command("ping")
            .args(["-c", "1", "-W", "1", "10.60.1.1"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut found = None;
        let packet = loop {
            match tun.recv_packets(|p| {
                if slopn_like_dst(p) == Some(ip("10.60.1.1")) {
                    found = Some(p.to_vec());
                }
            }) {
                Ok(_) => {
                    if let Some(p) = found.take() {
                        break p;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "no packet came out of the TUN device"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(packet[9], 1, "an ICMP echo request");
        let _ = ping.wait();

        // The name is taken while the device exists.
        match Tun::open(&config) {
            Err(TunError::NameInUse(name)) => assert_eq!(name, "slopn-t0"),
            other => panic!("expected NameInUse, got {other:?}"),
        }
        drop(routes);
        let table = ns.ip(&["route", "show"]).unwrap();
        assert!(!table.contains("10.60.0.0/16"), "{table}");
        drop(tun);
        assert!(
            ns.ip(&["link", "show", "dev", "slopn-t0"]).is_err(),
            "device removed"
        );
    });
}

#[test]
fn bad_names_are_refused_clearly() {
    let config = TunConfig {
        name: Some("a/very/long/and/bad/name".into()),
        mtu: 1400,
        addresses: vec![],
        offload: true,
    };
    let err = Tun::open(&config).unwrap_err();
    assert!(matches!(err, TunError::BadName(_)));
    assert!(err.to_string().contains("1 to 15 characters"));
}

/// Runs `body` on a thread inside a network namespace of its own (removed afterwards), or
/// skips `test` saying why (fails under CI).
fn in_namespace(test: &str, suffix: &str, body: impl FnOnce(&Namespace) + Send) {
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
fn offload_tun(name: &str, addresses: &[(&str, u8)]) -> Tun {
    Tun::open(&TunConfig {
        name: Some(name.into()),
        mtu: 1400,
        addresses: addresses.iter().map(|(a, len)| (ip(a), *len)).collect(),
        offload: true,
    })
    .unwrap()
}

/// The destination of an IPv4 packet.
fn slopn_like_dst(p: &[u8]) -> Option<IpAddr> {
    (p.len() >= 20 && p[0] >> 4 == 4).then(|| IpAddr::from([p[16], p[17], p[18], p[19]]))
}

/// Contiguous TCP segments of one flow, queued and flushed together, reach the kernel as one
/// coalesced packet (the hub's fast path), not one write each.
#[test]
fn written_tcp_segments_are_coalesced() {
    in_namespace("written_tcp_segments_are_coalesced", "gro", |_| {
        let mut tun = offload_tun("slopn-g0", &[("10.9.0.1", 24)]);
        let offload = if tun.offload() {
            Ok(())
        } else {
            Err("no TUN offload here".into())
        };
        if !netns::skip_unless("written_tcp_segments_are_coalesced", offload) {
            return;
        }
        // Sees every packet the namespace's stack receives, as the device hands it over.
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

        const SEGMENTS: u32 = 8;
        const PAYLOAD: usize = 1000;
        for i in 0..SEGMENTS {
            let last = i == SEGMENTS - 1;
            tun.queue_packet(&tcp_segment(i, 1_000 + i * PAYLOAD as u32, PAYLOAD, last))
                .unwrap();
        }
        tun.flush().unwrap();

        let mut sizes = Vec::new();
        let mut buf = [0u8; 70_000];
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match std::io::Read::read(&mut &capture, &mut buf) {
                // Ours come from 10.9.0.2; the kernel's answers (RSTs) from 10.9.0.1.
                Ok(n) if n >= 20 && buf[12..16] == [10, 9, 0, 2] => sizes.push(n),
                Ok(_) => {}
                Err(_) if !sizes.is_empty() => break,
                Err(_) => {}
            }
        }
        let total: usize = sizes.iter().map(|n| n - 40).sum();
        assert_eq!(
            total,
            SEGMENTS as usize * PAYLOAD,
            "every byte arrived: {sizes:?}"
        );
        assert!(
            sizes.len() < SEGMENTS as usize,
            "segments were written one by one: {sizes:?}"
        );
    });
}

/// What a spoke sends reaches the hub's TUN batch after only header checks, so the merging
/// of TCP segments and UDP datagrams (IPv4 and IPv6) sees hostile input: batches of mangled,
/// truncated, duplicated and reordered packets (checksums fixed up half of the time, so that
/// they get past tun-rs's checksum test) must never panic or end the device, only be written
/// or dropped.
#[test]
fn hostile_segment_batches_are_written_or_dropped() {
    in_namespace(
        "hostile_segment_batches_are_written_or_dropped",
        "grofz",
        |_| {
            let mut tun = offload_tun("slopn-f0", &[("10.9.0.1", 24), ("fd00:9::1", 64)]);
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            for _ in 0..2000 {
                let kind = [Kind::Tcp4, Kind::Udp4, Kind::Tcp6, Kind::Udp6][(next() % 4) as usize];
                let count = 2 + next() % 40;
                let payload = 1 + (next() % 1300) as usize;
                let mut batch: Vec<Vec<u8>> = (0..count as u32)
                    .map(|i| segment(kind, i, 1_000 + i * payload as u32, payload, false))
                    .collect();
                for _ in 0..next() % 8 {
                    let victim = (next() as usize) % batch.len();
                    if next() % 6 == 5 {
                        // A duplicate somewhere else in the batch.
                        let copy = batch[victim].clone();
                        let at = (next() as usize) % batch.len();
                        batch.insert(at, copy);
                        continue;
                    }
                    let p = &mut batch[victim];
                    let l3 = kind.l3_len();
                    if p.len() < l3 + 20 {
                        // Already truncated into the headers.
                        continue;
                    }
                    match next() % 5 {
                        // A byte anywhere in the headers.
                        0 => {
                            let at = (next() as usize) % (l3 + 20);
                            p[at] = next() as u8;
                        }
                        // Truncated, with or without fixing the IP length.
                        1 => {
                            let keep = (next() as usize % p.len()).max(1);
                            p.truncate(keep);
                            if next() % 2 == 0 {
                                set_ip_length(p);
                            }
                        }
                        // TCP flags / data offset, or the UDP length.
                        2 => p[l3 + 13] = next() as u8,
                        3 => p[l3 + 12] = next() as u8,
                        // Sequence numbers (TCP) or ports and length (UDP) that do not fit.
                        _ => p[l3 + 4..l3 + 8].copy_from_slice(&(next() as u32).to_be_bytes()),
                    }
                    if next() % 2 == 0 {
                        fix_checksums(p);
                    }
                }
                if next() % 3 == 0 {
                    let a = (next() as usize) % batch.len();
                    let b = (next() as usize) % batch.len();
                    batch.swap(a, b);
                }
                for p in &batch {
                    tun.queue_packet(p).unwrap();
                }
                tun.flush()
                    .expect("a hostile batch must not end the device");
            }
            // The device still works: a clean batch still arrives coalesced or not, intact.
            for i in 0..4 {
                tun.queue_packet(&tcp_segment(i, 50_000 + i * 100, 100, i == 3))
                    .unwrap();
            }
            tun.flush().unwrap();
        },
    );
}

/// The packets the hostile-batch test starts from.
#[derive(Clone, Copy)]
enum Kind {
    Tcp4,
    Udp4,
    Tcp6,
    Udp6,
}

impl Kind {
    fn l3_len(self) -> usize {
        match self {
            Kind::Tcp4 | Kind::Udp4 => 20,
            Kind::Tcp6 | Kind::Udp6 => 40,
        }
    }
}

/// A TCP segment 10.9.0.2:40000 -> 10.9.0.1:5001 with valid checksums: ACK, and PSH on the
/// last one, as a sender's segmentation leaves them.
fn tcp_segment(index: u32, seq: u32, payload: usize, last: bool) -> Vec<u8> {
    segment(Kind::Tcp4, index, seq, payload, last)
}

/// One packet of a flow from 10.9.0.2 / fd00:9::2 port 40000 to 10.9.0.1 / fd00:9::1 port
/// 5001 with valid checksums: TCP segments carry ACK (and PSH on the last one) and `seq`;
/// UDP datagrams are all the same size, as a sender's segmentation leaves them.
fn segment(kind: Kind, index: u32, seq: u32, payload: usize, last: bool) -> Vec<u8> {
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
fn set_ip_length(p: &mut [u8]) {
    let len = p.len();
    match p.first().map(|b| b >> 4) {
        Some(4) if len >= 4 => p[2..4].copy_from_slice(&(len as u16).to_be_bytes()),
        Some(6) if len >= 40 => p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes()),
        _ => {}
    }
}

/// Recomputes the IPv4 header checksum and the TCP or UDP checksum of a (possibly mangled)
/// packet where its lengths allow.
fn fix_checksums(p: &mut [u8]) {
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

fn checksum_partial(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The Internet checksum of `data`, starting from the partial sum `initial`.
fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial + checksum_partial(data);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
