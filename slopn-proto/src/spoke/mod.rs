//! The spoke: connects to the hub, authenticates, obtains addresses, carries its host's
//! packets, and reconnects by itself when the session is lost.
//!
//! [`Spoke`] owns the endpoint and what outlives one connection ([`Tunnel`]) and
//! dispatches: one attempt's handling lives in [`attempt`], the packet path in [`forward`],
//! the reconnection schedule in [`reconnect`], construction in [`setup`].

mod attempt;
mod forward;
mod reconnect;
mod setup;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;
use quinn_proto::{Event, Transmit};

use self::attempt::{Attempt, AttemptCx, Phase};
use self::reconnect::Reconnect;
pub use self::setup::SpokeError;
use crate::control::{CloseCode, IpPrefix, IpRange};
use crate::node::{Datagram, Dispatch, Node};
use crate::session::DisconnectReason;
use crate::stats::{DropReason, SpokeSnapshot};
use crate::transport::Received;

/// IPv6's minimum link MTU (RFC 8200, section 5).
const IPV6_MIN_MTU: u16 = 1280;

/// Something the driver may want to act on, log or show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpokeEvent {
    /// A connection attempt started.
    Connecting {
        /// Attempts so far, this one included.
        attempt: u64,
    },
    /// The QUIC handshake with the hub completed.
    Connected {
        /// The hub's UDP address.
        remote: SocketAddr,
    },
    /// The hub assigned addresses (first time in a session, or when they changed).
    Assigned {
        /// Who the hub says we are.
        identity: String,
        /// Our tunnel addresses.
        addresses: Vec<IpAddr>,
        /// The hub's own tunnel addresses.
        hub_addresses: Vec<IpAddr>,
        /// The MTU the TUN device should use.
        tun_mtu: Option<u16>,
    },
    /// The hub advertised a new list of routes for the tunnel.
    RoutesChanged {
        /// The full list.
        routes: Vec<IpRange>,
    },
    /// The hub pushed a new list of DNS servers.
    DnsChanged {
        /// The full list.
        servers: Vec<IpAddr>,
    },
    /// The largest packet the tunnel carries changed: set the TUN MTU to this.
    MtuChanged {
        /// The new TUN MTU.
        tun_mtu: u16,
    },
    /// The session ended. With `retry_in` the spoke reconnects by itself after that delay
    /// (keep the TUN device up); without, it has stopped (the reason says why).
    Disconnected {
        /// Why.
        reason: DisconnectReason,
        /// When the next attempt starts, if one will.
        retry_in: Option<Duration>,
    },
}

/// Where the spoke stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpokeState {
    /// QUIC handshake in progress.
    Connecting,
    /// Connected; waiting for the hub's welcome and addresses.
    Authenticating,
    /// Addresses assigned; packets flow.
    Established,
    /// Waiting before the next attempt.
    Reconnecting,
    /// Saying goodbye after [`Spoke::disconnect`].
    Closing,
    /// Not connected and not trying: disconnected by command or refused for good.
    Stopped,
}

/// The sans-IO spoke.
///
/// Feed it UDP datagrams from the hub ([`handle_udp`](Self::handle_udp)), packets read from
/// its TUN device ([`handle_tun_packet`](Self::handle_tun_packet)) and timer expiries
/// ([`handle_timeout`](Self::handle_timeout)). After every input, drain the outputs in this
/// order until each is empty: [`poll_transmit`](Self::poll_transmit),
/// [`poll_tun_packet`](Self::poll_tun_packet), [`poll_event`](Self::poll_event); then arm a
/// timer for [`poll_timeout`](Self::poll_timeout).
pub struct Spoke {
    node: Node<Attempt, SpokeEvent>,
    client_config: quinn_proto::ClientConfig,
    hub: SocketAddr,
    server_name: String,
    tunnel: Tunnel,
}

