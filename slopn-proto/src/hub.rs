//! The hub: accepts spokes, authenticates them, assigns addresses and routes their packets.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ipnet::IpNet;
use quinn_proto::{EcnCodepoint, Event, StreamEvent, Transmit};
use rustc_hash::FxHashMap;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::arena::PacketArena;
use crate::auth::{Authenticator, FailureLimiter};
use crate::clock::WallClock;
use crate::config::Auth;
use crate::config::{Credential, HubConfig, PoolConfig};
use crate::control::{
    self, AssignedAddress, Capsule, CloseCode, IpPrefix, IpRange, LimitError, PROTOCOL_VERSION,
    RequestedAddress, normalize_ranges,
};
use crate::icmp::{self, IcmpError, IcmpRateLimit};
use crate::link::{ControlError, Received, Transport};
use crate::packet::{self, IpHeader};
use crate::pool::{AddressPool, PoolError};
use crate::route::{Route, RouteTable};
use crate::session::{DisconnectReason, SessionId};
use crate::stats::{DropCounters, DropReason, HubStats, SpokeStats, TrafficCounters};
use crate::tls::{self, CertifiedKey, TlsError};
use crate::{clamp_mtu, derive_key};
use rustls::pki_types::CertificateDer;

/// Why a hub could not be built from its configuration.
#[derive(Debug, Error)]
pub enum HubError {
    /// The TLS identity is unusable.
    #[error("hub TLS identity: {0}")]
    Tls(#[from] TlsError),
    /// An address pool is invalid.
    #[error("address pool: {0}")]
    Pool(#[from] PoolError),
    /// The configuration contradicts itself.
    #[error("hub configuration: {0}")]
    Config(String),
    /// The seed or the stateless-reset key is all zeros: a public key, with which anyone
    /// could forge Retry tokens and reset sessions.
    #[error(
        "hub configuration: the seed is all zeros; give 32 bytes of OS randomness (it keys Retry tokens and stateless resets)"
    )]
    ZeroSeed,
    /// A value the control protocol cannot carry to spokes (too many DNS servers or routes,
    /// an over-long reason): sending it would close every session with PROTOCOL_ERROR.
    #[error("hub configuration: {0}")]
    Limit(#[from] LimitError),
}

/// Something the driver may want to log or show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubEvent {
    /// A spoke finished the QUIC handshake.
    Connected {
        /// The session.
        id: SessionId,
        /// Its UDP address.
        remote: SocketAddr,
    },
    /// A spoke authenticated and holds addresses.
    Assigned {
        /// The session.
        id: SessionId,
        /// Who it is.
        identity: String,
        /// Its tunnel addresses.
        addresses: Vec<IpAddr>,
    },
    /// A session ended; its addresses are free again.
    Disconnected {
        /// The session.
        id: SessionId,
        /// Who it was, if it had authenticated.
        identity: Option<String>,
        /// Why.
        reason: DisconnectReason,
    },
    /// A spoke was refused: bad credential or unsupported version.
    AuthFailed {
        /// The session.
        id: SessionId,
        /// Its UDP address.
        remote: SocketAddr,
        /// What was wrong (for the operator; the spoke is told only "authentication failed").
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// QUIC handshake in progress.
    Handshaking,
    /// Connected; waiting for HELLO.
    AwaitingHello,
    /// Authenticated; waiting for an address request.
    Authenticated,
    /// Holds addresses; packets flow.
    Active,
    /// Ending: the final capsule is on its way, then the connection closes.
    Closing { code: CloseCode },
    /// The connection is closed; waiting for quinn to drain it.
    Closed,
}

/// Per-connection state at the hub.
struct Session {
    id: SessionId,
    phase: Phase,
    identity: Option<Arc<str>>,
    /// How the identity was proven (to revoke the session if that is withdrawn).
    auth: Option<Auth>,
    addresses: Vec<IpAddr>,
    traffic: TrafficCounters,
    drops: DropCounters,
    icmp: IcmpRateLimit,
    close_reason: Option<String>,
    /// Whether the end of this session was reported (addresses freed, event sent).
    ended: bool,
}

/// What the hub needs to rebuild its QUIC server configuration when credentials change.
struct HubTls {
    provider: Arc<rustls::crypto::CryptoProvider>,
    identity: CertifiedKey,
    client_ca: Vec<CertificateDer<'static>>,
    token_key: [u8; 32],
    transport: Arc<quinn_proto::TransportConfig>,
    clock: Arc<WallClock>,
}

impl HubTls {
    /// The server configuration for these credentials: a client certificate is optional,
    /// required when every spoke uses one, and not asked for when none does.
    fn server_config(
        &self,
        authenticator: &Authenticator,
    ) -> Result<Arc<quinn_proto::ServerConfig>, HubError> {
        if authenticator.uses_certificates() && self.client_ca.is_empty() {
            return Err(HubError::Config(
                "some spokes authenticate with certificates, but no client CA is configured".into(),
            ));
        }
        let client_ca: &[CertificateDer<'static>] = if authenticator.uses_certificates() {
            &self.client_ca
        } else {
            &[]
        };
        let crypto = tls::server_config(
            &self.provider,
            &self.identity,
            client_ca,
            authenticator.certificates_only(),
            self.clock.clone(),
        )?;
        let token_key =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&self.token_key);
        let mut server = quinn_proto::ServerConfig::new(crypto, Arc::new(token_key));
        server.transport_config(self.transport.clone());
        server.time_source(self.clock.clone());
        server.migration(true);
        Ok(Arc::new(server))
    }
}

