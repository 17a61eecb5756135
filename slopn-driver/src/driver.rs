//! The datapath steps every runtime performs, whatever waits for readiness: batched reads,
//! the drain order, requests, events and OS actions. A runtime owns a [`Driver`], waits on
//! its two file descriptors, its wake-up and its deadline, and calls the steps.

use std::io;
#[cfg(unix)]
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Instant;

use slopn_tun::Tun;
use tracing::{debug, info, warn};

use crate::event_log::EventLog;
use crate::held::HeldEvents;
use crate::machine::{Flow, IoCounters, Machine};
use crate::options::{Options, RunError, io_error};
use crate::os::{OsAction, OsPlan};
use crate::progress::OsProgress;
use crate::remote::{Inbox, Remote, Request, Wake};
use crate::system::System;
use crate::udp::Udp;
use crate::worker::Worker;

/// Where events go: returns `false` when the consumer's queue is full (the event is then
/// dropped and counted; it has been logged).
pub type EventSink<E> = Box<dyn FnMut(E) -> bool + Send>;

/// A machine with its socket, TUN device, OS helper thread and request inbox.
///
/// A runtime's loop, per wakeup: [`woken`](Self::woken) if its [`Wake`] fired;
/// [`read_udp`](Self::read_udp) and [`read_tun`](Self::read_tun) while they report more
/// may be waiting; [`udp_writable`](Self::udp_writable) when a blocked socket can take
/// data again; then [`step`](Self::step), which runs due timers and drains the machine's
/// outputs in order: datagrams, TUN packets, events (and the OS actions they call for).
/// It then waits until one of the descriptors is ready, the wake-up fires or the
/// [`deadline`](Self::deadline) passes. At the end, [`finish`](Self::finish) in every case.
pub struct Driver<M: Machine> {
    machine: M,
    udp: Udp,
    tun: Tun,
    worker: Worker,
    plan: OsPlan,
    inbox: Inbox<M>,
    events: EventSink<M::Event>,
    options: Options,
    tx_buf: Vec<u8>,
    dropped_events: u64,
    event_log: EventLog,
    /// Events from an assignment on, until its routes and DNS are in place.
    held: HeldEvents<M::Event>,
    /// When an orderly shutdown must end, once asked for.
    stopping: Option<Instant>,
    /// Why the loop is shutting down, if for an error: returned once the goodbyes are said.
    failed: Option<RunError>,
    progress: OsProgress,
}

impl<M: Machine> Driver<M> {
    /// Makes `socket` non-blocking with quinn-udp's offloads, and starts the OS helper
    /// thread in the calling thread's network namespace (that of the device). The
    /// [`Remote`] sends requests; `wake` must make the runtime call [`woken`](Self::woken).
    pub fn new(
        machine: M,
        tun: Tun,
        socket: std::net::UdpSocket,
        options: Options,
        wake: Arc<dyn Wake>,
        events: EventSink<M::Event>,
    ) -> Result<(Self, Remote<M>), RunError> {
        let udp = Udp::new(socket, options.socket_buffer, options.max_udp_payload)
            .map_err(io_error("setting up the UDP socket"))?;
        #[cfg(windows)]
        let tun = {
            let mut tun = tun;
            let wake = wake.clone();
            tun.start_reader(Arc::new(move || wake.wake()))
                .map_err(|e| match e {
                    slopn_tun::TunError::Io { source, .. } => {
                        io_error("starting the Wintun reading thread")(source)
                    }
                    other => io_error("starting the Wintun reading thread")(io::Error::other(
                        other.to_string(),
                    )),
                })?;
            tun
        };
        let worker = Worker::spawn(System::new(tun.control(), options.dns), wake.clone())
            .map_err(io_error("starting the OS helper thread"))?;
        let (inbox, remote) = Inbox::new(wake);
        let driver = Self {
            machine,
            udp,
            tun,
            worker,
            plan: OsPlan::new(options.routes.clone()),
            inbox,
            events,
            options,
            tx_buf: Vec::with_capacity(64 * 1024),
            dropped_events: 0,
            event_log: EventLog::default(),
            held: HeldEvents::default(),
            stopping: None,
            failed: None,
            progress: OsProgress::default(),
        };
        Ok((driver, remote))
    }

