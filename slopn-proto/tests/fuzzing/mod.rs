//! What the fuzz targets run, shared with the test that replays their corpus
//! (`tests/fuzz_corpus.rs`): the control decoder, the IP packet code, and a whole hub fed
//! arbitrary UDP datagrams, TUN packets and hostile control and datagram traffic from an
//! authenticated spoke, while a well-behaved spoke looks on.

#![allow(dead_code)]

#[path = "../sim/raw.rs"]
mod raw;
#[path = "../common/seeded_crypto.rs"]
mod seeded_crypto;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use slopn_proto::control::{self, Capsule, IpPrefix, PROTOCOL_VERSION, RequestedAddress};
use slopn_proto::icmp::{self, IcmpError};
use slopn_proto::packet::{self, IpHeader};
use slopn_proto::pki::{CertificateAuthority, IssuedCertificate, Validity};
use slopn_proto::{
    Credential, Datagram, Hub, HubConfig, PoolConfig, Spoke, SpokeConfig, SpokeState,
};

/// Decodes capsules one after another; whatever decodes must re-encode to the same capsule.
pub fn control(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((capsule, used))) = control::decode(rest) {
        assert!(used > 0 && used <= rest.len());
        let mut again = Vec::new();
        control::encode(&capsule, &mut again).expect("what decodes, encodes");
        let (decoded, n) = control::decode(&again).unwrap().unwrap();
        assert_eq!(decoded, capsule);
        assert_eq!(n, again.len());
        rest = &rest[used..];
    }
}

/// A peer's X25519MLKEM768 key share: as a spoke's share to the hub (the first half of
/// the input) and as the hub's answer to a spoke (the second). Refused unless it has the
/// draft's length (1216 and 1120 bytes) and, for the spoke's, a valid ML-KEM key; never a
/// panic.
pub fn key_share(data: &[u8]) {
    use slopn_proto::key_exchange::KeyExchange;
    static GROUP: OnceLock<&'static dyn rustls::crypto::SupportedKxGroup> = OnceLock::new();
    let group = *GROUP
        .get_or_init(|| seeded_crypto::provider_with(9, KeyExchange::HybridOnly).kx_groups[0]);
    let (client_share, server_share) = data.split_at(data.len() / 2);
    for share in [data, client_share] {
        let answer = group.start_and_complete(share);
        assert!(
            share.len() == 1216 || answer.is_err(),
            "{} bytes taken",
            share.len()
        );
    }
    for share in [data, server_share] {
        let done = group.start().expect("starts").complete(share);
        assert!(
            share.len() == 1120 || done.is_err(),
            "{} bytes taken",
            share.len()
        );
    }
}

/// Parses an IP packet; for valid ones, TTL handling, ICMP errors and fragmentation must all
/// produce valid packets.
pub fn ip_packet(data: &[u8]) {
    let Ok(header) = IpHeader::parse(data) else {
        return;
    };
    assert_eq!(header.total_len, data.len());
    assert!(header.header_len <= data.len());
    if header.ttl > 1 {
        let mut copy = data.to_vec();
        packet::decrement_ttl(&mut copy);
        let after = IpHeader::parse(&copy).expect("still valid after TTL decrement");
        assert_eq!(after.ttl, header.ttl - 1);
    }
    let from: IpAddr = if header.is_ipv4() {
        Ipv4Addr::new(10, 0, 0, 1).into()
    } else {
        "fd00::1".parse().unwrap()
    };
    let mut out = Vec::new();
    for kind in [
        IcmpError::TimeExceeded,
        IcmpError::PacketTooBig { mtu: 1280 },
        IcmpError::HostUnreachable,
        IcmpError::AdminProhibited,
    ] {
        if icmp::build_error(data, &header, from, kind, 1400, &mut out) {
            let h = IpHeader::parse(&out).expect("ICMP error is a valid packet");
            assert!(out.len() <= 1400);
            assert_eq!(h.dst, header.src);
        }
    }
    if header.is_ipv4() && !header.dont_fragment {
        fragments_reassemble(data, &header);
    }
}

