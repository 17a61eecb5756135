//! The loop thread: waits on one `mio::Poll` and calls the driver's steps.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use slopn_driver::{Driver, Machine, RunError, io_error};

const UDP: Token = Token(0);
const TUN: Token = Token(1);
pub(crate) const WAKER: Token = Token(2);

/// Runs the loop until it ends, then lets the driver remove what it set up.
pub(crate) fn run<M: Machine>(mut driver: Driver<M>, poll: Poll) -> Result<(), RunError> {
    let result = drive(&mut driver, poll);
    driver.finish();
    result
}

fn drive<M: Machine>(driver: &mut Driver<M>, mut poll: Poll) -> Result<(), RunError> {
    let (udp_fd, tun_fd) = (driver.udp_fd().as_raw_fd(), driver.tun_fd().as_raw_fd());
    poll.registry()
        .register(&mut SourceFd(&udp_fd), UDP, Interest::READABLE)
        .map_err(io_error("registering the UDP socket"))?;
    poll.registry()
        .register(&mut SourceFd(&tun_fd), TUN, Interest::READABLE)
        .map_err(io_error("registering the TUN device"))?;

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
                TUN => tun_readable |= event.is_readable(),
                _ => woken = true,
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
            poll.registry()
                .reregister(&mut SourceFd(&udp_fd), UDP, interest)
                .map_err(io_error("watching the UDP socket"))?;
        }
    }
}
