//! SloPN's event loop: one thread, one `mio::Poll`, driving a [`Hub`](slopn_proto::Hub) or
//! a [`Spoke`](slopn_proto::Spoke) against a UDP socket and a TUN device.
//!
//! Each wakeup reads the UDP socket in batches (`recvmmsg` with GRO through `quinn-udp`) and
//! the TUN device, both bounded per wakeup so that neither starves the other or the timers;
//! then it drains the state machine's outputs in the documented order: datagrams (GSO
//! batches; one transmit is kept when the socket would block, and the socket is watched for
//! writability), packets for the TUN device, events. Timers come from `poll_timeout`; a
//! `mio::Waker` carries commands and the stop request from other threads.
//!
//! # Embedding
//!
//! Build a state machine, a TUN device and a socket, then [`spawn`] the loop and keep the
//! [`Handle`]:
//!
//! ```no_run
//! use std::time::{Instant, SystemTime};
//! use slopn_mio::{Options, SpokeCommand, spawn};
//! use slopn_proto::{Spoke, SpokeConfig, tls};
//! use slopn_tun::{Tun, TunConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = tls::parse_certificates(&std::fs::read("ca.pem")?)?;
//! // The seed keys connection IDs and stateless resets: a secret, fresh from the OS.
//! let mut seed = [0u8; 32];
//! getrandom::fill(&mut seed)?;
//! let config = SpokeConfig::new("192.0.2.1:4433".parse()?, "hub.example.com", ca, "token", seed);
//! let spoke = Spoke::new(config, Instant::now(), SystemTime::now())?;
//! let tun = Tun::open(&TunConfig { name: Some("slopn0".into()), mtu: 1280, addresses: vec![], offload: true })?;
//! let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
//! let handle = spawn(spoke, tun, socket, Options::default())?;
//! for event in handle.events() {
//!     println!("{event:?}");
//!     # break;
//! }
//! println!("{:?}", handle.stats());
//! handle.command(SpokeCommand::Disconnect);
//! handle.stop();
//! handle.join()?;
//! # Ok(())
//! # }
//! ```
//!
//! When the loop ends, by [`Handle::stop`] (after the machine's goodbyes, bounded by
//! [`Options::shutdown_grace`]) or because a spoke was refused for good, it drops the TUN
//! device and removes its routes.

mod machine;
mod udp;

use std::io;
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slopn_proto::DisconnectReason;
use slopn_tun::{Routes, Tun, TunError};
use tracing::{debug, info, warn};

pub use machine::{
    Flow, HubCommand, HubSnapshot, IoCounters, Machine, Os, RoutePolicy, SpokeCommand, SpokeStatus,
};
use udp::Udp;

const UDP: Token = Token(0);
const TUN: Token = Token(1);
const WAKER: Token = Token(2);

/// Tuning of the loop.
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
    /// Events kept for [`Handle::events`] before further ones are dropped (they are logged
    /// regardless).
    pub event_queue: usize,
    /// Which advertised routes a spoke installs (full or split tunnel).
    pub routes: RoutePolicy,
    /// The largest UDP payload the machine sends (its transport's `max_mtu`): bounds how many
    /// datagrams go into one GSO send, which the kernel limits to 64 KiB.
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
            max_udp_payload: slopn_proto::TransportSettings::default().max_mtu,
        }
    }
}

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
    /// Configuring the TUN device or routes failed.
    #[error(transparent)]
    Tun(#[from] TunError),
    /// The spoke was refused for good (wrong token, untrusted certificate, ...).
    #[error("{0}")]
    GaveUp(DisconnectReason),
    /// The loop thread panicked.
    #[error("the event loop thread panicked")]
    Panicked,
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Io { what, source }
}

enum Request<M: Machine> {
    Stop,
    Stats(SyncSender<M::Stats>),
    Command(M::Command),
}

struct Shared<M: Machine> {
    waker: Waker,
    requests: Mutex<Vec<Request<M>>>,
}

impl<M: Machine> Shared<M> {
    fn send(&self, request: Request<M>) -> bool {
        let Ok(mut queue) = self.requests.lock() else {
            return false;
        };
        queue.push(request);
        self.waker.wake().is_ok()
    }
}

/// Controls a running loop from other threads (share it with an `Arc`).
pub struct Handle<M: Machine> {
    shared: Arc<Shared<M>>,
    events: Mutex<Receiver<M::Event>>,
    thread: Mutex<Option<JoinHandle<Result<(), RunError>>>>,
}

impl<M: Machine> Handle<M> {
    /// Asks the loop to shut down in an orderly way (goodbyes first). Returns at once; see
    /// [`join`](Self::join).
    pub fn stop(&self) {
        self.shared.send(Request::Stop);
    }