/// What outlives one connection attempt: the credentials, what the hub granted (kept while
/// reconnecting), the reconnection schedule and the counters.
pub(super) struct Tunnel {
    token: Bytes,
    requested: Vec<IpAddr>,
    next_request_id: u64,
    /// The attempt in use, if any; older ones may still be closing.
    current: Option<usize>,
    /// When a packet of the attempt in use last authenticated (what `spoke status` tells a
    /// silent hub by, before the idle timeout ends the connection), and quinn's count of
    /// them then.
    last_heard: Option<Instant>,
    heard_packets: u64,
    /// Not reconnecting: disconnected by command or refused for good.
    stopped: bool,
    reconnect: Reconnect,
    identity: Option<String>,
    addresses: Vec<IpPrefix>,
    /// The hub's tunnel addresses with their pools' prefix lengths.
    hub_networks: Vec<IpNet>,
    routes: Vec<IpRange>,
    dns_servers: Vec<IpAddr>,
    tun_mtu: Option<u16>,
    /// The largest packet the tunnel carries once path MTU discovery has climbed (the MSS
    /// clamp's ceiling).
    max_tunnel_mtu: usize,
    stats: SpokeSnapshot,
}

impl Tunnel {
    fn addresses(&self) -> Vec<IpAddr> {
        self.addresses.iter().map(IpPrefix::addr).collect()
    }

    /// The TUN device's MTU for a session that carries packets of up to `max_packet`
    /// bytes. With an IPv6 address it is at least 1280, IPv6's minimum link MTU: below it
    /// the kernel turns IPv6 off on the device and refuses the address. That happens
    /// while path MTU discovery starts (QUIC's first 1200 bytes carry 1162), and on paths
    /// below 1366 bytes. There IPv6 packets over the session's limit are dropped and counted
    /// as too large; TCP's fit, since the SYNs' MSS is clamped (`mss`).
    fn tun_mtu_for(&self, max_packet: Option<usize>) -> Option<u16> {
        let mtu = crate::clamp_mtu(max_packet?);
        let ipv6 = self.addresses.iter().any(|a| a.addr().is_ipv6());
        Some(if ipv6 { mtu.max(IPV6_MIN_MTU) } else { mtu })
    }

    fn hub_addresses(&self) -> Vec<IpAddr> {
        self.hub_networks.iter().map(IpNet::addr).collect()
    }

    /// The hub's tunnel address of a family, the source of our ICMP errors.
    fn hub_address(&self, ipv4: bool) -> Option<IpAddr> {
        self.hub_networks
            .iter()
            .map(IpNet::addr)
            .find(|a| a.is_ipv4() == ipv4)
    }
}

impl Spoke {
    // ----- inputs -----

    /// Handles one UDP datagram.
    pub fn handle_udp(&mut self, now: Instant, datagram: Datagram<'_>) {
        match self.node.receive(now, datagram) {
            Received::Connection(idx) => {
                self.note_heard(now, idx);
                self.process(now, idx, false)
            }
            Received::New(incoming) => self.node.transport.refuse(incoming),
            Received::Nothing | Received::Ignored => {}
        }
    }

