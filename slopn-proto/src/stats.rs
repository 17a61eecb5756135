//! Counters: traffic each way, drops by typed reason, and the snapshots handed to drivers.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::session::DisconnectReason;

/// Why a packet was not delivered. Inputs that refuse a packet return one; the state
/// machines also count every drop by reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The session has no address yet (or is closing), or the spoke is not connected.
    NotAssigned,
    /// Not a well-formed IPv4 or IPv6 packet.
    Malformed,
    /// The source address is not one assigned to the sender.
    SpoofedSource,
    /// No spoke owns the destination, or it lies outside the advertised routes.
    NoRoute,
    /// Spoke-to-spoke traffic while `isolate_spokes` is set.
    Isolated,
    /// TTL or hop limit would reach zero; an ICMP Time Exceeded was sent.
    TtlExpired,
    /// Larger than the tunnel carries now; an ICMP "too big" was sent.
    TooLarge {
        /// The largest packet the tunnel carries right now.
        max: usize,
    },
    /// The tunnel's send queue is full; the oldest packet made room for a newer one.
    Congested,
    /// (Spoke) a packet from the hub whose destination is not one of our addresses.
    NotForUs,
    /// A packet from the TUN side that never leaves its link: the kernel's own link-local
    /// traffic (IPv6 router solicitations and MLD reports from `fe80::`, to `ff02::`; IPv4 to
    /// 224.0.0.0/24). Harmless; a tunnel does not carry it.
    LinkLocal,
}

impl DropReason {
    /// Number of distinct reasons (ignoring payloads).
    pub const COUNT: usize = 10;

    /// Every reason, in counter order (payloads zeroed).
    pub const ALL: [DropReason; Self::COUNT] = [
        Self::NotAssigned,
        Self::Malformed,
        Self::SpoofedSource,
        Self::NoRoute,
        Self::Isolated,
        Self::TtlExpired,
        Self::TooLarge { max: 0 },
        Self::Congested,
        Self::NotForUs,
        Self::LinkLocal,
    ];

    /// Position of this reason in [`DropCounters`].
    pub fn index(self) -> usize {
        match self {
            Self::NotAssigned => 0,
            Self::Malformed => 1,
            Self::SpoofedSource => 2,
            Self::NoRoute => 3,
            Self::Isolated => 4,
            Self::TtlExpired => 5,
            Self::TooLarge { .. } => 6,
            Self::Congested => 7,
            Self::NotForUs => 8,
            Self::LinkLocal => 9,
        }
    }

    /// A short, stable name (snake case), for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotAssigned => "not_assigned",
            Self::Malformed => "malformed",
            Self::SpoofedSource => "spoofed_source",
            Self::NoRoute => "no_route",
            Self::Isolated => "isolated",
            Self::TtlExpired => "ttl_expired",
            Self::TooLarge { .. } => "too_large",
            Self::Congested => "congested",
            Self::NotForUs => "not_for_us",
            Self::LinkLocal => "link_local",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { max } => write!(f, "too_large (max {max})"),
            other => f.write_str(other.name()),
        }
    }
}

/// Drop counts by reason.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::COUNT]);

impl DropCounters {
    /// Counts one drop.
    pub fn add(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }

    /// Drops for `reason` (its payload is ignored).
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Non-zero counts with their reasons.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
    }

    /// Adds another set of counts to this one.
    pub fn merge(&mut self, other: &DropCounters) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

impl fmt::Debug for DropCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(r, n)| (r.name(), n)))
            .finish()
    }
}

/// Packets and bytes in each direction. "rx" is what came out of the tunnel towards this
/// side, "tx" what this side sent into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// Packets received from the tunnel.
    pub rx_packets: u64,
    /// Bytes (IP packet sizes) received from the tunnel.
    pub rx_bytes: u64,
    /// Packets sent into the tunnel.
    pub tx_packets: u64,
    /// Bytes (IP packet sizes) sent into the tunnel.
    pub tx_bytes: u64,
}

