//! The spoke: connects to the hub, authenticates, obtains addresses, carries its host's
//! packets, and reconnects by itself when the session is lost.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ipnet::IpNet;
use quinn_proto::{Event, StreamEvent, Transmit};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use thiserror::Error;
use tracing::{debug, info};

use crate::clock::WallClock;
use crate::config::{ReconnectPolicy, SpokeConfig};
use crate::control::{
    self, Capsule, CloseCode, IpPrefix, IpRange, PROTOCOL_VERSION, RequestedAddress,
};
use crate::icmp::IcmpError;
use crate::link::ControlError;
use crate::node::{Datagram, Machine, Node};
use crate::packet::IpHeader;
use crate::session::DisconnectReason;
use crate::stats::{DropReason, SpokeSnapshot};
use crate::tls::{self, TlsError};
use crate::transport::{Received, Transport};
use crate::{clamp_mtu, derive_key};

/// Why a spoke could not be built from its configuration.
#[derive(Debug, Error)]
pub enum SpokeError {
    /// The trust anchors are unusable.
    #[error("spoke TLS setup: {0}")]
    Tls(#[from] TlsError),
    /// The configuration contradicts itself.
    #[error("spoke configuration: {0}")]
    Config(String),
    /// The seed is all zeros: a public key, with which anyone could reset the session.
    #[error(
        "spoke configuration: the seed is all zeros; give 32 bytes of OS randomness (it keys stateless resets)"
    )]
    ZeroSeed,
}

/// Something the driver may want to act on, log or show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpokeEvent {
    /// A connection attempt started.
    Connecting {
        /// Attempts so far, this one included.
        attempt: u64,
    },
    /// The QUIC handshake with the hub completed.
    Connected {
        /// The hub's UDP address.
        remote: SocketAddr,
    },
    /// The hub assigned addresses (first time in a session, or when they changed).
    Assigned {
        /// Who the hub says we are.
        identity: String,
        /// Our tunnel addresses.
        addresses: Vec<IpAddr>,
        /// The hub's own tunnel addresses.
        hub_addresses: Vec<IpAddr>,
        /// The MTU the TUN device should use.
        tun_mtu: Option<u16>,
    },
    /// The hub advertised a new list of routes for the tunnel.
    RoutesChanged {
        /// The full list.
        routes: Vec<IpRange>,
    },
    /// The hub pushed a new list of DNS servers.
    DnsChanged {
        /// The full list.
        servers: Vec<IpAddr>,
    },
    /// The largest packet the tunnel carries changed: set the TUN MTU to this.
    MtuChanged {
        /// The new TUN MTU.
        tun_mtu: u16,
    },
    /// The session ended. With `retry_in` the spoke reconnects by itself after that delay
    /// (keep the TUN device up); without, it has stopped (the reason says why).
    Disconnected {
        /// Why.
        reason: DisconnectReason,
        /// When the next attempt starts, if one will.
        retry_in: Option<Duration>,
    },
}

/// Where the spoke stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpokeState {
    /// QUIC handshake in progress.
    Connecting,
    /// Connected; waiting for the hub's welcome and addresses.
    Authenticating,
    /// Addresses assigned; packets flow.
    Established,
    /// Waiting before the next attempt.
    Reconnecting,
    /// Saying goodbye after [`Spoke::disconnect`].
    Closing,
    /// Not connected and not trying: disconnected by command or refused for good.
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshaking,
    Authenticating,
    Established,
    Closing {
        code: CloseCode,
    },
    /// Closed by us or the peer; waiting for quinn to drain it.
    Closed,
}

/// One connection attempt.
pub(crate) struct Attempt {
    phase: Phase,
    welcomed: bool,
    /// Whether its end was handled (retry scheduled or stop).
    ended: bool,
}

/// Time the hub has to answer our HELLO.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Random extra delay before reconnecting right away, so spokes do not all arrive at once.
const IMMEDIATE_JITTER: Duration = Duration::from_millis(50);