/// How long a closing session waits for its last capsule to be acknowledged.
const CLOSE_GRACE_MAX: Duration = Duration::from_secs(1);

/// The sans-IO hub.
///
/// Feed it UDP payloads ([`handle_udp`](Self::handle_udp)), packets from its TUN side
/// ([`handle_tun_packet`](Self::handle_tun_packet)) and timer expiries
/// ([`handle_timeout`](Self::handle_timeout)). After every input, drain the outputs in this
/// order until each is empty: [`poll_transmit`](Self::poll_transmit),
/// [`poll_tun_packet`](Self::poll_tun_packet), [`poll_event`](Self::poll_event); then arm a
/// timer for [`poll_timeout`](Self::poll_timeout).
pub struct Hub {
    transport: Transport<Session>,
    clock: Arc<WallClock>,
    pools: Vec<AddressPool>,
    routes: RouteTable<usize>,
    authenticator: Authenticator,
    failures: FailureLimiter,
    tls: HubTls,
    hub_networks: Vec<IpNet>,
    dns_servers: Vec<IpAddr>,
    max_half_open: usize,
    retry_above: usize,
    /// Connections still in their QUIC handshake.
    handshaking: usize,
    by_identity: FxHashMap<Arc<str>, usize>,
    isolate_spokes: bool,
    hello_timeout: Duration,
    max_connections: usize,
    extra_routes: Vec<IpNet>,
    closing: bool,
    next_session: u64,
    events: VecDeque<HubEvent>,
    tun_out: VecDeque<Bytes>,
    arena: PacketArena,
    tun_icmp: IcmpRateLimit,
    scratch: Vec<u8>,
    capsules: Vec<Capsule>,
    stats: HubStats,
}

impl Hub {
    /// Builds a hub. `now` and `wall_clock` are the same moment on the driver's monotonic
    /// clock and on the calendar (certificate validity is checked against the latter).
    pub fn new(config: HubConfig, now: Instant, wall_clock: SystemTime) -> Result<Self, HubError> {
        if config.seed == [0; 32] || config.stateless_reset_key == Some([0; 32]) {
            return Err(HubError::ZeroSeed);
        }
        if config.pools.is_empty() {
            return Err(HubError::Config(
                "at least one address pool is required".into(),
            ));
        }
        for family in [true, false] {
            if config
                .pools
                .iter()
                .filter(|p| p.network.addr().is_ipv4() == family)
                .count()
                > 1
            {
                return Err(HubError::Config(
                    "at most one IPv4 and one IPv6 pool are allowed".into(),
                ));
            }
        }
        let authenticator = Authenticator::new(&config.credentials).map_err(HubError::Config)?;
        let pools = config
            .pools
            .iter()
            .map(|p: &PoolConfig| AddressPool::new(p.network, &[p.hub_address]))
            .collect::<Result<Vec<_>, _>>()?;

        let clock = Arc::new(WallClock::new(wall_clock, now));
        let tls = HubTls {
            provider: config.crypto.clone(),
            identity: config.identity.clone(),
            client_ca: config.client_ca.clone(),
            token_key: derive_key(&config.seed, b"slopn retry token key"),
            transport: config.transport.quinn(false, 1),
            clock: clock.clone(),
        };
        let server = tls.server_config(&authenticator)?;
        let reset_key = config
            .stateless_reset_key
            .unwrap_or_else(|| derive_key(&config.seed, b"slopn stateless reset key"));
        let transport = Transport::new(
            &config.seed,
            reset_key,
            Some(server),
            config.transport.datagram_queue_bytes,
        );

        let hub_addresses = config.pools.iter().map(|p| p.hub_address).collect();
        let hub_networks = config
            .pools
            .iter()
            .map(|p| IpNet::new(p.hub_address, p.network.prefix_len()).expect("valid prefix"))
            .collect();
        let networks: Vec<IpNet> = config.pools.iter().map(|p| p.network).collect();
        let advertised = advertised_ranges(&networks, &config.routes);
        control::check_ranges(&advertised)?;
        control::check_dns_servers(&config.dns_servers)?;
        Ok(Self {
            transport,
            clock,
            pools,
            routes: RouteTable::new(hub_addresses, networks, advertised),
            authenticator,
            failures: FailureLimiter::new(config.auth_failures_per_minute),
            tls,
            hub_networks,
            dns_servers: config.dns_servers,
            max_half_open: config.max_half_open,
            retry_above: config.retry_above,
            handshaking: 0,
            by_identity: FxHashMap::default(),
            isolate_spokes: config.isolate_spokes,
            hello_timeout: config.hello_timeout,
            max_connections: config.max_connections,
            extra_routes: config.routes,
            closing: false,
            next_session: 1,
            events: VecDeque::new(),
            tun_out: VecDeque::new(),
            arena: PacketArena::default(),
            tun_icmp: IcmpRateLimit::default(),
            scratch: Vec::new(),
            capsules: Vec::new(),
            stats: HubStats::default(),
        })
    }

    // ----- inputs -----

