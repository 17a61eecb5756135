//! The hub: accepts spokes, authenticates them, assigns addresses and routes their packets.
//!
//! [`Hub`] owns the endpoint and the tables its sessions share, and dispatches: per-session
//! handling lives in [`session`], the packet path in [`forward`], construction and TLS in
//! [`setup`].

mod forward;
mod hello;
mod session;
mod setup;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;
use quinn_proto::{Event, Transmit};
use rustc_hash::FxHashMap;
use tracing::debug;

use self::session::{HubSession, Phase, Session};
pub use self::setup::HubError;
use self::setup::{HubTls, advertised_ranges};
use crate::auth::{Authenticator, FailureLimiter};
use crate::config::Credential;
use crate::control::{self, Capsule, CloseCode, IpRange};
use crate::node::{Datagram, Dispatch, Node};
use crate::pool::AddressPool;
use crate::route::RouteTable;
use crate::session::{DisconnectReason, SessionId};
use crate::stats::{DropReason, HubStats, PoolUsage, SpokeStats};
use crate::transport::Received;

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

/// What a source's share of half-open connections is counted by: its IPv4 address, or its
/// IPv6 /64 (one host may hold a whole /64).
fn handshake_source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// Why the TLS handshake of a connection was refused, for the operator; `None` if it was
/// not refused by TLS. A refusal for want of a common key exchange group says so and what
/// to change (and is logged: it is a configuration to fix, not a scanner).
fn tls_refusal(cause: &quinn_proto::ConnectionError) -> Option<String> {
    let quinn_proto::ConnectionError::TransportError(error) = cause else {
        return None;
    };
    if !(0x100..0x200).contains(&u64::from(error.code)) {
        return None;
    }
    let reason = error.reason.as_str();
    Some(match crate::key_exchange::refusal(reason) {
        Some(sentence) => {
            tracing::warn!("{sentence}");
            sentence.to_owned()
        }
        None => format!("TLS handshake refused: {reason}"),
    })
}

/// What the hub's sessions and its packet path share.
pub(super) struct Tables {
    pools: Vec<AddressPool>,
    routes: RouteTable<usize>,
    /// The session each authenticated identity holds.
    by_identity: FxHashMap<Arc<str>, usize>,
    authenticator: Authenticator,
    failures: FailureLimiter,
    /// The hub's tunnel addresses with their pools' prefix lengths.
    hub_networks: Vec<IpNet>,
    dns_servers: Vec<IpAddr>,
    hello_timeout: Duration,
    isolate_spokes: bool,
    /// Connections still in their QUIC handshake.
    handshaking: usize,
    /// Of those, the ones whose source proved its address, by source.
    handshaking_by_source: FxHashMap<IpAddr, usize>,
    /// The largest packet the tunnel carries once path MTU discovery has climbed (the MSS
    /// clamp's ceiling).
    max_tunnel_mtu: usize,
    stats: HubStats,
}

/// When the hub takes new connections.
struct Admission {
    max_connections: usize,
    max_half_open: usize,
    retry_above: usize,
    max_half_open_per_source: usize,
    /// Set by [`Hub::close`]: no new connections.
    closing: bool,
    next_session: u64,
}

/// The sans-IO hub.
///
/// Feed it UDP datagrams ([`handle_udp`](Self::handle_udp)), packets from its TUN side
/// ([`handle_tun_packet`](Self::handle_tun_packet)) and timer expiries
/// ([`handle_timeout`](Self::handle_timeout)). After every input, drain the outputs in this
/// order until each is empty: [`poll_transmit`](Self::poll_transmit),
/// [`poll_tun_packet`](Self::poll_tun_packet), [`poll_event`](Self::poll_event); then arm a
/// timer for [`poll_timeout`](Self::poll_timeout).
pub struct Hub {
    node: Node<HubSession, HubEvent>,
    tables: Tables,
    admission: Admission,
    tls: HubTls,
    extra_routes: Vec<IpNet>,
}

impl Hub {
    // ----- inputs -----

