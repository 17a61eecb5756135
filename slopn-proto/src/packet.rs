//! IP header views: parsing and checking IPv4 and IPv6 headers, TTL and hop-limit
//! handling, and IPv4 fragmentation, all without allocation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IPv6 next-header number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

const IPV4_HEADER_MIN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;

/// Why a packet is not a well-formed IP packet.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum MalformedPacket {
    /// Shorter than the fixed header.
    #[error("packet shorter than its IP header")]
    Truncated,
    /// The version nibble is neither 4 nor 6.
    #[error("IP version {0} is neither 4 nor 6")]
    Version(u8),
    /// The IPv4 header length field is below 5 words or beyond the packet.
    #[error("bad IPv4 header length")]
    HeaderLength,
    /// The length field disagrees with the packet's real length.
    #[error("length field {field} does not match packet length {actual}")]
    Length {
        /// What the header says.
        field: usize,
        /// What arrived.
        actual: usize,
    },
    /// The IPv4 header checksum is wrong.
    #[error("bad IPv4 header checksum")]
    Checksum,
}

/// The fields of an IPv4 or IPv6 header that routing needs, checked for consistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHeader {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4 protocol or IPv6 next header (extension headers are not walked).
    pub protocol: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// Header length in bytes (IPv6: the fixed 40-byte header).
    pub header_len: usize,
    /// Total length in bytes.
    pub total_len: usize,
    /// IPv4 "don't fragment" flag; always true for IPv6, which routers never fragment.
    pub dont_fragment: bool,
    /// Whether this is an IPv4 fragment other than the first (offset > 0).
    pub later_fragment: bool,
}

impl IpHeader {
    /// Whether the packet never leaves its link: from an IPv6 link-local or unspecified
    /// address, or to link-scope multicast (`ff01::/16`, `ff02::/16`, 224.0.0.0/24). Routers,
    /// and so the tunnel, do not forward it.
    pub fn is_link_local(&self) -> bool {
        match (self.src, self.dst) {
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                src.is_unicast_link_local()
                    || src.is_unspecified()
                    || (dst.is_multicast() && dst.segments()[0] & 0x000f <= 2)
            }
            (_, IpAddr::V4(dst)) => dst.octets()[..3] == [224, 0, 0],
            _ => false,
        }
    }

    /// Parses and checks the header of `packet`, which must be exactly one IP packet.
    pub fn parse(packet: &[u8]) -> Result<Self, MalformedPacket> {
        let first = *packet.first().ok_or(MalformedPacket::Truncated)?;
        match first >> 4 {
            4 => Self::parse_v4(packet),
            6 => Self::parse_v6(packet),
            v => Err(MalformedPacket::Version(v)),
        }
    }

    fn parse_v4(p: &[u8]) -> Result<Self, MalformedPacket> {
        if p.len() < IPV4_HEADER_MIN {
            return Err(MalformedPacket::Truncated);
        }
        let header_len = usize::from(p[0] & 0x0f) * 4;
        if header_len < IPV4_HEADER_MIN || header_len > p.len() {
            return Err(MalformedPacket::HeaderLength);
        }
        let total_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
        if total_len != p.len() {
            return Err(MalformedPacket::Length {
                field: total_len,
                actual: p.len(),
            });
        }
        if checksum(&p[..header_len], 0) != 0 {
            return Err(MalformedPacket::Checksum);
        }
        let flags_frag = u16::from_be_bytes([p[6], p[7]]);
        Ok(Self {
            src: IpAddr::V4(Ipv4Addr::new(p[12], p[13], p[14], p[15])),
            dst: IpAddr::V4(Ipv4Addr::new(p[16], p[17], p[18], p[19])),
            protocol: p[9],
            ttl: p[8],
            header_len,
            total_len,
            dont_fragment: flags_frag & 0x4000 != 0,
            later_fragment: flags_frag & 0x1fff != 0,
        })
    }

    fn parse_v6(p: &[u8]) -> Result<Self, MalformedPacket> {
        if p.len() < IPV6_HEADER_LEN {
            return Err(MalformedPacket::Truncated);
        }
        let payload_len = usize::from(u16::from_be_bytes([p[4], p[5]]));
        if payload_len + IPV6_HEADER_LEN != p.len() {
            return Err(MalformedPacket::Length {
                field: payload_len + IPV6_HEADER_LEN,
                actual: p.len(),
            });
        }
        let src: [u8; 16] = p[8..24].try_into().expect("16 bytes");
        let dst: [u8; 16] = p[24..40].try_into().expect("16 bytes");
        Ok(Self {
            src: IpAddr::V6(Ipv6Addr::from(src)),
            dst: IpAddr::V6(Ipv6Addr::from(dst)),
            protocol: p[6],
            ttl: p[7],
            header_len: IPV6_HEADER_LEN,
            total_len: p.len(),
            dont_fragment: true,
            later_fragment: false,
        })
    }

    /// Whether this packet is IPv4.
    pub fn is_ipv4(&self) -> bool {
        self.src.is_ipv4()
    }
}

