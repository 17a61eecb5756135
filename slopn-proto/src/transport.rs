//! A quinn endpoint with its links: packet intake, per-connection timers, and round-robin
//! transmit scheduling so that no connection starves another.
//!
//! Callers borrow one connection at a time as a [`Slot`] (the entry and the scheduler
//! together), so that what they do to it never has to look it up again.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Incoming, Transmit,
};

use crate::cid::SignedCidGenerator;
use crate::control::CloseCode;
use crate::derive_key;
use crate::link::Link;
use crate::node::Datagram;

/// Size of the buffers incoming UDP payloads are copied into; packets are split off them.
const RECV_ARENA: usize = 256 * 1024;

/// What an incoming UDP datagram turned into.
pub(crate) enum Received {
    /// Nothing for the owner to do (consumed, or answered statelessly).
    Nothing,
    /// Not a QUIC packet for this endpoint (undecodable, too short, for no connection it
    /// has): ignored. Worth counting: it is what scanners and floods send.
    Ignored,
    /// Input for an existing connection, now waiting to be processed.
    Connection(usize),
    /// A new connection attempt: accept, refuse or ignore it.
    New(Box<Incoming>),
}

/// A link with the owner's per-connection state.
pub(crate) struct Entry<S> {
    pub(crate) link: Link,
    pub(crate) state: S,
    /// An owner deadline (e.g. a hello timeout) besides quinn's own timers.
    pub(crate) deadline: Option<(Instant, &'static str)>,
    idx: usize,
    timer: Option<Instant>,
    queued: bool,
}

impl<S> Entry<S> {
    /// The connection's index, stable for its lifetime.
    pub(crate) fn idx(&self) -> usize {
        self.idx
    }
}

/// Which connections have something to send, and when each needs its timers run.
#[derive(Default)]
pub(crate) struct Sched {
    timers: BTreeSet<(Instant, usize)>,
    /// Connections that may have something to send, round-robin.
    ready: VecDeque<usize>,
}

impl Sched {
    /// Notes that a connection may have something to send.
    pub(crate) fn mark_ready<S>(&mut self, entry: &mut Entry<S>) {
        if !entry.queued {
            entry.queued = true;
            self.ready.push_back(entry.idx);
        }
    }

    /// Re-registers the connection's next deadline after anything touched it.
    pub(crate) fn update_timer<S>(&mut self, entry: &mut Entry<S>) {
        let next = [
            entry.link.conn.poll_timeout(),
            entry.link.hold_until(),
            entry.deadline.map(|(d, _)| d),
        ]
        .into_iter()
        .flatten()
        .min();
        if next != entry.timer {
            if let Some(old) = entry.timer {
                self.timers.remove(&(old, entry.idx));
            }
            if let Some(new) = next {
                self.timers.insert((new, entry.idx));
            }
            entry.timer = next;
        }
    }
}

/// One connection borrowed together with the scheduler and the endpoint, for as long as a
/// call needs it.
pub(crate) struct Slot<'a, S> {
    pub(crate) entry: &'a mut Entry<S>,
    pub(crate) sched: &'a mut Sched,
    pub(crate) endpoint: &'a mut Endpoint,
}

impl<S> Slot<'_, S> {
    /// Notes that the connection may have something to send.
    pub(crate) fn mark_ready(&mut self) {
        self.sched.mark_ready(self.entry);
    }

    /// Re-registers the connection's next deadline.
    pub(crate) fn update_timer(&mut self) {
        self.sched.update_timer(self.entry);
    }

    /// Another connection borrowed with the same scheduler and endpoint.
    pub(crate) fn with<'b>(&'b mut self, entry: &'b mut Entry<S>) -> Slot<'b, S> {
        Slot {
            entry,
            sched: self.sched,
            endpoint: self.endpoint,
        }
    }

    /// Passes endpoint events both ways; returns true once quinn has drained the connection,
    /// which the caller must then [`remove`](Transport::remove).
    pub(crate) fn shuttle_events(&mut self) -> bool {
        let conn = &mut self.entry.link.conn;
        let mut drained = false;
        while let Some(event) = conn.poll_endpoint_events() {
            drained |= event.is_drained();
            if let Some(reply) = self
                .endpoint
                .handle_event(ConnectionHandle(self.entry.idx), event)
            {
                conn.handle_event(reply);
            }
        }
        drained
    }

    /// Closes the connection now with `code` and `reason`; its queued packets and owner
    /// deadline are dropped.
    pub(crate) fn close(&mut self, now: Instant, code: CloseCode, reason: &[u8]) {
        self.entry.deadline = None;
        self.entry.link.close(now, code, reason);
        self.mark_ready();
        self.update_timer();
    }
}

/// Every connection but the one borrowed as a [`Slot`] (see [`Transport::split`]).
pub(crate) struct Peers<'a, S> {
    below: &'a mut [Option<Entry<S>>],
    above: &'a mut [Option<Entry<S>>],
}

