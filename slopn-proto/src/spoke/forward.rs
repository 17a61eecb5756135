//! The spoke's packet path: the hub's datagrams out to the TUN side, and the TUN side's
//! packets to the hub, fragmented or answered with "packet too big" when they do not fit.

use std::time::Instant;

use bytes::Bytes;

use super::Tunnel;
use super::attempt::{Attempt, AttemptCx, Phase};
use crate::clamp_mtu;
use crate::icmp::IcmpError;
use crate::mss;
use crate::node::Packets;
use crate::packet::IpHeader;
use crate::stats::{DropReason, SpokeSnapshot};
use crate::transport::{Slot, Transport};

/// Passes every datagram the hub sent on this attempt to the TUN side, if it is for us. A
/// TCP SYN's MSS is clamped to what this spoke sends: the segments it asks for leave here.
pub(super) fn from_hub(a: &mut AttemptCx<'_>, packets: &mut Packets) {
    let (entry, tunnel) = (&mut *a.slot.entry, &mut *a.tunnel);
    while let Some(datagram) = entry.link.conn.datagrams().recv() {
        tunnel.stats.traffic.rx(datagram.len());
        let header = match IpHeader::parse(&datagram) {
            Err(_) => Err(DropReason::Malformed),
            Ok(h) if !tunnel.addresses.iter().any(|p| p.contains(h.dst)) => {
                Err(DropReason::NotForUs)
            }
            Ok(_) if entry.state.phase != Phase::Established => Err(DropReason::NotAssigned),
            Ok(h) => Ok(h),
        };
        let header = match header {
            Ok(header) => header,
            Err(reason) => {
                tunnel.stats.drops.add(reason);
                continue;
            }
        };
        let limit = || {
            let sends = entry.link.max_packet().unwrap_or(0);
            mss::limit(&header, sends, tunnel.max_tunnel_mtu)
        };
        let clamped = mss::clamped(&mut packets.arena, &datagram, &header, limit);
        packets.push_tun(clamped.unwrap_or(datagram));
    }
}

/// Sends a packet from the TUN side to the hub on the current attempt.
pub(super) fn to_hub(
    now: Instant,
    transport: &mut Transport<Attempt>,
    tunnel: &mut Tunnel,
    packets: &mut Packets,
    packet: &[u8],
) -> Result<(), DropReason> {
    // `current` is cleared when its attempt ends, so it names a live connection; without
    // one there is no session to carry the packet.
    let idx = tunnel.current.ok_or(DropReason::NotAssigned)?;
    let mut slot = transport.slot(idx).ok_or(DropReason::NotAssigned)?;
    if slot.entry.state.phase != Phase::Established {
        return Err(DropReason::NotAssigned);
    }
    let header = IpHeader::parse(packet).map_err(|_| DropReason::Malformed)?;
    if header.is_link_local() {
        return Err(DropReason::LinkLocal);
    }
    if !tunnel.addresses.iter().any(|p| p.contains(header.src)) {
        return Err(DropReason::SpoofedSource);
    }
    if !tunnel
        .routes
        .iter()
        .any(|r| r.matches(header.dst, header.protocol))
    {
        return Err(DropReason::NoRoute);
    }
    let max = slot
        .entry
        .link
        .max_packet()
        .ok_or(DropReason::NotAssigned)?;
    if packet.len() > max {
        if header.dont_fragment {
            let from = tunnel.hub_address(header.is_ipv4());
            let mtu = clamp_mtu(max);
            let kind = IcmpError::PacketTooBig { mtu };
            packets.icmp_to_tun(now, from, packet, &header, kind);
            return Err(DropReason::TooLarge { max });
        }
        for fragment in packets.arena.fragments(packet, &header, max)? {
            queue(&mut slot, &mut tunnel.stats, fragment)?;
        }
        return Ok(());
    }
    // The answers come back over the hub's connection to us, whose size the hub knows and
    // clamps to; this side's is the best guess for a hub that does not.
    let limit = || mss::limit(&header, max, tunnel.max_tunnel_mtu);
    let data = match mss::clamped(&mut packets.arena, packet, &header, limit) {
        Some(clamped) => clamped,
        None => packets.arena.copy(packet),
    };
    queue(&mut slot, &mut tunnel.stats, data)
}

fn queue(
    slot: &mut Slot<'_, Attempt>,
    stats: &mut SpokeSnapshot,
    packet: Bytes,
) -> Result<(), DropReason> {
    let len = packet.len();
    slot.entry.link.queue_datagram(packet)?;
    stats.traffic.tx(len);
    slot.mark_ready();
    Ok(())
}
