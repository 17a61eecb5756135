//! SloPN's TUN devices and OS network configuration (not yet implemented; see the "real
//! hosts" issue).
//!
//! This crate will open Linux TUN devices through `tun-rs` (which also provides multi-queue
//! devices and the kernel's GSO/GRO offload, needed by the performance work), set address,
//! prefix, MTU and link state, install routes and, in gateway mode, NAT, undoing every change
//! when the process exits.
