//! Many sans-IO spokes in one thread: one UDP socket each (the hub tells spokes apart by
//! their address, as it would real hosts), one mio poll for all of them, and one heap of
//! timers instead of a timer per spoke.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use slopn_proto::{Datagram, DisconnectReason, Spoke, SpokeConfig, SpokeEvent, SpokeState};

use crate::echo;

/// One simulated spoke.
struct Member {
    spoke: Spoke,
    socket: UdpSocket,
    /// The timer armed in the heap; older heap entries for this member are stale.
    deadline: Option<Instant>,
    /// The addresses of its first session, which a reconnect must give back.
    first: Option<Vec<IpAddr>>,
    /// Whether its session is up (addresses assigned, not since lost).
    up: bool,
    /// It lost a session and has not got it back yet.
    lost: bool,
    /// Sessions it had, and how many at the last [`Fleet::mark`].
    sessions: u32,
    marked: u32,
    /// It sends echoes to the hub.
    active: bool,
    /// It left (said goodbye) and comes back then.
    rejoin_at: Option<Instant>,
    seq: u16,
}

/// What happened since the last [`Fleet::take_tally`].
#[derive(Default)]
pub struct Tally {
    /// Sessions that came up (first time or again).
    pub assigned: u64,
    /// Sessions that came back after a loss with the addresses of their first session.
    pub same_address: u64,
    /// ... or with others.
    pub other_address: u64,
    /// Sessions lost.
    pub lost: u64,
    /// ... of which the hub answered with a stateless reset (it restarted) ...
    pub lost_reset: u64,
    /// ... or went silent for the idle timeout.
    pub lost_timeout: u64,
    /// Connection attempts started.
    pub attempts: u64,
    /// Echoes sent and answered, and the answers' round-trip times.
    pub echoes_sent: u64,
    /// Echo replies received.
    pub echoes_answered: u64,
    /// Round-trip times of the replies.
    pub rtts: Vec<Duration>,
    /// Datagrams the sockets would not take (their buffers were full).
    pub send_dropped: u64,
    /// Spokes that left and roamed (churn).
    pub left: u64,
    /// Spokes that moved to a new port.
    pub roamed: u64,
}

/// Spokes, their sockets and their timers.
pub struct Fleet {
    members: Vec<Member>,
    poll: Poll,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    hub_tunnel: Option<Ipv4Addr>,
    epoch: Instant,
    tally: Tally,
    /// How many are up right now.
    up: usize,
    /// How many lost a session and are not back yet.
    lost: usize,
    /// How many have had a session since the last [`Fleet::mark`], and when the last of
    /// them got it.
    renewed: usize,
    renewed_at: Option<Instant>,
}

impl Fleet {
    /// A fleet with room for `n` spokes.
    pub fn new(n: usize, epoch: Instant) -> io::Result<Self> {
        Ok(Self {
            members: Vec::with_capacity(n),
            poll: Poll::new()?,
            timers: BinaryHeap::with_capacity(2 * n),
            tx_buf: Vec::with_capacity(64 * 1024),
            rx_buf: vec![0; 64 * 1024],
            hub_tunnel: None,
            epoch,
            tally: Tally::default(),
            up: 0,
            lost: 0,
            renewed: 0,
            renewed_at: None,
        })
    }

    /// Adds a spoke, which starts connecting at once, on a socket of its own bound to
    /// `bind`.
    pub fn add(&mut self, config: SpokeConfig, bind: SocketAddr, active: bool) -> io::Result<()> {
        let now = Instant::now();
        let spoke = Spoke::new(config, now, SystemTime::now())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let idx = self.members.len();
        let mut socket = UdpSocket::bind(bind)?;
        self.poll
            .registry()
            .register(&mut socket, Token(idx), Interest::READABLE)?;
        self.members.push(Member {
            spoke,
            socket,
            deadline: None,
            first: None,
            up: false,
            lost: false,
            sessions: 0,
            marked: 0,
            active,
            rejoin_at: None,
            seq: 0,
        });
        self.flush(idx, now);
        Ok(())
    }

    /// Spokes whose session is up.
    pub fn up(&self) -> usize {
        self.up
    }

    /// Churn: `leave` spokes whose session is up say goodbye and come back `away` later,
    /// and `roam` others move to a new UDP port (a new address for the hub: QUIC
    /// migrates the session). Picks spokes with `pick`, which returns a number below its
    /// argument.
    pub fn churn(
        &mut self,
        leave: usize,
        roam: usize,
        away: Duration,
        bind: SocketAddr,
        mut pick: impl FnMut(usize) -> usize,
    ) -> io::Result<()> {
        let now = Instant::now();
        let n = self.members.len();
        if n == 0 {
            return Ok(());
        }
        for _ in 0..leave {
            let idx = pick(n);
            let m = &mut self.members[idx];
            if m.up && m.rejoin_at.is_none() {
                m.spoke.disconnect(now);
                m.rejoin_at = Some(now + away);
                self.tally.left += 1;
                self.flush(idx, now);
            }
        }
        for _ in 0..roam {
            let idx = pick(n);
            let m = &mut self.members[idx];
            if !m.up {
                continue;
            }
            let mut socket = UdpSocket::bind(bind)?;
            let registry = self.poll.registry();
            registry.deregister(&mut m.socket)?;
            registry.register(&mut socket, Token(idx), Interest::READABLE)?;
            m.socket = socket;
            // The hub sees the new address with the next packet (a keep-alive at the latest).
            self.tally.roamed += 1;
        }
        for idx in 0..n {
            let m = &mut self.members[idx];
            if m.rejoin_at.is_some_and(|at| at <= now) {
                m.rejoin_at = None;
                m.spoke.connect(now);
                self.flush(idx, now);
            }
        }
        Ok(())
    }

