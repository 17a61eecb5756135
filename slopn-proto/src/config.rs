//! Configuration of the hub and the spoke, and the QUIC transport settings they share.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use quinn_proto::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;

use crate::congestion::Congestion;
use crate::tls::CertifiedKey;

/// QUIC transport settings.
#[derive(Clone, Debug)]
pub struct TransportSettings {
    /// A connection with no packet received for this long is dead. Hub and spoke each
    /// propose one; the smaller wins. A dead peer is noticed after at most the keep-alive
    /// interval plus this (the keep-alive restarts the timer): 2 s + 6 s by default.
    pub idle_timeout: Duration,
    /// How often an otherwise idle connection sends a keep-alive (spoke only; `None` for never).
    pub keep_alive_interval: Option<Duration>,
    /// UDP payload size used from the start. Larger values give a larger tunnel MTU at once;
    /// if the path cannot carry it, QUIC falls back to 1200 bytes (black-hole detection).
    pub initial_mtu: u16,
    /// Upper bound for path MTU discovery (UDP payload bytes).
    pub max_mtu: u16,
    /// UDP payload size the path is known to carry; QUIC never goes below it, even when it
    /// detects an MTU black hole. 1200 is safe anywhere; on a known 1500-byte path, 1452
    /// keeps the tunnel MTU up even at the heavy loss (around 10 %) that can still, rarely,
    /// pass for a black hole (vendor/quinn-proto/SLOPN-PATCH.md).
    pub min_mtu: u16,
    /// Round-trip estimate before the first sample.
    pub initial_rtt: Duration,
    /// Bytes of IP packets queued per connection before the oldest are dropped.
    pub datagram_queue_bytes: usize,
    /// Congestion controller for what this side sends.
    pub congestion: Congestion,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(6),
            keep_alive_interval: Some(Duration::from_secs(2)),
            initial_mtu: 1200,
            // 1500-byte links less an IPv6 and a UDP header.
            max_mtu: 1452,
            min_mtu: 1200,
            initial_rtt: Duration::from_millis(100),
            datagram_queue_bytes: 256 * 1024,
            congestion: Congestion::Tunnel,
        }
    }
}

/// Datagrams quinn may hold beyond our own queue: one GSO batch of the largest packets.
pub(crate) const QUINN_DATAGRAM_BUFFER: usize = 96 * 1024;

/// Bytes a QUIC short-header packet adds around a datagram: flags, 8-byte connection ID,
/// packet number (up to 4), AEAD tag (16), DATAGRAM frame type and length (up to 9).
const DATAGRAM_OVERHEAD: u16 = 1 + 8 + 4 + 16 + 9;

/// Bytes of IP and UDP header around each QUIC packet on the link, counted for IPv6 on either
/// family (on IPv4 20 of them go unused) so that one setting fits both.
const LINK_OVERHEAD: u16 = 40 + 8;

impl TransportSettings {
    /// Sets path MTU discovery's upper bound (`max_mtu`) from the MTU of the network between
    /// hub and spoke: 1500 (the default) gives 1452, a jumbo-frame network's 9000 gives
    /// 8952 and a tunnel MTU of 8914. Values below 1248 leave QUIC's minimum of 1200.
    pub fn set_link_mtu(&mut self, link_mtu: u16) {
        self.max_mtu = link_mtu.saturating_sub(LINK_OVERHEAD).max(1200);
    }

    /// The largest UDP payload this side sends, and the largest it asks the peer to send
    /// (QUIC's `max_udp_payload_size` transport parameter): what a runtime sizes its GSO
    /// batches by.
    pub fn max_udp_payload(&self) -> u16 {
        self.max_mtu
            .max(self.initial_mtu)
            .max(self.min_mtu)
            .max(1200)
    }

    /// The largest IP packet the tunnel carries once path MTU discovery has reached
    /// `max_mtu`: the TUN MTU to configure on the hub.
    pub fn max_tunnel_mtu(&self) -> u16 {
        self.max_udp_payload() - DATAGRAM_OVERHEAD
    }

    pub(crate) fn quinn(&self, keep_alive: bool, bidi_streams: u32) -> Arc<TransportConfig> {
        let mut t = TransportConfig::default();
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .unwrap_or_else(|_| IdleTimeout::from(VarInt::MAX));
        t.max_idle_timeout(Some(idle));
        t.keep_alive_interval(if keep_alive {
            self.keep_alive_interval
        } else {
            None
        });
        let min_mtu = self.min_mtu.max(1200);
        t.min_mtu(min_mtu);
        t.initial_mtu(self.initial_mtu.max(min_mtu));
        let mut mtud = MtuDiscoveryConfig::default();
        mtud.upper_bound(self.max_udp_payload());
        // After a black hole (a real narrowing, or rarely heavy random loss) probe again
        // soon rather than after quinn's default minute.
        mtud.black_hole_cooldown(Duration::from_secs(5));
        t.mtu_discovery_config(Some(mtud));
        t.initial_rtt(self.initial_rtt);
        // One control stream, opened by the spoke; nothing else.
        t.max_concurrent_bidi_streams(VarInt::from_u32(bidi_streams));
        t.max_concurrent_uni_streams(VarInt::from_u32(0));
        // The control stream carries a few small capsules: small windows bound memory.
        t.stream_receive_window(VarInt::from_u32(128 * 1024));
        t.receive_window(VarInt::from_u32(256 * 1024));
        t.send_window(256 * 1024);
        t.datagram_receive_buffer_size(Some(1024 * 1024));
        t.datagram_send_buffer_size(QUINN_DATAGRAM_BUFFER);
        t.congestion_controller_factory(self.congestion.factory());
        Arc::new(t)
    }
}

