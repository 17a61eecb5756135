//! SloPN's event loop on mio: one thread, one `mio::Poll`, driving a sans-IO `Hub` or
//! `Spoke` (`slopn_proto`) against a UDP socket and a TUN device.
//!
//! The datapath itself is [`slopn_driver`]'s, shared with the other runtimes: each wakeup
//! reads the UDP socket in batches (`recvmmsg` with GRO through `quinn-udp`) and the TUN
//! device, both bounded per wakeup so that neither starves the other or the timers; then it
//! drains the state machine's outputs in the documented order: datagrams (GSO batches; one
//! transmit is kept when the socket would block, and the socket is watched for
//! writability), packets for the TUN device, events. What is mio's here: the poller with
//! edge-triggered readiness for both descriptors, the timeout from `poll_timeout`, and a
//! `mio::Waker` that carries commands, the stop request and the OS helper's reports.
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
//! [`Options::shutdown_grace`]) or because a spoke was refused for good, its OS helper
//! removes the routes and then the TUN device is closed.

mod event_loop;

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Poll, Waker};
use slopn_driver::{Driver, Remote, Wake, io_error};
use slopn_tun::Tun;
use tracing::warn;

pub use slopn_driver::{
    HubCommand, HubSnapshot, IoCounters, Machine, Options, OsAction, OsFailure, RoutePolicy,
    RunError, SpokeCommand, SpokeStatus,
};

/// The mio waker as the driver's wake-up.
struct MioWake(Waker);

impl Wake for MioWake {
    fn wake(&self) {
        if let Err(e) = self.0.wake() {
            warn!("could not wake the event loop: {e}");
        }
    }
}

/// Controls a running loop from other threads (share it with an `Arc`).
pub struct Handle<M: Machine> {
    remote: Remote<M>,
    events: Mutex<Receiver<M::Event>>,
    thread: Mutex<Option<JoinHandle<Result<(), RunError>>>>,
}

impl<M: Machine> Handle<M> {
    /// Asks the loop to shut down in an orderly way (goodbyes first). Returns at once; see
    /// [`join`](Self::join).
    pub fn stop(&self) {
        self.remote.stop();
    }

    /// A statistics snapshot, or `None` if the loop has ended.
    pub fn stats(&self) -> Option<M::Stats> {
        let (tx, rx) = mpsc::sync_channel(1);
        if !self.remote.stats(move |stats| {
            let _ = tx.try_send(stats);
        }) {
            return None;
        }
        // The reply is dropped unsent if the loop ends first; the bound covers a loop
        // stuck in a system call.
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    /// Sends a command to the machine.
    pub fn command(&self, command: M::Command) {
        self.remote.command(command);
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
/// The TUN device must be open; the loop's OS helper thread, started here in the calling
/// thread's network namespace, configures its addresses, MTU and routes as the machine's
/// events require.
pub fn spawn<M: Machine>(
    machine: M,
    tun: Tun,
    socket: std::net::UdpSocket,
    options: Options,
) -> Result<Handle<M>, RunError> {
    let poll = Poll::new().map_err(io_error("creating the poller"))?;
    let waker =
        Waker::new(poll.registry(), event_loop::WAKER).map_err(io_error("creating the waker"))?;
    let (events_tx, events) = mpsc::sync_channel(options.event_queue);
    let (driver, remote) = Driver::new(
        machine,
        tun,
        socket,
        options,
        Arc::new(MioWake(waker)),
        Box::new(move |event| events_tx.try_send(event).is_ok()),
    )?;
    let thread = std::thread::Builder::new()
        .name("slopn-loop".into())
        .spawn(move || event_loop::run(driver, poll))
        .map_err(io_error("starting the loop thread"))?;
    Ok(Handle {
        remote,
        events: Mutex::new(events),
        thread: Mutex::new(Some(thread)),
    })
}
