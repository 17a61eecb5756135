//! The QUIC plumbing shared by hub and spoke.
//!
//! [`Link`] is one QUIC connection carrying a SloPN session: the control stream (framing
//! capsules in and out) and the queue of IP packets waiting to become datagrams.
//! [`Transport`] is a quinn endpoint with its links: packet intake, per-connection timers,
//! and round-robin transmit scheduling so that no connection starves another.
//!
//! quinn writes DATAGRAM frames before STREAM frames in every packet, so a connection whose
//! datagram queue never empties would never send control data. Packets therefore wait in our
//! own queue and enter quinn's only when quinn's is empty, one GSO batch at a time, and not at
//! all while control data waits to go out (see [`ControlPriority`]).

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, Dir, EcnCodepoint, Endpoint, EndpointConfig,
    Incoming, ReadError, StreamId, Transmit, VarInt,
};

use crate::cid::SignedCidGenerator;
use crate::control::{self, Capsule, CloseCode, DecodeError, LimitError, MAX_CAPSULE_LEN};
use crate::derive_key;
use crate::stats::DropReason;

/// Control bytes a link may hold unsent (the peer is not reading) before that is an error.
const MAX_CONTROL_BACKLOG: usize = 64 * 1024;
/// Size of the buffers incoming UDP payloads are copied into; packets are split off them.
const RECV_ARENA: usize = 256 * 1024;

/// Why the control stream failed.
#[derive(Debug)]
pub(crate) enum ControlError {
    /// The peer sent bytes that are not a valid capsule.
    Decode(DecodeError),
    /// The peer closed or reset the control stream, or opened a second one.
    Stream(&'static str),
    /// The peer does not read what we send.
    Backlog,
    /// We were about to send a capsule the peer's decoder would refuse (a limit every entry
    /// point checks first; this is the last guard).
    Limit(LimitError),
}

/// One QUIC connection carrying a session.
pub(crate) struct Link {
    pub(crate) conn: Connection,
    control: Option<StreamId>,
    /// Bytes of a capsule not yet complete.
    rx: Vec<u8>,
    /// Encoded capsules quinn has not taken yet.
    tx: Vec<u8>,
    finish_requested: bool,
    finished: bool,
    /// IP packets waiting for quinn's datagram queue to empty.
    outbox: VecDeque<Bytes>,
    outbox_bytes: usize,
    outbox_limit: usize,
    /// `send_buffer_space()` of quinn's datagram queue when it is empty.
    quinn_space_when_empty: usize,
    priority: ControlPriority,
}

/// Holds datagrams back while control data waits behind them.
///
/// quinn does not say whether stream data is pending, but it counts the STREAM frames it
/// sends. After we write control bytes, no datagram enters quinn until that count moves. For
/// a few round trips afterwards, any loss might have hit the control data, whose
/// retransmission would again queue behind datagrams: datagrams are held once more until a
/// STREAM frame leaves, or for one round trip if none does (the loss was datagrams only).
#[derive(Debug, Default)]
struct ControlPriority {
    /// STREAM frames sent when control data was written and not yet seen to leave.
    unsent: Option<u64>,
    /// When a hold that is only a guess (after a loss) ends regardless.
    hold_until: Option<Instant>,
    /// After control data left: until when a loss may have hit it, and the loss count then.
    watch: Option<(Instant, u64)>,
}

impl ControlPriority {
    fn on_written(&mut self, conn: &Connection) {
        if self.unsent.is_none() {
            self.unsent = Some(conn.stats().frame_tx.stream);
        }
        self.hold_until = None;
    }

    /// Ends a guessed hold whose time is up.
    fn expire(&mut self, now: Instant) {
        if self.hold_until.is_some_and(|h| now >= h) {
            self.unsent = None;
            self.hold_until = None;
        }
    }

