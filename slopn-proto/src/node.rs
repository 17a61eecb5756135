//! What hub and spoke share around their transport: the UDP input, the queues the `poll_*`
//! methods drain, timer dispatch, and ICMP errors sent back out of the TUN side.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use quinn_proto::{EcnCodepoint, Transmit};

use crate::arena::PacketArena;
use crate::clock::WallClock;
use crate::control::Capsule;
use crate::icmp::{self, IcmpError, IcmpRateLimit};
use crate::packet::IpHeader;
use crate::transport::{Received, Transport};

/// One UDP datagram the driver received, as [`Hub::handle_udp`](crate::Hub::handle_udp) and
/// [`Spoke::handle_udp`](crate::Spoke::handle_udp) take it.
#[derive(Clone, Copy, Debug)]
pub struct Datagram<'a> {
    /// Who sent it.
    pub remote: SocketAddr,
    /// The local address it arrived on, if the socket says: replies leave from it, which
    /// matters on a multi-homed host.
    pub local_ip: Option<IpAddr>,
    /// Its ECN codepoint, if the socket reports one (QUIC congestion control uses it).
    pub ecn: Option<EcnCodepoint>,
    /// The UDP payload (one datagram: split GRO batches first).
    pub payload: &'a [u8],
}

impl<'a> Datagram<'a> {
    /// A datagram from `remote` with no local address and no ECN information.
    pub fn new(remote: SocketAddr, payload: &'a [u8]) -> Self {
        Self {
            remote,
            local_ip: None,
            ecn: None,
            payload,
        }
    }
}

/// Packet buffers and the queue of packets for the TUN side.
#[derive(Default)]
pub(crate) struct Packets {
    /// Where outgoing packets are copied to, without an allocation each.
    pub(crate) arena: PacketArena,
    tun_out: VecDeque<Bytes>,
    /// Packets queued for the TUN side so far.
    tun_written: u64,
    tun_icmp: IcmpRateLimit,
    scratch: Vec<u8>,
}

impl Packets {
    /// Queues a packet for the TUN side.
    pub(crate) fn push_tun(&mut self, packet: Bytes) {
        self.tun_written += 1;
        self.tun_out.push_back(packet);
    }

    /// Packets queued for the TUN side so far.
    pub(crate) fn tun_written(&self) -> u64 {
        self.tun_written
    }

    /// The next packet for the TUN side.
    pub(crate) fn poll_tun(&mut self) -> Option<Bytes> {
        self.tun_out.pop_front()
    }

    /// Answers a TUN-side packet with an ICMP error from `from` (our tunnel address of its
    /// family, if we have one; the packet's destination if the packet came from `from`
    /// itself), written back to the TUN side; rate-limited.
    pub(crate) fn icmp_to_tun(
        &mut self,
        now: Instant,
        from: Option<IpAddr>,
        original: &[u8],
        header: &IpHeader,
        kind: IcmpError,
    ) {
        let Some(mut from) = from else {
            return;
        };
        // A packet this host sent itself: the kernel drops an ICMP error whose source is one
        // of its own addresses (a "martian"), and the sender would never learn the smaller
        // path MTU. The error comes from the destination instead, routed through the tunnel.
        if from == header.src {
            from = header.dst;
        }
        if !self.tun_icmp.allow(now) {
            return;
        }
        if let Some(packet) = self.icmp_error(original, header, from, kind, usize::MAX) {
            self.push_tun(packet);
        }
    }

    /// An ICMP error about `original` from `from`, at most `max` bytes long, if one is due.
    pub(crate) fn icmp_error(
        &mut self,
        original: &[u8],
        header: &IpHeader,
        from: IpAddr,
        kind: IcmpError,
        max: usize,
    ) -> Option<Bytes> {
        icmp::build_error(original, header, from, kind, max, &mut self.scratch)
            .then(|| self.arena.copy(&self.scratch))
    }
}

/// The parts of a hub or a spoke around its transport: connections in `S`, events `E`.
pub(crate) struct Node<S, E> {
    pub(crate) transport: Transport<S>,
    pub(crate) clock: Arc<WallClock>,
    pub(crate) events: VecDeque<E>,
    pub(crate) packets: Packets,
    /// Reused buffer for capsules read from a control stream.
    pub(crate) capsules: Vec<Capsule>,
}

impl<S, E> Node<S, E> {
    /// A node around `transport`, on `clock`.
    pub(crate) fn new(transport: Transport<S>, clock: Arc<WallClock>) -> Self {
        Self {
            transport,
            clock,
            events: VecDeque::new(),
            packets: Packets::default(),
            capsules: Vec::new(),
        }
    }

    /// Hands one datagram to the endpoint.
    pub(crate) fn receive(&mut self, now: Instant, datagram: Datagram<'_>) -> Received {
        self.clock.advance(now);
        self.transport.handle_udp(now, datagram)
    }
}

/// A hub or a spoke as the shared input and output plumbing drives it.
pub(crate) trait Dispatch {
    /// Per-connection state.
    type State;
    /// What it reports.
    type Event;

    /// The shared parts.
    fn node(&mut self) -> &mut Node<Self::State, Self::Event>;

    /// Reacts to everything quinn reports for one connection (and first to its own deadline,
    /// if that passed), then re-arms its timer.
    fn process(&mut self, now: Instant, idx: usize, deadline_due: bool);

    /// Runs every connection timer due at `now`.
    fn run_timers(&mut self, now: Instant) {
        while let Some((idx, deadline_due)) = self.node().transport.pop_expired(now) {
            self.process(now, idx, deadline_due);
        }
    }

    /// The next transmit of any connection; the connection that sent it is processed, as
    /// sending may have changed its state.
    fn next_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        let (transmit, idx) = self
            .node()
            .transport
            .poll_transmit(now, max_datagrams, buf)?;
        if let Some(idx) = idx {
            self.process(now, idx, false);
        }
        Some(transmit)
    }
}
