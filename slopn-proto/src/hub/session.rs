//! One spoke's session at the hub: handshake, hello and authentication, address requests,
//! control capsules, deadlines and closing.
//!
//! A [`Session`] borrows one connection for the length of a call together with the hub's
//! shared [`Tables`], so nothing here looks a connection up by index, and none can vanish
//! mid-call.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use quinn_proto::{Event, StreamEvent};
use tracing::debug;

use super::{HubEvent, Tables};
use crate::config::Auth;
use crate::control::{Capsule, CloseCode};
use crate::icmp::IcmpRateLimit;
use crate::link::ControlError;
use crate::session::{DisconnectReason, SessionId};
use crate::stats::{DropCounters, TrafficCounters};
use crate::transport::{Peers, Slot};

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// QUIC handshake in progress.
    Handshaking,
    /// Connected; waiting for HELLO.
    AwaitingHello,
    /// Authenticated; waiting for an address request.
    Authenticated,
    /// Holds addresses; packets flow.
    Active,
    /// Ending: the final capsule is on its way, then the connection closes.
    Closing { code: CloseCode },
    /// The connection is closed; waiting for quinn to drain it.
    Closed,
}

/// Per-connection state at the hub.
pub(crate) struct HubSession {
    pub(super) id: SessionId,
    pub(super) phase: Phase,
    pub(super) identity: Option<Arc<str>>,
    /// How the identity was proven (to revoke the session if that is withdrawn).
    pub(super) auth: Option<Auth>,
    pub(super) addresses: Vec<IpAddr>,
    pub(super) traffic: TrafficCounters,
    pub(super) drops: DropCounters,
    pub(super) icmp: IcmpRateLimit,
    /// When the session got its addresses (the caller's clock).
    pub(super) assigned_at: Option<Instant>,
    /// The source whose share of half-open connections this handshake counts against, if its
    /// address was proven (see `HubConfig::max_half_open_per_source`).
    handshake_source: Option<IpAddr>,
    close_reason: Option<String>,
    /// Whether the end of this session was reported (addresses freed, event sent).
    ended: bool,
}

impl HubSession {
    pub(super) fn new(id: SessionId, handshake_source: Option<IpAddr>) -> Self {
        Self {
            id,
            handshake_source,
            phase: Phase::Handshaking,
            identity: None,
            auth: None,
            addresses: Vec::new(),
            traffic: TrafficCounters::default(),
            drops: DropCounters::default(),
            icmp: IcmpRateLimit::default(),
            assigned_at: None,
            close_reason: None,
            ended: false,
        }
    }

    /// Whether it is ending or gone.
    pub(super) fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. } | Phase::Closed)
    }

    /// Whether it is authenticated and open.
    pub(super) fn is_authenticated(&self) -> bool {
        matches!(self.phase, Phase::Authenticated | Phase::Active)
    }
}

/// One session borrowed for a call, with what it needs from the hub.
pub(super) struct Session<'a> {
    pub(super) slot: Slot<'a, HubSession>,
    pub(super) hub: &'a mut Tables,
    pub(super) events: &'a mut VecDeque<HubEvent>,
    pub(super) now: Instant,
    /// An older session of the same identity this one closed: the hub processes it next.
    pub(super) replaced: Option<usize>,
}