    /// Handles one UDP datagram. Bad packets are dropped and counted inside QUIC; nothing
    /// here fails.
    pub fn handle_udp(&mut self, now: Instant, datagram: Datagram<'_>) {
        let incoming = match self.node.receive(now, datagram) {
            Received::Nothing => return,
            Received::Ignored => {
                self.tables.stats.ignored_datagrams += 1;
                return;
            }
            Received::Connection(idx) => return self.process(now, idx, false),
            Received::New(incoming) => incoming,
        };
        let remote = datagram.remote;
        let (admission, tables) = (&mut self.admission, &mut self.tables);
        if admission.closing
            || self.node.transport.len() >= admission.max_connections
            || tables.handshaking >= admission.max_half_open
            || tables.failures.is_blocked(remote.ip(), now)
        {
            tables.stats.refused += 1;
            self.node.transport.refuse(incoming);
            return;
        }
        let validated = incoming.remote_address_validated();
        if tables.handshaking >= admission.retry_above && !validated {
            tables.stats.retries += 1;
            self.node.transport.retry(incoming);
            return;
        }
        // Only a source that proved its address counts against its share: a spoofed one
        // cannot be held against its owner.
        let source = validated.then(|| handshake_source(remote.ip()));
        if let Some(source) = source
            && tables
                .handshaking_by_source
                .get(&source)
                .copied()
                .unwrap_or(0)
                >= admission.max_half_open_per_source
        {
            tables.stats.refused += 1;
            self.node.transport.refuse(incoming);
            return;
        }
        let id = SessionId(admission.next_session);
        match self
            .node
            .transport
            .accept(incoming, now, HubSession::new(id, source))
        {
            Ok(idx) => {
                admission.next_session += 1;
                tables.handshaking += 1;
                if let Some(source) = source {
                    *tables.handshaking_by_source.entry(source).or_default() += 1;
                }
                tables.stats.handshakes.started += 1;
                debug!(%id, %remote, "incoming connection");
                self.process(now, idx, false);
            }
            Err(cause) => match tls_refusal(&cause) {
                // A ClientHello in one packet is answered at once. A TLS refusal (no key
                // exchange group in common, a bad certificate) counts as a failed handshake
                // and against its source, as one later in the handshake does.
                Some(reason) => {
                    let id = SessionId(admission.next_session);
                    admission.next_session += 1;
                    let stats = &mut tables.stats;
                    stats.handshakes.started += 1;
                    stats.handshakes.failed_tls += 1;
                    stats.auth_failures += 1;
                    tables.failures.record(remote.ip(), now);
                    self.node
                        .events
                        .push_back(HubEvent::AuthFailed { id, remote, reason });
                }
                None => debug!(%remote, error = %cause, "connection not accepted"),
            },
        }
    }

