//! How a loop is tuned, and how it can end.

use std::io;
use std::time::Duration;

use slopn_proto::DisconnectReason;
use slopn_tun::DnsMethod;

use crate::os::OsFailure;
use crate::policy::RoutePolicy;

/// Tuning of the loop (the same for every runtime).
#[derive(Clone, Debug)]
pub struct Options {
    /// Receive calls (each up to `quinn_udp::BATCH_SIZE` datagrams) per wakeup.
    pub udp_reads_per_wakeup: usize,
    /// TUN packets read per wakeup (a split super-packet counts each of its packets).
    /// Everything read is queued before anything is sent, so this many packets plus one
    /// 64 KiB super-packet must fit the machine's datagram queue (`datagram_queue_bytes`,
    /// 256 KiB by default) or a burst tail-drops: 64 is about 150 KB at MTU 1414.
    pub tun_packets_per_wakeup: usize,
    /// Socket buffer size asked for in each direction.
    pub socket_buffer: usize,
    /// How long an orderly shutdown may take before the loop ends anyway.
    pub shutdown_grace: Duration,
    /// Events kept for the handle before further ones are dropped (they are logged
    /// regardless).
    pub event_queue: usize,
    /// Which advertised routes a spoke installs (full or split tunnel).
    pub routes: RoutePolicy,
    /// How a spoke's pushed DNS servers reach the system's resolver.
    pub dns: DnsMethod,
    /// The largest UDP payload the machine sends (its transport's `max_mtu`): bounds how many
    /// datagrams go into one GSO send, which the kernel limits to 64 KiB.
    pub max_udp_payload: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            udp_reads_per_wakeup: 16,
            tun_packets_per_wakeup: 64,
            socket_buffer: 8 << 20,
            shutdown_grace: Duration::from_secs(2),
            event_queue: 1024,
            routes: RoutePolicy {
                accept_default_route: true,
                ..RoutePolicy::default()
            },
            dns: DnsMethod::default(),
            max_udp_payload: slopn_proto::TransportSettings::default().max_mtu,
        }
    }
}

/// Why the loop ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A system call on the socket, the poller or the TUN device failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Configuring the TUN device or routes failed in a way the tunnel cannot work with.
    #[error(transparent)]
    Os(#[from] OsFailure),
    /// The OS helper thread died (it panicked): the actions the tunnel needs can no longer
    /// be carried out.
    #[error(
        "the OS helper thread died (a bug: its panic is in the log), so the tunnel's addresses, \
         routes and DNS can no longer be set"
    )]
    OsHelperGone,
    /// The spoke was refused for good (wrong token, untrusted certificate, ...).
    #[error("{0}")]
    GaveUp(DisconnectReason),
    /// The loop's thread or task panicked.
    #[error("the event loop panicked")]
    Panicked,
    /// The loop's task was dropped before it ended (its runtime shut down).
    #[error("the event loop was cancelled: its runtime shut down")]
    Cancelled,
}

/// Maps an I/O error to [`RunError::Io`] saying what was being done.
pub fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Io { what, source }
}