impl<S> Peers<'_, S> {
    /// Another live connection; `None` for the borrowed one or a free index.
    pub(crate) fn get_mut(&mut self, idx: usize) -> Option<&mut Entry<S>> {
        let below = self.below.len();
        match idx.checked_sub(below + 1) {
            Some(i) => self.above.get_mut(i)?.as_mut(),
            None => self.below.get_mut(idx)?.as_mut(),
        }
    }
}

/// A quinn endpoint and its connections, indexed by connection handle.
pub(crate) struct Transport<S> {
    pub(crate) endpoint: Endpoint,
    entries: Vec<Option<Entry<S>>>,
    sched: Sched,
    /// Stateless answers from the endpoint (resets, version negotiation, refusals).
    responses: VecDeque<(Transmit, Vec<u8>)>,
    recv_arena: BytesMut,
    scratch: Vec<u8>,
    outbox_limit: usize,
}

impl<S> Transport<S> {
    /// A transport on a fresh quinn endpoint. Randomness comes from `seed`; the stateless
    /// reset key also signs connection IDs (see [`SignedCidGenerator`]).
    pub(crate) fn new(
        seed: &[u8; 32],
        reset_key: [u8; 32],
        server: Option<Arc<quinn_proto::ServerConfig>>,
        outbox_limit: usize,
        max_udp_payload: u16,
    ) -> Self {
        let cid_seed = derive_key(seed, b"slopn connection ids");
        let cid_key = u64::from_le_bytes(
            derive_key(&reset_key, b"slopn cid key")[..8]
                .try_into()
                .expect("8 bytes"),
        );
        let mut config = EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &reset_key,
        )));
        config.cid_generator(move || Box::new(SignedCidGenerator::new(cid_seed, cid_key)));
        // quinn sends at most one stateless reset per 20 ms (and one per batch of datagrams
        // handled at the same `now` with any interval), so a restarted hub told only 50
        // spokes a second that their session was gone; the others waited for their idle
        // timeout (a 1,000-spoke storm took 7.5 s). No limit here: only a connection ID
        // this hub signed earns a reset (the generator's check drops garbage first), and a
        // reset is smaller than the packet it answers, so it amplifies nothing.
        config.min_reset_interval(Duration::ZERO);
        config.rng_seed(Some(derive_key(seed, b"slopn endpoint rng")));
        // Advertised to the peer as the largest datagram to send here: with each side's own
        // path MTU bound, the smaller `link_mtu` of the two wins (quinn's default, 1472, would
        // keep a jumbo-frame link at 1500-byte packets).
        config
            .max_udp_payload_size(max_udp_payload.clamp(1200, 65_527))
            .expect("clamped to QUIC's bounds");
        let endpoint = Endpoint::new(Arc::new(config), server, true, None);
        Self {
            endpoint,
            entries: Vec::new(),
            sched: Sched::default(),
            responses: VecDeque::new(),
            recv_arena: BytesMut::new(),
            scratch: Vec::new(),
            outbox_limit,
        }
    }

    /// Feeds one UDP datagram to the endpoint.
    pub(crate) fn handle_udp(&mut self, now: Instant, datagram: Datagram<'_>) -> Received {
        let payload = datagram.payload;
        if self.recv_arena.capacity() < payload.len() {
            self.recv_arena.reserve(RECV_ARENA.max(payload.len()));
        }
        self.recv_arena.extend_from_slice(payload);
        let data = self.recv_arena.split();
        self.scratch.clear();
        let event = self.endpoint.handle(
            now,
            datagram.remote,
            datagram.local_ip,
            datagram.ecn,
            data,
            &mut self.scratch,
        );
        match event {
            None => Received::Ignored,
            Some(DatagramEvent::Response(t)) => {
                self.push_response(t);
                Received::Nothing
            }
            Some(DatagramEvent::NewConnection(incoming)) => Received::New(Box::new(incoming)),
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                // quinn routes only to connections it knows, and we drop ours only after
                // quinn reported them drained.
                let Some(mut slot) = self.slot(ch.0) else {
                    return Received::Nothing;
                };
                slot.entry.link.conn.handle_event(event);
                slot.mark_ready();
                Received::Connection(ch.0)
            }
        }
    }

    /// Keeps a stateless answer the endpoint wrote into `scratch`.
    fn push_response(&mut self, t: Transmit) {
        let data = self.scratch[..t.size].to_vec();
        self.responses.push_back((t, data));
    }

    /// Accepts a new connection with `state`; returns its index.
    pub(crate) fn accept(
        &mut self,
        incoming: Box<Incoming>,
        now: Instant,
        state: S,
    ) -> Result<usize, quinn_proto::ConnectionError> {
        self.scratch.clear();
        match self
            .endpoint
            .accept(*incoming, now, &mut self.scratch, None)
        {
            Ok((ch, conn)) => Ok(self.insert(ch, conn, state)),
            Err(e) => {
                if let Some(t) = e.response {
                    self.push_response(t);
                }
                Err(e.cause)
            }
        }
    }

    /// Answers a new connection with a QUIC Retry, so that it must prove its address before
    /// the hub keeps any state for it. One that has already retried is accepted instead.
    pub(crate) fn retry(&mut self, incoming: Box<Incoming>) {
        self.scratch.clear();
        match self.endpoint.retry(*incoming, &mut self.scratch) {
            Ok(t) => self.push_response(t),
            Err(e) => self.refuse(Box::new(e.into_incoming())),
        }
    }

    /// Refuses a new connection (the peer gets a CONNECTION_CLOSE).
    pub(crate) fn refuse(&mut self, incoming: Box<Incoming>) {
        self.scratch.clear();
        let t = self.endpoint.refuse(*incoming, &mut self.scratch);
        self.push_response(t);
    }

    /// Starts an outgoing connection with `state`; returns its index.
    pub(crate) fn connect(
        &mut self,
        now: Instant,
        config: quinn_proto::ClientConfig,
        remote: std::net::SocketAddr,
        server_name: &str,
        state: S,
    ) -> Result<usize, quinn_proto::ConnectError> {
        let (ch, conn) = self.endpoint.connect(now, config, remote, server_name)?;
        Ok(self.insert(ch, conn, state))
    }

    fn insert(&mut self, ch: ConnectionHandle, conn: Connection, state: S) -> usize {
        let idx = ch.0;
        if self.entries.len() <= idx {
            self.entries.resize_with(idx + 1, || None);
        }
        let entry = self.entries[idx].insert(Entry {
            link: Link::new(conn, self.outbox_limit),
            state,
            deadline: None,
            idx,
            timer: None,
            queued: false,
        });
        self.sched.mark_ready(entry);
        idx
    }

    pub(crate) fn get(&self, idx: usize) -> Option<&Entry<S>> {
        self.entries.get(idx)?.as_ref()
    }

    /// One live connection, borrowed with the scheduler.
    pub(crate) fn slot(&mut self, idx: usize) -> Option<Slot<'_, S>> {
        let entry = self.entries.get_mut(idx)?.as_mut()?;
        Some(Slot {
            entry,
            sched: &mut self.sched,
            endpoint: &mut self.endpoint,
        })
    }

    /// One live connection, borrowed with the scheduler and every other connection.
    pub(crate) fn split(&mut self, idx: usize) -> Option<(Slot<'_, S>, Peers<'_, S>)> {
        if self.entries.get(idx)?.is_none() {
            return None;
        }
        let (below, rest) = self.entries.split_at_mut(idx);
        let (this, above) = rest.split_first_mut()?;
        let slot = Slot {
            entry: this.as_mut()?,
            sched: &mut self.sched,
            endpoint: &mut self.endpoint,
        };
        Some((slot, Peers { below, above }))
    }

    /// Every live entry, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry<S>> {
        self.entries.iter().flatten()
    }

    /// Every live entry, mutably, in index order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry<S>> {
        self.entries.iter_mut().flatten()
    }

    /// Indices of every live entry, in index order.
    pub(crate) fn indices(&self) -> Vec<usize> {
        self.iter().map(|e| e.idx).collect()
    }

    /// Number of live entries.
    pub(crate) fn len(&self) -> usize {
        self.endpoint.open_connections()
    }

    /// Removes a drained connection.
    pub(crate) fn remove(&mut self, idx: usize) -> Option<Entry<S>> {
        let entry = self.entries.get_mut(idx)?.take()?;
        if let Some(at) = entry.timer {
            self.sched.timers.remove(&(at, idx));
        }
        Some(entry)
    }

    /// The earliest deadline of any connection, with what it is for.
    pub(crate) fn next_timeout(&self) -> Option<(Instant, &'static str)> {
        let &(at, idx) = self.sched.timers.first()?;
        let reason = match self.get(idx).and_then(|e| e.deadline) {
            Some((d, reason)) if d <= at => reason,
            _ => "quic timer",
        };
        Some((at, reason))
    }

    /// Takes one connection whose deadline has passed, having run quinn's timers for it;
    /// says whether the owner's deadline was among them (it is cleared: act on it now).
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(usize, bool)> {
        let &(at, idx) = self.sched.timers.first()?;
        if at > now {
            return None;
        }
        self.sched.timers.remove(&(at, idx));
        let mut slot = self.slot(idx)?;
        let entry = &mut *slot.entry;
        entry.timer = None;
        entry.link.conn.handle_timeout(now);
        entry.link.expire_hold(now);
        let deadline_due = entry.deadline.is_some_and(|(d, _)| d <= now);
        if deadline_due {
            entry.deadline = None;
        }
        slot.mark_ready();
        Some((idx, deadline_due))
    }

    /// The next transmit of any connection, round-robin; with the index it came from.
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<(Transmit, Option<usize>)> {
        buf.clear();
        if let Some((t, data)) = self.responses.pop_front() {
            buf.extend_from_slice(&data);
            return Some((t, None));
        }
        while let Some(idx) = self.sched.ready.pop_front() {
            let Some(Some(entry)) = self.entries.get_mut(idx) else {
                continue;
            };
            entry.queued = false;
            if let Some(t) = entry.link.poll_transmit(now, max_datagrams, buf) {
                // It may have more: back of the line, behind the others.
                self.sched.mark_ready(entry);
                return Some((t, Some(idx)));
            }
        }
        None
    }
}
