//! ICMP and ICMPv6 error messages, built as a router builds them (RFC 1812, RFC 4443).

use std::net::IpAddr;
use std::time::Instant;

use crate::packet::{self, IpHeader, PROTO_ICMP, PROTO_ICMPV6};

/// Which error to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpError {
    /// TTL or hop limit reached zero in transit.
    TimeExceeded,
    /// IPv4 "fragmentation needed and DF set" or ICMPv6 "packet too big", with the largest
    /// packet the next hop carries.
    PacketTooBig {
        /// The usable MTU.
        mtu: u16,
    },
    /// No host owns the destination address.
    HostUnreachable,
    /// No route to the destination network.
    NetUnreachable,
    /// Forwarding is forbidden by policy (e.g. isolated spokes).
    AdminProhibited,
}

impl IcmpError {
    fn v4_type_code(self) -> (u8, u8) {
        match self {
            Self::TimeExceeded => (11, 0),
            Self::PacketTooBig { .. } => (3, 4),
            Self::HostUnreachable => (3, 1),
            Self::NetUnreachable => (3, 0),
            Self::AdminProhibited => (3, 13),
        }
    }

    fn v6_type_code(self) -> (u8, u8) {
        match self {
            Self::TimeExceeded => (3, 0),
            Self::PacketTooBig { .. } => (2, 0),
            Self::HostUnreachable => (1, 3),
            Self::NetUnreachable => (1, 0),
            Self::AdminProhibited => (1, 1),
        }
    }
}

/// A token bucket bounding how many ICMP errors one sender can trigger, so that a flood of
/// bad packets neither amplifies nor crowds out other traffic.
#[derive(Clone, Copy, Debug)]
pub struct IcmpRateLimit {
    tokens: u32,
    last: Option<Instant>,
}

impl IcmpRateLimit {
    /// Errors allowed in a burst.
    pub const BURST: u32 = 50;
    /// Errors allowed per second on average.
    pub const PER_SECOND: u32 = 100;

    /// Whether one more error may be sent at `now` (and takes a token if so).
    pub fn allow(&mut self, now: Instant) -> bool {
        let last = *self.last.get_or_insert(now);
        let refill = now.saturating_duration_since(last).as_millis() as u64
            * u64::from(Self::PER_SECOND)
            / 1000;
        if refill > 0 {
            self.tokens = (u64::from(self.tokens) + refill).min(u64::from(Self::BURST)) as u32;
            self.last = Some(now);
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

impl Default for IcmpRateLimit {
    fn default() -> Self {
        Self {
            tokens: Self::BURST,
            last: None,
        }
    }
}

/// Largest ICMPv4 error datagram (RFC 1812 §4.3.2.3).
const MAX_V4_ERROR: usize = 576;
/// Largest ICMPv6 error packet (RFC 4443 §2.4(c): the minimum IPv6 MTU).
const MAX_V6_ERROR: usize = 1280;

/// Builds into `out` the ICMP error `kind` about `original` (whose header is `header`), sent
/// from `from`, at most `max_len` bytes long. Returns false, leaving `out` empty, when the
/// rules forbid an error here: about another ICMP error, a later fragment, or a packet from
/// or to a multicast, broadcast, loopback or unspecified address, or when `from` is of the
/// other address family.
pub fn build_error(
    original: &[u8],
    header: &IpHeader,
    from: IpAddr,
    kind: IcmpError,
    max_len: usize,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    if from.is_ipv4() != header.is_ipv4() || !may_answer(original, header) {
        return false;
    }
    match (from, header.src) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            let total = (original.len() + 28).min(MAX_V4_ERROR.min(max_len));
            let Some(quoted) = total.checked_sub(28).filter(|q| *q > 0) else {
                return false;
            };
            let (ty, code) = kind.v4_type_code();
            out.extend_from_slice(&[0x45, 0xc0]);
            out.extend_from_slice(&((28 + quoted) as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 64, PROTO_ICMP, 0, 0]);
            out.extend_from_slice(&from.octets());
            out.extend_from_slice(&to.octets());
            let sum = packet::checksum(&out[..20], 0);
            out[10..12].copy_from_slice(&sum.to_be_bytes());
            out.extend_from_slice(&[ty, code, 0, 0, 0, 0]);
            let mtu = match kind {
                IcmpError::PacketTooBig { mtu } => mtu,
                _ => 0,
            };
            out.extend_from_slice(&mtu.to_be_bytes());
            out.extend_from_slice(&original[..quoted]);
            let sum = packet::checksum(&out[20..], 0);
            out[22..24].copy_from_slice(&sum.to_be_bytes());
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            let total = (original.len() + 48).min(MAX_V6_ERROR.min(max_len));
            let Some(quoted) = total.checked_sub(48).filter(|q| *q > 0) else {
                return false;
            };
            let (ty, code) = kind.v6_type_code();
            let icmp_len = (8 + quoted) as u16;
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&icmp_len.to_be_bytes());
            out.extend_from_slice(&[PROTO_ICMPV6, 64]);
            out.extend_from_slice(&from.octets());
            out.extend_from_slice(&to.octets());
            out.extend_from_slice(&[ty, code, 0, 0]);
            let mtu = match kind {
                IcmpError::PacketTooBig { mtu } => u32::from(mtu),
                _ => 0,
            };
            out.extend_from_slice(&mtu.to_be_bytes());
            out.extend_from_slice(&original[..quoted]);
            let pseudo =
                packet::ipv6_pseudo_header_sum(from, to, u32::from(icmp_len), PROTO_ICMPV6);
            let sum = packet::checksum(&out[40..], pseudo);
            out[42..44].copy_from_slice(&sum.to_be_bytes());
        }
        _ => unreachable!("families checked above"),
    }
    true
}

