//! The runtime suite (`slopn-driver/tests/suite`) on tokio: every loop a task on one
//! shared multi-threaded runtime, as in a tokio program running several.

#[path = "../../slopn-driver/tests/suite/mod.rs"]
mod suite;

use std::sync::LazyLock;
use std::time::Duration;

use slopn_tokio::{Handle, Machine, Options, RunError};
use slopn_tun::Tun;
use tokio::runtime::Runtime;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
});

struct Tokio;

impl suite::Runtime for Tokio {
    type Loop<M: Machine> = Handle<M>;

    fn spawn<M: Machine>(
        machine: M,
        tun: Tun,
        socket: std::net::UdpSocket,
        options: Options,
    ) -> Handle<M> {
        let _context = RUNTIME.enter();
        slopn_tokio::spawn(machine, tun, socket, options).unwrap()
    }
}

impl<M: Machine> suite::Loop<M> for Handle<M> {
    fn next_event(&self, timeout: Duration) -> Option<M::Event> {
        // The timer needs the runtime's context: made inside the future.
        RUNTIME
            .block_on(async { tokio::time::timeout(timeout, Handle::next_event(self)).await })
            .ok()
            .flatten()
    }
    fn stats(&self) -> Option<M::Stats> {
        RUNTIME.block_on(Handle::stats(self))
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
        RUNTIME.block_on(Handle::join(self))
    }
}

suite::tests!(Tokio);