    /// Handles one UDP payload received from `remote` (on local address `local_ip`, if
    /// known). Bad packets are dropped and counted inside QUIC; nothing here fails.
    pub fn handle_udp(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        payload: &[u8],
    ) {
        self.clock.advance(now);
        match self
            .transport
            .handle_udp(now, remote, local_ip, ecn, payload)
        {
            Received::Nothing => {}
            Received::Connection(idx) => self.process(now, idx),
            Received::New(incoming) => {
                if self.closing
                    || self.transport.len() >= self.max_connections
                    || self.handshaking >= self.max_half_open
                    || self.failures.is_blocked(remote.ip(), now)
                {
                    self.stats.refused += 1;
                    self.transport.refuse(incoming);
                    return;
                }
                if self.handshaking >= self.retry_above && !incoming.remote_address_validated() {
                    self.stats.retries += 1;
                    self.transport.retry(incoming);
                    return;
                }
                let id = SessionId(self.next_session);
                let session = Session {
                    id,
                    phase: Phase::Handshaking,
                    identity: None,
                    auth: None,
                    addresses: Vec::new(),
                    traffic: TrafficCounters::default(),
                    drops: DropCounters::default(),
                    icmp: IcmpRateLimit::default(),
                    close_reason: None,
                    ended: false,
                };
                match self.transport.accept(incoming, now, session) {
                    Ok(idx) => {
                        self.next_session += 1;
                        self.handshaking += 1;
                        debug!(%id, %remote, "incoming connection");
                        self.process(now, idx);
                    }
                    Err(e) => debug!(%remote, error = %e, "connection not accepted"),
                }
            }
        }
    }

