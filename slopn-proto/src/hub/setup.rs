//! Building a hub from its configuration, and its TLS server configuration, which is
//! rebuilt when credentials change.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use rustls::pki_types::CertificateDer;
use thiserror::Error;

use super::{Admission, Hub, Tables};
use crate::auth::{Authenticator, FailureLimiter};
use crate::clock::WallClock;
use crate::config::{HubConfig, PoolConfig};
use crate::control::{self, IpRange, LimitError, normalize_ranges};
use crate::derive_key;
use crate::node::Node;
use crate::pool::{AddressPool, PoolError};
use crate::route::RouteTable;
use crate::stats::HubStats;
use crate::tls::{self, CertifiedKey, TlsError};
use crate::transport::Transport;

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
            config.transport.max_udp_payload(),
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
            node: Node::new(transport, clock),
            tables: Tables {
                pools,
                routes: RouteTable::new(hub_addresses, networks, advertised),
                by_identity: FxHashMap::default(),
                authenticator,
                failures: FailureLimiter::new(config.auth_failures_per_minute),
                hub_networks,
                dns_servers: config.dns_servers,
                hello_timeout: config.hello_timeout,
                isolate_spokes: config.isolate_spokes,
                handshaking: 0,
                handshaking_by_source: FxHashMap::default(),
                max_tunnel_mtu: usize::from(config.transport.max_tunnel_mtu()),
                stats: HubStats::default(),
            },
            admission: Admission {
                max_connections: config.max_connections,
                max_half_open: config.max_half_open,
                retry_above: config.retry_above,
                max_half_open_per_source: config.max_half_open_per_source,
                closing: false,
                next_session: 1,
            },
            tls,
            extra_routes: config.routes,
        })
    }
}

/// What the hub needs to rebuild its QUIC server configuration when credentials change.
pub(super) struct HubTls {
    pub(super) provider: Arc<rustls::crypto::CryptoProvider>,
    pub(super) identity: CertifiedKey,
    pub(super) client_ca: Vec<CertificateDer<'static>>,
    pub(super) token_key: [u8; 32],
    pub(super) transport: Arc<quinn_proto::TransportConfig>,
    pub(super) clock: Arc<WallClock>,
}

impl HubTls {
    /// The server configuration for these credentials: a client certificate is optional,
    /// required when every spoke uses one, and not asked for when none does.
    pub(super) fn server_config(
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

/// The routes a hub advertises: its pools plus the configured extra networks.
pub(super) fn advertised_ranges(pools: &[IpNet], extra: &[IpNet]) -> Vec<IpRange> {
    normalize_ranges(
        pools
            .iter()
            .chain(extra)
            .map(|n| IpRange::from_net(n.trunc()))
            .collect(),
    )
}
