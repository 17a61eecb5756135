//! SloPN: a hub-and-spoke VPN that carries IP packets in QUIC datagrams (RFC 9221).
//!
//! This package ties the workspace together and holds what the user-facing binaries
//! (`examples/hub`, `examples/spoke`) share:
//!
//! - [`proto`]: the sans-IO `Hub` and `Spoke` state machines (handshake, control protocol,
//!   address pool, routing, anti-spoofing, counters).
//! - [`mio`]: the single-threaded event loop that drives them against UDP sockets and TUN
//!   devices.
//! - [`tun`]: TUN devices and operating-system network configuration.
//! - [`config`]: the TOML configuration files; [`keys`]: `hub init` and `hub add-spoke`;
//!   [`control`]: the local control socket; [`status`]: its documents; [`daemon`]: running
//!   a hub or a spoke.

pub mod config;
pub mod control;
pub mod daemon;
pub mod keys;
pub mod status;

pub use slopn_mio as mio;
pub use slopn_proto as proto;
pub use slopn_tun as tun;