/// Decrements the TTL (IPv4, fixing the header checksum incrementally as in RFC 1624) or the
/// hop limit (IPv6) of a packet already checked by [`IpHeader::parse`]. The caller has
/// checked that the value is above 1.
pub fn decrement_ttl(packet: &mut [u8]) {
    if packet[0] >> 4 == 4 {
        packet[8] -= 1;
        // The TTL is the high byte of a 16-bit word: the sum of the header grows by 0x0100
        // when it shrinks by one, so the checksum (its complement) grows by 0x0100.
        let sum = u32::from(u16::from_be_bytes([packet[10], packet[11]])) + 0x0100;
        let folded = (sum + (sum >> 16)) as u16;
        packet[10..12].copy_from_slice(&folded.to_be_bytes());
    } else {
        packet[7] -= 1;
    }
}

/// Why an IPv4 packet could not be fragmented. Nothing was emitted.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum FragmentError {
    /// The size limit leaves no room for 8 bytes of data after the header.
    #[error("no room for data in a {0}-byte fragment")]
    NoRoom(usize),
    /// The packet (itself a fragment) ends beyond the 65,535 bytes an IPv4 datagram can
    /// reassemble to, so some fragment offset would not fit its 13 bits.
    #[error("fragment ends beyond the largest IPv4 datagram")]
    BeyondLimit,
}

/// Splits an IPv4 packet whose "don't fragment" flag is clear into fragments of at most
/// `max_len` bytes, as a router must (RFC 791), and hands each to `emit`. `scratch` is reused
/// between fragments. Emits nothing when it returns an error.
pub fn fragment_v4(
    packet: &[u8],
    header: &IpHeader,
    max_len: usize,
    scratch: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]),
) -> Result<(), FragmentError> {
    let hl = header.header_len;
    let chunk = max_len.saturating_sub(hl) & !7;
    if chunk == 0 {
        return Err(FragmentError::NoRoom(max_len));
    }
    let flags_frag = u16::from_be_bytes([packet[6], packet[7]]);
    let base_offset = usize::from(flags_frag & 0x1fff) * 8;
    let original_more = flags_frag & 0x2000 != 0;
    let payload = &packet[hl..];
    // Offsets are 13 bits of 8-byte units; past 65,535 bytes they would spill into the flags.
    if hl + base_offset + payload.len() > usize::from(u16::MAX) {
        return Err(FragmentError::BeyondLimit);
    }
    let mut at = 0;
    while at < payload.len() {
        let end = (at + chunk).min(payload.len());
        let more = end < payload.len() || original_more;
        scratch.clear();
        scratch.extend_from_slice(&packet[..hl]);
        scratch.extend_from_slice(&payload[at..end]);
        let total = scratch.len() as u16;
        scratch[2..4].copy_from_slice(&total.to_be_bytes());
        let offset = ((base_offset + at) / 8) as u16;
        let flags = (flags_frag & 0x8000) | if more { 0x2000 } else { 0 };
        scratch[6..8].copy_from_slice(&(flags | offset).to_be_bytes());
        scratch[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&scratch[..hl], 0);
        scratch[10..12].copy_from_slice(&sum.to_be_bytes());
        emit(scratch);
        at = end;
    }
    Ok(())
}

/// The Internet checksum (RFC 1071) of `data`, starting from a partial sum `initial`.
/// Over a region whose checksum field is filled in, a valid result is 0.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early so the sum never overflows, even for 64 KiB inputs.
        if sum > 0xffff_0000 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The partial sum of an IPv6 pseudo-header (RFC 8200 §8.1), for ICMPv6, TCP and UDP.