    /// Whether datagrams may enter quinn now.
    fn may_feed(&mut self, now: Instant, conn: &Connection) -> bool {
        if self.unsent.is_none() && self.watch.is_none() {
            return true;
        }
        let stats = conn.stats();
        let rtt = conn.rtt();
        if let Some(mark) = self.unsent {
            if stats.frame_tx.stream > mark {
                self.unsent = None;
                self.hold_until = None;
                self.watch = Some((now + rtt * 3 + MIN_HOLD, stats.path.lost_packets));
            } else if self.hold_until.is_some_and(|h| now >= h) {
                self.unsent = None;
                self.hold_until = None;
            } else {
                return false;
            }
        }
        if let Some((until, lost)) = self.watch {
            if now >= until {
                self.watch = None;
            } else if stats.path.lost_packets > lost {
                self.watch = Some((until.max(now + rtt * 3), stats.path.lost_packets));
                self.unsent = Some(stats.frame_tx.stream);
                self.hold_until = Some(now + rtt.max(MIN_HOLD));
                return false;
            }
        }
        true
    }
}

/// Shortest hold and watch margin, for very small round-trip times.
const MIN_HOLD: std::time::Duration = std::time::Duration::from_millis(10);

impl Link {
    pub(crate) fn new(mut conn: Connection, outbox_limit: usize) -> Self {
        let quinn_space_when_empty = conn.datagrams().send_buffer_space();
        Self {
            conn,
            control: None,
            rx: Vec::new(),
            tx: Vec::new(),
            finish_requested: false,
            finished: false,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            outbox_limit,
            quinn_space_when_empty,
            priority: ControlPriority::default(),
        }
    }

    /// Opens the control stream (spoke side).
    pub(crate) fn open_control(&mut self) {
        self.control = self.conn.streams().open(Dir::Bi);
    }

    /// Accepts the control stream the peer opened (hub side). A second stream is an error.
    pub(crate) fn accept_control(&mut self) -> Result<(), ControlError> {
        while let Some(id) = self.conn.streams().accept(Dir::Bi) {
            if self.control.is_some() {
                return Err(ControlError::Stream("a second stream was opened"));
            }
            self.control = Some(id);
        }
        Ok(())
    }

    /// Whether the control stream is open.
    pub(crate) fn has_control(&self) -> bool {
        self.control.is_some()
    }

    /// Queues a capsule on the control stream.
    pub(crate) fn send(&mut self, capsule: &Capsule) -> Result<(), ControlError> {
        control::encode(capsule, &mut self.tx).map_err(ControlError::Limit)?;
        self.flush()
    }

    /// Ends our side of the control stream once everything queued is written.
    pub(crate) fn finish(&mut self) {
        self.finish_requested = true;
        let _ = self.flush();
    }

    /// Moves queued control bytes into the stream as far as flow control allows.
    pub(crate) fn flush(&mut self) -> Result<(), ControlError> {
        let Some(id) = self.control else {
            return Ok(());
        };
        if !self.tx.is_empty() {
            match self.conn.send_stream(id).write(&self.tx) {
                Ok(n) => {
                    self.tx.drain(..n);
                    self.priority.on_written(&self.conn);
                }
                Err(quinn_proto::WriteError::Blocked) => {}
                Err(_) => return Err(ControlError::Stream("control stream stopped by peer")),
            }
        }
        if self.tx.len() > MAX_CONTROL_BACKLOG {
            return Err(ControlError::Backlog);
        }
        if self.finish_requested && self.tx.is_empty() && !self.finished {
            self.finished = true;
            let _ = self.conn.send_stream(id).finish();
        }
        Ok(())
    }

    /// Reads every complete capsule available into `out`.
    pub(crate) fn read(&mut self, out: &mut Vec<Capsule>) -> Result<(), ControlError> {
        let Some(id) = self.control else {
            return Ok(());
        };
        let mut recv = self.conn.recv_stream(id);
        let Ok(mut chunks) = recv.read(true) else {
            return Err(ControlError::Stream("control stream closed"));
        };
        let mut result = Ok(());
        loop {
            match chunks.next(MAX_CAPSULE_LEN) {
                Ok(Some(chunk)) => {
                    self.rx.extend_from_slice(&chunk.bytes);
                    if let Err(e) = decode_all(&mut self.rx, out) {
                        result = Err(ControlError::Decode(e));
                        break;
                    }
                }
                Ok(None) => {
                    result = Err(ControlError::Stream("control stream finished by peer"));
                    break;
                }
                Err(ReadError::Blocked) => break,
                Err(ReadError::Reset(_)) => {
                    result = Err(ControlError::Stream("control stream reset by peer"));
                    break;
                }
            }
        }
        let _ = chunks.finalize();
        result
    }

    /// The largest IP packet a datagram carries now, if datagrams work at all.
    pub(crate) fn max_packet(&mut self) -> Option<usize> {
        self.conn.datagrams().max_size()
    }

