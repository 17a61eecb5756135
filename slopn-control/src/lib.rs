//! SloPN's local control socket: how a running hub or spoke talks to the programs that
//! watch and steer it (`hub status`, `spoke status`, the desktop client).
//!
//! The socket is a Unix stream socket (on Windows a named pipe, `\\.\pipe\…`, with an ACL). Each request and each answer is one JSON object on
//! one line ([`Request`]; answers carry `"ok": true` and their fields, or `"ok": false` and
//! an `"error"` sentence). Two requests turn the connection into a stream: `events` (what
//! the hub or spoke reports as it happens) and `logs` (the server's recent log lines, then
//! new ones). docs/PROTOCOL.md §8 specifies every field.
//!
//! This crate holds both sides, and nothing else: the desktop client depends on it and must
//! not link the datapath.
//!
//! - [`Server`] serves a socket with a [`Handler`] and two [`Topic`]s, safely against any
//!   client: bounded lines, a bounded number of clients, subscribers that stop reading are
//!   cut off instead of waited for, and every refusal counted.
//! - [`Client`] sends requests and subscribes, telling "not running" from "not allowed".
//!
//! ```no_run
//! use slopn_control::{Client, Request, SpokeStatus};
//!
//! # fn main() -> Result<(), slopn_control::ClientError> {
//! let mut client = Client::connect("/run/slopn/spoke.sock".as_ref())?;
//! let status: SpokeStatus = client.request_field(&Request::Status, "status")?;
//! println!("{} {:?}", status.state.name(), status.addresses);
//! let mut events = Client::connect("/run/slopn/spoke.sock".as_ref())?.subscribe(&Request::Events)?;
//! while let Some(event) = events.next_line()? {
//!     println!("{}", event["event"]);
//! }
//! # Ok(())
//! # }
//! ```

mod client;
mod protocol;
mod server;
mod topic;
mod transport;

pub use client::{Client, ClientError, Closer, Subscription, request};
pub use protocol::{
    ControlStats, LogLine, MAX_PROFILE_BYTES, MAX_PROFILE_NAME, MAX_PROFILES, MAX_REQUEST_BYTES,
    MAX_TOKEN_BYTES, PROTOCOL_VERSION, ProfileSummary, Request, Role, SPOKE_SOCKET, SpokeStatus,
    TunnelState, VersionInfo, hub_port, is_profile_name,
};
pub use server::{
    Answer, Handler, IDLE_TIMEOUT, MAX_CLIENTS, MAX_SUBSCRIBERS, Server, ServerError,
};
pub use topic::{SUBSCRIBER_QUEUE, Topic};
pub use transport::Access;
