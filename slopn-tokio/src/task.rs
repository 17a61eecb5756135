//! The task: waits for the descriptors, the wake-up and the timer together, and calls the
//! driver's steps for whatever is ready.

use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::OwnedFd;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use slopn_driver::{Driver, Machine, RunError, io_error};
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::sync::Notify;

/// The UDP socket's writability, watched only while a transmit waits for it
/// ([`Driver::udp_blocked`]): registered for it all the time, every send completion would
/// wake the task. A duplicate of the socket's descriptor, registered and deregistered as
/// needed (the reading registration stays as it is).
pub(crate) struct WriteWatch {
    idle: Option<OwnedFd>,
    armed: Option<AsyncFd<OwnedFd>>,
}

impl WriteWatch {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self {
            idle: Some(fd),
            armed: None,
        }
    }

    /// Watches while `blocked`, and stops watching otherwise.
    fn update(&mut self, blocked: bool) -> Result<(), RunError> {
        if blocked {
            if let Some(fd) = self.idle.take() {
                let what = "watching the UDP socket";
                self.armed = Some(crate::register(fd, Interest::WRITABLE, what)?);
            }
        } else if let Some(armed) = self.armed.take() {
            self.idle = Some(armed.into_inner());
        }
        Ok(())
    }
}

/// What one wakeup found ready.
struct Ready<'a> {
    woken: bool,
    udp_read: Option<io::Result<AsyncFdReadyGuard<'a, OwnedFd>>>,
    udp_write: Option<io::Result<AsyncFdReadyGuard<'a, OwnedFd>>>,
    tun_read: Option<io::Result<AsyncFdReadyGuard<'a, OwnedFd>>>,
}

/// Runs until the loop ends, then removes what it set up: the descriptors leave the
/// reactor, and the driver's blocking finish (the helper removes the
/// routes) runs on the blocking pool.
pub(crate) async fn run<M: Machine>(
    mut driver: Driver<M>,
    udp: AsyncFd<OwnedFd>,
    mut writable: WriteWatch,
    tun: AsyncFd<OwnedFd>,
    notify: Arc<Notify>,
) -> Result<(), RunError> {
    let result = drive(&mut driver, &udp, &mut writable, &tun, &notify).await;
    drop((udp, writable, tun));
    match tokio::task::spawn_blocking(move || driver.finish()).await {
        Ok(()) => {}
        Err(e) if e.is_panic() => {
            tracing::warn!("finishing the loop panicked; routes may be left behind");
        }
        // The runtime shut down before the blocking pool ran it: dropping the driver with
        // the closure removed the routes and the device all the same.
        Err(_) => tracing::debug!("the loop finished as its runtime shut down"),
    }
    result
}

async fn drive<M: Machine>(
    driver: &mut Driver<M>,
    udp: &AsyncFd<OwnedFd>,
    writable: &mut WriteWatch,
    tun: &AsyncFd<OwnedFd>,
    notify: &Notify,
) -> Result<(), RunError> {
    // Far enough to mean "no timer", near enough not to overflow the clock.
    let never = || Instant::now() + Duration::from_secs(86_400);
    let mut sleep = pin!(tokio::time::sleep_until(never().into()));
    loop {
        sleep
            .as_mut()
            .reset(driver.deadline().unwrap_or_else(never).into());
        writable.update(driver.udp_blocked())?;
        let write_watch = writable.armed.as_ref();
        let mut notified = pin!(notify.notified());
        let ready = poll_fn(|cx| {
            let woken = notified.as_mut().poll(cx).is_ready();
            let timer = sleep.as_mut().poll(cx).is_ready();
            let ready = Ready {
                woken,
                udp_read: ready(udp.poll_read_ready(cx)),
                udp_write: write_watch.and_then(|fd| ready(fd.poll_write_ready(cx))),
                tun_read: ready(tun.poll_read_ready(cx)),
            };
            if woken
                || timer
                || ready.udp_read.is_some()
                || ready.udp_write.is_some()
                || ready.tun_read.is_some()
            {
                Poll::Ready(ready)
            } else {
                Poll::Pending
            }
        })
        .await;
        let now = Instant::now();
        if ready.woken {
            driver.woken(now);
        }
        if let Some(guard) = ready.udp_write {
            let mut guard = guard.map_err(io_error("waiting for the UDP socket"))?;
            if driver.udp_writable() {
                guard.clear_ready();
            }
        }
        if let Some(guard) = ready.udp_read {
            let mut guard = guard.map_err(io_error("waiting for the UDP socket"))?;
            // A budget spent leaves it ready: the next wakeup comes at once.
            if !driver.read_udp(now)? {
                guard.clear_ready();
            }
        }
        if let Some(guard) = ready.tun_read {
            let mut guard = guard.map_err(io_error("waiting for the TUN device"))?;
            if !driver.read_tun(now)? {
                guard.clear_ready();
            }
        }
        if driver.step(now)? {
            return Ok(());
        }
    }
}

fn ready<T>(poll: Poll<T>) -> Option<T> {
    match poll {
        Poll::Ready(t) => Some(t),
        Poll::Pending => None,
    }
}
