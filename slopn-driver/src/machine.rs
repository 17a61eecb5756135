//! What a runtime drives: the [`Machine`] trait, implemented for the hub (`hub`) and the
//! spoke (`spoke`).

use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use slopn_proto::{Datagram, DisconnectReason, DropReason, Transmit};

use crate::os::OsPlan;

/// Whether the loop goes on after an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep running.
    Continue,
    /// The machine gave up for good (a spoke refused by the hub): end the loop with this
    /// reason.
    Stop(DisconnectReason),
}

/// A sans-IO state machine a runtime can drive: [`Hub`](slopn_proto::Hub) or
/// [`Spoke`](slopn_proto::Spoke). The methods mirror theirs (see `slopn_proto`), plus what
/// the runtime needs to configure the OS and to serve commands and statistics.
pub trait Machine: Send + 'static {
    /// Events it reports.
    type Event: Clone + fmt::Debug + Send + 'static;
    /// Its statistics snapshot.
    type Stats: fmt::Debug + Send + 'static;
    /// Commands it accepts from other threads.
    type Command: fmt::Debug + Send + 'static;

    /// See [`Hub::handle_udp`](slopn_proto::Hub::handle_udp).
    fn handle_udp(&mut self, now: Instant, datagram: Datagram<'_>);
    /// See [`Hub::handle_tun_packet`](slopn_proto::Hub::handle_tun_packet).
    fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), DropReason>;
    /// See [`Hub::handle_timeout`](slopn_proto::Hub::handle_timeout).
    fn handle_timeout(&mut self, now: Instant);
    /// See [`Hub::poll_transmit`](slopn_proto::Hub::poll_transmit).
    fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit>;
    /// See [`Hub::poll_tun_packet`](slopn_proto::Hub::poll_tun_packet).
    fn poll_tun_packet(&mut self) -> Option<Bytes>;
    /// See [`Hub::poll_event`](slopn_proto::Hub::poll_event).
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// See [`Hub::poll_timeout`](slopn_proto::Hub::poll_timeout).
    fn poll_timeout(&self) -> Option<Instant>;
    /// Carries out a command.
    fn command(&mut self, now: Instant, command: Self::Command);
    /// Starts an orderly shutdown (goodbyes).
    fn shut_down(&mut self, now: Instant);
    /// Whether the shutdown has finished.
    fn is_shut_down(&self) -> bool;
    /// A statistics snapshot, with the runtime's own I/O counters.
    fn stats(&mut self, io: IoCounters) -> Self::Stats;
    /// Says what the OS must do after an event (addresses, MTU, routes, DNS) by queueing
    /// actions on `os`; they are carried out in order, off the datapath.
    fn apply(&mut self, event: &Self::Event, os: &mut OsPlan) -> Flow;
}

/// Packets the runtime itself lost on the way to or from the OS, beside the machine's
/// drops, and how its OS actions went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    /// Packets the TUN device refused on write: its queue full, a packet the kernel found
    /// malformed, or the device down.
    pub tun_write_drops: u64,
    /// Super-packets read from the TUN device that could not be split into packets.
    pub tun_read_drops: u64,
    /// UDP sends that failed (other than for a full socket buffer, which waits).
    pub udp_send_errors: u64,
    /// OS actions the helper thread has reported on: carried out, successfully or not.
    pub os_actions: u64,
    /// Spoke: whether the OS has the addresses, routes and DNS servers of the latest
    /// assignment (the helper has reported on them; a refused optional route or DNS servers
    /// that could not be set count in `os_failures`). Later actions (an MTU change, new
    /// routes or servers) do not take it back while they run.
    /// Always false for a hub, which configures its device when it opens it.
    pub routed: bool,
    /// OS actions that failed, wholly or in part (a route the kernel refused, DNS servers
    /// that could not be applied).
    pub os_failures: u64,
}

/// Implements the input and output methods [`Hub`](slopn_proto::Hub) and
/// [`Spoke`](slopn_proto::Spoke) share by name and signature.
macro_rules! forward_io {
    ($ty:ident, $event:ty) => {
        fn handle_udp(&mut self, now: Instant, datagram: Datagram<'_>) {
            $ty::handle_udp(self, now, datagram)
        }
        fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), DropReason> {
            $ty::handle_tun_packet(self, now, packet)
        }
        fn handle_timeout(&mut self, now: Instant) {
            $ty::handle_timeout(self, now)
        }
        fn poll_transmit(
            &mut self,
            now: Instant,
            max_datagrams: usize,
            buf: &mut Vec<u8>,
        ) -> Option<Transmit> {
            $ty::poll_transmit(self, now, max_datagrams, buf)
        }
        fn poll_tun_packet(&mut self) -> Option<Bytes> {
            $ty::poll_tun_packet(self)
        }
        fn poll_event(&mut self) -> Option<$event> {
            $ty::poll_event(self)
        }
        fn poll_timeout(&self) -> Option<Instant> {
            $ty::poll_timeout(self).map(|(t, _)| t)
        }
    };
}
pub(crate) use forward_io;
