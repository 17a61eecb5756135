//! SloPN's X25519MLKEM768 (ring's X25519, libcrux's ML-KEM-768) against aws-lc-rs's, the
//! implementation rustls ships and browsers' peers run: the same group on the wire, the
//! same secret on both sides, in TLS and in the hub's and spoke's QUIC handshakes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use quinn_proto::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn_proto::{Connection, DatagramEvent, Endpoint, EndpointConfig, Event};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, NamedGroup, ServerConfig};
use slopn_proto::control::ALPN;
use slopn_proto::key_exchange::KeyExchange;
use slopn_proto::pki::{CertificateAuthority, Validity};
use slopn_proto::tls::{self, CertifiedKey};
use slopn_proto::{
    Credential, Datagram, Hub, HubConfig, PoolConfig, Spoke, SpokeConfig, SpokeEvent,
};

const NAME: &str = "hub.slopn.test";
const HUB: &str = "192.0.2.1:4433";
const CLIENT: &str = "192.0.2.2:50000";

/// aws-lc-rs, offering and accepting nothing but its X25519MLKEM768.
fn aws_lc_rs() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768];
    Arc::new(provider)
}

/// SloPN's provider, with only its own X25519MLKEM768 (no X25519 to fall back on).
fn slopn() -> Arc<CryptoProvider> {
    tls::provider(KeyExchange::HybridOnly)
}

struct Pki {
    ca: Vec<CertificateDer<'static>>,
    hub: CertifiedKey,
}

fn pki() -> Pki {
    let validity = Validity::days_from(SystemTime::now(), 2);
    let ca = CertificateAuthority::generate("interop CA", [3; 32], validity).unwrap();
    let hub = ca
        .issue_server(&[NAME.into()], [4; 32], validity)
        .unwrap()
        .certified_key()
        .unwrap();
    Pki {
        ca: tls::parse_certificates(ca.cert_pem().as_bytes()).unwrap(),
        hub,
    }
}

