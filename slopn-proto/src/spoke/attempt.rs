//! One connection attempt of a spoke: handshake, hello, the hub's capsules, deadlines,
//! goodbye, and what its end means for the next attempt.
//!
//! An [`AttemptCx`] borrows the attempt's connection once, with the spoke's [`Tunnel`]
//! state, for the length of a call.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use quinn_proto::{Event, StreamEvent};
use tracing::{debug, info};

use super::{SpokeEvent, Tunnel};
use crate::control::{Capsule, CloseCode, IpPrefix, PROTOCOL_VERSION, RequestedAddress};
use crate::link::ControlError;
use crate::session::DisconnectReason;
use crate::transport::Slot;

/// Time the hub has to answer our HELLO.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Handshaking,
    Authenticating,
    Established,
    Closing {
        code: CloseCode,
    },
    /// Closed by us or the peer; waiting for quinn to drain it.
    Closed,
}

/// One connection attempt.
pub(crate) struct Attempt {
    pub(super) phase: Phase,
    welcomed: bool,
    /// Whether its end was handled (retry scheduled or stop).
    ended: bool,
}

impl Attempt {
    pub(super) fn new() -> Self {
        Self {
            phase: Phase::Handshaking,
            welcomed: false,
            ended: false,
        }
    }
}

/// One attempt borrowed for a call, with the spoke's state.
pub(super) struct AttemptCx<'a> {
    pub(super) slot: Slot<'a, Attempt>,
    pub(super) tunnel: &'a mut Tunnel,
    pub(super) events: &'a mut VecDeque<SpokeEvent>,
    pub(super) now: Instant,
}

