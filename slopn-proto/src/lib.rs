//! SloPN's protocol core: the sans-IO [`Hub`] and [`Spoke`] state machines.
//!
//! A hub accepts QUIC connections from spokes. After TLS 1.3 and a token check, it assigns
//! each spoke addresses from a pool over a reliable control stream; from then on raw IP
//! packets travel as QUIC datagrams (RFC 9221) and the hub routes them by destination:
//! to its own TUN side, to another spoke, or onwards to advertised networks.
//!
//! # The sans-IO contract
//!
//! Nothing in this crate opens a socket, reads a clock, spawns a thread or draws OS
//! randomness. Every input carries `now`; randomness comes from the seed in the
//! configuration; buffers for outgoing datagrams belong to the caller. TLS handshakes draw
//! their ephemeral keys and random values from the configuration's crypto provider: the
//! operating system's by default ([`tls::default_provider`]), a seeded one in simulations,
//! which then replay byte for byte.
//!
//! Methods come in four kinds: getters (`&self`), inputs (`handle_*`), commands (`close`,
//! `disconnect`, `connect`, `set_routes`) and outputs (`poll_*`). **After every input or
//! command, drain the outputs until there is nothing left but a timeout**: `poll_transmit`
//! until `None`, then `poll_tun_packet` until `None`, then `poll_event` until `None`; then
//! wait for input or for the instant `poll_timeout` returns, and call `handle_timeout`.
//!
//! ```no_run
//! # use std::time::{Instant, SystemTime};
//! # use slopn_proto::{Hub, HubConfig};
//! # fn send_udp(_: &quinn_proto::Transmit, _: &[u8]) {}
//! # fn write_tun(_: &[u8]) {}
//! # fn drive(config: HubConfig) -> Result<(), slopn_proto::HubError> {
//! let mut hub = Hub::new(config, Instant::now(), SystemTime::now())?;
//! let mut buf = Vec::new();
//! loop {
//!     // ... feed hub.handle_udp(now, Datagram { .. }) / handle_tun_packet / handle_timeout here ...
//!     let now = Instant::now();
//!     while let Some(t) = hub.poll_transmit(now, 10, &mut buf) {
//!         send_udp(&t, &buf[..t.size]);
//!     }
//!     while let Some(packet) = hub.poll_tun_packet() {
//!         write_tun(&packet);
//!     }
//!     while let Some(event) = hub.poll_event() {
//!         println!("{event:?}");
//!     }
//!     let _next_wakeup = hub.poll_timeout();
//! #   break;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Invalid input never panics: malformed packets and capsules are dropped and counted or
//! close the one offending connection. Modules: [`control`] (the control-stream codec),
//! [`packet`] (IP header views), [`icmp`] (ICMP errors), [`pool`] (address allocation),
//! [`route`] (route lookup), [`pki`] and [`tls`] (certificates and TLS configuration).

mod arena;
mod auth;
mod cid;
mod clock;
mod config;
pub mod congestion;
pub mod control;
mod hub;
pub mod icmp;
pub mod key_exchange;
mod link;
mod mss;
mod node;
pub mod packet;
pub mod pki;
pub mod pool;
pub mod route;
mod session;
mod spoke;
mod stats;
pub mod tls;
mod transport;

pub use config::{
    Auth, Credential, HubConfig, PoolConfig, ReconnectPolicy, SpokeConfig, TransportSettings,
};
pub use congestion::Congestion;
pub use hub::{Hub, HubError, HubEvent};
pub use node::Datagram;
pub use quinn_proto::{EcnCodepoint, Transmit};
/// The TLS library, re-exported for [`HubConfig::crypto`] and [`SpokeConfig::crypto`].
pub use rustls;
pub use session::{DisconnectReason, SessionId};
pub use spoke::{Spoke, SpokeError, SpokeEvent, SpokeState};
pub use stats::{
    DropCounters, DropReason, HandshakeCounters, HubStats, PoolUsage, ReconnectCounters,
    SpokeSnapshot, SpokeStats, TrafficCounters,
};

/// A 32-byte key derived from a seed for one purpose (SHA-256 of label and seed).
pub(crate) fn derive_key(seed: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(label);
    ctx.update(seed);
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// What the hub keeps of a token: its SHA-256 digest, never the token itself.
pub(crate) fn token_hash(token: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, token)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// An MTU from a packet size, saturating at 65535.
pub(crate) fn clamp_mtu(max: usize) -> u16 {
    max.min(usize::from(u16::MAX)) as u16
}
