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
    /// The largest UDP payload the machine sends (its transport's `max_udp_payload()`):
    /// bounds how many datagrams go into one GSO send, which the kernel limits to 64 KiB.
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
            max_udp_payload: slopn_proto::TransportSettings::default().max_udp_payload(),
        }
    }
}

impl Options {
    /// These options for a transport whose UDP payloads reach `max_udp_payload` bytes (its
    /// `max_udp_payload()`, larger on a jumbo-frame link): the GSO bound, and a TUN read
    /// budget that keeps what one wakeup queues near the default's bytes (fewer, larger
    /// packets), so that it still fits the datagram queue.
    pub fn with_max_udp_payload(mut self, max_udp_payload: u16) -> Self {
        let default = Self::default();
        let bytes = default.tun_packets_per_wakeup * usize::from(default.max_udp_payload);
        self.tun_packets_per_wakeup = (bytes / usize::from(max_udp_payload.max(1)))
            .clamp(MIN_TUN_PACKETS_PER_WAKEUP, default.tun_packets_per_wakeup);
        self.max_udp_payload = max_udp_payload;
        self
    }
}

/// The smallest TUN read budget per wakeup [`Options::with_max_udp_payload`] sets.
const MIN_TUN_PACKETS_PER_WAKEUP: usize = 8;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_larger_payload_reads_fewer_tun_packets_per_wakeup() {
        let default = Options::default();
        let same = Options::default().with_max_udp_payload(default.max_udp_payload);
        assert_eq!(same.tun_packets_per_wakeup, default.tun_packets_per_wakeup);
        let jumbo = Options::default().with_max_udp_payload(8952);
        assert_eq!(jumbo.max_udp_payload, 8952);
        assert_eq!(jumbo.tun_packets_per_wakeup, 10);
        // What one wakeup queues still fits the default datagram queue with a super-packet.
        let queued = jumbo.tun_packets_per_wakeup * 8952 + 64 * 1024;
        assert!(queued < slopn_proto::TransportSettings::default().datagram_queue_bytes);
        let small = Options::default().with_max_udp_payload(1232);
        assert_eq!(small.tun_packets_per_wakeup, default.tun_packets_per_wakeup);
    }
}