/// Fragments a packet for a 576-byte path; the fragments must be valid packets whose data,
/// placed at their offsets, is exactly the original's, with MF on all but the last (which
/// keeps the original's), or the packet must be refused whole.
fn fragments_reassemble(data: &[u8], header: &IpHeader) {
    let word = u16::from_be_bytes([data[6], data[7]]);
    let base = usize::from(word & 0x1fff) * 8;
    let payload = &data[header.header_len..];
    let mut scratch = Vec::new();
    let mut next = base;
    let mut count = 0;
    let mut last_more: Option<bool> = None;
    let result = packet::fragment_v4(data, header, 576, &mut scratch, |f| {
        let fh = IpHeader::parse(f).expect("fragment is a valid packet");
        assert!(f.len() <= 576);
        assert_eq!(fh.header_len, header.header_len);
        assert_eq!(
            (fh.src, fh.dst, fh.protocol),
            (header.src, header.dst, header.protocol)
        );
        let w = u16::from_be_bytes([f[6], f[7]]);
        assert_eq!(w & 0x8000, word & 0x8000, "reserved bit kept");
        assert_eq!(w & 0x4000, 0, "DF clear");
        assert_eq!(usize::from(w & 0x1fff) * 8, next, "contiguous offsets");
        if let Some(more) = last_more {
            assert!(more, "MF set on every fragment but the last");
        }
        last_more = Some(w & 0x2000 != 0);
        let chunk = &f[fh.header_len..];
        assert_eq!(chunk, &payload[next - base..next - base + chunk.len()]);
        next += chunk.len();
        count += 1;
    });
    match result {
        Ok(()) => {
            assert_eq!(next - base, payload.len(), "every payload byte sent once");
            if !payload.is_empty() {
                let original_more = word & 0x2000 != 0;
                assert_eq!(
                    last_more,
                    Some(original_more),
                    "the last keeps the original MF"
                );
            }
        }
        Err(packet::FragmentError::BeyondLimit) => {
            assert!(header.header_len + base + payload.len() > 65_535);
            assert_eq!(count, 0);
        }
        Err(e) => panic!("fragmenting to 576 bytes failed: {e}"),
    }
}

struct Pki {
    ca: CertificateAuthority,
    hub: IssuedCertificate,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let validity = Validity::days_from(wall(), 30);
        let ca = CertificateAuthority::generate("fuzz CA", [1; 32], validity).unwrap();
        let hub = ca
            .issue_server(&["hub.slopn.test".into()], [2; 32], validity)
            .unwrap();
        Pki { ca, hub }
    })
}

fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(raw::SIM_UNIX_TIME)
}

const HUB: &str = "192.0.2.1:4433";
const ATTACKER: &str = "203.0.113.1:40000";
const BYSTANDER: &str = "198.51.100.1:50000";

/// Everything on one instant-delivery network: hub, hostile raw spoke, honest spoke.
struct Net {
    base: Instant,
    now: Duration,
    hub: Hub,
    raw: raw::RawSpoke,
    honest: Spoke,
    buf: Vec<u8>,
}