impl TrafficCounters {
    pub(crate) fn rx(&mut self, len: usize) {
        self.rx_packets += 1;
        self.rx_bytes += len as u64;
    }

    pub(crate) fn tx(&mut self, len: usize) {
        self.tx_packets += 1;
        self.tx_bytes += len as u64;
    }

    /// Adds another set of counts to this one.
    pub fn merge(&mut self, other: &TrafficCounters) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
    }
}

/// A snapshot of one connected spoke, as the hub sees it.
#[derive(Clone, Debug)]
pub struct SpokeStats {
    /// The session.
    pub id: crate::SessionId,
    /// The authenticated identity, once known.
    pub identity: Option<String>,
    /// Assigned tunnel addresses.
    pub addresses: Vec<IpAddr>,
    /// The spoke's current UDP address.
    pub remote: SocketAddr,
    /// Smoothed round-trip time of the QUIC path.
    pub rtt: Duration,
    /// Largest IP packet the tunnel to this spoke carries now.
    pub max_packet: Option<usize>,
    /// Times QUIC took losses of what the hub sent for an MTU black hole and fell back to
    /// its smallest packets (path MTU discovery then climbs again).
    pub black_holes: u64,
    /// The TLS key exchange group of the session (X25519MLKEM768 unless either end is
    /// set to classic), once the handshake has settled on one.
    pub key_exchange: Option<rustls::NamedGroup>,
    /// Traffic: rx = from the spoke, tx = to the spoke.
    pub traffic: TrafficCounters,
    /// Packets from this spoke that were dropped, by reason.
    pub drops: DropCounters,
    /// When the session got its addresses, on the clock the caller gives the hub; `None`
    /// before that.
    pub assigned_at: Option<std::time::Instant>,
}

/// A snapshot of the hub.
#[derive(Clone, Debug, Default)]
pub struct HubStats {
    /// Sessions with an assigned address.
    pub spokes_assigned: usize,
    /// QUIC connections, in any state.
    pub connections: usize,
    /// Traffic summed over all sessions (rx = from spokes, tx = to spokes), including
    /// sessions that have ended.
    pub traffic: TrafficCounters,
    /// Packets delivered to the hub's TUN side.
    pub tun_out_packets: u64,
    /// Packets read from the hub's TUN side.
    pub tun_in_packets: u64,
    /// Drops of every session and of the TUN side, by reason.
    pub drops: DropCounters,
    /// Credentials refused.
    pub auth_failures: u64,
    /// First-flight packets of connection attempts refused (full, too many handshakes, or
    /// a source that failed to authenticate too often). Refusing is stateless, so a
    /// ClientHello in two packets (the post-quantum key shares make it 1.4 KB) counts twice.
    pub refused: u64,
    /// QUIC Retry packets sent, asking a client to prove its address: one per first-flight
    /// packet, so two for a ClientHello of two packets.
    pub retries: u64,
    /// UDP datagrams that were no QUIC packet for the hub (undecodable, too short, for no
    /// connection it has), ignored: scanners' and floods' traffic.
    pub ignored_datagrams: u64,
    /// QUIC handshakes taken on, and how they ended.
    pub handshakes: HandshakeCounters,
    /// Sessions that reached assignment.
    pub sessions_assigned_total: u64,
    /// Each address pool's use.
    pub pools: Vec<PoolUsage>,
}

/// The hub's QUIC handshakes: taken on (not refused, not sent a Retry), completed, and
/// failed by why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeCounters {
    /// Handshakes the hub took on.
    pub started: u64,
    /// Handshakes that completed (TLS done, ALPN agreed or not).
    pub completed: u64,
    /// Failed on TLS: a certificate or ALPN one side refused.
    pub failed_tls: u64,
    /// Failed because the client went silent.
    pub failed_timeout: u64,
    /// Failed otherwise: closed by the client, reset, a transport error, the hub closing.
    pub failed_other: u64,
}

