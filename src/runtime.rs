//! The binaries' choice of runtime (`runtime = "mio" | "tokio"` in `hub.toml` and
//! `spoke.toml`), behind one blocking handle, so that the rest of the binaries does not care
//! which one moves the packets.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use slopn_driver::{Machine, Options, RunError};
use slopn_tun::Tun;

/// Which runtime drives the hub or the spoke.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `slopn-mio`: one thread with one `mio::Poll` (the default, and the fastest).
    #[default]
    Mio,
    /// `slopn-tokio`: a task on a tokio runtime of one worker thread, as a tokio program
    /// embedding SloPN would run it.
    Tokio,
}

impl Runtime {
    /// Whether this is the default (config files leave it out then).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A running loop on either runtime, with blocking methods.
pub enum Loop<M: Machine> {
    /// On mio's thread.
    Mio(slopn_mio::Handle<M>),
    /// On a tokio runtime of its own (Unix: slopn-tokio waits on descriptors).
    #[cfg(unix)]
    Tokio {
        /// The task's handle.
        handle: slopn_tokio::Handle<M>,
        /// The runtime it runs on.
        runtime: tokio::runtime::Runtime,
    },
}

/// How long a statistics request may take before the loop is taken as stuck.
#[cfg(unix)]
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

impl<M: Machine> Loop<M> {
    /// Starts the loop on `runtime`.
    pub fn spawn(
        runtime: Runtime,
        machine: M,
        tun: Tun,
        socket: std::net::UdpSocket,
        options: Options,
    ) -> Result<Self, String> {
        match runtime {
            Runtime::Mio => slopn_mio::spawn(machine, tun, socket, options)
                .map(Self::Mio)
                .map_err(|e| e.to_string()),
            #[cfg(windows)]
            Runtime::Tokio => Err("runtime = \"tokio\" is not available on Windows: remove \
                                   the line, or set runtime = \"mio\""
                .to_owned()),
            #[cfg(unix)]
            Runtime::Tokio => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("slopn-tokio")
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
                let handle = {
                    let _context = runtime.enter();
                    slopn_tokio::spawn(machine, tun, socket, options).map_err(|e| e.to_string())?
                };
                Ok(Self::Tokio { handle, runtime })
            }
        }
    }

    /// Asks the loop to shut down in an orderly way; returns at once.
    pub fn stop(&self) {
        match self {
            Self::Mio(h) => h.stop(),
            #[cfg(unix)]
            Self::Tokio { handle, .. } => handle.stop(),
        }
    }

    /// Sends the machine a command.
    pub fn command(&self, command: M::Command) {
        match self {
            Self::Mio(h) => h.command(command),
            #[cfg(unix)]
            Self::Tokio { handle, .. } => handle.command(command),
        }
    }

    /// A statistics snapshot, or `None` if the loop has ended.
    pub fn stats(&self) -> Option<M::Stats> {
        match self {
            Self::Mio(h) => h.stats(),
            // Timers need the runtime's context: made inside the futures.
            #[cfg(unix)]
            Self::Tokio { handle, runtime } => runtime
                .block_on(async { tokio::time::timeout(STATS_TIMEOUT, handle.stats()).await })
                .ok()
                .flatten(),
        }
    }

    /// The next event, waiting at most `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Result<M::Event, RecvTimeoutError> {
        match self {
            Self::Mio(h) => h.next_event(timeout),
            #[cfg(unix)]
            Self::Tokio { handle, runtime } => {
                let next = async { tokio::time::timeout(timeout, handle.next_event()).await };
                match runtime.block_on(next) {
                    Ok(Some(event)) => Ok(event),
                    Ok(None) => Err(RecvTimeoutError::Disconnected),
                    Err(_) => Err(RecvTimeoutError::Timeout),
                }
            }
        }
    }

    /// The events, in order, waiting for each; ends when the loop ends.
    pub fn events(&self) -> impl Iterator<Item = M::Event> + '_ {
        std::iter::from_fn(move || match self {
            Self::Mio(h) => h.events().next(),
            #[cfg(unix)]
            Self::Tokio { handle, runtime } => runtime.block_on(handle.next_event()),
        })
    }

    /// Whether the loop has ended.
    pub fn is_finished(&self) -> bool {
        match self {
            Self::Mio(h) => h.is_finished(),
            #[cfg(unix)]
            Self::Tokio { handle, .. } => handle.is_finished(),
        }
    }

    /// Waits for the loop to end; how it ended (only the first caller gets the result).
    pub fn join(&self) -> Result<(), RunError> {
        match self {
            Self::Mio(h) => h.join(),
            #[cfg(unix)]
            Self::Tokio { handle, runtime } => runtime.block_on(handle.join()),
        }
    }
}
