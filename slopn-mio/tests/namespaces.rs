//! The runtime suite (`slopn-driver/tests/suite`) on mio's event loop.

#![cfg(target_os = "linux")]

#[path = "../../slopn-driver/tests/suite/mod.rs"]
mod suite;

use std::time::Duration;

use slopn_mio::{Handle, Machine, Options, RunError};
use slopn_tun::Tun;

struct Mio;

impl suite::Runtime for Mio {
    type Loop<M: Machine> = Handle<M>;

    fn spawn<M: Machine>(
        machine: M,
        tun: Tun,
        socket: std::net::UdpSocket,
        options: Options,
    ) -> Handle<M> {
        slopn_mio::spawn(machine, tun, socket, options).unwrap()
    }
}

impl<M: Machine> suite::Loop<M> for Handle<M> {
    fn next_event(&self, timeout: Duration) -> Option<M::Event> {
        Handle::next_event(self, timeout).ok()
    }
    fn stats(&self) -> Option<M::Stats> {
        Handle::stats(self)
    }
    fn command(&self, command: M::Command) {
        Handle::command(self, command);
    }
    fn stop(&self) {
        Handle::stop(self);
    }
    fn is_finished(&self) -> bool {
        Handle::is_finished(self)
    }
    fn join(&self) -> Result<(), RunError> {
        Handle::join(self)
    }
}

suite::tests!(Mio);
