//! The hub's packet path: from a spoke to the TUN side or to another spoke, and from the
//! TUN side to a spoke, with the TTL, ICMP errors and fragmentation a router owes.
//!
//! Per packet: one route lookup, no allocation (packets are cut from the arena), and the
//! sending spoke stays borrowed while the packet goes to the receiving one.

use std::time::Instant;

use bytes::Bytes;

use super::Tables;
use super::session::{HubSession, Phase, Session};
use crate::clamp_mtu;
use crate::icmp::IcmpError;
use crate::mss;
use crate::node::Packets;
use crate::packet::{self, IpHeader};
use crate::route::Route;
use crate::stats::{DropReason, HubStats};
use crate::transport::{Entry, Peers, Sched, Transport};

/// Routes every datagram the session's spoke sent.
pub(super) fn from_spoke(
    s: &mut Session<'_>,
    peers: &mut Peers<'_, HubSession>,
    packets: &mut Packets,
) {
    while let Some(datagram) = s.slot.entry.link.conn.datagrams().recv() {
        s.slot.entry.state.traffic.rx(datagram.len());
        s.hub.stats.traffic.rx(datagram.len());
        if let Err(reason) = route_from_spoke(s, peers, packets, datagram) {
            s.hub.stats.drops.add(reason);
            s.slot.entry.state.drops.add(reason);
        }
    }
}

/// Routes one packet a spoke sent.
fn route_from_spoke(
    s: &mut Session<'_>,
    peers: &mut Peers<'_, HubSession>,
    packets: &mut Packets,
    data: Bytes,
) -> Result<(), DropReason> {
    let from = &s.slot.entry.state;
    if from.phase != Phase::Active {
        return Err(DropReason::NotAssigned);
    }
    let header = IpHeader::parse(&data).map_err(|_| DropReason::Malformed)?;
    if !from.addresses.contains(&header.src) {
        return Err(DropReason::SpoofedSource);
    }
    // The segments a SYN asks for come back to its sender over this connection.
    let syn_limit = mss::is_syn(&data, &header).then(|| {
        let back = s.slot.entry.link.max_packet().unwrap_or(0);
        mss::limit(&header, back, s.hub.max_tunnel_mtu)
    });
    let to = match s.hub.routes.lookup(header.dst, header.protocol) {
        Route::Hub | Route::Tun => {
            let clamped = syn_limit
                .and_then(|limit| mss::clamped(&mut packets.arena, &data, &header, || limit));
            packets.push_tun(clamped.unwrap_or(data));
            return Ok(());
        }
        Route::Spoke(to) => to,
        Route::Unassigned => {
            icmp_to_spoke(s, packets, &data, &header, IcmpError::HostUnreachable);
            return Err(DropReason::NoRoute);
        }
        Route::PoolBroadcast => return Err(DropReason::NoRoute),
        Route::Unrouted => {
            icmp_to_spoke(s, packets, &data, &header, IcmpError::NetUnreachable);
            return Err(DropReason::NoRoute);
        }
    };
    let hairpin = to == s.slot.entry.idx();
    if s.hub.isolate_spokes && !hairpin {
        icmp_to_spoke(s, packets, &data, &header, IcmpError::AdminProhibited);
        return Err(DropReason::Isolated);
    }
    if header.ttl <= 1 {
        icmp_to_spoke(s, packets, &data, &header, IcmpError::TimeExceeded);
        return Err(DropReason::TtlExpired);
    }
    let mut packet = packets.arena.copy_mut(&data);
    packet::decrement_ttl(&mut packet);
    if let Some(limit) = syn_limit {
        mss::clamp(&mut packet, &header, limit);
    }
    // The route table names live sessions only (ending one removes its routes), so a
    // missing one is a refusal, not a case to skip silently.
    let dest = if hairpin {
        Some(&mut *s.slot.entry)
    } else {
        peers.get_mut(to)
    };
    let dest = dest.ok_or(DropReason::NotAssigned)?;
    let max = dest.link.max_packet().ok_or(DropReason::NotAssigned)?;
    if packet.len() <= max {
        send(dest, s.slot.sched, &mut s.hub.stats, packet.freeze());
        return Ok(());
    }
    if header.dont_fragment {
        let mtu = clamp_mtu(max);
        icmp_to_spoke(s, packets, &data, &header, IcmpError::PacketTooBig { mtu });
        return Err(DropReason::TooLarge { max });
    }
    let fragments = packets.arena.fragments(&packet, &header, max)?;
    let dest = if hairpin {
        Some(&mut *s.slot.entry)
    } else {
        peers.get_mut(to)
    };
    let dest = dest.ok_or(DropReason::NotAssigned)?;
    for fragment in fragments {
        send(dest, s.slot.sched, &mut s.hub.stats, fragment);
    }
    Ok(())
}