    /// Handles an IP packet read from the TUN device: sends it to the hub. Returns why it was
    /// dropped, if it was.
    pub fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), DropReason> {
        self.node.clock.advance(now);
        let node = &mut self.node;
        let tunnel = &mut self.tunnel;
        let result = forward::to_hub(now, &mut node.transport, tunnel, &mut node.packets, packet);
        if let Err(reason) = result {
            tunnel.stats.drops.add(reason);
        }
        result
    }

    /// Runs every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.node.clock.advance(now);
        if self.tunnel.reconnect.retry_at.is_some_and(|at| at <= now) {
            self.tunnel.reconnect.retry_at = None;
            self.start_attempt(now);
        }
        self.run_timers(now);
    }

    // ----- commands -----

    /// Ends the session with a goodbye and stops reconnecting. Keep driving the spoke until
    /// [`is_closed`](Self::is_closed) so the goodbye reaches the hub.
    pub fn disconnect(&mut self, now: Instant) {
        self.tunnel.stopped = true;
        self.tunnel.reconnect.retry_at = None;
        let reason = "spoke disconnecting";
        let Some(idx) = self.tunnel.current.take() else {
            return;
        };
        // `current` is cleared when its attempt is removed, so this finds it.
        let Some(mut attempt) = self.attempt(now, idx) else {
            return;
        };
        attempt.end_attempt(DisconnectReason::Local {
            code: CloseCode::NO_ERROR,
            reason: reason.into(),
        });
        attempt.say_goodbye(CloseCode::NO_ERROR, reason);
    }

    /// Starts connecting again after [`disconnect`](Self::disconnect) or a refusal; while
    /// waiting to reconnect, reconnects now.
    pub fn connect(&mut self, now: Instant) {
        if self.tunnel.current.is_some() {
            return;
        }
        self.tunnel.stopped = false;
        self.tunnel.reconnect.failures = 0;
        self.tunnel.reconnect.retry_at = None;
        self.start_attempt(now);
    }

    /// Whether the spoke has stopped and every connection is gone.
    pub fn is_closed(&self) -> bool {
        self.tunnel.stopped && self.node.transport.len() == 0
    }

    // ----- outputs -----

    /// The next UDP datagram(s) to send (see [`Hub::poll_transmit`](crate::Hub::poll_transmit)).
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        self.next_transmit(now, max_datagrams, buf)
    }

    /// The next IP packet to write to the TUN device.
    pub fn poll_tun_packet(&mut self) -> Option<Bytes> {
        self.node.packets.poll_tun()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SpokeEvent> {
        self.node.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let transport = self.node.transport.next_timeout();
        match (self.tunnel.reconnect.retry_at, transport) {
            (Some(r), Some((t, why))) if t < r => Some((t, why)),
            (Some(r), _) => Some((r, "reconnect")),
            (None, t) => t,
        }
    }

    // ----- getters -----

    /// Where the spoke stands.
    pub fn state(&self) -> SpokeState {
        match self
            .tunnel
            .current
            .and_then(|idx| self.node.transport.get(idx))
        {
            Some(entry) => match entry.state.phase {
                Phase::Handshaking => SpokeState::Connecting,
                Phase::Authenticating => SpokeState::Authenticating,
                Phase::Established => SpokeState::Established,
                Phase::Closing { .. } | Phase::Closed => SpokeState::Closing,
            },
            None if self.tunnel.stopped && self.node.transport.len() > 0 => SpokeState::Closing,
            None if self.tunnel.stopped => SpokeState::Stopped,
            None => SpokeState::Reconnecting,
        }
    }

    /// Our tunnel addresses (kept while reconnecting).
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.tunnel.addresses()
    }

    /// The hub's tunnel addresses.
    pub fn hub_addresses(&self) -> Vec<IpAddr> {
        self.tunnel.hub_addresses()
    }

    /// The tunnel's own networks (the hub's pools), which stay routed through the tunnel
    /// whatever else the routes say.
    pub fn tunnel_networks(&self) -> Vec<IpNet> {
        self.tunnel.hub_networks.iter().map(IpNet::trunc).collect()
    }

    /// The DNS servers the hub pushed.
    pub fn dns_servers(&self) -> &[IpAddr] {
        &self.tunnel.dns_servers
    }

    /// The routes the hub advertised for the tunnel.
    pub fn routes(&self) -> &[IpRange] {
        &self.tunnel.routes
    }

    /// The identity the hub authenticated us as.
    pub fn identity(&self) -> Option<&str> {
        self.tunnel.identity.as_deref()
    }

    /// The MTU the TUN device should use: the largest packet the tunnel carries now.
    pub fn tun_mtu(&self) -> Option<u16> {
        self.tunnel.tun_mtu
    }

    /// Counters and the current session's figures.
    pub fn stats(&mut self) -> SpokeSnapshot {
        let tunnel = &self.tunnel;
        let mut stats = tunnel.stats.clone();
        stats.identity = tunnel.identity.clone();
        stats.addresses = tunnel.addresses();
        stats.tun_mtu = tunnel.tun_mtu;
        let current = tunnel.current.and_then(|idx| self.node.transport.get(idx));
        stats.rtt = current.map(|e| e.link.conn.rtt());
        stats.black_holes = current.map_or(0, |e| e.link.conn.stats().path.black_holes_detected);
        stats.key_exchange = current.and_then(|e| e.link.key_exchange());
        stats.last_heard = current.and(tunnel.last_heard);
        stats
    }

    // ----- internals -----

    /// Records `now` as when the hub was last heard if the datagram just given to
    /// connection `idx`, the one in use, authenticated (junk with its ID does not count).
    fn note_heard(&mut self, now: Instant, idx: usize) {
        let tunnel = &mut self.tunnel;
        if tunnel.current != Some(idx) {
            return;
        }
        if let Some(entry) = self.node.transport.get(idx) {
            let authenticated = entry.link.conn.authenticated_packets();
            if authenticated != tunnel.heard_packets {
                tunnel.heard_packets = authenticated;
                tunnel.last_heard = Some(now);
            }
        }
    }

    /// One attempt borrowed with the spoke's state.
    fn attempt(&mut self, now: Instant, idx: usize) -> Option<AttemptCx<'_>> {
        Some(AttemptCx {
            slot: self.node.transport.slot(idx)?,
            tunnel: &mut self.tunnel,
            events: &mut self.node.events,
            now,
        })
    }

    fn start_attempt(&mut self, now: Instant) {
        self.tunnel.stats.connect_attempts += 1;
        let connected = self.node.transport.connect(
            now,
            self.client_config.clone(),
            self.hub,
            &self.server_name,
            Attempt::new(),
        );
        match connected {
            Ok(idx) => {
                self.tunnel.current = Some(idx);
                self.tunnel.last_heard = None;
                self.tunnel.heard_packets = 0;
                let timeout = now + self.tunnel.reconnect.policy.attempt_timeout;
                if let Some(slot) = self.node.transport.slot(idx) {
                    slot.entry.deadline = Some((timeout, "attempt timeout"));
                }
                self.node.events.push_back(SpokeEvent::Connecting {
                    attempt: self.tunnel.stats.connect_attempts,
                });
                self.process(now, idx, false);
            }
            Err(e) => {
                self.tunnel.stopped = true;
                self.node.events.push_back(SpokeEvent::Disconnected {
                    reason: DisconnectReason::Transport {
                        error: e.to_string(),
                        tls: false,
                        by_peer: false,
                    },
                    retry_in: None,
                });
            }
        }
    }
}

