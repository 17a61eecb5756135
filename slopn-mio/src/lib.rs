//! The SloPN event loop (not yet implemented; see the "real hosts" issue).
//!
//! This crate will hold one `mio` event loop, in one thread, that drives a
//! `slopn_proto::Hub` or `slopn_proto::Spoke` against a UDP socket and a TUN device:
//! batched reads bounded per wakeup, `quinn-udp` for GSO/GRO on Linux, timers from
//! `poll_timeout`, and a waker for shutdown. It is embeddable: a library user builds a state
//! machine, a TUN device and a socket, and runs the loop in a thread with a handle to stop it
//! and read live statistics and events.