fn client_config(provider: Arc<CryptoProvider>, pki: &Pki) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in &pki.ca {
        roots.add(cert.clone()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

fn server_config(provider: Arc<CryptoProvider>, pki: &Pki) -> ServerConfig {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.hub.chain.clone(), pki.hub.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

/// Moves what `from` has to send into `to`.
fn transfer(from: &mut rustls::Connection, to: &mut rustls::Connection) {
    let mut wire = Vec::new();
    from.write_tls(&mut wire).unwrap();
    let mut rest = &wire[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets().unwrap();
    }
}

/// A TLS handshake in memory; the group each side settled on and a key each exported.
fn tls_handshake(client: ClientConfig, server: ServerConfig) -> [(NamedGroup, [u8; 32]); 2] {
    let mut client: rustls::Connection =
        rustls::ClientConnection::new(Arc::new(client), NAME.try_into().unwrap())
            .unwrap()
            .into();
    let mut server: rustls::Connection = rustls::ServerConnection::new(Arc::new(server))
        .unwrap()
        .into();
    for _ in 0..10 {
        transfer(&mut client, &mut server);
        transfer(&mut server, &mut client);
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    [client, server].map(|c| {
        let group = c.negotiated_key_exchange_group().unwrap().name();
        let key = c
            .export_keying_material([0; 32], b"EXPORTER-slopn-interop", None)
            .unwrap();
        (group, key)
    })
}

#[test]
fn tls_with_aws_lc_rs_agrees_on_the_group_and_the_secret_both_ways() {
    let pki = pki();
    // aws-lc-rs's client, SloPN's server; then SloPN's client, aws-lc-rs's server.
    for (client, server) in [(aws_lc_rs(), slopn()), (slopn(), aws_lc_rs())] {
        let [(cg, ck), (sg, sk)] =
            tls_handshake(client_config(client, &pki), server_config(server, &pki));
        assert_eq!((cg, sg), (NamedGroup::X25519MLKEM768, NamedGroup::X25519MLKEM768));
        assert_eq!(ck, sk, "both ends derived the same secret");
    }
}

/// The group a quinn-proto connection settled on.
fn quinn_group(conn: &Connection) -> Option<NamedGroup> {
    let data = conn.crypto_session().handshake_data()?;
    Some(data.downcast::<HandshakeData>().ok()?.negotiated_key_exchange_group)
}

/// One side of an in-memory QUIC exchange: a SloPN machine or a quinn-proto endpoint.
trait Side {
    fn send(&mut self, now: Instant, out: &mut Vec<(SocketAddr, Vec<u8>)>);
    fn receive(&mut self, now: Instant, from: SocketAddr, payload: &[u8]);
    fn tick(&mut self, now: Instant);
}

/// The hub and the spoke take and give datagrams through the same methods.
macro_rules! slopn_side {
    ($machine:ty) => {
        impl Side for $machine {
            fn send(&mut self, now: Instant, out: &mut Vec<(SocketAddr, Vec<u8>)>) {
                let mut buf = Vec::new();
                while let Some(t) = self.poll_transmit(now, 1, &mut buf) {
                    out.push((t.destination, buf[..t.size].to_vec()));
                    buf.clear();
                }
            }
            fn receive(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) {
                self.handle_udp(now, datagram(from, payload));
            }
            fn tick(&mut self, now: Instant) {
                self.handle_timeout(now);
            }
        }
    };
}

slopn_side!(Hub);
slopn_side!(Spoke);

fn datagram(remote: SocketAddr, payload: &[u8]) -> Datagram<'_> {
    Datagram {
        remote,
        local_ip: None,
        ecn: None,
        payload,
    }
}

/// A quinn-proto endpoint with one connection (a client's, or the first a server accepts).
struct Quinn {
    endpoint: Endpoint,
    conn: Option<(quinn_proto::ConnectionHandle, Connection)>,
    connected: bool,
}

impl Quinn {
    fn process(&mut self) {
        let Some((ch, conn)) = &mut self.conn else {
            return;
        };
        while let Some(ev) = conn.poll_endpoint_events() {
            if let Some(reply) = self.endpoint.handle_event(*ch, ev) {
                conn.handle_event(reply);
            }
        }
        while let Some(ev) = conn.poll() {
            match ev {
                Event::Connected => self.connected = true,
                Event::ConnectionLost { reason } => panic!("connection lost: {reason}"),
                _ => {}
            }
        }
    }
}

impl Side for Quinn {
    fn send(&mut self, now: Instant, out: &mut Vec<(SocketAddr, Vec<u8>)>) {
        let Some((_, conn)) = &mut self.conn else {
            return;
        };
        let mut buf = Vec::new();
        while let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            out.push((t.destination, buf[..t.size].to_vec()));
            buf.clear();
        }
        self.process();
    }
    fn receive(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) {
        let mut response = Vec::new();
        let event = self.endpoint.handle(
            now,
            from,
            None,
            None,
            BytesMut::from(payload),
            &mut response,
        );
        match event {
            Some(DatagramEvent::ConnectionEvent(_, ev)) => {
                if let Some((_, conn)) = &mut self.conn {
                    conn.handle_event(ev);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) if self.conn.is_none() => {
                let accepted = self.endpoint.accept(incoming, now, &mut response, None);
                self.conn = Some(accepted.expect("the server accepts the connection"));
            }
            _ => {}
        }
        self.process();
    }
    fn tick(&mut self, now: Instant) {
        if let Some((_, conn)) = &mut self.conn {
            conn.handle_timeout(now);
        }
        self.process();
    }
}

/// One millisecond of the exchange between `a` (at `a_addr`) and `b` (at `b_addr`).
fn step(
    now: &mut Instant,
    a: &mut dyn Side,
    a_addr: SocketAddr,
    b: &mut dyn Side,
    b_addr: SocketAddr,
) {
    let mut wire = Vec::new();
    a.send(*now, &mut wire);
    for (to, payload) in wire.drain(..) {
        assert_eq!(to, b_addr);
        b.receive(*now, a_addr, &payload);
    }
    b.send(*now, &mut wire);
    for (to, payload) in wire.drain(..) {
        assert_eq!(to, a_addr);
        a.receive(*now, b_addr, &payload);
    }
    *now += Duration::from_millis(1);
    a.tick(*now);
    b.tick(*now);
}

/// Virtual milliseconds a handshake may take.
const STEPS: usize = 5000;

#[test]
fn an_aws_lc_rs_client_completes_a_quic_handshake_with_the_hub() {
    let pki = pki();
    // The hub as it ships: its default provider (X25519MLKEM768 preferred, X25519 too).
    let config = HubConfig::new(
        pki.hub.clone(),
        vec![PoolConfig::new("10.100.0.0/24".parse().unwrap())],
        vec![Credential::token("interop", "interop-token-0123456789")],
        [5; 32],
    );
    let mut now = Instant::now();
    let mut hub = Hub::new(config, now, SystemTime::now()).unwrap();
    let client = client_config(aws_lc_rs(), &pki);
    let client =
        quinn_proto::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client).unwrap()));
    let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None);
    let conn = endpoint
        .connect(now, client, HUB.parse().unwrap(), NAME)
        .unwrap();
    let mut quinn = Quinn {
        endpoint,
        conn: Some(conn),
        connected: false,
    };
    let (client_addr, hub_addr) = (CLIENT.parse().unwrap(), HUB.parse().unwrap());
    for _ in 0..STEPS {
        step(&mut now, &mut quinn, client_addr, &mut hub, hub_addr);
        if quinn.connected {
            break;
        }
    }
    // Connected: each side verified the other's Finished, keyed from the shared secret.
    assert!(quinn.connected, "the handshake completed");
    let (_, conn) = quinn.conn.as_ref().unwrap();
    assert_eq!(quinn_group(conn), Some(NamedGroup::X25519MLKEM768));
    let sessions = hub.spokes();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].key_exchange, Some(NamedGroup::X25519MLKEM768));
}

#[test]
fn the_spoke_completes_a_quic_handshake_with_an_aws_lc_rs_server() {
    let pki = pki();
    let server = server_config(aws_lc_rs(), &pki);
    let server =
        quinn_proto::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server).unwrap()));
    let endpoint = Endpoint::new(
        Arc::new(EndpointConfig::default()),
        Some(Arc::new(server)),
        true,
        None,
    );
    let mut quinn = Quinn {
        endpoint,
        conn: None,
        connected: false,
    };
    let (spoke_addr, server_addr): (SocketAddr, SocketAddr) =
        (CLIENT.parse().unwrap(), HUB.parse().unwrap());
    // The spoke as it ships: its default provider.
    let config = SpokeConfig::new(server_addr, NAME, pki.ca.clone(), "token", [6; 32]);
    let mut now = Instant::now();
    let mut spoke = Spoke::new(config, now, SystemTime::now()).unwrap();
    let mut connected = false;
    for _ in 0..STEPS {
        step(&mut now, &mut spoke, spoke_addr, &mut quinn, server_addr);
        while let Some(event) = spoke.poll_event() {
            connected |= matches!(event, SpokeEvent::Connected { .. });
        }
        if connected && quinn.connected {
            break;
        }
    }
    assert!(connected && quinn.connected, "the handshake completed");
    let (_, conn) = quinn.conn.as_ref().unwrap();
    assert_eq!(quinn_group(conn), Some(NamedGroup::X25519MLKEM768));
    assert_eq!(spoke.stats().key_exchange, Some(NamedGroup::X25519MLKEM768));
}
