//! One QUIC connection carrying a SloPN session: the control stream (framing capsules in
//! and out) and the queue of IP packets waiting to become datagrams. The endpoint and the
//! scheduling of many links live in [`crate::transport`].
//!
//! quinn writes DATAGRAM frames before STREAM frames in every packet, so a connection whose
//! datagram queue never empties would never send control data. Packets therefore wait in our
//! own queue and enter quinn's only when quinn's is empty, one GSO batch at a time, and not at
//! all while control data waits to go out (see [`ControlPriority`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn_proto::{Connection, Dir, ReadError, StreamId, Transmit, VarInt};

use crate::control::{self, Capsule, CloseCode, DecodeError, LimitError, MAX_CAPSULE_LEN};
use crate::stats::DropReason;

/// Control bytes a link may hold unsent (the peer is not reading) before that is an error.
const MAX_CONTROL_BACKLOG: usize = 64 * 1024;
/// Bounds of the time a final capsule gets to be acknowledged before the connection closes.
const CLOSE_GRACE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

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
const MIN_HOLD: Duration = Duration::from_millis(10);

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

    /// The TLS key exchange group the handshake settled on, once it has.
    pub(crate) fn key_exchange(&self) -> Option<rustls::NamedGroup> {
        self.conn
            .crypto_session()
            .handshake_data()?
            .downcast::<quinn_proto::crypto::rustls::HandshakeData>()
            .ok()
            .map(|d| d.negotiated_key_exchange_group)
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

    /// Ends a guessed hold on datagrams whose time is up.
    pub(crate) fn expire_hold(&mut self, now: Instant) {
        self.priority.expire(now);
    }

    /// Sends a last capsule (GOODBYE or ERROR) and ends the control stream; returns when to
    /// close the connection if the peer has not acknowledged it by then (a few round trips).
    pub(crate) fn send_last(&mut self, now: Instant, capsule: &Capsule) -> Instant {
        let _ = self.send(capsule);
        self.finish();
        now + (self.conn.rtt() * 3).clamp(CLOSE_GRACE.0, CLOSE_GRACE.1)
    }

    /// Closes the connection now with an application close; queued packets are dropped.
    pub(crate) fn close(&mut self, now: Instant, code: CloseCode, reason: &[u8]) {
        self.clear_datagrams();
        self.conn.close(
            now,
            VarInt::from_u64(code.0).unwrap_or(VarInt::MAX),
            Bytes::copy_from_slice(reason),
        );
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
