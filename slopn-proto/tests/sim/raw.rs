//! A hand-driven QUIC client that speaks the control protocol byte by byte: a misbehaving
//! spoke for the tests (forged sources, malformed capsules, unexpected messages).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, Connection, ConnectionError, ConnectionHandle, ConnectionId,
    ConnectionIdGenerator, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, StreamEvent,
    StreamId, Transmit,
};
use rustls::pki_types::CertificateDer;
use slopn_proto::control::{self, Capsule};

pub struct RawSpoke {
    pub addr: SocketAddr,
    endpoint: Endpoint,
    conn: Connection,
    ch: ConnectionHandle,
    stream: Option<StreamId>,
    rx: Vec<u8>,
    pub capsules: Vec<Capsule>,
    pub datagrams: Vec<Bytes>,
    pub lost: Option<ConnectionError>,
    pub connected: bool,
}

/// Certificates are checked against the simulations' calendar, not the machine's.
#[derive(Debug)]
struct SimTime;

impl rustls::time_provider::TimeProvider for SimTime {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        Some(rustls::pki_types::UnixTime::since_unix_epoch(
            std::time::Duration::from_secs(SIM_UNIX_TIME),
        ))
    }
}

/// The calendar time the simulations pretend it is (Unix seconds).
pub const SIM_UNIX_TIME: u64 = 1_790_000_000;

/// A rustls client configuration trusting `ca`, offering `alpn`.
pub fn client_config(ca: &[CertificateDer<'static>], alpn: &[u8]) -> ClientConfig {
    // Seeded like everything in a simulation, so that runs replay byte for byte.
    let provider = super::seeded_crypto::provider(0x5eed);
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_details(provider, Arc::new(SimTime))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    ClientConfig::new(Arc::new(crypto))
}

/// Connection IDs from a counter: quinn's default generator draws from the OS.
struct CountingCids {
    prefix: u8,
    next: u64,
}

impl ConnectionIdGenerator for CountingCids {
    fn generate_cid(&mut self) -> ConnectionId {
        self.next += 1;
        ConnectionId::new(&[&[self.prefix][..], &self.next.to_be_bytes()].concat())
    }

    fn cid_len(&self) -> usize {
        9
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

impl RawSpoke {
    pub fn connect(
        now: Instant,
        addr: SocketAddr,
        hub: SocketAddr,
        mut config: ClientConfig,
        seed: u8,
    ) -> Self {
        // The first destination CID from our address (quinn's default draws from the OS).
        let counter = AtomicU64::new(0);
        let prefix = addr.to_string().into_bytes();
        config.initial_dst_cid_provider(Arc::new(move || {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let mut cid = [0u8; 20];
            for (i, b) in prefix.iter().enumerate() {
                cid[i % 12] ^= b.rotate_left(i as u32);
            }
            cid[12..].copy_from_slice(&n.to_be_bytes());
            ConnectionId::new(&cid)
        }));
        // A reset key and connection IDs from the seed, not the OS.
        let mut ep_config = EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &[seed; 32],
        )));
        ep_config.rng_seed(Some([seed; 32]));
        ep_config.cid_generator(move || {
            Box::new(CountingCids {
                prefix: seed,
                next: 0,
            })
        });
        let mut endpoint = Endpoint::new(Arc::new(ep_config), None, false, None);
        let (ch, conn) = endpoint
            .connect(now, config, hub, "hub.slopn.test")
            .unwrap();
        Self {
            addr,
            endpoint,
            conn,
            ch,
            stream: None,
            rx: Vec::new(),
            capsules: Vec::new(),
            datagrams: Vec::new(),
            lost: None,
            connected: false,
        }
    }

    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) {
        let mut buf = Vec::new();
        if let Some(DatagramEvent::ConnectionEvent(_, ev)) =
            self.endpoint
                .handle(now, from, None, None, BytesMut::from(payload), &mut buf)
        {
            self.conn.handle_event(ev);
        }
        self.process();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        self.process();
    }

    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.conn.poll_timeout()
    }

    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        buf.clear();
        let t = self.conn.poll_transmit(now, 1, buf);
        self.process();
        t
    }

    fn process(&mut self) {
        while let Some(ev) = self.conn.poll_endpoint_events() {
            if let Some(reply) = self.endpoint.handle_event(self.ch, ev) {
                self.conn.handle_event(reply);
            }
        }
        while let Some(ev) = self.conn.poll() {
            match ev {
                Event::Connected => self.connected = true,
                Event::ConnectionLost { reason } => self.lost = Some(reason),
                Event::Stream(StreamEvent::Readable { id }) => {
                    let mut recv = self.conn.recv_stream(id);
                    if let Ok(mut chunks) = recv.read(true) {
                        while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                            self.rx.extend_from_slice(&chunk.bytes);
                        }
                        let _ = chunks.finalize();
                    }
                    while let Ok(Some((c, n))) = control::decode(&self.rx) {
                        self.capsules.push(c);
                        self.rx.drain(..n);
                    }
                }
                Event::DatagramReceived => {
                    while let Some(d) = self.conn.datagrams().recv() {
                        self.datagrams.push(d);
                    }
                }
                _ => {}
            }
        }
    }

    /// Writes raw bytes on the control stream (opening it first). Returns how many bytes
    /// quinn took: fewer when flow control or a closed connection stops it.
    pub fn send_raw(&mut self, bytes: &[u8]) -> usize {
        if self.stream.is_none() {
            self.stream = self.conn.streams().open(Dir::Bi);
        }
        let Some(id) = self.stream else {
            return 0;
        };
        self.conn.send_stream(id).write(bytes).unwrap_or(0)
    }

    pub fn send_capsule(&mut self, capsule: &Capsule) {
        let mut buf = Vec::new();
        control::encode(capsule, &mut buf).expect("a valid capsule");
        assert_eq!(self.send_raw(&buf), buf.len(), "capsule written whole");
    }

    /// Queues a datagram; returns false when the connection cannot take it.
    pub fn send_datagram(&mut self, packet: Vec<u8>) -> bool {
        self.conn
            .datagrams()
            .send(Bytes::from(packet), true)
            .is_ok()
    }
}