    /// Spokes away after [`churn`](Self::churn), not yet back.
    pub fn away(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.rejoin_at.is_some())
            .count()
    }

    /// Remembers every spoke's session count, to tell which get a new session after this.
    pub fn mark(&mut self) {
        for m in &mut self.members {
            m.marked = m.sessions;
        }
        self.renewed = 0;
        self.renewed_at = None;
    }

    /// How many spokes got a session since [`mark`](Self::mark) (or ever, without one), and
    /// when the last of them did.
    pub fn renewed(&self) -> (usize, Option<Instant>) {
        (self.renewed, self.renewed_at)
    }

    /// Spokes in each state: connecting or authenticating, reconnecting, stopped.
    pub fn states(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for m in &self.members {
            match m.spoke.state() {
                SpokeState::Connecting | SpokeState::Authenticating => counts.0 += 1,
                SpokeState::Reconnecting => counts.1 += 1,
                SpokeState::Stopped | SpokeState::Closing => counts.2 += 1,
                SpokeState::Established => {}
            }
        }
        counts
    }

    /// Takes the counters gathered since the last call.
    pub fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    /// Sends one echo from every active spoke whose session is up.
    pub fn send_echoes(&mut self) {
        let Some(hub) = self.hub_tunnel else { return };
        let now = Instant::now();
        let sent = now.duration_since(self.epoch).as_nanos() as u64;
        for idx in 0..self.members.len() {
            let m = &mut self.members[idx];
            if !m.active || !m.up {
                continue;
            }
            let Some(IpAddr::V4(src)) = m.first.as_ref().and_then(|a| a.first().copied()) else {
                continue;
            };
            let mut packet = [0; echo::ECHO_LEN];
            m.seq = m.seq.wrapping_add(1);
            echo::request(&mut packet, src, hub, m.seq, sent);
            if m.spoke.handle_tun_packet(now, &packet).is_ok() {
                self.tally.echoes_sent += 1;
            }
            self.flush(idx, now);
        }
    }

    /// Handles what arrives and what expires until `until`.
    pub fn run_until(&mut self, until: Instant) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            self.expire(now);
            if now >= until {
                return Ok(());
            }
            let next = self
                .timers
                .peek()
                .map_or(until, |Reverse((t, _))| *t)
                .min(until);
            let timeout = next.saturating_duration_since(now);
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in &events {
                self.receive(event.token().0);
            }
        }
    }

    fn receive(&mut self, idx: usize) {
        let now = Instant::now();
        loop {
            let m = &mut self.members[idx];
            match m.socket.recv_from(&mut self.rx_buf) {
                Ok((len, from)) => m
                    .spoke
                    .handle_udp(now, Datagram::new(from, &self.rx_buf[..len])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock, or an ICMP error from an earlier send (the hub was down).
                Err(_) => break,
            }
        }
        self.flush(idx, now);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((at, idx))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let m = &mut self.members[idx];
            if m.deadline != Some(at) {
                continue; // stale: the member re-armed since
            }
            m.deadline = None;
            m.spoke.handle_timeout(now);
            self.flush(idx, now);
        }
    }

    /// Sends what the spoke has, takes its packets and events, and re-arms its timer.
    fn flush(&mut self, idx: usize, now: Instant) {
        let m = &mut self.members[idx];
        loop {
            self.tx_buf.clear();
            let Some(t) = m.spoke.poll_transmit(now, 1, &mut self.tx_buf) else {
                break;
            };
            if m.socket
                .send_to(&self.tx_buf[..t.size], t.destination)
                .is_err()
            {
                self.tally.send_dropped += 1;
            }
        }
        while let Some(packet) = m.spoke.poll_tun_packet() {
            if let Some(rtt) = echo::reply_rtt(&packet, self.epoch, now) {
                self.tally.echoes_answered += 1;
                self.tally.rtts.push(rtt);
            }
        }
        while let Some(event) = m.spoke.poll_event() {
            match event {
                SpokeEvent::Assigned {
                    addresses,
                    hub_addresses,
                    ..
                } => {
                    if !m.up {
                        m.up = true;
                        self.up += 1;
                        self.tally.assigned += 1;
                        m.sessions += 1;
                        if m.sessions == m.marked + 1 {
                            self.renewed += 1;
                            self.renewed_at = Some(now);
                        }
                    }
                    if m.lost {
                        m.lost = false;
                        self.lost -= 1;
                        if m.first.as_ref() == Some(&addresses) {
                            self.tally.same_address += 1;
                        } else {
                            self.tally.other_address += 1;
                        }
                    }
                    if m.first.is_none() {
                        m.first = Some(addresses);
                    }
                    if self.hub_tunnel.is_none() {
                        self.hub_tunnel = hub_addresses.iter().find_map(|a| match a {
                            IpAddr::V4(v4) => Some(*v4),
                            IpAddr::V6(_) => None,
                        });
                    }
                }
                SpokeEvent::Disconnected { reason, .. } if m.up => {
                    m.up = false;
                    self.up -= 1;
                    self.tally.lost += 1;
                    match reason {
                        DisconnectReason::Reset => self.tally.lost_reset += 1,
                        DisconnectReason::TimedOut => self.tally.lost_timeout += 1,
                        _ => {}
                    }
                    if !m.lost {
                        m.lost = true;
                        self.lost += 1;
                    }
                }
                SpokeEvent::Connecting { .. } => self.tally.attempts += 1,
                _ => {}
            }
        }
        let deadline = m.spoke.poll_timeout().map(|(at, _)| at);
        if deadline != m.deadline {
            m.deadline = deadline;
            if let Some(at) = deadline {
                self.timers.push(Reverse((at, idx)));
            }
        }
    }
}
