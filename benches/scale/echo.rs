//! ICMPv4 echo requests the load generator sends through the tunnel to the hub's tunnel
//! address, and the replies' round-trip times. The hub's kernel answers them, so every
//! echo crosses the hub's datapath both ways, TUN device included.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use slopn_proto::packet::checksum;

/// ICMP identifier of the load generator's echoes (replies with another are ignored).
const IDENT: u16 = 0x5c0b;
/// Bytes of the packet: 20 of IPv4 header, 8 of ICMP header, 8 of send time.
pub const ECHO_LEN: usize = 36;

/// Builds an echo request from `src` to `dst` into `buf`, carrying `sent` (nanoseconds
/// since `epoch`) so the reply tells its own round-trip time.
pub fn request(buf: &mut [u8; ECHO_LEN], src: Ipv4Addr, dst: Ipv4Addr, seq: u16, sent: u64) {
    buf.fill(0);
    buf[0] = 0x45;
    buf[2..4].copy_from_slice(&(ECHO_LEN as u16).to_be_bytes());
    buf[8] = 64; // TTL
    buf[9] = 1; // ICMP
    buf[12..16].copy_from_slice(&src.octets());
    buf[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&buf[..20], 0);
    buf[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    buf[20] = 8; // echo request
    buf[24..26].copy_from_slice(&IDENT.to_be_bytes());
    buf[26..28].copy_from_slice(&seq.to_be_bytes());
    buf[28..36].copy_from_slice(&sent.to_be_bytes());
    let icmp_sum = checksum(&buf[20..], 0);
    buf[22..24].copy_from_slice(&icmp_sum.to_be_bytes());
}

/// The round-trip time of an echo reply built from one of our requests, or `None` for any
/// other packet.
pub fn reply_rtt(packet: &[u8], epoch: Instant, now: Instant) -> Option<Duration> {
    if packet.len() < ECHO_LEN || packet[0] != 0x45 || packet[9] != 1 {
        return None;
    }
    if packet[20] != 0 || packet[24..26] != IDENT.to_be_bytes() {
        return None;
    }
    let sent = u64::from_be_bytes(packet[28..36].try_into().ok()?);
    let elapsed = now.duration_since(epoch).as_nanos() as u64;
    Some(Duration::from_nanos(elapsed.checked_sub(sent)?))
}