impl HandshakeCounters {
    /// Counts a handshake that ended for `reason` before completing.
    pub(crate) fn fail(&mut self, reason: &DisconnectReason) {
        match reason {
            DisconnectReason::Transport { tls: true, .. } => self.failed_tls += 1,
            DisconnectReason::TimedOut => self.failed_timeout += 1,
            _ => self.failed_other += 1,
        }
    }

    /// The failures by reason, with the names the metrics use.
    pub fn failures(&self) -> [(&'static str, u64); 3] {
        [
            ("tls", self.failed_tls),
            ("timeout", self.failed_timeout),
            ("other", self.failed_other),
        ]
    }
}

/// How often the spoke scheduled a new attempt, by why the previous one ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconnectCounters {
    /// Nothing heard from the hub for the idle timeout.
    pub timed_out: u64,
    /// The hub answered with a stateless reset: it restarted.
    pub reset: u64,
    /// The hub closed the session (shutting down, pool exhausted, an error it reported).
    pub closed_by_hub: u64,
    /// This side ended it: an attempt the hub never answered, or a protocol error.
    pub closed_locally: u64,
    /// A QUIC or network error.
    pub transport: u64,
}

impl ReconnectCounters {
    /// Counts a reconnect after a session or attempt ended for `reason`.
    pub(crate) fn add(&mut self, reason: &DisconnectReason) {
        match reason {
            DisconnectReason::TimedOut => self.timed_out += 1,
            DisconnectReason::Reset => self.reset += 1,
            DisconnectReason::Remote { .. } => self.closed_by_hub += 1,
            DisconnectReason::Local { .. } => self.closed_locally += 1,
            DisconnectReason::Transport { .. } => self.transport += 1,
        }
    }

    /// The counts by reason, with the names the metrics use.
    pub fn by_reason(&self) -> [(&'static str, u64); 5] {
        [
            ("timeout", self.timed_out),
            ("reset", self.reset),
            ("closed_by_hub", self.closed_by_hub),
            ("closed_locally", self.closed_locally),
            ("transport", self.transport),
        ]
    }
}

/// How much of one address pool is handed out.
#[derive(Clone, Debug)]
pub struct PoolUsage {
    /// The pool's network.
    pub network: ipnet::IpNet,
    /// Addresses handed out now.
    pub in_use: usize,
    /// Addresses the pool can hand out in all.
    pub capacity: u128,
}

/// A snapshot of the spoke.
#[derive(Clone, Debug, Default)]
pub struct SpokeSnapshot {
    /// Identity the hub authenticated us as, once assigned.
    pub identity: Option<String>,
    /// Assigned addresses.
    pub addresses: Vec<IpAddr>,
    /// Smoothed round-trip time of the current connection, if any.
    pub rtt: Option<Duration>,
    /// When the current connection last received a packet from the hub that authenticated
    /// (the `now` of that [`Spoke::handle_udp`](crate::Spoke::handle_udp)); a hub that
    /// went silent shows here before the idle timeout ends the connection.
    pub last_heard: Option<Instant>,
    /// Largest IP packet the tunnel carries now (the TUN MTU to use).
    pub tun_mtu: Option<u16>,
    /// Times QUIC took losses of what the current connection sent for an MTU black hole
    /// and fell back to its smallest packets.
    pub black_holes: u64,
    /// The TLS key exchange group of the current connection, once its handshake has
    /// settled on one.
    pub key_exchange: Option<rustls::NamedGroup>,
    /// Traffic: rx = from the hub, tx = to the hub.
    pub traffic: TrafficCounters,
    /// Dropped packets by reason.
    pub drops: DropCounters,
    /// Connection attempts made.
    pub connect_attempts: u64,
    /// Sessions that reached assignment.
    pub sessions: u64,
    /// New attempts scheduled, by why the previous one ended.
    pub reconnects: ReconnectCounters,
}
