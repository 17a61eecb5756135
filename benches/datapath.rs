//! The packet path without I/O: a spoke and a hub in memory moving IP packets both ways, and
//! the hub's route lookup with 10 to 10,000 spokes.
//!
//! `cargo bench --bench datapath` prints bytes per second for each packet size. Each
//! iteration hands a batch of packets (96 KiB, at most 64 packets) to one side, carries its QUIC datagrams across (up to
//! 32 per `poll_transmit`, as the event loop's GSO batches), takes the packets out on the
//! other side, and carries the acknowledgements back, so the figures include encryption,
//! decryption, routing, anti-spoofing and ACK processing.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use slopn_proto::packet::checksum;
use slopn_proto::pki::{CertificateAuthority, Validity};
use slopn_proto::route::{Route, RouteTable};
use slopn_proto::{
    Credential, Datagram, Hub, HubConfig, PoolConfig, Spoke, SpokeConfig, SpokeState, tls,
};

const HUB_UDP: &str = "192.0.2.1:4433";
const SPOKE_UDP: &str = "192.0.2.2:50000";
const HUB_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
/// Bytes handed over per iteration: well within the datagram queues, so that nothing is
/// dropped and the figures measure moving packets.
const BATCH_BYTES: usize = 96 * 1024;
/// Datagrams per `poll_transmit`, as the event loop asks for with UDP GSO (64 KiB).
const SEGMENTS: usize = 45;

struct Pair {
    hub: Hub,
    spoke: Spoke,
    spoke_ip: Ipv4Addr,
    buf: Vec<u8>,
}

impl Pair {
    fn new() -> Self {
        let wall = SystemTime::now();
        let validity = Validity::days_from(wall, 2);
        let ca = CertificateAuthority::generate("bench CA", [7; 32], validity).unwrap();
        let cert = ca
            .issue_server(&["hub.bench".into()], [8; 32], validity)
            .unwrap();
        let token = "bench-token-0123456789abcdef";
        let hub_config = HubConfig::new(
            cert.certified_key().unwrap(),
            vec![PoolConfig::new("10.100.0.0/24".parse().unwrap())],
            vec![Credential::token("bench", token)],
            [1; 32],
        );
        let trust = tls::parse_certificates(ca.cert_pem().as_bytes()).unwrap();
        let spoke_config =
            SpokeConfig::new(HUB_UDP.parse().unwrap(), "hub.bench", trust, token, [2; 32]);
        let now = Instant::now();
        let mut pair = Pair {
            hub: Hub::new(hub_config, now, wall).unwrap(),
            spoke: Spoke::new(spoke_config, now, wall).unwrap(),
            spoke_ip: Ipv4Addr::UNSPECIFIED,
            buf: Vec::with_capacity(64 * 1024),
        };
        let deadline = now + Duration::from_secs(5);
        while pair.spoke.state() != SpokeState::Established {
            assert!(Instant::now() < deadline, "the spoke did not connect");
            pair.exchange();
        }
        // Let path MTU discovery finish so that the largest packets fit.
        for _ in 0..100 {
            pair.exchange();
        }
        pair.spoke_ip = match pair.spoke.addresses()[0] {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => unreachable!("IPv4 pool"),
        };
        pair
    }

    /// Carries every pending datagram across, both ways, until both sides are quiet.
    fn exchange(&mut self) {
        let (hub_addr, spoke_addr): (SocketAddr, SocketAddr) =
            (HUB_UDP.parse().unwrap(), SPOKE_UDP.parse().unwrap());
        loop {
            let now = Instant::now();
            let mut moved = false;
            while let Some(t) = self.spoke.poll_transmit(now, SEGMENTS, &mut self.buf) {
                let segment = t.segment_size.unwrap_or(t.size);
                for datagram in self.buf[..t.size].chunks(segment) {
                    let datagram = Datagram {
                        local_ip: Some(hub_addr.ip()),
                        ..Datagram::new(spoke_addr, datagram)
                    };
                    self.hub.handle_udp(now, datagram);
                }
                moved = true;
            }
            while let Some(t) = self.hub.poll_transmit(now, SEGMENTS, &mut self.buf) {
                let segment = t.segment_size.unwrap_or(t.size);
                for datagram in self.buf[..t.size].chunks(segment) {
                    let datagram = Datagram {
                        local_ip: Some(spoke_addr.ip()),
                        ..Datagram::new(hub_addr, datagram)
                    };
                    self.spoke.handle_udp(now, datagram);
                }
                moved = true;
            }
            for side in [0, 1] {
                let due = match side {
                    0 => self.hub.poll_timeout(),
                    _ => self.spoke.poll_timeout(),
                };
                if due.is_some_and(|(at, _)| at <= now) {
                    match side {
                        0 => self.hub.handle_timeout(now),
                        _ => self.spoke.handle_timeout(now),
                    }
                    moved = true;
                }
            }
            while self.hub.poll_event().is_some() {}
            while self.spoke.poll_event().is_some() {}
            if !moved {
                return;
            }
        }
    }