/// The sans-IO spoke.
///
/// Feed it UDP datagrams from the hub ([`handle_udp`](Self::handle_udp)), packets read from
/// its TUN device ([`handle_tun_packet`](Self::handle_tun_packet)) and timer expiries
/// ([`handle_timeout`](Self::handle_timeout)). After every input, drain the outputs in this
/// order until each is empty: [`poll_transmit`](Self::poll_transmit),
/// [`poll_tun_packet`](Self::poll_tun_packet), [`poll_event`](Self::poll_event); then arm a
/// timer for [`poll_timeout`](Self::poll_timeout).
pub struct Spoke {
    node: Node<Attempt, SpokeEvent>,
    client_config: quinn_proto::ClientConfig,
    hub: SocketAddr,
    server_name: String,
    token: Bytes,
    requested: Vec<IpAddr>,
    reconnect: ReconnectPolicy,
    current: Option<usize>,
    retry_at: Option<Instant>,
    stopped: bool,
    failures: u32,
    identity: Option<String>,
    addresses: Vec<IpPrefix>,
    /// The hub's tunnel addresses with their pools' prefix lengths.
    hub_networks: Vec<IpNet>,
    routes: Vec<IpRange>,
    dns_servers: Vec<IpAddr>,
    next_request_id: u64,
    tun_mtu: Option<u16>,
    rng: StdRng,
    stats: SpokeSnapshot,
}

impl Spoke {
    /// Builds a spoke and starts connecting at once. `now` and `wall_clock` are the same
    /// moment on the driver's monotonic clock and on the calendar.
    pub fn new(
        config: SpokeConfig,
        now: Instant,
        wall_clock: SystemTime,
    ) -> Result<Self, SpokeError> {
        if config.seed == [0; 32] {
            return Err(SpokeError::ZeroSeed);
        }
        if config.token.len() > control::MAX_CREDENTIAL_LEN {
            return Err(SpokeError::Config(format!(
                "the token is {} bytes long; the protocol carries {} at most",
                config.token.len(),
                control::MAX_CREDENTIAL_LEN
            )));
        }
        if config.trust_anchors.is_empty() {
            return Err(SpokeError::Config(
                "no CA certificate to trust for the hub".into(),
            ));
        }
        if config.hub.port() == 0 || config.hub.ip().is_unspecified() {
            return Err(SpokeError::Config(format!(
                "hub address {} is not a usable destination",
                config.hub
            )));
        }
        if rustls::pki_types::ServerName::try_from(config.server_name.as_str()).is_err() {
            return Err(SpokeError::Config(format!(
                "server name {:?} is neither a DNS name nor an IP address",
                config.server_name
            )));
        }
        let clock = Arc::new(WallClock::new(wall_clock, now));
        let crypto = tls::client_config(
            &config.crypto,
            &config.trust_anchors,
            config.client_certificate.as_ref(),
            clock.clone(),
        )?;
        let mut client_config = quinn_proto::ClientConfig::new(crypto);
        client_config.transport_config(config.transport.quinn(true, 0));
        // quinn draws the first Initial's destination CID from the OS; take it from the seed.
        let cid_rng = Mutex::new(StdRng::from_seed(derive_key(
            &config.seed,
            b"slopn initial destination cid",
        )));
        client_config.initial_dst_cid_provider(Arc::new(move || {
            // 20 bytes, the most QUIC v1 allows, as quinn's own default does.
            let mut bytes = [0; 20];
            cid_rng
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .fill(&mut bytes);
            quinn_proto::ConnectionId::new(&bytes)
        }));
        let mut spoke = Self {
            node: Node::new(
                Transport::new(
                    &config.seed,
                    derive_key(&config.seed, b"slopn stateless reset key"),
                    None,
                    config.transport.datagram_queue_bytes,
                ),
                clock,
            ),
            client_config,
            hub: config.hub,
            server_name: config.server_name,
            token: Bytes::from(config.token.into_bytes()),
            requested: config.requested_addresses,
            reconnect: config.reconnect,
            current: None,
            retry_at: None,
            stopped: false,
            failures: 0,
            identity: None,
            addresses: Vec::new(),
            hub_networks: Vec::new(),
            routes: Vec::new(),
            dns_servers: Vec::new(),
            next_request_id: 1,
            tun_mtu: None,
            rng: StdRng::from_seed(derive_key(&config.seed, b"slopn spoke rng")),
            stats: SpokeSnapshot::default(),
        };
        spoke.start_attempt(now);
        Ok(spoke)
    }

    // ----- inputs -----

    /// Handles one UDP datagram.
    pub fn handle_udp(&mut self, now: Instant, datagram: Datagram<'_>) {
        match self.node.receive(now, datagram) {
            Received::Connection(idx) => self.process(now, idx, false),
            Received::New(incoming) => self.node.transport.refuse(incoming),
            Received::Nothing => {}
        }
    }

