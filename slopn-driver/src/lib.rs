//! What every SloPN runtime shares. A runtime (`slopn-mio`'s thread with `mio::Poll`,
//! `slopn-tokio`'s task) only waits for readiness; everything else is here:
//!
//! - [`Machine`]: the sans-IO [`Hub`](slopn_proto::Hub) and [`Spoke`](slopn_proto::Spoke)
//!   behind one trait, with their commands ([`HubCommand`], [`SpokeCommand`]) and
//!   statistics ([`HubSnapshot`], [`SpokeStatus`], [`IoCounters`]).
//! - OS actions as values ([`OsAction`]): after an event the machine queues what the OS
//!   must do (MTU, addresses, routes, DNS) on an [`OsPlan`]; a helper thread, one per
//!   loop, carries them out in order (running `ip`, waiting on netlink or D-Bus is never
//!   done on the datapath; each command is killed after a few seconds) and reports each
//!   one back to the loop. Failures are counted and logged ([`IoCounters`]); one the
//!   tunnel cannot work with ends the loop after the machine's goodbyes
//!   ([`RunError::Os`]). When the loop ends the helper skips what is still queued and
//!   removes the routes, before the TUN device is closed.
//! - [`Driver`]: the datapath steps, the same in every runtime: UDP read in batches
//!   (`recvmmsg` and GRO through quinn-udp), TUN reads split from offload super-packets,
//!   both bounded per wakeup so that neither starves the other or the timers; after any
//!   input, the outputs drained in one order: datagrams (GSO batches; one transmit kept
//!   when the socket would block), TUN packets, events.
//! - [`Remote`]: stop, commands and statistics requests from other threads, which every
//!   runtime's handle wraps; the runtime brings its wake-up ([`Wake`]).
//!
//! A runtime's loop, in outline (see [`Driver`] for the contract):
//!
//! ```text
//! loop {
//!     wait until: UDP readable (or writable while blocked), TUN readable, woken, deadline
//!     if woken   { driver.woken(now) }               // OS reports, requests
//!     if udp     { more_udp = driver.read_udp(now)? }
//!     if tun     { more_tun = driver.read_tun(now)? }
//!     if driver.step(now)? { break }                 // timers, datagrams, packets, events
//! }
//! driver.finish();                                   // routes removed, then the device
//! ```

mod driver;
mod event_log;
mod held;
mod hub;
mod machine;
mod options;
mod os;
mod policy;
mod progress;
mod remote;
mod spoke;
mod system;
mod udp;
mod worker;

pub use driver::{Driver, EventSink};
pub use hub::{HubCommand, HubSnapshot};
pub use machine::{Flow, IoCounters, Machine};
pub use options::{Options, RunError, io_error};
pub use os::{OsAction, OsFailure, OsPlan};
pub use policy::RoutePolicy;
pub use remote::{Remote, Wake};
pub use spoke::{SpokeCommand, SpokeStatus};