/// Routes one packet from the TUN side.
pub(super) fn from_tun(
    now: Instant,
    transport: &mut Transport<HubSession>,
    hub: &mut Tables,
    packets: &mut Packets,
    data: &[u8],
) -> Result<(), DropReason> {
    let header = IpHeader::parse(data).map_err(|_| DropReason::Malformed)?;
    if header.is_link_local() {
        return Err(DropReason::LinkLocal);
    }
    let from = hub.routes.hub_address(header.is_ipv4());
    let to = match hub.routes.lookup(header.dst, header.protocol) {
        Route::Spoke(to) => to,
        Route::Unassigned => {
            packets.icmp_to_tun(now, from, data, &header, IcmpError::HostUnreachable);
            return Err(DropReason::NoRoute);
        }
        Route::Hub | Route::Tun | Route::Unrouted | Route::PoolBroadcast => {
            return Err(DropReason::NoRoute);
        }
    };
    let dest = transport.slot(to).ok_or(DropReason::NotAssigned)?;
    let max = dest
        .entry
        .link
        .max_packet()
        .ok_or(DropReason::NotAssigned)?;
    if data.len() > max {
        if header.dont_fragment {
            let mtu = IcmpError::PacketTooBig {
                mtu: clamp_mtu(max),
            };
            packets.icmp_to_tun(now, from, data, &header, mtu);
            return Err(DropReason::TooLarge { max });
        }
        for fragment in packets.arena.fragments(data, &header, max)? {
            send(dest.entry, dest.sched, &mut hub.stats, fragment);
        }
        return Ok(());
    }
    // The segments this SYN asks for come from the spoke, which clamps to what it sends;
    // the hub's side of the connection is the guess for a spoke that does not.
    let limit = || mss::limit(&header, max, hub.max_tunnel_mtu);
    let packet = match mss::clamped(&mut packets.arena, data, &header, limit) {
        Some(clamped) => clamped,
        None => packets.arena.copy(data),
    };
    send(dest.entry, dest.sched, &mut hub.stats, packet);
    Ok(())
}

/// Queues a packet for a spoke, counting it or why it was refused.
fn send(to: &mut Entry<HubSession>, sched: &mut Sched, stats: &mut HubStats, packet: Bytes) {
    let len = packet.len();
    match to.link.queue_datagram(packet) {
        Ok(()) => {
            to.state.traffic.tx(len);
            stats.traffic.tx(len);
            sched.mark_ready(to);
        }
        Err(reason) => {
            to.state.drops.add(reason);
            stats.drops.add(reason);
        }
    }
}

/// Answers the session's spoke with an ICMP error about its packet, rate-limited per spoke.
fn icmp_to_spoke(
    s: &mut Session<'_>,
    packets: &mut Packets,
    original: &[u8],
    header: &IpHeader,
    kind: IcmpError,
) {
    let Some(src) = s.hub.routes.hub_address(header.is_ipv4()) else {
        return;
    };
    let to = &mut *s.slot.entry;
    let Some(max) = to.link.max_packet() else {
        return;
    };
    if !to.state.icmp.allow(s.now) {
        return;
    }
    if let Some(packet) = packets.icmp_error(original, header, src, kind, max) {
        send(to, s.slot.sched, &mut s.hub.stats, packet);
    }
}