impl Session<'_> {
    pub(super) fn state(&mut self) -> &mut HubSession {
        &mut self.slot.entry.state
    }

    /// Reacts to one quinn event (datagrams excepted: they are forwarding's).
    pub(super) fn on_quinn_event(
        &mut self,
        event: Event,
        peers: &mut Peers<'_, HubSession>,
        capsules: &mut Vec<Capsule>,
    ) {
        match event {
            Event::Connected => self.on_connected(),
            Event::ConnectionLost { reason } => {
                self.end_session(DisconnectReason::from_quinn(&reason));
                self.set_phase(Phase::Closed);
                self.slot.entry.deadline = None;
            }
            Event::Stream(StreamEvent::Opened { .. }) => {
                match self.slot.entry.link.accept_control() {
                    Ok(()) => self.read_control(peers, capsules),
                    Err(e) => self.on_control_error(e),
                }
            }
            Event::Stream(StreamEvent::Readable { .. }) => self.read_control(peers, capsules),
            Event::Stream(StreamEvent::Finished { .. }) => {
                // Our final capsule was acknowledged: close now.
                if let Phase::Closing { code } = self.state().phase {
                    self.slot.entry.deadline = None;
                    self.close_connection(code);
                }
            }
            Event::Stream(StreamEvent::Stopped { .. }) => {
                self.on_control_error(ControlError::Stream("control stream stopped"));
            }
            Event::DatagramReceived
            | Event::HandshakeDataReady
            | Event::DatagramsUnblocked
            | Event::Stream(StreamEvent::Writable { .. } | StreamEvent::Available { .. }) => {}
        }
    }

    /// Acts on the session's own deadline, which has passed.
    pub(super) fn on_deadline(&mut self) {
        match self.state().phase {
            Phase::AwaitingHello | Phase::Authenticated => self.begin_close(
                CloseCode::HELLO_TIMEOUT,
                "no hello and address request in time",
                true,
            ),
            Phase::Closing { code } => self.close_connection(code),
            _ => {}
        }
    }

    /// Moves queued control bytes on; a failure closes the session.
    pub(super) fn flush(&mut self) {
        if let Err(e) = self.slot.entry.link.flush() {
            self.on_control_error(e);
        }
    }

    /// quinn has drained the connection: reports the end if that was not done yet.
    pub(super) fn on_drained(&mut self) {
        let session = self.state();
        let code = match session.phase {
            Phase::Closing { code } => code,
            _ => CloseCode::NO_ERROR,
        };
        let reason = session.close_reason.clone().unwrap_or_default();
        self.end_session(DisconnectReason::Local { code, reason });
        self.set_phase(Phase::Closed);
    }

    fn on_connected(&mut self) {
        let entry = &mut *self.slot.entry;
        let alpn_ok = entry
            .link
            .conn
            .crypto_session()
            .handshake_data()
            .and_then(|d| {
                d.downcast::<quinn_proto::crypto::rustls::HandshakeData>()
                    .ok()
            })
            .and_then(|d| d.protocol)
            .is_some_and(|p| p == crate::control::ALPN);
        let id = entry.state.id;
        let remote = entry.link.conn.remote_address();
        entry.deadline = Some((self.now + self.hub.hello_timeout, "hello timeout"));
        self.set_phase(Phase::AwaitingHello);
        if !alpn_ok {
            self.close_connection(CloseCode::PROTOCOL_ERROR);
            return;
        }
        self.events.push_back(HubEvent::Connected { id, remote });
    }

    fn read_control(&mut self, peers: &mut Peers<'_, HubSession>, capsules: &mut Vec<Capsule>) {
        let result = self.slot.entry.link.read(capsules);
        for capsule in capsules.drain(..) {
            if self.state().is_closing() {
                break;
            }
            self.on_capsule(capsule, peers);
        }
        if let Err(e) = result {
            self.on_control_error(e);
        }
    }

    fn on_control_error(&mut self, error: ControlError) {
        let reason = match &error {
            ControlError::Decode(e) => e.to_string(),
            ControlError::Stream(what) => (*what).to_owned(),
            ControlError::Backlog => "control stream backlog: the spoke does not read".into(),
            ControlError::Limit(e) => format!("a capsule for the spoke was refused: {e}"),
        };
        self.protocol_error(&reason);
    }

    fn protocol_error(&mut self, reason: &str) {
        if !self.state().is_closing() {
            debug!(idx = self.slot.entry.idx(), reason, "protocol error");
            self.begin_close(CloseCode::PROTOCOL_ERROR, reason, true);
        }
    }

    fn on_capsule(&mut self, capsule: Capsule, peers: &mut Peers<'_, HubSession>) {
        match (self.state().phase, capsule) {
            (
                Phase::AwaitingHello,
                Capsule::Hello {
                    version,
                    credential,
                },
            ) => self.on_hello(version, &credential, peers),
            (Phase::Authenticated | Phase::Active, Capsule::AddressRequest(requests)) => {
                self.on_address_request(&requests)
            }
            (_, Capsule::Goodbye { code, reason } | Capsule::Error { code, reason }) => {
                // The spoke is leaving: echo its code and close at once.
                self.end_session(DisconnectReason::Remote { code, reason });
                self.close_connection(code);
            }
            (Phase::AwaitingHello, other) => {
                self.protocol_error(&format!("expected HELLO, got {}", other.name()))
            }
            (_, other) => self.protocol_error(&format!("unexpected {} capsule", other.name())),
        }
    }

    /// Sends a capsule on the control stream; a failure closes the session.
    pub(super) fn send_capsule(&mut self, capsule: &Capsule) {
        if let Err(e) = self.slot.entry.link.send(capsule) {
            self.on_control_error(e);
        }
    }

    /// Starts ending the session: frees its addresses, sends an ERROR (`error`) or GOODBYE
    /// with `code`, and closes the connection once that is acknowledged or after a grace
    /// period.
    pub(super) fn begin_close(&mut self, code: CloseCode, reason: &str, error: bool) {
        if self.state().is_closing() {
            return;
        }
        self.state().close_reason = Some(reason.to_owned());
        let ended = DisconnectReason::Local {
            code,
            reason: reason.to_owned(),
        };
        if !self.slot.entry.link.has_control() {
            self.end_session(ended);
            self.close_connection(code);
            return;
        }
        let reason = reason.to_owned();
        let capsule = if error {
            Capsule::Error { code, reason }
        } else {
            Capsule::Goodbye { code, reason }
        };
        let entry = &mut *self.slot.entry;
        let grace_end = entry.link.send_last(self.now, &capsule);
        entry.link.clear_datagrams();
        entry.state.phase = Phase::Closing { code };
        entry.deadline = Some((grace_end, "close grace"));
        self.end_session(ended);
        self.slot.mark_ready();
        self.slot.update_timer();
    }

    /// Closes the QUIC connection now (after any goodbye had its chance).
    fn close_connection(&mut self, code: CloseCode) {
        let entry = &mut *self.slot.entry;
        if entry.state.phase == Phase::Closed && entry.link.conn.is_closed() {
            return;
        }
        let reason = entry.state.close_reason.clone().unwrap_or_default();
        self.set_phase(Phase::Closed);
        self.slot.close(self.now, code, reason.as_bytes());
    }

    /// Moves the session to `phase`, keeping the count of handshaking connections.
    pub(super) fn set_phase(&mut self, phase: Phase) {
        let session = &mut self.slot.entry.state;
        if session.phase == Phase::Handshaking && phase != Phase::Handshaking {
            self.hub.handshaking -= 1;
            if let Some(source) = session.handshake_source.take()
                && let Some(count) = self.hub.handshaking_by_source.get_mut(&source)
            {
                *count -= 1;
                if *count == 0 {
                    self.hub.handshaking_by_source.remove(&source);
                }
            }
            if phase == Phase::AwaitingHello {
                self.hub.stats.handshakes.completed += 1;
            }
        }
        session.phase = phase;
    }

    /// Frees the session's addresses and routes and reports it gone (once).
    fn end_session(&mut self, reason: DisconnectReason) {
        let idx = self.slot.entry.idx();
        let entry = &mut *self.slot.entry;
        let session = &mut entry.state;
        if std::mem::replace(&mut session.ended, true) {
            return;
        }
        let hub = &mut *self.hub;
        for addr in session.addresses.drain(..) {
            hub.routes.remove(addr);
            if let Some(pool) = hub.pools.iter_mut().find(|p| p.net().contains(&addr)) {
                pool.release(addr);
            }
        }
        if let Some(identity) = &session.identity
            && hub.by_identity.get(identity) == Some(&idx)
        {
            hub.by_identity.remove(identity);
        }
        if session.phase == Phase::Handshaking {
            hub.stats.handshakes.fail(&reason);
            // A TLS handshake this hub refused (a bad client certificate) is an
            // authentication failure like a bad token, and counts against its source.
            if let DisconnectReason::Transport {
                tls: true,
                by_peer: false,
                ..
            } = &reason
            {
                hub.stats.auth_failures += 1;
                let source = entry.link.conn.remote_address().ip();
                hub.failures.record(source, self.now);
            }
            if let DisconnectReason::Transport { error, .. } = &reason
                && let Some(sentence) = crate::key_exchange::refusal(error)
            {
                tracing::warn!("{sentence}");
            }
            if reason_is_quiet(&reason) {
                return;
            }
        }
        let (id, identity) = (session.id, session.identity.as_deref().map(str::to_owned));
        debug!(%id, identity = identity.as_deref().unwrap_or("-"), %reason, "spoke disconnected");
        self.events.push_back(HubEvent::Disconnected {
            id,
            identity,
            reason,
        });
    }
}

/// Failed handshakes (scanners, wrong CA) are not worth an event each.
fn reason_is_quiet(reason: &DisconnectReason) -> bool {
    !matches!(reason, DisconnectReason::Transport { tls: true, .. })
}
