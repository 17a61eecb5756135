//! TCP MSS clamping: a TCP SYN entering the tunnel announces a maximum segment size that
//! fits the tunnel, so that neither end sends segments the tunnel would have to refuse.
//!
//! Path MTU discovery normally takes care of that, but not always: an IPv6 host never
//! hears of a path below 1280 bytes (it ignores "packet too big" under IPv6's minimum, and a
//! TUN device cannot go below it), and hosts behind a gateway, or behind filters that drop
//! ICMP, may not hear of the tunnel at all. OpenVPN's `mssfix` and the `TCPMSS` target
//! people add to WireGuard set-ups do the same.
//!
//! A SYN's MSS bounds the segments that come back to its sender, so each side clamps with
//! the connection those segments will take: the spoke for SYNs it delivers from the hub
//! (their answers leave through it), the hub for SYNs from a spoke (their answers go back to
//! it). The limit is the most the tunnel can carry ([`limit`]): hosts learn of a narrower
//! path from "packet too big" as usual, except IPv6 hosts under 1280 bytes, which are
//! clamped to what the connection carries now.
//!
//! Only the SYN's MSS option changes, with the checksum fixed incrementally (RFC 1624); a
//! packet that is no TCP SYN, carries no MSS option or already fits is left as it is.

use bytes::Bytes;

use crate::arena::PacketArena;
use crate::packet::IpHeader;

/// TCP's protocol number.
const PROTO_TCP: u8 = 6;
/// IPv6's minimum link MTU, below which hosts ignore "packet too big".
const IPV6_MIN_MTU: usize = 1280;
/// TCP's fixed header, without options.
const TCP_HEADER: usize = 20;
/// The SYN flag in TCP's flags byte.
const SYN: u8 = 0x02;
/// The MSS option: kind 2, length 4.
const OPTION_MSS: u8 = 2;

/// Whether `packet` (parsed as `header`) is a TCP SYN: a few byte comparisons, for the
/// packet path to skip everything else.
pub(crate) fn is_syn(packet: &[u8], header: &IpHeader) -> bool {
    header.protocol == PROTO_TCP
        && !header.later_fragment
        && packet
            .get(header.header_len + 13)
            .is_some_and(|flags| flags & SYN != 0)
}

/// Where the MSS option's value sits in `packet` and what it says, if `packet` (parsed as
/// `header`) is a TCP SYN that carries one.
fn mss_option(packet: &[u8], header: &IpHeader) -> Option<(usize, u16)> {
    if !is_syn(packet, header) {
        return None;
    }
    let tcp = packet.get(header.header_len..)?;
    if tcp.len() < TCP_HEADER {
        return None;
    }
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    let options = tcp.get(TCP_HEADER..data_offset)?;
    let mut at = 0;
    while at < options.len() {
        match options[at] {
            0 => return None,
            1 => at += 1,
            kind => {
                let len = usize::from(*options.get(at + 1)?);
                if len < 2 || at + len > options.len() {
                    return None;
                }
                if kind == OPTION_MSS && len == 4 {
                    let value = u16::from_be_bytes([options[at + 2], options[at + 3]]);
                    return Some((header.header_len + TCP_HEADER + at + 2, value));
                }
                at += len;
            }
        }
    }
    None
}

/// The largest packet a SYN's segments should make, for a connection that carries packets
/// of up to `now` bytes at the moment and `ceiling` at most (path MTU discovery's bound).
pub(crate) fn limit(header: &IpHeader, now: usize, ceiling: usize) -> usize {
    if !header.is_ipv4() && now < IPV6_MIN_MTU {
        now
    } else {
        ceiling.max(now)
    }
}

/// The MSS that lets a segment fit a packet of `max_packet` bytes.
fn mss_for(header: &IpHeader, max_packet: usize) -> u16 {
    let mss = max_packet.saturating_sub(header.header_len + TCP_HEADER);
    mss.min(usize::from(u16::MAX)) as u16
}

/// Whether `packet` is a TCP SYN whose MSS lets segments larger than `max_packet` bytes
/// come, so that [`clamp`] would change it.
fn needs_clamp(packet: &[u8], header: &IpHeader, max_packet: usize) -> bool {
    mss_option(packet, header).is_some_and(|(_, mss)| mss > mss_for(header, max_packet))
}

/// A copy of `packet` cut from `arena` with its MSS clamped, if it is a TCP SYN that needs
/// it; `None` for every other packet (the packet path then goes on with the original).
/// `limit` (the packet size, see [`limit`]) is asked for only for SYNs.
pub(crate) fn clamped(
    arena: &mut PacketArena,
    packet: &[u8],
    header: &IpHeader,
    limit: impl FnOnce() -> usize,
) -> Option<Bytes> {
    if !is_syn(packet, header) {
        return None;
    }
    let limit = limit();
    if !needs_clamp(packet, header, limit) {
        return None;
    }
    let mut copy = arena.copy_mut(packet);
    clamp(&mut copy, header, limit);
    Some(copy.freeze())
}