    /// The UDP socket's descriptor, to wait on (readable; writable while
    /// [`udp_blocked`](Self::udp_blocked)).
    #[cfg(unix)]
    pub fn udp_fd(&self) -> BorrowedFd<'_> {
        self.udp.socket.as_fd()
    }

    /// The TUN device's descriptor, to wait on (readable).
    #[cfg(unix)]
    pub fn tun_fd(&self) -> BorrowedFd<'_> {
        self.tun.as_fd()
    }

    /// Windows: the UDP socket, for the mio loop to register (readable; writable while
    /// [`udp_blocked`](Self::udp_blocked)). The TUN device has nothing to wait on: its
    /// reading thread wakes the loop through the [`Wake`] given to [`Driver::new`], after
    /// which [`read_tun`](Self::read_tun) finds the packets.
    #[cfg(windows)]
    pub fn udp_source(&mut self) -> &mut mio::net::UdpSocket {
        &mut self.udp.socket
    }

    /// When to call [`step`](Self::step) at the latest: the machine's next timer, or the
    /// end of the shutdown grace.
    pub fn deadline(&self) -> Option<Instant> {
        let timer = self.machine.poll_timeout();
        match (timer, self.stopping) {
            (Some(t), Some(s)) => Some(t.min(s)),
            (t, s) => t.or(s),
        }
    }

    /// Takes the OS reports and serves the requests that woke the loop, in that order (a
    /// statistics snapshot includes every report in). A fatal OS failure starts an
    /// orderly shutdown (the hub is told at once) and [`step`](Self::step) ends the loop
    /// with it.
    pub fn woken(&mut self, now: Instant) {
        while let Some(report) = self.worker.try_report() {
            if let Some(took) = self.progress.reported(&report, now) {
                info!(
                    "routes in place {:.2} ms after the address assignment (DNS too, if pushed)",
                    took.as_secs_f64() * 1e3
                );
            }
            let Err(failure) = report.result else {
                continue;
            };
            if failure.fatal {
                self.fail(now, RunError::Os(failure));
            } else {
                warn!(id = report.id, "{failure}");
            }
        }
        self.release_held(false);
        let requests = self.inbox.take().unwrap_or_else(|| vec![Request::Stop]);
        for request in requests {
            match request {
                Request::Stop => self.shut_down(now),
                Request::Stats(reply) => reply(self.machine.stats(self.io_counters())),
                Request::Command(command) => {
                    debug!(?command, "command");
                    self.machine.command(now, command);
                }
            }
        }
    }

    /// Starts an orderly shutdown, unless one is under way.
    fn shut_down(&mut self, now: Instant) {
        if self.stopping.is_none() {
            info!("shutting down");
            self.machine.shut_down(now);
            self.stopping = Some(now + self.options.shutdown_grace);
        }
    }

    /// Shuts down for `error` (the first one counts): goodbyes first, so that the peer
    /// frees the session at once, then the loop ends with it.
    fn fail(&mut self, now: Instant, error: RunError) {
        warn!("{error}; shutting down");
        self.failed.get_or_insert(error);
        self.shut_down(now);
    }

    /// Hands `event` on.
    fn forward(&mut self, event: M::Event) {
        if !(self.events)(event) {
            self.dropped_events += 1;
            if self.dropped_events.is_power_of_two() {
                warn!(
                    dropped = self.dropped_events,
                    "nobody reads events; dropping them"
                );
            }
        }
    }

    /// Hands on the held events once the assignment is routed, when the loop is ending,
    /// or with `all`.
    fn release_held(&mut self, all: bool) {
        let ending = all || self.stopping.is_some();
        for event in self.held.release(self.progress.routed(), ending) {
            self.forward(event);
        }
    }

    fn io_counters(&self) -> IoCounters {
        IoCounters {
            tun_write_drops: self.tun.dropped_writes(),
            tun_read_drops: self.tun.dropped_reads(),
            udp_send_errors: self.udp.send_errors,
            os_actions: self.progress.reports,
            routed: self.progress.routed(),
            os_failures: self.progress.failures,
        }
    }

    /// Reads UDP until it would block or the per-wakeup budget is spent; returns whether the
    /// socket may still hold data (if not, a later arrival makes it ready again).
    pub fn read_udp(&mut self, now: Instant) -> Result<bool, RunError> {
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
    pub fn read_tun(&mut self, now: Instant) -> Result<bool, RunError> {
        let machine = &mut self.machine;
        let mut packets = 0;
        while packets < self.options.tun_packets_per_wakeup {
            match self.tun.recv_packets(|packet| {
                // Refusals are counted by the machine and answered with ICMP where due.
                let _ = machine.handle_tun_packet(now, packet);
            }) {
                Ok(n) => packets += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("reading the TUN device")(e)),
            }
        }
        Ok(true)
    }

    /// Whether a transmit waits for the socket to become writable.
    pub fn udp_blocked(&self) -> bool {
        self.udp.is_blocked()
    }

    /// Sends the transmit that waited for the socket; returns whether it is still blocked.
    pub fn udp_writable(&mut self) -> bool {
        !self.udp.retry()
    }

    /// Runs due timers and drains the machine's outputs; returns whether the loop is done
    /// (an orderly shutdown finished or ran out of time). Ends with an error when the
    /// spoke was refused for good, or once the shutdown a fatal OS failure started is done.
    pub fn step(&mut self, now: Instant) -> Result<bool, RunError> {
        if self.machine.poll_timeout().is_some_and(|t| t <= now) {
            self.machine.handle_timeout(now);
        }
        self.flush(now)?;
        self.drain_events(now)?;
        let done = self
            .stopping
            .is_some_and(|deadline| self.machine.is_shut_down() || Instant::now() >= deadline);
        match self.failed.take() {
            Some(error) if done => Err(error),
            failed => {
                self.failed = failed;
                Ok(done)
            }
        }
    }

    /// Sends everything the machine has for the TUN device and the network, in that order:
    /// a packet that arrived is on its way to its host before any ACK goes back.
    fn flush(&mut self, now: Instant) -> Result<(), RunError> {
        let mut wrote = false;
        while let Some(packet) = self.machine.poll_tun_packet() {
            wrote = true;
            self.tun
                .queue_packet(&packet)
                .map_err(io_error("writing to the TUN device"))?;
        }
        self.tun
            .flush()
            .map_err(io_error("writing to the TUN device"))?;
        if wrote {
            self.read_answers(now)?;
        }
        if !self.udp.is_blocked() {
            let segments = self.udp.max_segments();
            while let Some(t) = self.machine.poll_transmit(now, segments, &mut self.tx_buf) {
                if !self.udp.send(&t, &self.tx_buf[..t.size]) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Reads once from the TUN device right after writing to it: the kernel handles a
    /// written packet at once, and what its host answered (an echo reply, a TCP ACK) then
    /// leaves in the same datagram as our ACKs, a wakeup sooner. What this read leaves
    /// behind still makes the device ready (its edge fired when the answer came).
    fn read_answers(&mut self, now: Instant) -> Result<(), RunError> {
        let machine = &mut self.machine;
        match self.tun.recv_packets(|packet| {
            let _ = machine.handle_tun_packet(now, packet);
        }) {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(io_error("reading the TUN device")(e)),
        }
    }

    /// Applies and forwards events, and hands the OS actions they call for to the helper.
    fn drain_events(&mut self, now: Instant) -> Result<(), RunError> {
        let mut gave_up = None;
        self.event_log.roll(now);
        while let Some(event) = self.machine.poll_event() {
            self.event_log.log(now, &event);
            if let Flow::Stop(reason) = self.machine.apply(&event, &mut self.plan) {
                gave_up = Some(reason);
            }
            if let Some(event) = self.held.hold(event, self.plan.ends_assignment()) {
                self.forward(event);
            }
        }
        let mut helper_gone = false;
        for (action, routes_assignment) in self.plan.drain() {
            if let OsAction::SetMtu(mtu) = action {
                // Room for the larger packets before the kernel can send them.
                self.tun.reserve_mtu(mtu);
            }
            let Ok(id) = self.worker.submit(action) else {
                // The rest of the plan goes with the helper.
                helper_gone = true;
                break;
            };
            self.progress.queued(id, routes_assignment, now);
            debug!(id, "OS action queued");
        }
        if helper_gone {
            self.fail(now, RunError::OsHelperGone);
        }
        self.release_held(false);
        gave_up.map_or(Ok(()), |reason| Err(RunError::GaveUp(reason)))
    }

    /// Ends the loop's side effects in order: refuses further requests, lets the helper
    /// thread end the action it is carrying out, skip the rest of its queue and remove the
    /// routes, then closes the TUN device (which removes it). Blocks until the helper is done: async runtimes call it where blocking
    /// is allowed.
    pub fn finish(mut self) {
        self.release_held(true);
        self.inbox.close();
        self.worker.finish();
        debug!("loop finished");
    }
}