pub fn ipv6_pseudo_header_sum(src: Ipv6Addr, dst: Ipv6Addr, len: u32, next_header: u8) -> u32 {
    let mut sum = 0u32;
    for addr in [src, dst] {
        for pair in addr.octets().chunks_exact(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
    }
    sum + (len >> 16) + (len & 0xffff) + u32::from(next_header)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal valid IPv4 packet with the given fields and payload.
    pub(crate) fn ipv4(src: [u8; 4], dst: [u8; 4], ttl: u8, df: bool, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut p = vec![
            0x45,
            0,
            0,
            0,
            0,
            1,
            if df { 0x40 } else { 0 },
            0,
            ttl,
            PROTO_UDP,
            0,
            0,
        ];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        let sum = checksum(&p, 0);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn link_scope_packets_are_told_apart() {
        let header = |src: &str, dst: &str| IpHeader {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: 58,
            ttl: 255,
            header_len: 40,
            total_len: 56,
            dont_fragment: true,
            later_fragment: false,
        };
        for (src, dst) in [
            ("fe80::1", "ff02::2"),
            ("fe80::1", "fd00::2"),
            ("::", "ff02::16"),
            ("fd00::2", "ff01::1"),
            ("10.0.0.2", "224.0.0.22"),
        ] {
            assert!(header(src, dst).is_link_local(), "{src} -> {dst}");
        }
        for (src, dst) in [
            ("fd00::2", "fd00::3"),
            ("fd00::2", "ff05::1"),
            ("fd00::2", "ff0e::1"),
            ("10.0.0.2", "224.0.1.1"),
            ("10.0.0.2", "10.0.0.3"),
        ] {
            assert!(!header(src, dst).is_link_local(), "{src} -> {dst}");
        }
    }

    #[test]
    fn parses_and_checks_ipv4() {
        let p = ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64, true, b"hello");
        let h = IpHeader::parse(&p).unwrap();
        assert_eq!(h.src, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(h.dst, IpAddr::from([10, 0, 0, 3]));
        assert_eq!((h.ttl, h.total_len, h.header_len), (64, 25, 20));
        assert!(h.dont_fragment && !h.later_fragment);

        let mut bad = p.clone();
        bad[12] ^= 1;
        assert_eq!(IpHeader::parse(&bad), Err(MalformedPacket::Checksum));
        assert!(IpHeader::parse(&p[..24]).is_err());
        assert_eq!(IpHeader::parse(&[0x55]), Err(MalformedPacket::Version(5)));
        assert_eq!(IpHeader::parse(&[]), Err(MalformedPacket::Truncated));
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        for ttl in 2..=255u8 {
            let mut p = ipv4([192, 168, 1, 1], [10, 9, 8, 7], ttl, false, &[1, 2, 3]);
            decrement_ttl(&mut p);
            let h = IpHeader::parse(&p).expect("checksum still valid");
            assert_eq!(h.ttl, ttl - 1);
        }
    }

    #[test]
    fn fragments_reassemble_to_the_original() {
        let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let p = ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64, false, &payload);
        let h = IpHeader::parse(&p).unwrap();
        let mut frags = Vec::new();
        let mut scratch = Vec::new();
        fragment_v4(&p, &h, 300, &mut scratch, |f| frags.push(f.to_vec())).unwrap();
        assert_eq!(frags.len(), 4);
        let mut data = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            let fh = IpHeader::parse(f).expect("valid fragment");
            assert!(f.len() <= 300);
            let word = u16::from_be_bytes([f[6], f[7]]);
            assert_eq!(usize::from(word & 0x1fff) * 8, data.len());
            assert_eq!(word & 0x2000 != 0, i + 1 < frags.len());
            assert_eq!(fh.later_fragment, i > 0);
            data.extend_from_slice(&f[20..]);
        }
        assert_eq!(data, payload);
    }

    /// A fragment near the end of the 64 KiB datagram: its own fragments keep offsets within
    /// 13 bits and flags intact; one that ends beyond 65,535 bytes is refused whole.
    #[test]
    fn fragments_near_the_offset_limit() {
        let with_offset = |offset_units: u16, len: usize| {
            let mut p = ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64, false, &vec![9; len]);
            p[6..8].copy_from_slice(&offset_units.to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let sum = checksum(&p[..20], 0);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            p
        };
        let mut scratch = Vec::new();
        // 8000 * 8 + 1400 + 20 = 65,420: fits.
        let p = with_offset(8000, 1400);
        let h = IpHeader::parse(&p).unwrap();
        let mut words = Vec::new();
        fragment_v4(&p, &h, 576, &mut scratch, |f| {
            words.push(u16::from_be_bytes([f[6], f[7]]))
        })
        .unwrap();
        assert_eq!(words.len(), 3);
        for (i, w) in words.iter().enumerate() {
            assert_eq!(w & 0x4000, 0, "DF stays clear");
            assert_eq!(
                w & 0x2000 != 0,
                i + 1 < words.len(),
                "MF only before the last"
            );
            assert_eq!(usize::from(w & 0x1fff), 8000 + i * 69);
        }
        // 8100 * 8 + 1400 + 20 > 65,535: the last offsets would overflow into the MF flag.
        let p = with_offset(8100, 1400);
        let h = IpHeader::parse(&p).unwrap();
        let mut emitted = 0;
        let result = fragment_v4(&p, &h, 576, &mut scratch, |_| emitted += 1);
        assert_eq!(result, Err(FragmentError::BeyondLimit));
        assert_eq!(emitted, 0);
        assert_eq!(
            fragment_v4(&p, &h, 27, &mut scratch, |_| emitted += 1),
            Err(FragmentError::NoRoom(27))
        );
    }
}