    /// Spoke to hub: returns how many packets came out of the hub.
    fn up(&mut self, packet: &[u8]) -> usize {
        let now = Instant::now();
        for _ in 0..batch(packet.len()) {
            let _ = self.spoke.handle_tun_packet(now, packet);
        }
        self.exchange();
        let mut delivered = 0;
        while let Some(p) = self.hub.poll_tun_packet() {
            black_box(&p);
            delivered += 1;
        }
        delivered
    }

    /// Hub to spoke: returns how many packets came out of the spoke.
    fn down(&mut self, packet: &[u8]) -> usize {
        let now = Instant::now();
        for _ in 0..batch(packet.len()) {
            let _ = self.hub.handle_tun_packet(now, packet);
        }
        self.exchange();
        let mut delivered = 0;
        while let Some(p) = self.spoke.poll_tun_packet() {
            black_box(&p);
            delivered += 1;
        }
        delivered
    }
}

/// Packets of `size` bytes handed over per iteration.
fn batch(size: usize) -> usize {
    (BATCH_BYTES / size).clamp(1, 64)
}

/// An IPv4 UDP packet of `size` bytes in all, with valid checksums and DF clear (so that
/// packets larger than a datagram are fragmented rather than refused).
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp_len = (size - 20) as u16;
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&9u16.to_be_bytes());
    p[24..26].copy_from_slice(&udp_len.to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

fn datagrams(c: &mut Criterion) {
    let mut pair = Pair::new();
    let mut group = c.benchmark_group("datagrams");
    for size in [128usize, 1400, 8192] {
        group.throughput(Throughput::Bytes((size * batch(size)) as u64));
        let up = udp_packet(pair.spoke_ip, HUB_IP, size);
        let down = udp_packet(HUB_IP, pair.spoke_ip, size);
        // Every packet must arrive (larger ones as fragments), or the figures lie.
        let fragments = pair.up(&up);
        assert!(
            fragments >= batch(size),
            "spoke to hub lost packets at {size} bytes"
        );
        for _ in 0..100 {
            assert_eq!(
                pair.up(&up),
                fragments,
                "spoke to hub lost packets at {size} bytes"
            );
            assert_eq!(
                pair.down(&down),
                fragments,
                "hub to spoke lost packets at {size} bytes"
            );
        }
        group.bench_with_input(BenchmarkId::new("spoke_to_hub", size), &up, |b, packet| {
            b.iter(|| pair.up(packet))
        });
        group.bench_with_input(
            BenchmarkId::new("hub_to_spoke", size),
            &down,
            |b, packet| b.iter(|| pair.down(packet)),
        );
    }
    group.finish();
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    group.throughput(Throughput::Elements(1));
    for spokes in [10u32, 100, 1_000, 10_000] {
        let mut table = RouteTable::new(
            vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))],
            vec!["10.0.0.0/16".parse().unwrap()],
            Vec::new(),
        );
        let addresses: Vec<IpAddr> = (0..spokes)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0002 + i)))
            .collect();
        for (i, a) in addresses.iter().enumerate() {
            table.insert(*a, i);
        }
        let mut next = 0usize;
        group.bench_function(BenchmarkId::from_parameter(spokes), |b| {
            b.iter(|| {
                // Destinations spread over the table, as traffic among many spokes is.
                next = (next + 7919) % addresses.len();
                let route = table.lookup(black_box(addresses[next]), 17);
                debug_assert!(matches!(route, Route::Spoke(_)));
                route
            })
        });
    }
    group.finish();
}

// The macro defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::datagrams, super::route_lookup);
}
criterion_main!(group::benches);