    /// Handles an IP packet read from the hub's TUN device: routes it to the spoke that owns
    /// its destination. Returns why it was dropped, if it was.
    pub fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), DropReason> {
        self.node.clock.advance(now);
        let hub = &mut self.tables;
        hub.stats.tun_in_packets += 1;
        let node = &mut self.node;
        let result = forward::from_tun(now, &mut node.transport, hub, &mut node.packets, packet);
        if let Err(reason) = result {
            hub.stats.drops.add(reason);
        }
        result
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.node.clock.advance(now);
        self.run_timers(now);
    }

    // ----- commands -----

    /// Says goodbye to every spoke (they may reconnect to the next hub at once) and stops
    /// accepting new ones. Keep driving the hub until [`is_closed`](Self::is_closed).
    ///
    /// A reason longer than [`MAX_REASON_LEN`](control::MAX_REASON_LEN) is refused and
    /// nothing happens.
    pub fn close(&mut self, now: Instant, reason: &str) -> Result<(), HubError> {
        control::check_reason(reason)?;
        self.admission.closing = true;
        self.close_each(now, |_, _| Some((CloseCode::SHUTTING_DOWN, reason, false)));
        Ok(())
    }

    /// Whether [`close`](Self::close) has finished: every connection is gone.
    pub fn is_closed(&self) -> bool {
        self.admission.closing && self.node.transport.len() == 0
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
        let mut found = false;
        self.close_each(now, |s, _| {
            found |= s.id == id;
            (s.id == id).then_some((code, reason, code != CloseCode::NO_ERROR))
        });
        Ok(found)
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
        self.node.transport.endpoint.set_server_config(Some(server));
        self.tables.authenticator = authenticator;
        let mut revoked = 0;
        self.close_each(now, |s, hub| {
            let allowed = match (&s.identity, &s.auth) {
                (Some(identity), Some(auth)) => hub.authenticator.still_allowed(identity, auth),
                _ => true,
            };
            revoked += usize::from(!allowed);
            let reason = "access revoked by the hub operator";
            (!allowed).then_some((CloseCode::REVOKED, reason, true))
        });
        Ok(revoked)
    }

    /// Replaces the DNS servers pushed to spokes and sends the new list to every
    /// authenticated spoke. More than [`MAX_ADDRESSES`](control::MAX_ADDRESSES) are refused
    /// and the old list stays.
    pub fn set_dns_servers(&mut self, now: Instant, servers: Vec<IpAddr>) -> Result<(), HubError> {
        control::check_dns_servers(&servers)?;
        self.tables.dns_servers = servers;
        let capsule = Capsule::DnsServers(self.tables.dns_servers.clone());
        self.push_to_authenticated(now, &capsule);
        Ok(())
    }

    /// Replaces the extra advertised routes and sends the new full route list to every
    /// authenticated spoke. More ranges than [`MAX_ROUTES`](control::MAX_ROUTES) (after
    /// merging) are refused and the old routes stay.
    pub fn set_routes(&mut self, now: Instant, routes: Vec<IpNet>) -> Result<(), HubError> {
        let tables = &mut self.tables;
        let networks: Vec<IpNet> = tables.pools.iter().map(|p| p.net()).collect();
        let advertised = advertised_ranges(&networks, &routes);
        control::check_ranges(&advertised)?;
        self.extra_routes = routes;
        tables.routes.set_advertised(advertised);
        let capsule = Capsule::RouteAdvertisement(tables.routes.advertised().to_vec());
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
        self.next_transmit(now, max_datagrams, buf)
    }

    /// The next IP packet to write to the hub's TUN device.
    pub fn poll_tun_packet(&mut self) -> Option<Bytes> {
        self.node.packets.poll_tun()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.node.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        self.node.transport.next_timeout()
    }

    // ----- getters -----

    /// Counters of the whole hub.
    pub fn stats(&self) -> HubStats {
        let mut stats = self.tables.stats.clone();
        stats.connections = self.node.transport.len();
        stats.tun_out_packets = self.node.packets.tun_written();
        stats.spokes_assigned = self
            .node
            .transport
            .iter()
            .filter(|e| e.state.phase == Phase::Active)
            .count();
        stats.pools = self
            .tables
            .pools
            .iter()
            .map(|p| PoolUsage {
                network: p.net(),
                in_use: p.in_use(),
                capacity: p.capacity(),
            })
            .collect();
        stats
    }

    /// A snapshot of every session.
    pub fn spokes(&mut self) -> Vec<SpokeStats> {
        let entries = self.node.transport.iter_mut();
        entries
            .map(|entry| {
                let (s, link) = (&entry.state, &mut entry.link);
                SpokeStats {
                    id: s.id,
                    identity: s.identity.as_deref().map(str::to_owned),
                    addresses: s.addresses.clone(),
                    remote: link.conn.remote_address(),
                    rtt: link.conn.rtt(),
                    max_packet: link.max_packet(),
                    black_holes: link.conn.stats().path.black_holes_detected,
                    key_exchange: link.key_exchange(),
                    assigned_at: s.assigned_at,
                    traffic: s.traffic,
                    drops: s.drops,
                }
            })
            .collect()
    }

    /// The address pools' networks.
    pub fn pool_networks(&self) -> Vec<IpNet> {
        self.tables.pools.iter().map(AddressPool::net).collect()
    }

    /// The routes advertised to spokes.
    pub fn advertised_routes(&self) -> &[IpRange] {
        self.tables.routes.advertised()
    }

    // ----- internals -----

    /// One session borrowed with the hub's tables.
    fn session(&mut self, now: Instant, idx: usize) -> Option<Session<'_>> {
        Some(Session {
            slot: self.node.transport.slot(idx)?,
            hub: &mut self.tables,
            events: &mut self.node.events,
            now,
            replaced: None,
        })
    }

    /// Begins closing every session for which `pick` gives a code, a reason and whether it
    /// is an error, in index order; each is processed at once.
    fn close_each<'r>(
        &mut self,
        now: Instant,
        mut pick: impl FnMut(&HubSession, &Tables) -> Option<(CloseCode, &'r str, bool)>,
    ) {
        for idx in self.node.transport.indices() {
            // Processing an earlier one may have replaced and drained this one.
            let Some(mut s) = self.session(now, idx) else {
                continue;
            };
            if let Some((code, reason, error)) = pick(&s.slot.entry.state, s.hub) {
                s.begin_close(code, reason, error);
                self.process(now, idx, false);
            }
        }
    }

    /// Sends a capsule to every authenticated session.
    fn push_to_authenticated(&mut self, now: Instant, capsule: &Capsule) {
        for idx in self.node.transport.indices() {
            // As in `close_each`: an earlier one's processing may have removed this one.
            let Some(mut s) = self.session(now, idx) else {
                continue;
            };
            if s.slot.entry.state.is_authenticated() {
                s.send_capsule(capsule);
                self.process(now, idx, false);
            }
        }
    }
}

impl Dispatch for Hub {
    type State = HubSession;
    type Event = HubEvent;

    fn node(&mut self) -> &mut Node<HubSession, HubEvent> {
        &mut self.node
    }

    fn process(&mut self, now: Instant, idx: usize, deadline_due: bool) {
        // Indices come from quinn or the timer wheel, which know only live connections, or
        // from a command's snapshot (see `close_each`): a gone one has nothing left to do.
        let Node {
            transport,
            events,
            packets,
            capsules,
            ..
        } = &mut self.node;
        let Some((slot, mut peers)) = transport.split(idx) else {
            return;
        };
        let mut s = Session {
            slot,
            hub: &mut self.tables,
            events,
            now,
            replaced: None,
        };
        if deadline_due {
            s.on_deadline();
        }
        while let Some(event) = s.slot.entry.link.conn.poll() {
            match event {
                Event::DatagramReceived => forward::from_spoke(&mut s, &mut peers, packets),
                event => s.on_quinn_event(event, &mut peers, capsules),
            }
        }
        let replaced = s.replaced;
        if s.slot.shuttle_events() {
            s.on_drained();
            transport.remove(idx);
        } else {
            s.flush();
            s.slot.mark_ready();
            s.slot.update_timer();
        }
        // The session this one replaced has a goodbye queued: give it its turn.
        if let Some(old) = replaced {
            self.process(now, old, false);
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.node.transport.len())
            .field("closing", &self.admission.closing)
            .finish_non_exhaustive()
    }
}
