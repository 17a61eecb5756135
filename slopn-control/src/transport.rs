//! The local transport under the protocol: a Unix stream socket, or on Windows a named pipe.
//!
//! Both offer the same [`Stream`] (read and write from separate clones, read and write
//! timeouts, shut down from another thread) and [`Listener`], so the server and the client
//! are written once.

#[cfg(windows)]
mod pipe;
#[cfg(unix)]
mod unix;

#[cfg(windows)]
pub use pipe::Access;
#[cfg(windows)]
pub(crate) use pipe::{Listener, Stream};
#[cfg(unix)]
pub use unix::Access;
#[cfg(unix)]
pub(crate) use unix::{Listener, Stream};