    /// A statistics snapshot, or `None` if the loop has ended.
    pub fn stats(&self) -> Option<M::Stats> {
        let (tx, rx) = mpsc::sync_channel(1);
        if !self.shared.send(Request::Stats(tx)) {
            return None;
        }
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    /// Sends a command to the machine.
    pub fn command(&self, command: M::Command) {
        self.shared.send(Request::Command(command));
    }

    /// The machine's events, in order, waiting for each. The iterator ends when the loop
    /// ends. (Events are for one consumer: concurrent readers each get some of them.)
    pub fn events(&self) -> impl Iterator<Item = M::Event> + '_ {
        std::iter::from_fn(|| self.events.lock().ok()?.recv().ok())
    }

    /// The next event, waiting at most `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Result<M::Event, RecvTimeoutError> {
        match self.events.lock() {
            Ok(events) => events.recv_timeout(timeout),
            Err(_) => Err(RecvTimeoutError::Disconnected),
        }
    }

    /// Whether the loop has ended.
    pub fn is_finished(&self) -> bool {
        self.thread
            .lock()
            .map(|t| t.as_ref().is_none_or(JoinHandle::is_finished))
            .unwrap_or(true)
    }

    /// Waits for the loop to end and returns how it ended (only the first caller gets the
    /// result; later calls return `Ok`).
    pub fn join(&self) -> Result<(), RunError> {
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        match thread {
            Some(thread) => thread.join().map_err(|_| RunError::Panicked)?,
            None => Ok(()),
        }
    }
}

/// Starts the loop in a new thread. `socket` may be bound anywhere; it is made non-blocking.
/// The TUN device must be open; the loop configures its addresses, MTU and routes as the
/// machine's events require.
pub fn spawn<M: Machine>(
    machine: M,
    tun: Tun,
    socket: std::net::UdpSocket,
    options: Options,
) -> Result<Handle<M>, RunError> {
    let poll = Poll::new().map_err(io_error("creating the poller"))?;
    let waker = Waker::new(poll.registry(), WAKER).map_err(io_error("creating the waker"))?;
    let shared = Arc::new(Shared {
        waker,
        requests: Mutex::new(Vec::new()),
    });
    let (events_tx, events) = mpsc::sync_channel(options.event_queue);
    let udp = Udp::new(socket, options.socket_buffer, options.max_udp_payload)
        .map_err(io_error("setting up the UDP socket"))?;
    let loop_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("slopn-loop".into())
        .spawn(move || {
            EventLoop {
                machine,
                udp,
                os: Os {
                    routes: Routes::new(tun.name()),
                    tun,
                    policy: options.routes.clone(),
                },
                poll,
                shared: loop_shared,
                events_tx,
                options,
                tx_buf: Vec::with_capacity(64 * 1024),
                dropped_events: 0,
            }
            .run()
        })
        .map_err(io_error("starting the loop thread"))?;
    Ok(Handle {
        shared,
        events: Mutex::new(events),
        thread: Mutex::new(Some(thread)),
    })
}

struct EventLoop<M: Machine> {
    machine: M,
    udp: Udp,
    os: Os,
    poll: Poll,
    shared: Arc<Shared<M>>,
    events_tx: SyncSender<M::Event>,
    options: Options,
    tx_buf: Vec<u8>,
    dropped_events: u64,
}

impl<M: Machine> EventLoop<M> {
    fn run(mut self) -> Result<(), RunError> {
        let registry = self.poll.registry();
        registry
            .register(&mut self.udp.socket, UDP, Interest::READABLE)
            .map_err(io_error("registering the UDP socket"))?;
        let tun_fd = self.os.tun.as_raw_fd();
        registry
            .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)
            .map_err(io_error("registering the TUN device"))?;