impl Dispatch for Spoke {
    type State = Attempt;
    type Event = SpokeEvent;

    fn node(&mut self) -> &mut Node<Attempt, SpokeEvent> {
        &mut self.node
    }

    fn process(&mut self, now: Instant, idx: usize, deadline_due: bool) {
        let Node {
            transport,
            events,
            packets,
            capsules,
            ..
        } = &mut self.node;
        // Indices come from quinn, the timers or `current`, which name live connections.
        let Some(slot) = transport.slot(idx) else {
            return;
        };
        let mut a = AttemptCx {
            slot,
            tunnel: &mut self.tunnel,
            events,
            now,
        };
        if deadline_due {
            a.on_deadline();
        }
        while let Some(event) = a.slot.entry.link.conn.poll() {
            match event {
                Event::DatagramReceived => forward::from_hub(&mut a, packets),
                event => a.on_quinn_event(event, capsules),
            }
        }
        if a.slot.shuttle_events() {
            if a.tunnel.current == Some(idx) {
                a.tunnel.current = None;
            }
            transport.remove(idx);
            return;
        }
        if let Err(e) = a.slot.entry.link.flush() {
            a.on_control_error(e);
        }
        a.track_mtu();
        a.slot.mark_ready();
        a.slot.update_timer();
    }
}

impl std::fmt::Debug for Spoke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spoke")
            .field("state", &self.state())
            .field("addresses", &self.addresses())
            .finish_non_exhaustive()
    }
}
