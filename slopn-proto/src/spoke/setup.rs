//! Building a spoke from its configuration: checks, TLS and the seeded QUIC client.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use thiserror::Error;

use super::reconnect::Reconnect;
use super::{Spoke, Tunnel};
use crate::clock::WallClock;
use crate::config::SpokeConfig;
use crate::control;
use crate::derive_key;
use crate::node::Node;
use crate::stats::SpokeSnapshot;
use crate::tls::{self, TlsError};
use crate::transport::Transport;

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
                    config.transport.max_udp_payload(),
                ),
                clock,
            ),
            client_config,
            hub: config.hub,
            server_name: config.server_name,
            tunnel: Tunnel {
                token: Bytes::from(config.token.into_bytes()),
                requested: config.requested_addresses,
                next_request_id: 1,
                current: None,
                last_heard: None,
                heard_packets: 0,
                stopped: false,
                reconnect: Reconnect::new(config.reconnect, &config.seed),
                identity: None,
                addresses: Vec::new(),
                hub_networks: Vec::new(),
                routes: Vec::new(),
                dns_servers: Vec::new(),
                tun_mtu: None,
                max_tunnel_mtu: usize::from(config.transport.max_tunnel_mtu()),
                stats: SpokeSnapshot::default(),
            },
        };
        spoke.start_attempt(now);
        Ok(spoke)
    }
}
