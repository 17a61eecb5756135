//! SloPN for programs that already run tokio: a sans-IO `Hub` or `Spoke` (`slopn_proto`)
//! driven as one task on the caller's runtime.
//!
//! The datapath is [`slopn_driver`]'s, the same as `slopn-mio`'s event loop: the UDP socket
//! read in batches (`recvmmsg` with GRO through quinn-udp, sends with GSO), TUN
//! super-packets split, both bounded per wakeup so that neither side starves the other or
//! the timers, and the machine's outputs drained in one order after any input. What is
//! tokio's here: both descriptors wait for readability in [`AsyncFd`]s (the socket's
//! writability is watched only while a send waits for it), the timer
//! is a [`sleep_until`](tokio::time::sleep_until) on the machine's `poll_timeout`, and a
//! [`Notify`] carries commands, the stop request and the OS helper's
//! reports. Routes, addresses and DNS are set by the driver's helper thread, never on the
//! runtime's workers; it runs in the network namespace of the thread that calls [`spawn`].
//!
//! # Embedding a spoke
//!
//! ```no_run
//! use std::time::{Instant, SystemTime};
//! use slopn_proto::{Spoke, SpokeConfig, SpokeEvent, tls};
//! use slopn_tokio::{Options, spawn};
//! use slopn_tun::{Tun, TunConfig};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let ca = tls::parse_certificates(&std::fs::read("ca.pem")?)?;
//!     // The seed keys connection IDs and stateless resets: a secret, fresh from the OS.
//!     let mut seed = [0u8; 32];
//!     getrandom::fill(&mut seed)?;
//!     let config =
//!         SpokeConfig::new("192.0.2.1:4433".parse()?, "hub.example.com", ca, "token", seed);
//!     let spoke = Spoke::new(config, Instant::now(), SystemTime::now())?;
//!     let tun = Tun::open(&TunConfig {
//!         name: Some("slopn0".into()),
//!         mtu: 1280,
//!         addresses: vec![],
//!         offload: true,
//!     })?;
//!     let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
//!     let handle = spawn(spoke, tun, socket, Options::default())?;
//!     while let Some(event) = handle.next_event().await {
//!         println!("{event:?}");
//!         if let SpokeEvent::Assigned { addresses, .. } = event {
//!             println!("tunnel address {addresses:?}");
//!             break;
//!         }
//!     }
//!     println!("{:?}", handle.stats().await);
//!     handle.stop();
//!     handle.join().await?;
//!     Ok(())
//! }
//! ```
//!
//! When the task ends, by [`Handle::stop`] (after the machine's goodbyes, bounded by
//! [`Options::shutdown_grace`]) or because a spoke was refused for good, the driver's
//! helper thread removes the routes and then the TUN device is closed; the task waits for
//! that on tokio's blocking pool, never on a worker thread. A task dropped by a runtime
//! shutting down removes them the same way as it is dropped.

mod task;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use slopn_driver::{Driver, Remote, Wake, io_error};
use slopn_tun::Tun;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

pub use slopn_driver::{
    HubCommand, HubSnapshot, IoCounters, Machine, Options, OsAction, OsFailure, RoutePolicy,
    RunError, SpokeCommand, SpokeStatus,
};

/// The task's wake-up: a permit is kept if it is busy, so none is lost.
struct NotifyWake(Arc<Notify>);

impl Wake for NotifyWake {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// Controls a running task from anywhere (share it with an `Arc`).
pub struct Handle<M: Machine> {
    remote: Remote<M>,
    events: Mutex<mpsc::Receiver<M::Event>>,
    task: std::sync::Mutex<Option<JoinHandle<Result<(), RunError>>>>,
}

impl<M: Machine> Handle<M> {
    /// Asks the task to shut down in an orderly way (goodbyes first). Returns at once; see
    /// [`join`](Self::join).
    pub fn stop(&self) {
        self.remote.stop();
    }