/// Whether RFC 1812 §4.3.2.7 and RFC 4443 §2.4(e) allow an ICMP error about this packet.
fn may_answer(original: &[u8], header: &IpHeader) -> bool {
    if header.later_fragment || !is_unicast(header.src) || !is_unicast(header.dst) {
        return false;
    }
    let icmp_type = original.get(header.header_len).copied();
    match (header.protocol, icmp_type) {
        // ICMPv4 errors are types 3, 4, 5, 11 and 12; anything unparsable counts as one.
        (PROTO_ICMP, Some(t)) if header.is_ipv4() => !matches!(t, 3 | 4 | 5 | 11 | 12),
        // ICMPv6 errors are types 0 to 127.
        (PROTO_ICMPV6, Some(t)) if !header.is_ipv4() => t >= 128,
        (PROTO_ICMP | PROTO_ICMPV6, None) => false,
        _ => true,
    }
}

fn is_unicast(addr: IpAddr) -> bool {
    !addr.is_unspecified()
        && !addr.is_multicast()
        && !addr.is_loopback()
        && match addr {
            IpAddr::V4(a) => !a.is_broadcast(),
            IpAddr::V6(_) => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests::ipv4;

    #[test]
    fn time_exceeded_v4_is_valid_and_quotes_the_original() {
        let orig = ipv4([10, 0, 0, 2], [10, 0, 0, 3], 1, true, &[7; 1000]);
        let h = IpHeader::parse(&orig).unwrap();
        let mut out = Vec::new();
        let from = IpAddr::from([10, 0, 0, 1]);
        assert!(build_error(
            &orig,
            &h,
            from,
            IcmpError::TimeExceeded,
            9000,
            &mut out
        ));
        let eh = IpHeader::parse(&out).expect("valid IPv4");
        assert_eq!(eh.src, from);
        assert_eq!(eh.dst, h.src);
        assert_eq!(eh.protocol, PROTO_ICMP);
        assert_eq!(out.len(), 576);
        assert_eq!(packet::checksum(&out[20..], 0), 0);
        assert_eq!((out[20], out[21]), (11, 0));
        assert_eq!(&out[28..48], &orig[..20]);
        // No error about that error.
        assert!(!build_error(
            &out,
            &eh,
            from,
            IcmpError::TimeExceeded,
            9000,
            &mut Vec::new()
        ));
    }

    #[test]
    fn packet_too_big_carries_the_mtu() {
        let orig = ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64, true, &[0; 1400]);
        let h = IpHeader::parse(&orig).unwrap();
        let mut out = Vec::new();
        let kind = IcmpError::PacketTooBig { mtu: 1280 };
        assert!(build_error(
            &orig,
            &h,
            [10, 0, 0, 1].into(),
            kind,
            200,
            &mut out
        ));
        assert_eq!(out.len(), 200);
        assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1280);
    }

    #[test]
    fn no_errors_for_broadcast_sources() {
        let orig = ipv4([255, 255, 255, 255], [10, 0, 0, 3], 1, true, &[0; 10]);
        let h = IpHeader::parse(&orig).unwrap();
        assert!(!build_error(
            &orig,
            &h,
            [10, 0, 0, 1].into(),
            IcmpError::TimeExceeded,
            9000,
            &mut Vec::new()
        ));
    }
}
