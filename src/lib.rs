//! SloPN: a hub-and-spoke VPN that carries IP packets in QUIC datagrams (RFC 9221).
//!
//! This package ties the workspace together and holds what the user-facing binaries
//! (`examples/hub`, `examples/spoke`) share:
//!
//! - [`proto`]: the sans-IO `Hub` and `Spoke` state machines (handshake, control protocol,
//!   address pool, routing, anti-spoofing, counters).
//! - [`driver`]: what every runtime shares (the `Machine` trait, OS actions on a helper
//!   thread, the datapath steps); [`mio`]: the single-threaded event loop that drives them
//!   against UDP sockets and TUN devices; [`tokio`]: the same as a task for tokio programs;
//!   [`runtime`]: the binaries' choice between the two.
//! - [`tun`]: TUN devices and operating-system network configuration.
//! - [`control`]: the local control socket's protocol, client and server; [`cli`]: its
//!   errors as sentences for the command-line tools.
//! - [`config`]: the TOML configuration files; [`keys`]: `hub init` and `hub add-spoke`;
//!   [`status`]: the control socket's documents; [`logs`]: logging, also to the socket;
//!   [`metrics`]: Prometheus metrics over HTTP; [`private`]: files for their owner only.
//! - [`hub`]: running a hub (Linux), and [`load`]: what it turns away, in its log;
//!   [`daemon`]: a spoke from one file ([`tunnel`]); [`service`]: the spoke service behind
//!   the desktop client, with its [`profiles`]; on Windows
//!   `win_service` (Windows) runs it under the service control manager
//!   ([`win_service_args`]: its command line).

pub mod cli;
pub mod config;
pub mod daemon;
#[cfg(unix)]
pub mod hub;
pub mod key_exchange;
pub mod keys;
pub mod kill_switch;
#[cfg(unix)]
pub mod load;
pub mod logs;
pub mod metrics;
pub mod private;
pub mod profiles;
pub mod runtime;
pub mod service;
pub mod status;
pub mod tunnel;
#[cfg(windows)]
pub mod win_service;
pub mod win_service_args;

pub use slopn_control as control;
pub use slopn_driver as driver;
pub use slopn_mio as mio;
pub use slopn_proto as proto;
#[cfg(unix)]
pub use slopn_tokio as tokio;
pub use slopn_tun as tun;