impl Net {
    fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Moves packets and timers until nothing is left for `limit` of time. Panics on a
    /// livelock: nodes that keep trading packets without virtual time moving on.
    fn run(&mut self, limit: Duration) {
        let end = self.now + limit;
        let hub_addr: SocketAddr = HUB.parse().unwrap();
        let mut rounds_at_this_instant = 0;
        loop {
            rounds_at_this_instant += 1;
            assert!(
                rounds_at_this_instant <= 10_000,
                "livelock at {:?}: 10,000 rounds of packets without time moving on",
                self.now
            );
            let now = self.instant();
            let mut moved = false;
            while let Some(t) = self.hub.poll_transmit(now, 1, &mut self.buf) {
                moved = true;
                let data = self.buf[..t.size].to_vec();
                if t.destination == ATTACKER.parse().unwrap() {
                    self.raw.handle_udp(now, hub_addr, &data);
                } else if t.destination == BYSTANDER.parse().unwrap() {
                    self.honest.handle_udp(now, Datagram::new(hub_addr, &data));
                }
            }
            while let Some(t) = self.raw.poll_transmit(now, &mut self.buf) {
                moved = true;
                let data = self.buf[..t.size].to_vec();
                self.hub
                    .handle_udp(now, Datagram::new(ATTACKER.parse().unwrap(), &data));
            }
            while let Some(t) = self.honest.poll_transmit(now, 1, &mut self.buf) {
                moved = true;
                let data = self.buf[..t.size].to_vec();
                self.hub
                    .handle_udp(now, Datagram::new(BYSTANDER.parse().unwrap(), &data));
            }
            while self.hub.poll_tun_packet().is_some() {}
            while self.hub.poll_event().is_some() {}
            while self.honest.poll_tun_packet().is_some() {}
            while self.honest.poll_event().is_some() {}
            if moved {
                continue;
            }
            let next = [
                self.hub.poll_timeout().map(|(t, _)| t),
                self.honest.poll_timeout().map(|(t, _)| t),
                self.raw.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(next) = next else { return };
            let next = next
                .saturating_duration_since(self.base)
                .max(self.now + Duration::from_millis(1));
            if next > end {
                self.now = end;
                return;
            }
            self.now = next;
            rounds_at_this_instant = 0;
            let now = self.instant();
            self.hub.handle_timeout(now);
            self.honest.handle_timeout(now);
            self.raw.handle_timeout(now);
        }
    }
}

fn setup() -> Net {
    let pki = pki();
    let base = Instant::now();
    let credentials = (0..2)
        .map(|i| Credential::token(format!("spoke-{i}"), &format!("token-{i}")))
        .collect();
    let mut config = HubConfig::new(
        pki.hub.certified_key().unwrap(),
        vec![PoolConfig::new("10.100.0.0/24".parse().unwrap())],
        credentials,
        [3; 32],
    );
    // Seeded handshakes: an input that crashes the hub crashes it again, byte for byte.
    config.crypto = seeded_crypto::provider(3);
    let hub = Hub::new(config, base, wall()).unwrap();
    let ca = slopn_proto::tls::parse_certificates(pki.ca.cert_pem().as_bytes()).unwrap();
    let raw = raw::RawSpoke::connect(
        base,
        ATTACKER.parse().unwrap(),
        HUB.parse().unwrap(),
        raw::client_config(&ca, control::ALPN),
        4,
    );
    let mut honest_config = SpokeConfig::new(
        HUB.parse().unwrap(),
        "hub.slopn.test",
        ca,
        "token-1",
        [5; 32],
    );
    honest_config.crypto = seeded_crypto::provider(5);
    let honest = Spoke::new(honest_config, base, wall()).unwrap();
    let mut net = Net {
        base,
        now: Duration::ZERO,
        hub,
        raw,
        honest,
        buf: Vec::new(),
    };
    net.run(Duration::from_millis(100));
    net.raw.send_capsule(&Capsule::Hello {
        version: PROTOCOL_VERSION,
        credential: Bytes::from_static(b"token-0"),
    });
    net.raw
        .send_capsule(&Capsule::AddressRequest(vec![RequestedAddress {
            request_id: 1,
            prefix: IpPrefix::rejection(false),
        }]));
    net.run(Duration::from_millis(100));
    assert_eq!(net.honest.state(), SpokeState::Established);
    net
}

/// A whole hub under attack. The input is a list of operations: raw UDP datagrams from
/// anywhere (including forged sources), TUN packets, control-stream bytes and datagrams from
/// an authenticated spoke, and the passage of time. Nothing may panic, and the honest spoke
/// must keep its one session throughout.
pub fn hub(data: &[u8]) {
    let mut net = setup();
    let sources: [SocketAddr; 4] = [
        ATTACKER.parse().unwrap(),
        BYSTANDER.parse().unwrap(),
        "203.0.113.9:1234".parse().unwrap(),
        "[2001:db8::1]:443".parse().unwrap(),
    ];
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, after) = tail.split_at(n);
        rest = after;
        let now = net.instant();
        match op % 6 {
            0 => {
                let from = sources[usize::from(op / 6) % sources.len()];
                net.hub.handle_udp(now, Datagram::new(from, body));
            }
            1 => {
                let _ = net.hub.handle_tun_packet(now, body);
            }
            2 => {
                net.raw.send_raw(body);
            }
            3 => {
                net.raw.send_datagram(body.to_vec());
            }
            4 => {
                // A well-formed IP packet with fuzzed destination, TTL and payload.
                let dst = Ipv4Addr::new(10, 100, 0, body.first().copied().unwrap_or(1));
                let ttl = body.get(1).copied().unwrap_or(64);
                let src = Ipv4Addr::new(10, 100, 0, 2);
                net.raw.send_datagram(ipv4_udp(src, dst, ttl, body));
            }
            _ => {
                net.run(Duration::from_millis(u64::from(*len) * 20));
                continue;
            }
        }
        net.run(Duration::from_millis(5));
    }
    net.run(Duration::from_secs(1));
    assert_eq!(
        net.honest.state(),
        SpokeState::Established,
        "the honest spoke was disturbed"
    );
    assert_eq!(
        net.honest.stats().sessions,
        1,
        "the honest spoke had to reconnect"
    );
}

fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, ttl, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = packet::checksum(&p, 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&[0x9c, 0x41, 0, 9]);
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}