    /// Handles an IP packet read from the hub's TUN device: routes it to the spoke that owns
    /// its destination. Returns why it was dropped, if it was.
    pub fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), DropReason> {
        self.clock.advance(now);
        self.stats.tun_in_packets += 1;
        let result = self.route_from_tun(now, packet);
        if let Err(reason) = result {
            self.stats.drops.add(reason);
        }
        result
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock.advance(now);
        while let Some((idx, deadline_due)) = self.transport.pop_expired(now) {
            if deadline_due {
                self.on_deadline(now, idx);
            }
            self.process(now, idx);
        }
    }

    // ----- commands -----

    /// Says goodbye to every spoke (they may reconnect to the next hub at once) and stops
    /// accepting new ones. Keep driving the hub until [`is_closed`](Self::is_closed).
    ///
    /// A reason longer than [`MAX_REASON_LEN`](control::MAX_REASON_LEN) is refused and
    /// nothing happens.
    pub fn close(&mut self, now: Instant, reason: &str) -> Result<(), HubError> {
        control::check_reason(reason)?;
        self.closing = true;
        for idx in self.transport.indices() {
            self.begin_close(now, idx, CloseCode::SHUTTING_DOWN, reason, false);
            self.process(now, idx);
        }
        Ok(())
    }

    /// Whether [`close`](Self::close) has finished: every connection is gone.
    pub fn is_closed(&self) -> bool {
        self.closing && self.transport.len() == 0
    }

    /// Ends one spoke's session with `code` and `reason`. Returns false if no such session;
    /// refuses a reason longer than [`MAX_REASON_LEN`](control::MAX_REASON_LEN).
    pub fn disconnect(
        &mut self,
        now: Instant,
        id: SessionId,
        code: CloseCode,
        reason: &str,
    ) -> Result<bool, HubError> {
        control::check_reason(reason)?;
        let Some(idx) = self.find(id) else {
            return Ok(false);
        };
        self.begin_close(now, idx, code, reason, code != CloseCode::NO_ERROR);
        self.process(now, idx);
        Ok(true)
    }

    /// Replaces the credentials (a configuration reload): sessions whose identity is gone,
    /// or whose token or authentication mode changed, end at once with `REVOKED`; the others
    /// go on. Returns how many sessions were revoked.
    pub fn set_credentials(
        &mut self,
        now: Instant,
        credentials: &[Credential],
    ) -> Result<usize, HubError> {
        let authenticator = Authenticator::new(credentials).map_err(HubError::Config)?;
        let server = self.tls.server_config(&authenticator)?;
        self.transport.endpoint.set_server_config(Some(server));
        self.authenticator = authenticator;
        let mut revoked = 0;
        for idx in self.transport.indices() {
            let allowed =
                self.transport
                    .get(idx)
                    .is_none_or(|e| match (&e.state.identity, &e.state.auth) {
                        (Some(identity), Some(auth)) => {
                            self.authenticator.still_allowed(identity, auth)
                        }
                        _ => true,
                    });
            if !allowed {
                revoked += 1;
                self.begin_close(
                    now,
                    idx,
                    CloseCode::REVOKED,
                    "access revoked by the hub operator",
                    true,
                );
                self.process(now, idx);
            }
        }
        Ok(revoked)
    }

    /// Replaces the DNS servers pushed to spokes and sends the new list to every
    /// authenticated spoke. More than [`MAX_ADDRESSES`](control::MAX_ADDRESSES) are refused
    /// and the old list stays.
    pub fn set_dns_servers(&mut self, now: Instant, servers: Vec<IpAddr>) -> Result<(), HubError> {
        control::check_dns_servers(&servers)?;
        self.dns_servers = servers;
        let capsule = Capsule::DnsServers(self.dns_servers.clone());
        self.push_to_authenticated(now, &capsule);
        Ok(())
    }

    fn push_to_authenticated(&mut self, now: Instant, capsule: &Capsule) {
        for idx in self.transport.indices() {
            let authenticated = self
                .transport
                .get(idx)
                .is_some_and(|e| matches!(e.state.phase, Phase::Authenticated | Phase::Active));
            if authenticated {
                self.send_capsule(now, idx, capsule);
                self.process(now, idx);
            }
        }
    }

    /// Replaces the extra advertised routes and sends the new full route list to every
    /// authenticated spoke. More ranges than [`MAX_ROUTES`](control::MAX_ROUTES) (after
    /// merging) are refused and the old routes stay.
    pub fn set_routes(&mut self, now: Instant, routes: Vec<IpNet>) -> Result<(), HubError> {
        let networks: Vec<IpNet> = self.pools.iter().map(|p| p.net()).collect();
        let advertised = advertised_ranges(&networks, &routes);
        control::check_ranges(&advertised)?;
        self.extra_routes = routes;
        self.routes.set_advertised(advertised);
        let capsule = Capsule::RouteAdvertisement(self.routes.advertised().to_vec());
        self.push_to_authenticated(now, &capsule);
        Ok(())
    }

    // ----- outputs -----

    /// The next UDP datagram(s) to send: writes them into `buf` and says where they go.
    /// With `max_datagrams > 1` several equal-sized datagrams may come at once (GSO), each
    /// `segment_size` long.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        let (transmit, idx) = self.transport.poll_transmit(now, max_datagrams, buf)?;
        if let Some(idx) = idx {
            self.process(now, idx);
        }
        Some(transmit)
    }

    /// The next IP packet to write to the hub's TUN device.
    pub fn poll_tun_packet(&mut self) -> Option<Bytes> {
        self.tun_out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.transport.next_timeout()
    }

    // ----- getters -----

    /// Counters of the whole hub.
    pub fn stats(&self) -> HubStats {
        let mut stats = self.stats.clone();
        stats.connections = self.transport.len();
        stats.spokes_assigned = self
            .transport
            .iter()
            .filter(|(_, e)| e.state.phase == Phase::Active)
            .count();
        stats
    }

    /// A snapshot of every session.
    pub fn spokes(&mut self) -> Vec<SpokeStats> {
        let mut out = Vec::new();
        for idx in self.transport.indices() {
            let Some(entry) = self.transport.get_mut(idx) else {
                continue;
            };
            let s = &entry.state;
            let (id, identity, addresses, traffic, drops) = (
                s.id,
                s.identity.as_deref().map(str::to_owned),
                s.addresses.clone(),
                s.traffic,
                s.drops,
            );
            out.push(SpokeStats {
                id,
                identity,
                addresses,
                remote: entry.link.conn.remote_address(),
                rtt: entry.link.conn.rtt(),
                max_packet: entry.link.max_packet(),
                traffic,
                drops,
            });
        }
        out
    }

    /// The address pools' networks.
    pub fn pool_networks(&self) -> Vec<IpNet> {
        self.pools.iter().map(AddressPool::net).collect()
    }

    /// The routes advertised to spokes.
    pub fn advertised_routes(&self) -> &[IpRange] {
        self.routes.advertised()
    }

    // ----- internals -----

    fn find(&self, id: SessionId) -> Option<usize> {
        self.transport
            .iter()
            .find(|(_, e)| e.state.id == id)
            .map(|(idx, _)| idx)
    }

    /// Reacts to everything quinn reports for one connection, then re-arms its timer.
    fn process(&mut self, now: Instant, idx: usize) {
        while let Some(event) = self.transport.poll_event(idx) {
            self.on_quinn_event(now, idx, event);
        }
        if self.transport.shuttle_events(idx) {
            self.remove(now, idx);
            return;
        }
        if let Some(entry) = self.transport.get_mut(idx)
            && let Err(e) = entry.link.flush()
        {
            self.on_control_error(now, idx, e);
        }
        self.transport.mark_ready(idx);
        self.transport.update_timer(idx);
    }

    fn on_quinn_event(&mut self, now: Instant, idx: usize, event: Event) {
        match event {
            Event::Connected => self.on_connected(now, idx),
            Event::ConnectionLost { reason } => {
                self.end_session(now, idx, DisconnectReason::from_quinn(&reason));
                self.set_phase(idx, Phase::Closed);
                if let Some(entry) = self.transport.get_mut(idx) {
                    entry.deadline = None;
                }
            }
            Event::Stream(StreamEvent::Opened { .. }) => {
                let result = match self.transport.get_mut(idx) {
                    Some(entry) => entry.link.accept_control(),
                    None => return,
                };
                match result {
                    Ok(()) => self.read_control(now, idx),
                    Err(e) => self.on_control_error(now, idx, e),
                }
            }
            Event::Stream(StreamEvent::Readable { .. }) => self.read_control(now, idx),
            Event::Stream(StreamEvent::Finished { .. }) => {
                // Our final capsule was acknowledged: close now.
                if let Some(entry) = self.transport.get_mut(idx)
                    && let Phase::Closing { code } = entry.state.phase
                {
                    entry.deadline = None;
                    self.close_connection(now, idx, code);
                }
            }
            Event::Stream(StreamEvent::Stopped { .. }) => {
                self.on_control_error(now, idx, ControlError::Stream("control stream stopped"));
            }
            Event::DatagramReceived => self.read_datagrams(now, idx),
            Event::HandshakeDataReady
            | Event::DatagramsUnblocked
            | Event::Stream(StreamEvent::Writable { .. } | StreamEvent::Available { .. }) => {}
        }
    }

    fn on_connected(&mut self, now: Instant, idx: usize) {
        let Some(entry) = self.transport.get_mut(idx) else {
            return;
        };
        let alpn_ok = entry
            .link
            .conn
            .crypto_session()
            .handshake_data()
            .and_then(|d| {
                d.downcast::<quinn_proto::crypto::rustls::HandshakeData>()
                    .ok()
            })
            .and_then(|d| d.protocol)
            .is_some_and(|p| p == crate::control::ALPN);
        let id = entry.state.id;
        let remote = entry.link.conn.remote_address();
        entry.deadline = Some((now + self.hello_timeout, "hello timeout"));
        self.set_phase(idx, Phase::AwaitingHello);
        if !alpn_ok {
            self.close_connection(now, idx, CloseCode::PROTOCOL_ERROR);
            return;
        }
        self.events.push_back(HubEvent::Connected { id, remote });
    }

    fn on_deadline(&mut self, now: Instant, idx: usize) {
        let Some(entry) = self.transport.get(idx) else {
            return;
        };
        match entry.state.phase {
            Phase::AwaitingHello | Phase::Authenticated => self.begin_close(
                now,
                idx,
                CloseCode::HELLO_TIMEOUT,
                "no hello and address request in time",
                true,
            ),
            Phase::Closing { code } => self.close_connection(now, idx, code),
            _ => {}
        }
    }

    fn read_control(&mut self, now: Instant, idx: usize) {
        let mut capsules = std::mem::take(&mut self.capsules);
        let result = match self.transport.get_mut(idx) {
            Some(entry) => entry.link.read(&mut capsules),
            None => Ok(()),
        };
        for capsule in capsules.drain(..) {
            let closing = self
                .transport
                .get(idx)
                .is_none_or(|e| matches!(e.state.phase, Phase::Closing { .. } | Phase::Closed));
            if closing {
                break;
            }
            self.on_capsule(now, idx, capsule);
        }
        self.capsules = capsules;
        if let Err(e) = result {
            self.on_control_error(now, idx, e);
        }
    }

    fn on_control_error(&mut self, now: Instant, idx: usize, error: ControlError) {
        let reason = match &error {
            ControlError::Decode(e) => e.to_string(),
            ControlError::Stream(what) => (*what).to_owned(),
            ControlError::Backlog => "control stream backlog: the spoke does not read".into(),
            ControlError::Limit(e) => format!("a capsule for the spoke was refused: {e}"),
        };
        self.protocol_error(now, idx, &reason);
    }

    fn protocol_error(&mut self, now: Instant, idx: usize, reason: &str) {
        let open = self
            .transport
            .get(idx)
            .is_some_and(|e| !matches!(e.state.phase, Phase::Closing { .. } | Phase::Closed));
        if open {
            debug!(idx, reason, "protocol error");
            self.begin_close(now, idx, CloseCode::PROTOCOL_ERROR, reason, true);
        }
    }

    fn on_capsule(&mut self, now: Instant, idx: usize, capsule: Capsule) {
        let Some(phase) = self.transport.get(idx).map(|e| e.state.phase) else {
            return;
        };
        match (phase, capsule) {
            (
                Phase::AwaitingHello,
                Capsule::Hello {
                    version,
                    credential,
                },
            ) => self.on_hello(now, idx, version, &credential),
            (Phase::Authenticated | Phase::Active, Capsule::AddressRequest(requests)) => {
                self.on_address_request(now, idx, &requests)
            }
            (_, Capsule::Goodbye { code, reason } | Capsule::Error { code, reason }) => {
                // The spoke is leaving: echo its code and close at once.
                self.end_session(
                    now,
                    idx,
                    DisconnectReason::Remote {
                        code,
                        reason: reason.clone(),
                    },
                );
                self.close_connection(now, idx, code);
            }
            (Phase::AwaitingHello, other) => {
                self.protocol_error(now, idx, &format!("expected HELLO, got {}", other.name()))
            }
            (_, other) => {
                self.protocol_error(now, idx, &format!("unexpected {} capsule", other.name()))
            }
        }
    }

    fn on_hello(&mut self, now: Instant, idx: usize, version: u64, credential: &[u8]) {
        let Some(entry) = self.transport.get(idx) else {
            return;
        };
        let (id, remote) = (entry.state.id, entry.link.conn.remote_address());
        if version != PROTOCOL_VERSION {
            self.stats.auth_failures += 1;
            self.events.push_back(HubEvent::AuthFailed {
                id,
                remote,
                reason: format!("unsupported protocol version {version}"),
            });
            let reason = format!("this hub speaks protocol version {PROTOCOL_VERSION}");
            self.begin_close(now, idx, CloseCode::UNSUPPORTED_VERSION, &reason, true);
            return;
        }
        let cert_identity = entry
            .link
            .conn
            .crypto_session()
            .peer_identity()
            .and_then(|certs| certs.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.first().and_then(tls::certificate_identity));
        let (identity, auth) = match self
            .authenticator
            .authenticate(cert_identity.as_deref(), credential)
        {
            Ok(found) => found,
            Err(why) => {
                // The spoke learns only that it failed; the operator learns why.
                self.stats.auth_failures += 1;
                self.failures.record(remote.ip(), now);
                warn!(%id, %remote, "authentication failed: {why}");
                self.events.push_back(HubEvent::AuthFailed {
                    id,
                    remote,
                    reason: why,
                });
                self.begin_close(
                    now,
                    idx,
                    CloseCode::AUTH_FAILED,
                    "authentication failed",
                    true,
                );
                return;
            }
        };
        // A spoke that restarted reconnects before its old session timed out: the new
        // session replaces the old one and inherits its address.
        if let Some(&old) = self.by_identity.get(&identity)
            && old != idx
        {
            info!(%identity, "new session replaces the previous one");
            self.begin_close(
                now,
                old,
                CloseCode::REPLACED,
                "replaced by a newer session of the same identity",
                false,
            );
            self.process(now, old);
        }
        self.by_identity.insert(identity.clone(), idx);
        let hub_addresses = self.hub_networks.clone();
        let routes = self.routes.advertised().to_vec();
        if let Some(entry) = self.transport.get_mut(idx) {
            entry.state.identity = Some(identity.clone());
            entry.state.auth = Some(auth);
        }
        self.set_phase(idx, Phase::Authenticated);
        self.send_capsule(
            now,
            idx,
            &Capsule::Welcome {
                version: PROTOCOL_VERSION,
                identity: identity.to_string(),
                hub_addresses,
            },
        );
        self.send_capsule(now, idx, &Capsule::RouteAdvertisement(routes));
        if !self.dns_servers.is_empty() {
            let dns = Capsule::DnsServers(self.dns_servers.clone());
            self.send_capsule(now, idx, &dns);
        }
    }

    fn on_address_request(&mut self, now: Instant, idx: usize, requests: &[RequestedAddress]) {
        let Some(entry) = self.transport.get_mut(idx) else {
            return;
        };
        let session = &mut entry.state;
        let Some(identity) = session.identity.clone() else {
            return;
        };
        let mut answers: Vec<AssignedAddress> = Vec::with_capacity(requests.len());
        let mut exhausted = None;
        for req in requests {
            let v4 = req.prefix.addr().is_ipv4();
            if let Some(have) = session.addresses.iter().find(|a| a.is_ipv4() == v4) {
                answers.push(AssignedAddress {
                    request_id: req.request_id,
                    prefix: IpPrefix::host(*have),
                });
                continue;
            }
            let Some(pool) = self
                .pools
                .iter_mut()
                .find(|p| p.net().addr().is_ipv4() == v4)
            else {
                answers.push(AssignedAddress {
                    request_id: req.request_id,
                    prefix: IpPrefix::rejection(!v4),
                });
                continue;
            };
            let wanted = (!req.prefix.is_unspecified()).then(|| req.prefix.addr());
            match pool.allocate(&identity, wanted) {
                Ok(addr) => {
                    session.addresses.push(addr);
                    self.routes.insert(addr, idx);
                    answers.push(AssignedAddress {
                        request_id: req.request_id,
                        prefix: IpPrefix::host(addr),
                    });
                }
                Err(e) => {
                    exhausted = Some(e.to_string());
                    answers.push(AssignedAddress {
                        request_id: req.request_id,
                        prefix: IpPrefix::rejection(!v4),
                    });
                }
            }
        }
        // The full current list: every address held, tagged with the request it answers.
        for addr in &session.addresses {
            if !answers.iter().any(|a| a.prefix.addr() == *addr) {
                answers.push(AssignedAddress {
                    request_id: 0,
                    prefix: IpPrefix::host(*addr),
                });
            }
        }
        let newly_active = session.phase == Phase::Authenticated && !session.addresses.is_empty();
        let (id, addresses) = (session.id, session.addresses.clone());
        self.send_capsule(now, idx, &Capsule::AddressAssign(answers));
        if addresses.is_empty() {
            if let Some(why) = exhausted {
                warn!(%identity, "{why}");
                self.begin_close(
                    now,
                    idx,
                    CloseCode::POOL_EXHAUSTED,
                    "pool exhausted: the hub has no free address; try again later",
                    true,
                );
            }
            return;
        }
        if newly_active && let Some(entry) = self.transport.get_mut(idx) {
            entry.deadline = None;
            self.set_phase(idx, Phase::Active);
            self.stats.sessions_assigned_total += 1;
            info!(%id, %identity, ?addresses, "spoke assigned");
            self.events.push_back(HubEvent::Assigned {
                id,
                identity: identity.to_string(),
                addresses,
            });
        }
    }

    fn send_capsule(&mut self, now: Instant, idx: usize, capsule: &Capsule) {
        let result = match self.transport.get_mut(idx) {
            Some(entry) => entry.link.send(capsule),
            None => return,
        };
        if let Err(e) = result {
            self.on_control_error(now, idx, e);
        }
    }

    /// Starts ending a session: frees its addresses, sends an ERROR (`error`) or GOODBYE with
    /// `code`, and closes the connection once that is acknowledged or after a grace period.
    fn begin_close(
        &mut self,
        now: Instant,
        idx: usize,
        code: CloseCode,
        reason: &str,
        error: bool,
    ) {
        let Some(entry) = self.transport.get_mut(idx) else {
            return;
        };
        if matches!(entry.state.phase, Phase::Closing { .. } | Phase::Closed) {
            return;
        }
        entry.state.close_reason = Some(reason.to_owned());
        if !entry.link.has_control() {
            self.end_session(
                now,
                idx,
                DisconnectReason::Local {
                    code,
                    reason: reason.to_owned(),
                },
            );
            self.close_connection(now, idx, code);
            return;
        }
        let capsule = if error {
            Capsule::Error {
                code,
                reason: reason.to_owned(),
            }
        } else {
            Capsule::Goodbye {
                code,
                reason: reason.to_owned(),
            }
        };
        let _ = entry.link.send(&capsule);
        entry.link.finish();
        entry.link.clear_datagrams();
        let grace = (entry.link.conn.rtt() * 3).clamp(Duration::from_millis(50), CLOSE_GRACE_MAX);
        entry.state.phase = Phase::Closing { code };
        entry.deadline = Some((now + grace, "close grace"));
        self.end_session(
            now,
            idx,
            DisconnectReason::Local {
                code,
                reason: reason.to_owned(),
            },
        );
        self.transport.mark_ready(idx);
        self.transport.update_timer(idx);
    }

    /// Closes the QUIC connection now (after any goodbye had its chance).
    fn close_connection(&mut self, now: Instant, idx: usize, code: CloseCode) {
        let Some(entry) = self.transport.get_mut(idx) else {
            return;
        };
        if entry.state.phase == Phase::Closed && entry.link.conn.is_closed() {
            return;
        }
        let reason = entry.state.close_reason.clone().unwrap_or_default();
        self.set_phase(idx, Phase::Closed);
        self.transport.close(now, idx, code, reason.as_bytes());
    }

    /// Moves a session to `phase`, keeping the count of handshaking connections.
    fn set_phase(&mut self, idx: usize, phase: Phase) {
        if let Some(entry) = self.transport.get_mut(idx) {
            if entry.state.phase == Phase::Handshaking && phase != Phase::Handshaking {
                self.handshaking -= 1;
            }
            entry.state.phase = phase;
        }
    }

    /// Frees a session's addresses and routes and reports it gone (once).
    fn end_session(&mut self, now: Instant, idx: usize, reason: DisconnectReason) {
        let Some(entry) = self.transport.get_mut(idx) else {
            return;
        };
        let session = &mut entry.state;
        if std::mem::replace(&mut session.ended, true) {
            return;
        }
        for addr in session.addresses.drain(..) {
            self.routes.remove(addr);
            if let Some(pool) = self.pools.iter_mut().find(|p| p.net().contains(&addr)) {
                pool.release(addr);
            }
        }
        if let Some(identity) = &session.identity
            && self.by_identity.get(identity) == Some(&idx)
        {
            self.by_identity.remove(identity);
        }
        if session.phase == Phase::Handshaking {
            // A TLS handshake this hub refused (a bad client certificate) is an
            // authentication failure like a bad token, and counts against its source.
            if let DisconnectReason::Transport {
                tls: true,
                by_peer: false,
                ..
            } = &reason
            {
                self.stats.auth_failures += 1;
                self.failures
                    .record(entry.link.conn.remote_address().ip(), now);
            }
            if reason_is_quiet(&reason) {
                return;
            }
        }
        let (id, identity) = (session.id, session.identity.as_deref().map(str::to_owned));
        info!(%id, identity = identity.as_deref().unwrap_or("-"), %reason, "spoke disconnected");
        self.events.push_back(HubEvent::Disconnected {
            id,
            identity,
            reason,
        });
    }

    fn remove(&mut self, now: Instant, idx: usize) {
        // Normally ended already; this covers connections closed without a lost event.
        let code = match self.transport.get(idx).map(|e| e.state.phase) {
            Some(Phase::Closing { code }) => code,
            _ => CloseCode::NO_ERROR,
        };
        let reason = self
            .transport
            .get(idx)
            .and_then(|e| e.state.close_reason.clone())
            .unwrap_or_default();
        self.end_session(now, idx, DisconnectReason::Local { code, reason });
        self.set_phase(idx, Phase::Closed);
        self.transport.remove(idx);
    }

    fn read_datagrams(&mut self, now: Instant, idx: usize) {
        while let Some(entry) = self.transport.get_mut(idx) {
            let Some(datagram) = entry.link.conn.datagrams().recv() else {
                break;
            };
            entry.state.traffic.rx(datagram.len());
            self.stats.traffic.rx(datagram.len());
            if let Err(reason) = self.route_from_spoke(now, idx, datagram) {
                self.stats.drops.add(reason);
                if let Some(entry) = self.transport.get_mut(idx) {
                    entry.state.drops.add(reason);
                }
            }
        }
    }

    /// Routes one packet a spoke sent.
    fn route_from_spoke(
        &mut self,
        now: Instant,
        from: usize,
        data: Bytes,
    ) -> Result<(), DropReason> {
        let entry = self.transport.get(from).ok_or(DropReason::NotAssigned)?;
        if entry.state.phase != Phase::Active {
            return Err(DropReason::NotAssigned);
        }
        let header = IpHeader::parse(&data).map_err(|_| DropReason::Malformed)?;
        if !entry.state.addresses.contains(&header.src) {
            return Err(DropReason::SpoofedSource);
        }
        match self.routes.lookup(header.dst, header.protocol) {
            Route::Hub | Route::Tun => {
                self.deliver_to_tun(data);
                Ok(())
            }
            Route::Spoke(to) => {
                if self.isolate_spokes && to != from {
                    self.icmp_to_spoke(now, from, &data, &header, IcmpError::AdminProhibited);
                    return Err(DropReason::Isolated);
                }
                if header.ttl <= 1 {
                    self.icmp_to_spoke(now, from, &data, &header, IcmpError::TimeExceeded);
                    return Err(DropReason::TtlExpired);
                }
                let mut packet = self.arena.copy_mut(&data);
                packet::decrement_ttl(&mut packet);
                let max = self.max_packet(to)?;
                if packet.len() > max {
                    if header.dont_fragment {
                        let mtu = IcmpError::PacketTooBig {
                            mtu: clamp_mtu(max),
                        };
                        self.icmp_to_spoke(now, from, &data, &header, mtu);
                        return Err(DropReason::TooLarge { max });
                    }
                    return self.send_fragments(to, &packet, &header, max);
                }
                self.send_to_spoke(to, packet.freeze());
                Ok(())
            }
            Route::Unassigned => {
                self.icmp_to_spoke(now, from, &data, &header, IcmpError::HostUnreachable);
                Err(DropReason::NoRoute)
            }
            Route::PoolBroadcast => Err(DropReason::NoRoute),
            Route::Unrouted => {
                self.icmp_to_spoke(now, from, &data, &header, IcmpError::NetUnreachable);
                Err(DropReason::NoRoute)
            }
        }
    }

    /// Routes one packet from the TUN side.
    fn route_from_tun(&mut self, now: Instant, data: &[u8]) -> Result<(), DropReason> {
        let header = IpHeader::parse(data).map_err(|_| DropReason::Malformed)?;
        let to = match self.routes.lookup(header.dst, header.protocol) {
            Route::Spoke(to) => to,
            Route::Unassigned => {
                self.icmp_to_tun(now, data, &header, IcmpError::HostUnreachable);
                return Err(DropReason::NoRoute);
            }
            Route::Hub | Route::Tun | Route::Unrouted | Route::PoolBroadcast => {
                return Err(DropReason::NoRoute);
            }
        };
        let max = self.max_packet(to)?;
        if data.len() > max {
            if header.dont_fragment {
                let mtu = IcmpError::PacketTooBig {
                    mtu: clamp_mtu(max),
                };
                self.icmp_to_tun(now, data, &header, mtu);
                return Err(DropReason::TooLarge { max });
            }
            return self.send_fragments(to, data, &header, max);
        }
        let packet = self.arena.copy(data);
        self.send_to_spoke(to, packet);
        Ok(())
    }

    fn max_packet(&mut self, idx: usize) -> Result<usize, DropReason> {
        self.transport
            .get_mut(idx)
            .and_then(|e| e.link.max_packet())
            .ok_or(DropReason::NotAssigned)
    }

    fn send_fragments(
        &mut self,
        to: usize,
        packet: &[u8],
        header: &IpHeader,
        max: usize,
    ) -> Result<(), DropReason> {
        for fragment in self.arena.fragments(packet, header, max)? {
            self.send_to_spoke(to, fragment);
        }
        Ok(())
    }

    fn send_to_spoke(&mut self, to: usize, packet: Bytes) {
        let Some(entry) = self.transport.get_mut(to) else {
            return;
        };
        let len = packet.len();
        match entry.link.queue_datagram(packet) {
            Ok(()) => {
                entry.state.traffic.tx(len);
                self.stats.traffic.tx(len);
                self.transport.mark_ready(to);
            }
            Err(reason) => {
                entry.state.drops.add(reason);
                self.stats.drops.add(reason);
            }
        }
    }

    fn deliver_to_tun(&mut self, packet: Bytes) {
        self.stats.tun_out_packets += 1;
        self.tun_out.push_back(packet);
    }

    /// Answers a spoke's packet with an ICMP error, rate-limited per spoke.
    fn icmp_to_spoke(
        &mut self,
        now: Instant,
        to: usize,
        original: &[u8],
        header: &IpHeader,
        kind: IcmpError,
    ) {
        let Some(from) = self.routes.hub_address(header.is_ipv4()) else {
            return;
        };
        let Some(entry) = self.transport.get_mut(to) else {
            return;
        };
        let Some(max) = entry.link.max_packet() else {
            return;
        };
        if !entry.state.icmp.allow(now) {
            return;
        }
        if icmp::build_error(original, header, from, kind, max, &mut self.scratch) {
            let packet = self.arena.copy(&self.scratch);
            self.send_to_spoke(to, packet);
        }
    }

    /// Answers a TUN-side packet with an ICMP error, written back to the TUN side.
    fn icmp_to_tun(&mut self, now: Instant, original: &[u8], header: &IpHeader, kind: IcmpError) {
        let Some(from) = self.routes.hub_address(header.is_ipv4()) else {
            return;
        };
        if !self.tun_icmp.allow(now) {
            return;
        }
        if icmp::build_error(original, header, from, kind, usize::MAX, &mut self.scratch) {
            let packet = self.arena.copy(&self.scratch);
            self.deliver_to_tun(packet);
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.transport.len())
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

/// The routes a hub advertises: its pools plus the configured extra networks.
fn advertised_ranges(pools: &[IpNet], extra: &[IpNet]) -> Vec<IpRange> {
    normalize_ranges(
        pools
            .iter()
            .chain(extra)
            .map(|n| IpRange::from_net(n.trunc()))
            .collect(),
    )
}

/// Failed handshakes (scanners, wrong CA) are not worth an event each.
fn reason_is_quiet(reason: &DisconnectReason) -> bool {
    !matches!(reason, DisconnectReason::Transport { tls: true, .. })
}