    /// Handles an IP packet read from the TUN device: sends it to the hub. Returns why it was
    /// dropped, if it was.
    pub fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), DropReason> {
        self.node.clock.advance(now);
        let result = self.send_packet(now, packet);
        if let Err(reason) = result {
            self.stats.drops.add(reason);
        }
        result
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.node.clock.advance(now);
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
            self.start_attempt(now);
        }
        self.run_timers(now);
    }

    // ----- commands -----

    /// Ends the session with a goodbye and stops reconnecting. Keep driving the spoke until
    /// [`is_closed`](Self::is_closed) so the goodbye reaches the hub.
    pub fn disconnect(&mut self, now: Instant) {
        self.stopped = true;
        self.retry_at = None;
        let reason = "spoke disconnecting";
        if let Some(idx) = self.current.take() {
            self.end_attempt(
                now,
                idx,
                DisconnectReason::Local {
                    code: CloseCode::NO_ERROR,
                    reason: reason.into(),
                },
            );
            self.say_goodbye(now, idx, CloseCode::NO_ERROR, reason);
        }
    }

    /// Starts connecting again after [`disconnect`](Self::disconnect) or a refusal; while
    /// waiting to reconnect, reconnects now.
    pub fn connect(&mut self, now: Instant) {
        if self.current.is_some() {
            return;
        }
        self.stopped = false;
        self.failures = 0;
        self.retry_at = None;
        self.start_attempt(now);
    }

    /// Whether the spoke has stopped and every connection is gone.
    pub fn is_closed(&self) -> bool {
        self.stopped && self.node.transport.len() == 0
    }

    // ----- outputs -----

    /// The next UDP datagram(s) to send (see [`Hub::poll_transmit`](crate::Hub::poll_transmit)).
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        self.next_transmit(now, max_datagrams, buf)
    }

    /// The next IP packet to write to the TUN device.
    pub fn poll_tun_packet(&mut self) -> Option<Bytes> {
        self.node.packets.poll_tun()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SpokeEvent> {
        self.node.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let transport = self.node.transport.next_timeout();
        match (self.retry_at, transport) {
            (Some(r), Some((t, why))) if t < r => Some((t, why)),
            (Some(r), _) => Some((r, "reconnect")),
            (None, t) => t,
        }
    }

    // ----- getters -----

    /// Where the spoke stands.
    pub fn state(&self) -> SpokeState {
        match self.current.and_then(|idx| self.node.transport.get(idx)) {
            Some(entry) => match entry.state.phase {
                Phase::Handshaking => SpokeState::Connecting,
                Phase::Authenticating => SpokeState::Authenticating,
                Phase::Established => SpokeState::Established,
                Phase::Closing { .. } | Phase::Closed => SpokeState::Closing,
            },
            None if self.stopped && self.node.transport.len() > 0 => SpokeState::Closing,
            None if self.stopped => SpokeState::Stopped,
            None => SpokeState::Reconnecting,
        }
    }

    /// Our tunnel addresses (kept while reconnecting).
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.addresses.iter().map(IpPrefix::addr).collect()
    }

    /// The hub's tunnel addresses.
    pub fn hub_addresses(&self) -> Vec<IpAddr> {
        self.hub_networks.iter().map(IpNet::addr).collect()
    }

    /// The tunnel's own networks (the hub's pools), which stay routed through the tunnel
    /// whatever else the routes say.
    pub fn tunnel_networks(&self) -> Vec<IpNet> {
        self.hub_networks.iter().map(IpNet::trunc).collect()
    }

    /// The DNS servers the hub pushed.
    pub fn dns_servers(&self) -> &[IpAddr] {
        &self.dns_servers
    }

    /// The routes the hub advertised for the tunnel.
    pub fn routes(&self) -> &[IpRange] {
        &self.routes
    }

    /// The identity the hub authenticated us as.
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// The MTU the TUN device should use: the largest packet the tunnel carries now.
    pub fn tun_mtu(&self) -> Option<u16> {
        self.tun_mtu
    }

    /// Counters and the current session's figures.
    pub fn stats(&mut self) -> SpokeSnapshot {
        let mut stats = self.stats.clone();
        stats.identity = self.identity.clone();
        stats.addresses = self.addresses();
        stats.tun_mtu = self.tun_mtu;
        stats.rtt = self
            .current
            .and_then(|idx| self.node.transport.get(idx))
            .map(|e| e.link.conn.rtt());
        stats
    }

    // ----- internals -----

    fn start_attempt(&mut self, now: Instant) {
        self.stats.connect_attempts += 1;
        let attempt = Attempt {
            phase: Phase::Handshaking,
            welcomed: false,
            ended: false,
        };
        match self.node.transport.connect(
            now,
            self.client_config.clone(),
            self.hub,
            &self.server_name,
            attempt,
        ) {
            Ok(idx) => {
                self.current = Some(idx);
                if let Some(entry) = self.node.transport.get_mut(idx) {
                    entry.deadline =
                        Some((now + self.reconnect.attempt_timeout, "attempt timeout"));
                }
                self.node.events.push_back(SpokeEvent::Connecting {
                    attempt: self.stats.connect_attempts,
                });
                self.process(now, idx, false);
            }
            Err(e) => {
                self.stopped = true;
                self.node.events.push_back(SpokeEvent::Disconnected {
                    reason: DisconnectReason::Transport {
                        error: e.to_string(),
                        tls: false,
                        by_peer: false,
                    },
                    retry_in: None,
                });
            }
        }
    }

    fn on_quinn_event(&mut self, now: Instant, idx: usize, event: Event) {
        match event {
            Event::Connected => self.on_connected(now, idx),
            Event::ConnectionLost { reason } => {
                self.end_attempt(now, idx, DisconnectReason::from_quinn(&reason));
                if let Some(entry) = self.node.transport.get_mut(idx) {
                    entry.state.phase = Phase::Closed;
                    entry.deadline = None;
                }
            }
            Event::Stream(StreamEvent::Readable { .. }) => self.read_control(now, idx),
            Event::Stream(StreamEvent::Finished { .. }) => {
                if let Some(entry) = self.node.transport.get_mut(idx)
                    && let Phase::Closing { code } = entry.state.phase
                {
                    entry.deadline = None;
                    self.close_connection(now, idx, code, "goodbye");
                }
            }
            Event::Stream(StreamEvent::Stopped { .. }) => {
                self.on_control_error(now, idx, ControlError::Stream("control stream stopped"));
            }
            Event::DatagramReceived => self.read_datagrams(idx),
            Event::HandshakeDataReady
            | Event::DatagramsUnblocked
            | Event::Stream(
                StreamEvent::Opened { .. }
                | StreamEvent::Writable { .. }
                | StreamEvent::Available { .. },
            ) => {}
        }
    }

    fn on_connected(&mut self, now: Instant, idx: usize) {
        let mut requests = Vec::new();
        for v4 in [true, false] {
            let wanted = self
                .requested
                .iter()
                .copied()
                .find(|a| a.is_ipv4() == v4)
                .or_else(|| {
                    self.addresses
                        .iter()
                        .map(IpPrefix::addr)
                        .find(|a| a.is_ipv4() == v4)
                })
                .unwrap_or(if v4 {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                });
            requests.push(RequestedAddress {
                request_id: self.next_request_id,
                prefix: IpPrefix::host(wanted),
            });
            self.next_request_id += 1;
        }
        let Some(entry) = self.node.transport.get_mut(idx) else {
            return;
        };
        entry.state.phase = Phase::Authenticating;
        entry.deadline = Some((now + AUTH_TIMEOUT, "hub answer timeout"));
        let remote = entry.link.conn.remote_address();
        entry.link.open_control();
        let hello = Capsule::Hello {
            version: PROTOCOL_VERSION,
            credential: self.token.clone(),
        };
        let result = entry
            .link
            .send(&hello)
            .and_then(|()| entry.link.send(&Capsule::AddressRequest(requests)));
        self.node.events.push_back(SpokeEvent::Connected { remote });
        if let Err(e) = result {
            self.on_control_error(now, idx, e);
        }
    }

    fn on_deadline(&mut self, now: Instant, idx: usize) {
        let Some(entry) = self.node.transport.get_mut(idx) else {
            return;
        };
        match entry.state.phase {
            Phase::Handshaking => {
                // Heard something? Then the handshake is merely slow: let QUIC time it out.
                if entry.link.conn.stats().udp_rx.datagrams > 0 {
                    return;
                }
                let reason = DisconnectReason::Local {
                    code: CloseCode::NO_ERROR,
                    reason: "no answer from the hub".into(),
                };
                self.end_attempt(now, idx, reason);
                self.close_connection(now, idx, CloseCode::NO_ERROR, "attempt abandoned");
            }
            Phase::Authenticating => {
                let reason = "the hub did not answer the hello";
                self.end_attempt(
                    now,
                    idx,
                    DisconnectReason::Local {
                        code: CloseCode::HELLO_TIMEOUT,
                        reason: reason.into(),
                    },
                );
                self.close_connection(now, idx, CloseCode::HELLO_TIMEOUT, reason);
            }
            Phase::Closing { code } => self.close_connection(now, idx, code, "goodbye"),
            Phase::Established | Phase::Closed => {}
        }
    }

    fn read_control(&mut self, now: Instant, idx: usize) {
        let mut capsules = std::mem::take(&mut self.node.capsules);
        let result = match self.node.transport.get_mut(idx) {
            Some(entry) => entry.link.read(&mut capsules),
            None => Ok(()),
        };
        for capsule in capsules.drain(..) {
            if self.current != Some(idx) {
                break;
            }
            self.on_capsule(now, idx, capsule);
        }
        self.node.capsules = capsules;
        if let Err(e) = result {
            self.on_control_error(now, idx, e);
        }
    }

    fn on_control_error(&mut self, now: Instant, idx: usize, error: ControlError) {
        if self.current != Some(idx) {
            return;
        }
        let reason = match error {
            ControlError::Decode(e) => e.to_string(),
            ControlError::Stream(what) => what.to_owned(),
            ControlError::Backlog => "control stream backlog: the hub does not read".into(),
            ControlError::Limit(e) => format!("a capsule for the hub was refused: {e}"),
        };
        self.fail(now, idx, CloseCode::PROTOCOL_ERROR, &reason);
    }

    /// Ends the attempt because the hub misbehaved.
    fn fail(&mut self, now: Instant, idx: usize, code: CloseCode, reason: &str) {
        debug!(reason, "closing the session");
        self.end_attempt(
            now,
            idx,
            DisconnectReason::Local {
                code,
                reason: reason.into(),
            },
        );
        self.close_connection(now, idx, code, reason);
    }

    fn on_capsule(&mut self, now: Instant, idx: usize, capsule: Capsule) {
        let Some(entry) = self.node.transport.get_mut(idx) else {
            return;
        };
        match capsule {
            Capsule::Welcome {
                version,
                identity,
                hub_addresses,
            } if !entry.state.welcomed && version == PROTOCOL_VERSION => {
                entry.state.welcomed = true;
                self.identity = Some(identity);
                self.hub_networks = hub_addresses;
            }
            Capsule::RouteAdvertisement(routes) if entry.state.welcomed => {
                if routes != self.routes {
                    self.routes = routes.clone();
                    self.node
                        .events
                        .push_back(SpokeEvent::RoutesChanged { routes });
                }
            }
            Capsule::AddressAssign(list) if entry.state.welcomed => {
                let addresses: Vec<IpPrefix> = list
                    .iter()
                    .map(|a| a.prefix)
                    .filter(|p| !p.is_unspecified())
                    .collect();
                let first = entry.state.phase == Phase::Authenticating;
                if addresses.is_empty() {
                    // The hub follows an empty assignment with an error and closes.
                    return;
                }
                if first {
                    entry.state.phase = Phase::Established;
                    entry.deadline = None;
                    self.failures = 0;
                    self.stats.sessions += 1;
                }
                if first || addresses != self.addresses {
                    self.addresses = addresses;
                    self.tun_mtu = entry.link.max_packet().map(clamp_mtu);
                    info!(addresses = ?self.addresses(), identity = ?self.identity, "assigned");
                    self.node.events.push_back(SpokeEvent::Assigned {
                        identity: self.identity.clone().unwrap_or_default(),
                        addresses: self.addresses(),
                        hub_addresses: self.hub_addresses(),
                        tun_mtu: self.tun_mtu,
                    });
                }
            }
            Capsule::DnsServers(servers) if entry.state.welcomed => {
                if servers != self.dns_servers {
                    self.dns_servers = servers.clone();
                    self.node
                        .events
                        .push_back(SpokeEvent::DnsChanged { servers });
                }
            }
            Capsule::Goodbye { code, reason } | Capsule::Error { code, reason } => {
                self.end_attempt(
                    now,
                    idx,
                    DisconnectReason::Remote {
                        code,
                        reason: reason.clone(),
                    },
                );
                self.close_connection(now, idx, code, &reason);
            }
            other => {
                let reason = format!("unexpected {} capsule", other.name());
                self.fail(now, idx, CloseCode::PROTOCOL_ERROR, &reason);
            }
        }
    }

    /// Handles the end of an attempt (once): schedules the next one or stops.
    fn end_attempt(&mut self, now: Instant, idx: usize, reason: DisconnectReason) {
        let Some(entry) = self.node.transport.get_mut(idx) else {
            return;
        };
        if std::mem::replace(&mut entry.state.ended, true) {
            return;
        }
        let was_established = entry.state.phase == Phase::Established;
        entry.link.clear_datagrams();
        if self.current == Some(idx) {
            self.current = None;
        }
        if self.stopped {
            self.node.events.push_back(SpokeEvent::Disconnected {
                reason,
                retry_in: None,
            });
            return;
        }
        let retry_in = match &reason {
            DisconnectReason::Remote { code, .. } => match *code {
                CloseCode::AUTH_FAILED
                | CloseCode::UNSUPPORTED_VERSION
                | CloseCode::REPLACED
                | CloseCode::REVOKED
                | CloseCode::PROTOCOL_ERROR => None,
                CloseCode::POOL_EXHAUSTED => Some(self.reconnect.pool_exhausted_delay),
                CloseCode::SHUTTING_DOWN => Some(self.jitter(IMMEDIATE_JITTER)),
                _ => Some(self.backoff(was_established)),
            },
            DisconnectReason::Transport { tls: true, .. } => None,
            _ => Some(self.backoff(was_established)),
        };
        if was_established {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        match retry_in {
            Some(delay) => self.retry_at = Some(now + delay),
            None => self.stopped = true,
        }
        info!(%reason, ?retry_in, "session ended");
        self.node
            .events
            .push_back(SpokeEvent::Disconnected { reason, retry_in });
    }

    /// Delay before the next attempt: immediate after a working session, then doubling.
    fn backoff(&mut self, was_established: bool) -> Duration {
        if was_established || self.failures == 0 {
            return self.jitter(IMMEDIATE_JITTER);
        }
        let exp = self.failures.saturating_sub(1).min(16);
        let base = self
            .reconnect
            .min_delay
            .saturating_mul(1 << exp)
            .min(self.reconnect.max_delay);
        // ±25 % so that spokes spread out.
        let quarter = base / 4;
        base - quarter + self.jitter(quarter * 2)
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.random_range(0..nanos))
    }

    fn say_goodbye(&mut self, now: Instant, idx: usize, code: CloseCode, reason: &str) {
        let Some(mut slot) = self.node.transport.slot(idx) else {
            return;
        };
        let entry = &mut *slot.entry;
        match entry.state.phase {
            Phase::Authenticating | Phase::Established => {
                let goodbye = Capsule::Goodbye {
                    code,
                    reason: reason.into(),
                };
                let grace_end = entry.link.send_last(now, &goodbye);
                entry.state.phase = Phase::Closing { code };
                entry.deadline = Some((grace_end, "goodbye grace"));
                slot.mark_ready();
                slot.update_timer();
            }
            Phase::Handshaking => self.close_connection(now, idx, code, reason),
            Phase::Closing { .. } | Phase::Closed => {}
        }
    }

    fn close_connection(&mut self, now: Instant, idx: usize, code: CloseCode, reason: &str) {
        let Some(mut slot) = self.node.transport.slot(idx) else {
            return;
        };
        if slot.entry.state.phase == Phase::Closed {
            return;
        }
        slot.entry.state.phase = Phase::Closed;
        slot.close(now, code, reason.as_bytes());
    }

    fn track_mtu(&mut self, idx: usize) {
        if self.current != Some(idx) {
            return;
        }
        let Some(entry) = self.node.transport.get_mut(idx) else {
            return;
        };
        if entry.state.phase != Phase::Established {
            return;
        }
        let mtu = entry.link.max_packet().map(clamp_mtu);
        if mtu != self.tun_mtu {
            self.tun_mtu = mtu;
            if let Some(tun_mtu) = mtu {
                self.node
                    .events
                    .push_back(SpokeEvent::MtuChanged { tun_mtu });
            }
        }
    }

    fn read_datagrams(&mut self, idx: usize) {
        while let Some(entry) = self.node.transport.get_mut(idx) {
            let Some(datagram) = entry.link.conn.datagrams().recv() else {
                break;
            };
            self.stats.traffic.rx(datagram.len());
            let for_us = match IpHeader::parse(&datagram) {
                Err(_) => Err(DropReason::Malformed),
                Ok(h) if !self.addresses.iter().any(|p| p.contains(h.dst)) => {
                    Err(DropReason::NotForUs)
                }
                Ok(_) if entry.state.phase != Phase::Established => Err(DropReason::NotAssigned),
                Ok(_) => Ok(()),
            };
            match for_us {
                Ok(()) => self.node.packets.to_tun(datagram),
                Err(reason) => self.stats.drops.add(reason),
            }
        }
    }

    fn send_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), DropReason> {
        let idx = self.current.ok_or(DropReason::NotAssigned)?;
        let entry = self
            .node
            .transport
            .get_mut(idx)
            .ok_or(DropReason::NotAssigned)?;
        if entry.state.phase != Phase::Established {
            return Err(DropReason::NotAssigned);
        }
        let header = IpHeader::parse(packet).map_err(|_| DropReason::Malformed)?;
        if !self.addresses.iter().any(|p| p.contains(header.src)) {
            return Err(DropReason::SpoofedSource);
        }
        if !self
            .routes
            .iter()
            .any(|r| r.matches(header.dst, header.protocol))
        {
            return Err(DropReason::NoRoute);
        }
        let max = entry.link.max_packet().ok_or(DropReason::NotAssigned)?;
        if packet.len() > max {
            if header.dont_fragment {
                self.icmp_to_tun(
                    now,
                    packet,
                    &header,
                    IcmpError::PacketTooBig {
                        mtu: clamp_mtu(max),
                    },
                );
                return Err(DropReason::TooLarge { max });
            }
            for f in self.node.packets.arena.fragments(packet, &header, max)? {
                self.queue(idx, f)?;
            }
            return Ok(());
        }
        let data = self.node.packets.arena.copy(packet);
        self.queue(idx, data)
    }

    fn queue(&mut self, idx: usize, packet: Bytes) -> Result<(), DropReason> {
        let mut slot = self
            .node
            .transport
            .slot(idx)
            .ok_or(DropReason::NotAssigned)?;
        let len = packet.len();
        slot.entry.link.queue_datagram(packet)?;
        self.stats.traffic.tx(len);
        slot.mark_ready();
        Ok(())
    }

    fn icmp_to_tun(&mut self, now: Instant, original: &[u8], header: &IpHeader, kind: IcmpError) {
        let from = self
            .hub_networks
            .iter()
            .map(IpNet::addr)
            .find(|a| a.is_ipv4() == header.is_ipv4());
        let packets = &mut self.node.packets;
        packets.icmp_to_tun(now, from, original, header, kind);
    }
}

impl Machine for Spoke {
    type State = Attempt;
    type Event = SpokeEvent;

    fn node(&mut self) -> &mut Node<Attempt, SpokeEvent> {
        &mut self.node
    }

    fn process(&mut self, now: Instant, idx: usize, deadline_due: bool) {
        if deadline_due {
            self.on_deadline(now, idx);
        }
        while let Some(event) = self
            .node
            .transport
            .get_mut(idx)
            .and_then(|e| e.link.conn.poll())
        {
            self.on_quinn_event(now, idx, event);
        }
        let Some(mut slot) = self.node.transport.slot(idx) else {
            return;
        };
        if slot.shuttle_events() {
            self.node.transport.remove(idx);
            if self.current == Some(idx) {
                self.current = None;
            }
            return;
        }
        if let Err(e) = slot.entry.link.flush() {
            self.on_control_error(now, idx, e);
        }
        self.track_mtu(idx);
        if let Some(mut slot) = self.node.transport.slot(idx) {
            slot.mark_ready();
            slot.update_timer();
        }
    }
}

impl std::fmt::Debug for Spoke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spoke")
            .field("state", &self.state())
            .field("addresses", &self.addresses())
            .finish_non_exhaustive()
    }
}