/// Lowers the MSS of a TCP SYN so that segments fit packets of `max_packet` bytes. Returns
/// whether it changed the packet.
pub(crate) fn clamp(packet: &mut [u8], header: &IpHeader, max_packet: usize) -> bool {
    let Some((at, mss)) = mss_option(packet, header) else {
        return false;
    };
    let clamped = mss_for(header, max_packet);
    // The checksum is fixed word by word: an option value at an odd offset from the TCP
    // header (no stack puts MSS there) is left alone rather than recomputed.
    if mss <= clamped || !(at - header.header_len).is_multiple_of(2) {
        return false;
    }
    let checksum_at = header.header_len + 16;
    let old_sum = u16::from_be_bytes([packet[checksum_at], packet[checksum_at + 1]]);
    // RFC 1624: HC' = ~(~HC + ~m + m').
    let mut sum = u32::from(!old_sum) + u32::from(!mss) + u32::from(clamped);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    packet[checksum_at..checksum_at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    packet[at..at + 2].copy_from_slice(&clamped.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::checksum;

    /// A TCP SYN from 10.0.0.2 to 10.0.0.3 with the given options, checksummed.
    fn syn_v4(options: &[u8]) -> Vec<u8> {
        let tcp_len = TCP_HEADER + options.len();
        let total = (20 + tcp_len) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, PROTO_TCP, 0, 0];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[10, 0, 0, 2, 10, 0, 0, 3]);
        let sum = checksum(&p, 0);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut tcp = vec![0u8; TCP_HEADER];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
        tcp[12] = ((tcp_len / 4) as u8) << 4;
        tcp[13] = SYN;
        tcp.extend_from_slice(options);
        let sum = checksum(&tcp, pseudo_sum(&p[12..20], tcp_len));
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(&tcp);
        p
    }

    /// The IPv4 pseudo-header's sum for a TCP segment of `len` bytes.
    fn pseudo_sum(addresses: &[u8], len: usize) -> u32 {
        let words = addresses
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])));
        words.sum::<u32>() + u32::from(PROTO_TCP) + len as u32
    }

    fn tcp_checksum_ok(p: &[u8]) -> bool {
        checksum(&p[20..], pseudo_sum(&p[12..20], p.len() - 20)) == 0
    }

    #[test]
    fn a_syn_announcing_too_much_is_clamped_and_stays_valid() {
        // MSS 1460, then the options Linux sends after it.
        let options = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let mut p = syn_v4(&options);
        assert!(tcp_checksum_ok(&p));
        let header = IpHeader::parse(&p).unwrap();
        assert!(needs_clamp(&p, &header, 1194));
        assert!(clamp(&mut p, &header, 1194));
        assert_eq!(mss_option(&p, &header), Some((42, 1194 - 40)));
        assert!(tcp_checksum_ok(&p), "checksum fixed incrementally");
        // Already fits: untouched.
        assert!(!needs_clamp(&p, &header, 1414));
        let before = p.clone();
        assert!(!clamp(&mut p, &header, 1414));
        assert_eq!(p, before);
    }

    #[test]
    fn the_limit_is_the_ceiling_unless_ipv6_runs_under_its_minimum() {
        let v4 = IpHeader::parse(&syn_v4(&[2, 4, 5, 0xb4])).unwrap();
        let mut v6 = v4;
        v6.src = "fd00::2".parse().unwrap();
        v6.dst = "fd00::3".parse().unwrap();
        v6.header_len = 40;
        // IPv4 hosts hear "packet too big" at any size: clamped to the ceiling only, so a
        // SYN sent while discovery climbs is not held to 1162 bytes for good.
        assert_eq!(limit(&v4, 1162, 1414), 1414);
        assert_eq!(limit(&v6, 1300, 1414), 1414);
        // IPv6 hosts ignore it below 1280: clamped to what the connection carries now.
        assert_eq!(limit(&v6, 1194, 1414), 1194);
        assert_eq!(mss_for(&v6, 1194), 1194 - 60);
        assert_eq!(mss_for(&v4, 1414), 1414 - 40);
    }

    #[test]
    fn only_syns_with_an_mss_option_are_touched() {
        // MSS after NOPs is found.
        let mut p = syn_v4(&[1, 1, 2, 4, 0x05, 0xb4, 1, 1]);
        let header = IpHeader::parse(&p).unwrap();
        assert!(clamp(&mut p, &header, 1300));
        assert!(tcp_checksum_ok(&p));
        // No MSS option, an end-of-options first, a truncated option, not a SYN.
        for options in [
            vec![1, 1, 1, 1],
            vec![0, 0, 2, 4, 5, 0xb4, 0, 0],
            vec![2, 9, 0, 0],
        ] {
            let mut p = syn_v4(&options);
            let header = IpHeader::parse(&p).unwrap();
            assert!(!needs_clamp(&p, &header, 1000), "{options:?}");
            assert!(!clamp(&mut p, &header, 1000), "{options:?}");
        }
        let mut ack = syn_v4(&[2, 4, 0x05, 0xb4]);
        ack[20 + 13] = 0x10;
        let header = IpHeader::parse(&ack).unwrap();
        assert!(!needs_clamp(&ack, &header, 1000));
    }
}
