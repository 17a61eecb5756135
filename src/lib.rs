//! SloPN: a hub-and-spoke VPN that carries IP packets in QUIC datagrams (RFC 9221).
//!
//! This package ties the workspace together and holds the user-facing binaries
//! (`examples/hub`, `examples/spoke`) and benchmarks. The pieces:
//!
//! - [`proto`]: the sans-IO `Hub` and `Spoke` state machines (handshake, control protocol,
//!   address pool, routing, anti-spoofing, counters).
//! - [`mio`]: the single-threaded event loop that drives them against UDP sockets and TUN
//!   devices.
//! - [`tun`]: TUN devices and operating-system network configuration.

pub use slopn_mio as mio;
pub use slopn_proto as proto;
pub use slopn_tun as tun;