    /// Queues an IP packet (already checked against [`Self::max_packet`]). A full queue
    /// refuses it: dropping the newest packet rather than the oldest keeps a burst's first
    /// packets, which are the retransmissions TCP is waiting for.
    pub(crate) fn queue_datagram(&mut self, packet: Bytes) -> Result<(), DropReason> {
        if self.outbox_bytes + packet.len() > self.outbox_limit && !self.outbox.is_empty() {
            return Err(DropReason::Congested);
        }
        self.outbox_bytes += packet.len();
        self.outbox.push_back(packet);
        Ok(())
    }

    /// Drops every queued packet (the session is ending).
    pub(crate) fn clear_datagrams(&mut self) {
        self.outbox.clear();
        self.outbox_bytes = 0;
    }

    /// The next UDP datagram(s) to send for this connection.
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        // Whenever quinn's datagram queue is empty, everything else it has to send (control
        // data, retransmissions, ACKs) goes first; only then the next batch of packets.
        if let Some(t) = self.conn.poll_transmit(now, max_datagrams, buf) {
            return Some(t);
        }
        if self.priority.may_feed(now, &self.conn) && self.feed_quinn(max_datagrams) {
            return self.conn.poll_transmit(now, max_datagrams, buf);
        }
        None
    }

    /// When a guessed hold on datagrams ends, if one is in force.
    pub(crate) fn hold_until(&self) -> Option<Instant> {
        self.priority.hold_until
    }

    /// Moves up to one batch of packets into quinn's datagram queue if that queue is empty.
    fn feed_quinn(&mut self, max_datagrams: usize) -> bool {
        if self.outbox.is_empty()
            || self.conn.datagrams().send_buffer_space() < self.quinn_space_when_empty
        {
            return false;
        }
        let mut fed = false;
        for _ in 0..max_datagrams {
            let Some(packet) = self.outbox.pop_front() else {
                break;
            };
            self.outbox_bytes -= packet.len();
            // Fails only if the path MTU shrank since the packet was checked: drop it.
            fed |= self.conn.datagrams().send(packet, false).is_ok();
        }
        fed
    }
}

fn decode_all(rx: &mut Vec<u8>, out: &mut Vec<Capsule>) -> Result<(), DecodeError> {
    let mut used = 0;
    while let Some((capsule, n)) = control::decode(&rx[used..])? {
        out.push(capsule);
        used += n;
    }
    rx.drain(..used);
    Ok(())
}

/// What an incoming UDP datagram turned into.
pub(crate) enum Received {
    /// Nothing for the owner to do (consumed, or answered statelessly).
    Nothing,
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
    timer: Option<Instant>,
    queued: bool,
}