        let mut events = Events::with_capacity(64);
        // Edge-triggered: both sources start out possibly readable and stay so until a
        // read says WouldBlock.
        let (mut udp_readable, mut tun_readable) = (true, true);
        let mut stopping: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let mut timeout = self
                .machine
                .poll_timeout()
                .map(|t| t.saturating_duration_since(now));
            if let Some(deadline) = stopping {
                let left = deadline.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            if udp_readable || tun_readable {
                timeout = Some(Duration::ZERO);
            }
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(RunError::Io {
                    what: "waiting for events",
                    source: e,
                });
            }
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    UDP => {
                        udp_readable |= event.is_readable();
                        if event.is_writable() && self.udp.retry() {
                            self.watch_writable(false)?;
                        }
                    }
                    TUN => tun_readable |= event.is_readable(),
                    _ => woken = true,
                }
            }
            let now = Instant::now();
            if woken && self.serve_requests(now) && stopping.is_none() {
                info!("shutting down");
                self.machine.shut_down(now);
                stopping = Some(now + self.options.shutdown_grace);
            }
            if udp_readable {
                udp_readable = self.read_udp(now)?;
            }
            if tun_readable {
                tun_readable = self.read_tun(now)?;
            }
            if self.machine.poll_timeout().is_some_and(|t| t <= now) {
                self.machine.handle_timeout(now);
            }
            self.flush(now)?;
            if let Some(reason) = self.drain_events()? {
                return Err(RunError::GaveUp(reason));
            }
            if let Some(deadline) = stopping
                && (self.machine.is_shut_down() || Instant::now() >= deadline)
            {
                debug!("loop finished");
                return Ok(());
            }
        }
    }

    /// Handles requests from handles; returns whether a stop was asked for.
    fn serve_requests(&mut self, now: Instant) -> bool {
        let requests = match self.shared.requests.lock() {
            Ok(mut queue) => std::mem::take(&mut *queue),
            Err(_) => return true,
        };
        let mut stop = false;
        for request in requests {
            match request {
                Request::Stop => stop = true,
                Request::Stats(reply) => {
                    let io = IoCounters {
                        tun_write_drops: self.os.tun.dropped_writes(),
                        tun_read_drops: self.os.tun.dropped_reads(),
                        udp_send_errors: self.udp.send_errors,
                    };
                    let _ = reply.try_send(self.machine.stats(io));
                }
                Request::Command(command) => {
                    debug!(?command, "command");
                    self.machine.command(now, command);
                }
            }
        }
        stop
    }

    /// Reads UDP until it would block or the per-wakeup budget is spent; returns whether the
    /// socket may still hold data.
    fn read_udp(&mut self, now: Instant) -> Result<bool, RunError> {
        let machine = &mut self.machine;
        for _ in 0..self.options.udp_reads_per_wakeup {
            match self
                .udp
                .recv_batch(|datagram| machine.handle_udp(now, datagram))
            {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // ICMP errors for earlier sends surface here; the next read goes on.
                Err(e) => debug!("UDP receive: {e}"),
            }
        }
        Ok(true)
    }

    /// Reads TUN packets until it would block or the budget is spent; returns whether the
    /// device may still hold packets.
    fn read_tun(&mut self, now: Instant) -> Result<bool, RunError> {
        let machine = &mut self.machine;
        let mut packets = 0;
        while packets < self.options.tun_packets_per_wakeup {
            match self.os.tun.recv_packets(|packet| {
                // Refusals are counted by the machine and answered with ICMP where due.
                let _ = machine.handle_tun_packet(now, packet);
            }) {
                Ok(n) => packets += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(RunError::Io {
                        what: "reading the TUN device",
                        source: e,
                    });
                }
            }
        }
        Ok(true)
    }

    /// Sends everything the machine has for the network and the TUN device.
    fn flush(&mut self, now: Instant) -> Result<(), RunError> {
        if !self.udp.is_blocked() {
            let segments = self.udp.max_segments();
            while let Some(t) = self.machine.poll_transmit(now, segments, &mut self.tx_buf) {
                if !self.udp.send(&t, &self.tx_buf[..t.size]) {
                    self.watch_writable(true)?;
                    break;
                }
            }
        }
        while let Some(packet) = self.machine.poll_tun_packet() {
            self.os
                .tun
                .queue_packet(&packet)
                .map_err(io_error("writing to the TUN device"))?;
        }
        self.os
            .tun
            .flush()
            .map_err(io_error("writing to the TUN device"))
    }

    fn watch_writable(&mut self, writable: bool) -> Result<(), RunError> {
        let interest = if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.poll
            .registry()
            .reregister(&mut self.udp.socket, UDP, interest)
            .map_err(io_error("watching the UDP socket"))
    }

    /// Applies and forwards events; returns a reason when the machine gave up.
    fn drain_events(&mut self) -> Result<Option<DisconnectReason>, RunError> {
        let mut gave_up = None;
        while let Some(event) = self.machine.poll_event() {
            info!(?event, "event");
            if let Flow::Stop(reason) = self.machine.apply(&event, &mut self.os)? {
                gave_up = Some(reason);
            }
            if self.events_tx.try_send(event).is_err() {
                self.dropped_events += 1;
                if self.dropped_events.is_power_of_two() {
                    warn!(
                        dropped = self.dropped_events,
                        "nobody reads events; dropping them"
                    );
                }
            }
        }
        Ok(gave_up)
    }
}
