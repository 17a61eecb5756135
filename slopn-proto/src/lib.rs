//! placeholder
pub mod control;
pub mod packet;
pub mod icmp;
pub mod pool;
pub mod pki;
pub mod tls;
mod clock;