/// A quinn endpoint and its connections, indexed by connection handle.
pub(crate) struct Transport<S> {
    pub(crate) endpoint: Endpoint,
    entries: Vec<Option<Entry<S>>>,
    timers: BTreeSet<(Instant, usize)>,
    /// Connections that may have something to send, round-robin.
    ready: VecDeque<usize>,
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
        config.rng_seed(Some(derive_key(seed, b"slopn endpoint rng")));
        let endpoint = Endpoint::new(Arc::new(config), server, true, None);
        Self {
            endpoint,
            entries: Vec::new(),
            timers: BTreeSet::new(),
            ready: VecDeque::new(),
            responses: VecDeque::new(),
            recv_arena: BytesMut::new(),
            scratch: Vec::new(),
            outbox_limit,
        }
    }

    /// Feeds one UDP payload to the endpoint.
    pub(crate) fn handle_udp(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        payload: &[u8],
    ) -> Received {
        if self.recv_arena.capacity() < payload.len() {
            self.recv_arena.reserve(RECV_ARENA.max(payload.len()));
        }
        self.recv_arena.extend_from_slice(payload);
        let data = self.recv_arena.split();
        self.scratch.clear();
        match self
            .endpoint
            .handle(now, remote, local_ip, ecn, data, &mut self.scratch)
        {
            None => Received::Nothing,
            Some(DatagramEvent::Response(t)) => {
                self.push_response(t);
                Received::Nothing
            }
            Some(DatagramEvent::NewConnection(incoming)) => Received::New(Box::new(incoming)),
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                let Some(entry) = self.get_mut(ch.0) else {
                    return Received::Nothing;
                };
                entry.link.conn.handle_event(event);
                self.mark_ready(ch.0);
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
        remote: SocketAddr,
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
        self.entries[idx] = Some(Entry {
            link: Link::new(conn, self.outbox_limit),
            state,
            deadline: None,
            timer: None,
            queued: false,
        });
        self.mark_ready(idx);
        idx
    }

    pub(crate) fn get(&self, idx: usize) -> Option<&Entry<S>> {
        self.entries.get(idx)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, idx: usize) -> Option<&mut Entry<S>> {
        self.entries.get_mut(idx)?.as_mut()
    }

    /// Every live entry with its index, in index order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Entry<S>)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|e| (i, e)))
    }

    /// Indices of every live entry, in index order.
    pub(crate) fn indices(&self) -> Vec<usize> {
        self.iter().map(|(i, _)| i).collect()
    }

    /// Number of live entries.
    pub(crate) fn len(&self) -> usize {
        self.endpoint.open_connections()
    }

    /// Notes that a connection may have something to send.
    pub(crate) fn mark_ready(&mut self, idx: usize) {
        if let Some(Some(entry)) = self.entries.get_mut(idx)
            && !entry.queued
        {
            entry.queued = true;
            self.ready.push_back(idx);
        }
    }

    /// Passes endpoint events both ways; returns true once quinn has drained the connection,
    /// which the caller must then [`remove`](Self::remove).
    pub(crate) fn shuttle_events(&mut self, idx: usize) -> bool {
        let Some(Some(entry)) = self.entries.get_mut(idx) else {
            return false;
        };
        let mut drained = false;
        while let Some(event) = entry.link.conn.poll_endpoint_events() {
            drained |= event.is_drained();
            if let Some(reply) = self.endpoint.handle_event(ConnectionHandle(idx), event) {
                entry.link.conn.handle_event(reply);
            }
        }
        drained
    }

    /// Removes a drained connection.
    pub(crate) fn remove(&mut self, idx: usize) -> Option<Entry<S>> {
        let entry = self.entries.get_mut(idx)?.take()?;
        if let Some(at) = entry.timer {
            self.timers.remove(&(at, idx));
        }
        Some(entry)
    }

    /// Re-registers the connection's next deadline after anything touched it.
    pub(crate) fn update_timer(&mut self, idx: usize) {
        let Some(Some(entry)) = self.entries.get_mut(idx) else {
            return;
        };
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
                self.timers.remove(&(old, idx));
            }
            if let Some(new) = next {
                self.timers.insert((new, idx));
            }
            entry.timer = next;
        }
    }

    /// The earliest deadline of any connection, with what it is for.
    pub(crate) fn next_timeout(&self) -> Option<(Instant, &'static str)> {
        let &(at, idx) = self.timers.first()?;
        let reason = match self.get(idx).and_then(|e| e.deadline) {
            Some((d, reason)) if d <= at => reason,
            _ => "quic timer",
        };
        Some((at, reason))
    }

    /// Takes one connection whose deadline has passed, having run quinn's timers for it;
    /// says whether the owner's deadline was among them (it is cleared: act on it now).
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<(usize, bool)> {
        let &(at, idx) = self.timers.first()?;
        if at > now {
            return None;
        }
        self.timers.remove(&(at, idx));
        let entry = self.entries.get_mut(idx)?.as_mut()?;
        entry.timer = None;
        entry.link.conn.handle_timeout(now);
        entry.link.priority.expire(now);
        let deadline_due = entry.deadline.is_some_and(|(d, _)| d <= now);
        if deadline_due {
            entry.deadline = None;
        }
        self.mark_ready(idx);
        Some((idx, deadline_due))
    }

    /// The next thing quinn reports about a connection.
    pub(crate) fn poll_event(&mut self, idx: usize) -> Option<quinn_proto::Event> {
        self.get_mut(idx)?.link.conn.poll()
    }

    /// Closes a connection now with an application close carrying `code` and `reason`; its
    /// queued packets and owner deadline are dropped.
    pub(crate) fn close(&mut self, now: Instant, idx: usize, code: CloseCode, reason: &[u8]) {
        let Some(entry) = self.get_mut(idx) else {
            return;
        };
        entry.deadline = None;
        entry.link.clear_datagrams();
        entry.link.conn.close(
            now,
            VarInt::from_u64(code.0).unwrap_or(VarInt::MAX),
            Bytes::copy_from_slice(reason),
        );
        self.mark_ready(idx);
        self.update_timer(idx);
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
        while let Some(idx) = self.ready.pop_front() {
            let Some(Some(entry)) = self.entries.get_mut(idx) else {
                continue;
            };
            entry.queued = false;
            if let Some(t) = entry.link.poll_transmit(now, max_datagrams, buf) {
                // It may have more: back of the line, behind the others.
                self.mark_ready(idx);
                return Some((t, Some(idx)));
            }
        }
        None
    }
}