/// One address pool of the hub and the hub's own address in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// The network spokes get addresses from (e.g. 10.100.0.0/24 or fd00:100::/64).
    pub network: IpNet,
    /// The hub's own address in that network.
    pub hub_address: IpAddr,
}

impl PoolConfig {
    /// A pool over `network` with the hub on its first host address (e.g. 10.100.0.1).
    pub fn new(network: IpNet) -> Self {
        let network = network.trunc();
        let hub_address = match network {
            IpNet::V4(n) => IpAddr::V4((u32::from(n.network()).saturating_add(1)).into()),
            IpNet::V6(n) => IpAddr::V6((u128::from(n.network()).saturating_add(1)).into()),
        };
        Self {
            network,
            hub_address,
        }
    }
}

/// How a spoke proves who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// An access token in the HELLO. The hub keeps only its SHA-256 digest and compares
    /// digests in constant time.
    Token {
        /// SHA-256 of the token.
        sha256: [u8; 32],
    },
    /// A client certificate (mTLS) signed by one of the hub's `client_ca` certificates, whose
    /// first DNS name (or common name) is the identity.
    Certificate,
}

/// A spoke the hub accepts: its identity and how it authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// The spoke's name; it keys the sticky address and appears in logs.
    pub identity: String,
    /// How it proves it.
    pub auth: Auth,
}

impl Credential {
    /// A credential for `identity` accepting `token`.
    pub fn token(identity: impl Into<String>, token: &str) -> Self {
        Self {
            identity: identity.into(),
            auth: Auth::Token {
                sha256: Self::digest(token.as_bytes()),
            },
        }
    }

    /// A credential for `identity` authenticating with a client certificate.
    pub fn certificate(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            auth: Auth::Certificate,
        }
    }

    /// The SHA-256 digest the hub keeps of a token.
    pub fn digest(token: &[u8]) -> [u8; 32] {
        crate::token_hash(token)
    }
}

/// Everything a [`Hub`](crate::Hub) needs.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// The hub's TLS certificate chain and key.
    pub identity: CertifiedKey,
    /// Address pools: at most one IPv4 and one IPv6.
    pub pools: Vec<PoolConfig>,
    /// Further networks the hub advertises to spokes (reachable through the hub's TUN side).
    pub routes: Vec<IpNet>,
    /// Refuse spoke-to-spoke traffic (answered with ICMP "administratively prohibited").
    pub isolate_spokes: bool,
    /// The spokes allowed in.
    pub credentials: Vec<Credential>,
    /// CA certificates that sign spokes' client certificates (mTLS). Empty: no spoke may use
    /// a certificate. When every credential uses [`Auth::Certificate`], a certificate is
    /// required in the TLS handshake; otherwise it is optional, but one that is presented
    /// must be valid.
    pub client_ca: Vec<CertificateDer<'static>>,
    /// DNS servers pushed to spokes.
    pub dns_servers: Vec<IpAddr>,
    /// QUIC settings.
    pub transport: TransportSettings,
    /// Time a connected spoke has to authenticate and get an address.
    pub hello_timeout: Duration,
    /// Most simultaneous QUIC connections; further ones are refused.
    pub max_connections: usize,
    /// Most connections still in their QUIC handshake; further attempts are refused.
    pub max_half_open: usize,
    /// Half-open connections above which new attempts must first prove their address with
    /// a QUIC Retry (one extra round trip for them, no state on the hub until they do).
    pub retry_above: usize,
    /// Most half-open connections whose source proved its address (with a Retry) that one
    /// source may hold: an IPv4 address, or an IPv6 /64. So one attacker who answers Retries
    /// takes at most `retry_above` places plus this many, not the whole of `max_half_open`,
    /// and an address spoofed by someone else is never held against its owner.
    pub max_half_open_per_source: usize,
    /// Authentication failures from one IP address within a minute after which that
    /// address is refused for a minute.
    pub auth_failures_per_minute: u32,
    /// Seed for all randomness (connection IDs, Retry tokens, stateless resets). It is a
    /// secret: whoever knows it can forge Retry tokens and reset sessions. Use fresh OS
    /// randomness in production; fixed values make simulations reproducible. An all-zero
    /// seed is refused by [`Hub::new`](crate::Hub::new).
    pub seed: [u8; 32],
    /// TLS cryptography: cipher suites, key exchange groups, and the random source of the
    /// handshake. [`tls::default_provider`](crate::tls::default_provider) (*ring*) unless a
    /// test injects a seeded one.
    pub crypto: Arc<CryptoProvider>,
    /// Key for QUIC stateless resets. Derive it from a secret that survives restarts (e.g.
    /// the hub's private key) so that a restarted hub resets its old connections at once and
    /// spokes reconnect without waiting for their idle timeout. Defaults to one from `seed`.
    pub stateless_reset_key: Option<[u8; 32]>,
}

