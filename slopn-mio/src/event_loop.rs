//! The loop thread: waits on one `mio::Poll` and calls the driver's steps.
//!
//! On Unix it waits on the UDP socket's and the TUN device's descriptors. On Windows it
//! waits on the UDP socket (mio's own) and its waker: Wintun has nothing to wait on, so the
//! device's reading thread wakes the loop, and every wake-up also looks at the device.

use std::io;
#[cfg(unix)]
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[cfg(unix)]
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slopn_driver::{Driver, Machine, RunError, io_error};

const UDP: Token = Token(0);
#[cfg(unix)]
const TUN: Token = Token(1);
pub(crate) const WAKER: Token = Token(2);

/// Runs the loop until it ends, then lets the driver remove what it set up.
pub(crate) fn run<M: Machine>(mut driver: Driver<M>, poll: Poll) -> Result<(), RunError> {
    let result = drive(&mut driver, poll);
    driver.finish();
    result
}

/// Registers the UDP socket (and on Unix the TUN device) with `poll`.
#[cfg(unix)]
fn register<M: Machine>(driver: &mut Driver<M>, poll: &Poll) -> Result<(), RunError> {
    let (udp_fd, tun_fd) = (driver.udp_fd().as_raw_fd(), driver.tun_fd().as_raw_fd());
    poll.registry()
        .register(&mut SourceFd(&udp_fd), UDP, Interest::READABLE)
        .map_err(io_error("registering the UDP socket"))?;
    poll.registry()
        .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)
        .map_err(io_error("registering the TUN device"))
}

/// Registers the UDP socket with `poll` (the TUN device's thread wakes the loop instead).
#[cfg(windows)]
fn register<M: Machine>(driver: &mut Driver<M>, poll: &Poll) -> Result<(), RunError> {
    poll.registry()
        .register(driver.udp_source(), UDP, Interest::READABLE)
        .map_err(io_error("registering the UDP socket"))
}

/// Watches the UDP socket for `interest`.
fn reregister<M: Machine>(
    driver: &mut Driver<M>,
    poll: &Poll,
    interest: Interest,
) -> Result<(), RunError> {
    #[cfg(unix)]
    let result =
        poll.registry()
            .reregister(&mut SourceFd(&driver.udp_fd().as_raw_fd()), UDP, interest);
    #[cfg(windows)]
    let result = poll
        .registry()
        .reregister(driver.udp_source(), UDP, interest);
    result.map_err(io_error("watching the UDP socket"))
}

fn drive<M: Machine>(driver: &mut Driver<M>, mut poll: Poll) -> Result<(), RunError> {
    register(driver, &poll)?;

    let mut events = Events::with_capacity(64);
    // Edge-triggered: both sources start out possibly readable and stay so until a read
    // says they are drained.
    let (mut udp_readable, mut tun_readable) = (true, true);
    let mut watching_writable = false;
    loop {
        let now = Instant::now();
        let timeout = if udp_readable || tun_readable {
            Some(Duration::ZERO)
        } else {
            driver.deadline().map(|t| t.saturating_duration_since(now))
        };
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(io_error("waiting for events")(e));
        }
        let (mut woken, mut udp_writable) = (false, false);
        for event in events.iter() {
            match event.token() {
                UDP => {
                    udp_readable |= event.is_readable();
                    udp_writable |= event.is_writable();
                }
                #[cfg(unix)]
                TUN => tun_readable |= event.is_readable(),
                _ => {
                    woken = true;
                    // Windows: the device's reading thread wakes the loop this way.
                    tun_readable |= cfg!(windows);
                }
            }
        }
        let now = Instant::now();
        if woken {
            driver.woken(now);
        }
        if udp_writable {
            driver.udp_writable();
        }
        if udp_readable {
            udp_readable = driver.read_udp(now)?;
        }
        if tun_readable {
            tun_readable = driver.read_tun(now)?;
        }
        if driver.step(now)? {
            return Ok(());
        }
        if driver.udp_blocked() != watching_writable {
            watching_writable = !watching_writable;
            let interest = if watching_writable {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            reregister(driver, &poll, interest)?;
        }
    }
}