    /// Sends a command to the machine.
    pub fn command(&self, command: M::Command) {
        self.remote.command(command);
    }

    /// A statistics snapshot, or `None` if the task has ended.
    pub async fn stats(&self) -> Option<M::Stats> {
        let (tx, rx) = oneshot::channel();
        if !self.remote.stats(move |stats| {
            let _ = tx.send(stats);
        }) {
            return None;
        }
        rx.await.ok()
    }

    /// The machine's next event, waiting for it; `None` once the task has ended and every
    /// event was taken. (Events are for one consumer: concurrent readers each get some.)
    pub async fn next_event(&self) -> Option<M::Event> {
        self.events.lock().await.recv().await
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.task
            .lock()
            .map(|t| t.as_ref().is_none_or(JoinHandle::is_finished))
            .unwrap_or(true)
    }

    /// Waits for the task to end and returns how it ended (only the first caller gets the
    /// result; later calls return `Ok`).
    pub async fn join(&self) -> Result<(), RunError> {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        match task {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) if e.is_cancelled() => Err(RunError::Cancelled),
                Err(_) => Err(RunError::Panicked),
            },
            None => Ok(()),
        }
    }
}

/// A duplicate of `fd`, to register with the reactor. The duplicate belongs to its
/// `AsyncFd`, so it stays open exactly as long as the registration, whatever the driver
/// does with the original (both refer to the same socket or device, so readiness is the
/// same).
fn duplicate(fd: BorrowedFd<'_>, what: &'static str) -> Result<OwnedFd, RunError> {
    fd.try_clone_to_owned().map_err(io_error(what))
}

/// Registers `fd` with the reactor for `interest`.
fn register(
    fd: OwnedFd,
    interest: Interest,
    what: &'static str,
) -> Result<AsyncFd<OwnedFd>, RunError> {
    // SAFETY: an `OwnedFd` is open, and returns the same descriptor, until the `AsyncFd`
    // that owns it drops it or gives it back: the contract tokio asks for (the safe
    // constructors are deprecated because other types cannot promise it).
    #[allow(unsafe_code)]
    let registered = unsafe { AsyncFd::register_with_interest(fd, interest) };
    registered.map_err(|e| io_error(what)(e.into_parts().1))
}

/// Starts the task on the current tokio runtime (call it from within one, like
/// [`tokio::spawn`]; it needs the runtime's I/O and time drivers enabled). `socket` may be
/// bound anywhere; it is made non-blocking. The TUN device must be open; the OS helper
/// thread, started here in the calling thread's network namespace, configures its
/// addresses, MTU and routes as the machine's events require.
pub fn spawn<M: Machine>(
    machine: M,
    tun: Tun,
    socket: std::net::UdpSocket,
    options: Options,
) -> Result<Handle<M>, RunError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| io_error("finding the tokio runtime")(std::io::Error::other(e)))?;
    let notify = Arc::new(Notify::new());
    let (events_tx, events) = mpsc::channel(options.event_queue);
    let (driver, remote) = Driver::new(
        machine,
        tun,
        socket,
        options,
        Arc::new(NotifyWake(notify.clone())),
        Box::new(move |event| events_tx.try_send(event).is_ok()),
    )?;
    let (udp, writable, tun) = {
        let _context = runtime.enter();
        let what = "registering the UDP socket";
        let udp = register(duplicate(driver.udp_fd(), what)?, Interest::READABLE, what)?;
        // Writability has a descriptor of its own, registered only while a send waits.
        let writable = task::WriteWatch::new(duplicate(driver.udp_fd(), what)?);
        let what = "registering the TUN device";
        let tun = register(duplicate(driver.tun_fd(), what)?, Interest::READABLE, what)?;
        (udp, writable, tun)
    };
    let task = runtime.spawn(task::run(driver, udp, writable, tun, notify));
    Ok(Handle {
        remote,
        events: Mutex::new(events),
        task: std::sync::Mutex::new(Some(task)),
    })
}