impl HubConfig {
    /// A configuration with defaults for everything but identity, pools, credentials and the
    /// secret `seed` all randomness is drawn from (32 bytes of fresh OS randomness in
    /// production, e.g. from `getrandom`; a fixed non-zero value in simulations).
    pub fn new(
        identity: CertifiedKey,
        pools: Vec<PoolConfig>,
        credentials: Vec<Credential>,
        seed: [u8; 32],
    ) -> Self {
        Self {
            identity,
            pools,
            routes: Vec::new(),
            isolate_spokes: false,
            credentials,
            client_ca: Vec::new(),
            dns_servers: Vec::new(),
            transport: TransportSettings::default(),
            hello_timeout: Duration::from_secs(10),
            max_connections: 65_536,
            max_half_open: 4096,
            retry_above: 256,
            max_half_open_per_source: 64,
            auth_failures_per_minute: 10,
            seed,
            crypto: crate::tls::default_provider(),
            stateless_reset_key: None,
        }
    }
}

/// How a spoke retries after losing its session.
#[derive(Clone, Debug)]
pub struct ReconnectPolicy {
    /// Delay before the second and later consecutive attempts; doubles each time. (The first
    /// retry after an established session ends is immediate.)
    pub min_delay: Duration,
    /// Cap on the delay between attempts.
    pub max_delay: Duration,
    /// An attempt that has heard nothing from the hub for this long is abandoned and a new
    /// one started, so that a hub coming back is found quickly.
    pub attempt_timeout: Duration,
    /// Delay after the hub reported its address pool full.
    pub pool_exhausted_delay: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(1),
            pool_exhausted_delay: Duration::from_secs(10),
        }
    }
}

/// Everything a [`Spoke`](crate::Spoke) needs.
#[derive(Clone, Debug)]
pub struct SpokeConfig {
    /// The hub's UDP address.
    pub hub: SocketAddr,
    /// The name the hub's certificate must carry (DNS name or IP address).
    pub server_name: String,
    /// CA certificates the spoke trusts for the hub; nothing else is trusted.
    pub trust_anchors: Vec<CertificateDer<'static>>,
    /// The access token (empty when authenticating with a client certificate).
    pub token: String,
    /// A client certificate and key, for hubs that authenticate spokes by mTLS.
    pub client_certificate: Option<CertifiedKey>,
    /// Addresses to ask for (static addressing); empty asks for any IPv4 and IPv6 address.
    pub requested_addresses: Vec<IpAddr>,
    /// QUIC settings.
    pub transport: TransportSettings,
    /// Retry behaviour.
    pub reconnect: ReconnectPolicy,
    /// Seed for all randomness (connection IDs, stateless resets, backoff jitter). It is a
    /// secret; an all-zero seed is refused by [`Spoke::new`](crate::Spoke::new).
    pub seed: [u8; 32],
    /// TLS cryptography, as [`HubConfig::crypto`].
    pub crypto: Arc<CryptoProvider>,
}

impl SpokeConfig {
    /// A configuration with defaults for everything but where the hub is, whom to trust, the
    /// token and the secret `seed` all randomness is drawn from (fresh OS randomness in
    /// production; a fixed non-zero value in simulations).
    pub fn new(
        hub: SocketAddr,
        server_name: impl Into<String>,
        trust_anchors: Vec<CertificateDer<'static>>,
        token: impl Into<String>,
        seed: [u8; 32],
    ) -> Self {
        Self {
            hub,
            server_name: server_name.into(),
            trust_anchors,
            token: token.into(),
            client_certificate: None,
            requested_addresses: Vec::new(),
            transport: TransportSettings::default(),
            reconnect: ReconnectPolicy::default(),
            seed,
            crypto: crate::tls::default_provider(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_mtu_sets_the_upper_bound_and_the_tunnel_mtu() {
        let mut t = TransportSettings::default();
        assert_eq!(t.max_tunnel_mtu(), 1414);
        t.set_link_mtu(1500);
        assert_eq!((t.max_mtu, t.max_tunnel_mtu()), (1452, 1414));
        t.set_link_mtu(9000);
        assert_eq!((t.max_mtu, t.max_tunnel_mtu()), (8952, 8914));
        t.set_link_mtu(1280);
        assert_eq!((t.max_mtu, t.max_tunnel_mtu()), (1232, 1194));
        // Below what QUIC needs, QUIC's minimum stays.
        t.set_link_mtu(576);
        assert_eq!(t.max_mtu, 1200);
    }
}