impl AttemptCx<'_> {
    /// Whether this is the attempt the spoke relies on (not an old one closing).
    fn is_current(&self) -> bool {
        self.tunnel.current == Some(self.slot.entry.idx())
    }

    /// Reacts to one quinn event (datagrams excepted: they are the packet path's).
    pub(super) fn on_quinn_event(&mut self, event: Event, capsules: &mut Vec<Capsule>) {
        match event {
            Event::Connected => self.on_connected(),
            Event::ConnectionLost { reason } => {
                self.end_attempt(DisconnectReason::from_quinn(&reason));
                self.slot.entry.state.phase = Phase::Closed;
                self.slot.entry.deadline = None;
            }
            Event::Stream(StreamEvent::Readable { .. }) => self.read_control(capsules),
            Event::Stream(StreamEvent::Finished { .. }) => {
                if let Phase::Closing { code } = self.slot.entry.state.phase {
                    self.slot.entry.deadline = None;
                    self.close_connection(code, "goodbye");
                }
            }
            Event::Stream(StreamEvent::Stopped { .. }) => {
                self.on_control_error(ControlError::Stream("control stream stopped"));
            }
            Event::DatagramReceived
            | Event::HandshakeDataReady
            | Event::DatagramsUnblocked
            | Event::Stream(
                StreamEvent::Opened { .. }
                | StreamEvent::Writable { .. }
                | StreamEvent::Available { .. },
            ) => {}
        }
    }

    fn on_connected(&mut self) {
        let tunnel = &mut *self.tunnel;
        let mut requests = Vec::new();
        for v4 in [true, false] {
            let wanted = tunnel
                .requested
                .iter()
                .copied()
                .find(|a| a.is_ipv4() == v4)
                .or_else(|| {
                    tunnel
                        .addresses
                        .iter()
                        .map(IpPrefix::addr)
                        .find(|a| a.is_ipv4() == v4)
                })
                .unwrap_or(if v4 {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                });
            requests.push(RequestedAddress {
                request_id: tunnel.next_request_id,
                prefix: IpPrefix::host(wanted),
            });
            tunnel.next_request_id += 1;
        }
        let entry = &mut *self.slot.entry;
        entry.state.phase = Phase::Authenticating;
        entry.deadline = Some((self.now + AUTH_TIMEOUT, "hub answer timeout"));
        let remote = entry.link.conn.remote_address();
        entry.link.open_control();
        let hello = Capsule::Hello {
            version: PROTOCOL_VERSION,
            credential: tunnel.token.clone(),
        };
        let result = entry
            .link
            .send(&hello)
            .and_then(|()| entry.link.send(&Capsule::AddressRequest(requests)));
        self.events.push_back(SpokeEvent::Connected { remote });
        if let Err(e) = result {
            self.on_control_error(e);
        }
    }

    /// Acts on the attempt's own deadline, which has passed.
    pub(super) fn on_deadline(&mut self) {
        let entry = &mut *self.slot.entry;
        match entry.state.phase {
            Phase::Handshaking => {
                // Heard something? Then the handshake is merely slow: let QUIC time it out.
                if entry.link.conn.stats().udp_rx.datagrams > 0 {
                    return;
                }
                let reason = DisconnectReason::Local {
                    code: CloseCode::NO_ERROR,
                    reason: "no answer from the hub".into(),
                };
                self.end_attempt(reason);
                self.close_connection(CloseCode::NO_ERROR, "attempt abandoned");
            }
            Phase::Authenticating => {
                let reason = "the hub did not answer the hello";
                self.end_attempt(DisconnectReason::Local {
                    code: CloseCode::HELLO_TIMEOUT,
                    reason: reason.into(),
                });
                self.close_connection(CloseCode::HELLO_TIMEOUT, reason);
            }
            Phase::Closing { code } => self.close_connection(code, "goodbye"),
            Phase::Established | Phase::Closed => {}
        }
    }

    fn read_control(&mut self, capsules: &mut Vec<Capsule>) {
        let result = self.slot.entry.link.read(capsules);
        for capsule in capsules.drain(..) {
            if !self.is_current() {
                break;
            }
            self.on_capsule(capsule);
        }
        if let Err(e) = result {
            self.on_control_error(e);
        }
    }

    /// A control stream failure ends the current attempt.
    pub(super) fn on_control_error(&mut self, error: ControlError) {
        if !self.is_current() {
            return;
        }
        let reason = match error {
            ControlError::Decode(e) => e.to_string(),
            ControlError::Stream(what) => what.to_owned(),
            ControlError::Backlog => "control stream backlog: the hub does not read".into(),
            ControlError::Limit(e) => format!("a capsule for the hub was refused: {e}"),
        };
        self.fail(CloseCode::PROTOCOL_ERROR, &reason);
    }

    /// Ends the attempt because the hub misbehaved.
    fn fail(&mut self, code: CloseCode, reason: &str) {
        debug!(reason, "closing the session");
        self.end_attempt(DisconnectReason::Local {
            code,
            reason: reason.into(),
        });
        self.close_connection(code, reason);
    }

    fn on_capsule(&mut self, capsule: Capsule) {
        let (entry, tunnel) = (&mut *self.slot.entry, &mut *self.tunnel);
        match capsule {
            Capsule::Welcome {
                version,
                identity,
                hub_addresses,
            } if !entry.state.welcomed && version == PROTOCOL_VERSION => {
                entry.state.welcomed = true;
                tunnel.identity = Some(identity);
                tunnel.hub_networks = hub_addresses;
            }
            Capsule::RouteAdvertisement(routes) if entry.state.welcomed => {
                if routes != tunnel.routes {
                    tunnel.routes = routes.clone();
                    self.events.push_back(SpokeEvent::RoutesChanged { routes });
                }
            }
            Capsule::AddressAssign(list) if entry.state.welcomed => {
                let addresses: Vec<IpPrefix> = list
                    .iter()
                    .map(|a| a.prefix)
                    .filter(|p| !p.is_unspecified())
                    .collect();
                let first = entry.state.phase == Phase::Authenticating;
                if addresses.is_empty() {
                    // The hub follows an empty assignment with an error and closes.
                    return;
                }
                if first {
                    entry.state.phase = Phase::Established;
                    entry.deadline = None;
                    tunnel.reconnect.failures = 0;
                    tunnel.stats.sessions += 1;
                }
                if first || addresses != tunnel.addresses {
                    tunnel.addresses = addresses;
                    tunnel.tun_mtu = tunnel.tun_mtu_for(entry.link.max_packet());
                    info!(addresses = ?tunnel.addresses(), identity = ?tunnel.identity, "assigned");
                    self.events.push_back(SpokeEvent::Assigned {
                        identity: tunnel.identity.clone().unwrap_or_default(),
                        addresses: tunnel.addresses(),
                        hub_addresses: tunnel.hub_addresses(),
                        tun_mtu: tunnel.tun_mtu,
                    });
                }
            }
            Capsule::DnsServers(servers) if entry.state.welcomed => {
                if servers != tunnel.dns_servers {
                    tunnel.dns_servers = servers.clone();
                    self.events.push_back(SpokeEvent::DnsChanged { servers });
                }
            }
            Capsule::Goodbye { code, reason } | Capsule::Error { code, reason } => {
                self.end_attempt(DisconnectReason::Remote {
                    code,
                    reason: reason.clone(),
                });
                self.close_connection(code, &reason);
            }
            other => {
                let reason = format!("unexpected {} capsule", other.name());
                self.fail(CloseCode::PROTOCOL_ERROR, &reason);
            }
        }
    }

    /// Handles the end of the attempt (once): schedules the next one or stops.
    pub(super) fn end_attempt(&mut self, reason: DisconnectReason) {
        let entry = &mut *self.slot.entry;
        if std::mem::replace(&mut entry.state.ended, true) {
            return;
        }
        let was_established = entry.state.phase == Phase::Established;
        entry.link.clear_datagrams();
        if self.is_current() {
            self.tunnel.current = None;
        }
        if self.tunnel.stopped {
            self.events.push_back(SpokeEvent::Disconnected {
                reason,
                retry_in: None,
            });
            return;
        }
        let retry_in = self
            .tunnel
            .reconnect
            .after(self.now, &reason, was_established);
        match retry_in {
            Some(_) => self.tunnel.stats.reconnects.add(&reason),
            None => self.tunnel.stopped = true,
        }
        info!(%reason, ?retry_in, "session ended");
        self.events
            .push_back(SpokeEvent::Disconnected { reason, retry_in });
    }

    /// Says goodbye (or, mid-handshake, just closes) after the attempt was ended.
    pub(super) fn say_goodbye(&mut self, code: CloseCode, reason: &str) {
        let entry = &mut *self.slot.entry;
        match entry.state.phase {
            Phase::Authenticating | Phase::Established => {
                let goodbye = Capsule::Goodbye {
                    code,
                    reason: reason.into(),
                };
                let grace_end = entry.link.send_last(self.now, &goodbye);
                entry.state.phase = Phase::Closing { code };
                entry.deadline = Some((grace_end, "goodbye grace"));
                self.slot.mark_ready();
                self.slot.update_timer();
            }
            Phase::Handshaking => self.close_connection(code, reason),
            Phase::Closing { .. } | Phase::Closed => {}
        }
    }

    fn close_connection(&mut self, code: CloseCode, reason: &str) {
        if self.slot.entry.state.phase == Phase::Closed {
            return;
        }
        self.slot.entry.state.phase = Phase::Closed;
        self.slot.close(self.now, code, reason.as_bytes());
    }

    /// Reports a change of the largest packet the current session carries.
    pub(super) fn track_mtu(&mut self) {
        if !self.is_current() || self.slot.entry.state.phase != Phase::Established {
            return;
        }
        let mtu = self.tunnel.tun_mtu_for(self.slot.entry.link.max_packet());
        if mtu != self.tunnel.tun_mtu {
            self.tunnel.tun_mtu = mtu;
            if let Some(tun_mtu) = mtu {
                self.events.push_back(SpokeEvent::MtuChanged { tun_mtu });
            }
        }
    }
}
