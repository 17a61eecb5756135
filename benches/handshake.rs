//! Handshakes per second, classic (X25519) against post-quantum hybrid (X25519MLKEM768): a
//! hub and fresh spokes in memory, each spoke taken from its first packet to `established`
//! (QUIC and TLS handshake, HELLO, token check, address assignment). The time each side
//! spends in its own calls is summed, so the hub's figure is handshakes per second on one
//! core of a hub; the spoke's, on one core of a client. Also prints the first flight: the
//! ClientHello's size and the Initial datagrams it takes.
//!
//! `cargo bench --bench handshake` (release build). docs/BENCHMARKS.md has the figures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use slopn_proto::key_exchange::KeyExchange;
use slopn_proto::pki::{CertificateAuthority, Validity};
use slopn_proto::rustls;
use slopn_proto::{
    Credential, Datagram, Hub, HubConfig, PoolConfig, Spoke, SpokeConfig, SpokeState, tls,
};

const HUB_UDP: &str = "192.0.2.1:4433";
const SPOKES: usize = 1000;

/// Time spent in each side's calls, and the datagrams of the spokes' first flights.
#[derive(Default)]
struct Tally {
    hub: Duration,
    spoke: Duration,
    first_flight_datagrams: usize,
    first_flight_bytes: usize,
}

fn timed<T>(total: &mut Duration, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    *total += start.elapsed();
    out
}

/// Takes one spoke from nothing to established against `hub`, on a virtual clock that
/// jumps to the next timer when nothing is in flight (so waiting costs no time).
fn handshake(
    hub: &mut Hub,
    mut spoke: Spoke,
    addr: SocketAddr,
    now: &mut Instant,
    tally: &mut Tally,
) {
    let hub_addr: SocketAddr = HUB_UDP.parse().unwrap();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut first_flight = true;
    let deadline = *now + Duration::from_secs(10);
    while spoke.state() != SpokeState::Established {
        assert!(*now < deadline, "the spoke did not connect");
        let t_now = *now;
        let mut moved = 0;
        while let Some(t) = timed(&mut tally.spoke, || spoke.poll_transmit(t_now, 1, &mut buf)) {
            if first_flight {
                tally.first_flight_datagrams += 1;
                tally.first_flight_bytes += t.size;
            }
            timed(&mut tally.hub, || {
                hub.handle_udp(t_now, Datagram::new(addr, &buf[..t.size]))
            });
            buf.clear();
            moved += 1;
        }
        first_flight &= moved == 0;
        while let Some(t) = timed(&mut tally.hub, || hub.poll_transmit(t_now, 1, &mut buf)) {
            moved += 1;
            assert!(moved < 100_000, "the hub sends forever: {t:?}");
            // Earlier spokes are gone: what the hub still sends them is lost.
            if t.destination == addr {
                timed(&mut tally.spoke, || {
                    spoke.handle_udp(t_now, Datagram::new(hub_addr, &buf[..t.size]))
                });
            }
            buf.clear();
        }
        while hub.poll_event().is_some() {}
        while spoke.poll_event().is_some() {}
        if moved > 0 {
            continue;
        }
        // Idle: on to the next timer.
        let next = [hub.poll_timeout(), spoke.poll_timeout()]
            .into_iter()
            .flatten()
            .map(|(at, _)| at)
            .min()
            .expect("a timer runs while connecting");
        *now = (*now).max(next);
        let t_now = *now;
        if hub.poll_timeout().is_some_and(|(at, _)| at <= t_now) {
            timed(&mut tally.hub, || hub.handle_timeout(t_now));
        }
        if spoke.poll_timeout().is_some_and(|(at, _)| at <= t_now) {
            timed(&mut tally.spoke, || spoke.handle_timeout(t_now));
        }
    }
}

/// The ClientHello as QUIC sends it (CRYPTO data, without QUIC's own headers), in bytes.
fn client_hello_bytes(provider: Arc<rustls::crypto::CryptoProvider>) -> usize {
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = rustls::quic::ClientConnection::new(
        Arc::new(config),
        rustls::quic::Version::V1,
        "hub.bench".try_into().unwrap(),
        // About what quinn's transport parameters take.
        vec![0; 90],
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_hs(&mut hello);
    hello.len()
}

fn main() {
    let wall = SystemTime::now();
    let validity = Validity::days_from(wall, 2);
    let ca = CertificateAuthority::generate("bench CA", [7; 32], validity).unwrap();
    let cert = ca
        .issue_server(&["hub.bench".into()], [8; 32], validity)
        .unwrap();
    let trust = tls::parse_certificates(ca.cert_pem().as_bytes()).unwrap();
    let token = |i: usize| format!("bench-token-{i:06}-0123456789abcdef");
    println!(
        "{SPOKES} spokes each taken to established (QUIC + TLS 1.3 + HELLO + assignment), in memory"
    );
    for kx in [KeyExchange::Classic, KeyExchange::Hybrid] {
        let mut config = HubConfig::new(
            cert.certified_key().unwrap(),
            vec![PoolConfig::new("10.96.0.0/12".parse().unwrap())],
            (0..SPOKES)
                .map(|i| Credential::token(format!("s{i}"), &token(i)))
                .collect(),
            [1; 32],
        );
        config.crypto = tls::provider(kx);
        config.max_half_open = SPOKES;
        let mut now = Instant::now();
        let mut hub = Hub::new(config, now, wall).unwrap();
        let mut tally = Tally::default();
        for i in 0..SPOKES {
            let mut config = SpokeConfig::new(
                HUB_UDP.parse().unwrap(),
                "hub.bench",
                trust.clone(),
                token(i),
                [2; 32],
            );
            config.crypto = tls::provider(kx);
            let spoke = Spoke::new(config, now, wall).unwrap();
            let addr = SocketAddr::from(([198, 51, (i / 250) as u8, (i % 250) as u8 + 1], 50000));
            handshake(&mut hub, spoke, addr, &mut now, &mut tally);
        }
        let per_second = |d: Duration| SPOKES as f64 / d.as_secs_f64();
        println!(
            "{kx:?}: hub {:.0} handshakes/s per core ({:.0} µs each), spoke {:.0}/s ({:.0} µs); \
             ClientHello {} bytes, first flight {} datagram(s), {} bytes",
            per_second(tally.hub),
            tally.hub.as_secs_f64() * 1e6 / SPOKES as f64,
            per_second(tally.spoke),
            tally.spoke.as_secs_f64() * 1e6 / SPOKES as f64,
            client_hello_bytes(tls::provider(kx)),
            tally.first_flight_datagrams / SPOKES,
            tally.first_flight_bytes / SPOKES,
        );
    }
}
