//! Static addressing and dual stack.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use slopn_proto::packet::{self, IpHeader, PROTO_ICMPV6, PROTO_UDP};
use slopn_proto::{DropReason, PoolConfig, SpokeEvent};

use crate::host::v4;
use crate::net::LinkParams;
use crate::world::World;
use crate::{hub_config, pki, spoke_config};

#[test]
fn requested_addresses_are_honoured_when_free_and_inside_the_pool() {
    let pki = pki();
    let mut world = World::new(50, hub_config(&pki));
    let wanted = v4(10, 100, 0, 50);
    for i in 0..2 {
        let mut config = spoke_config(&pki, i);
        config.requested_addresses = vec![wanted];
        world.add_spoke(config, LinkParams::pair());
    }
    let mut outside = spoke_config(&pki, 2);
    outside.requested_addresses = vec![v4(192, 168, 9, 9)];
    world.add_spoke(outside, LinkParams::pair());
    assert!(world.all_established(Duration::from_secs(5)));
    let got: Vec<IpAddr> = world
        .spokes
        .iter()
        .map(|s| s.spoke.addresses()[0])
        .collect();
    assert_eq!(got.iter().filter(|a| **a == wanted).count(), 1, "{got:?}");
    assert!(
        got.iter()
            .all(|a| matches!(a, IpAddr::V4(v) if v.octets()[..3] == [10, 100, 0]))
    );
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// An IPv6 UDP packet with a valid checksum.
fn udp6(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let udp_len = (8 + payload.len()) as u16;
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[PROTO_UDP, hop_limit]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let mut udp = vec![0x9c, 0x41, 0, 9];
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let pseudo = packet::ipv6_pseudo_header_sum(src, dst, u32::from(udp_len), PROTO_UDP);
    let sum = packet::checksum(&udp, pseudo);
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&udp);
    p
}

#[test]
fn dual_stack_spokes_route_ipv6_and_expire_hop_limits() {
    let pki = pki();
    let mut config = hub_config(&pki);
    config
        .pools
        .push(PoolConfig::new("fd00:100::/64".parse().unwrap()));
    let mut world = World::new(51, config);
    // Links that carry only QUIC's first 1200 bytes: the tunnel's packets stay at 1162.
    let narrow = LinkParams {
        mtu: 1200,
        ..LinkParams::default()
    };
    for i in 0..2 {
        world.add_spoke(spoke_config(&pki, i), (narrow.clone(), narrow.clone()));
    }
    assert!(world.all_established(Duration::from_secs(5)));
    let six = |w: &World, i: usize| match w.spokes[i].spoke.addresses().iter().find(|a| a.is_ipv6())
    {
        Some(IpAddr::V6(a)) => *a,
        other => panic!("no IPv6 address: {other:?}"),
    };
    let (a, b) = (six(&world, 0), six(&world, 1));
    assert_eq!(a, v6("fd00:100::2"));
    assert_eq!(world.spokes[0].spoke.hub_addresses().len(), 2);
    // With an IPv6 address the TUN MTU never goes under IPv6's 1280, even where QUIC's
    // packets carry only 1162 (the kernel would refuse the address on a smaller link).
    let mtus: Vec<u16> = world.spokes[0]
        .events
        .iter()
        .filter_map(|e| match e {
            SpokeEvent::Assigned { tun_mtu, .. } => *tun_mtu,
            SpokeEvent::MtuChanged { tun_mtu } => Some(*tun_mtu),
            _ => None,
        })
        .collect();
    assert!(
        !mtus.is_empty() && mtus.iter().all(|m| *m >= 1280),
        "{mtus:?}"
    );

    world.spokes[0].host.device.capture = true;
    world.spokes[1].host.device.capture = true;
    world.hub().host.device.capture = true;
    let now = world.instant();
    let spoke = &mut world.spokes[0].spoke;
    spoke
        .handle_tun_packet(now, &udp6(a, b, 9, b"over v6"))
        .unwrap();
    spoke
        .handle_tun_packet(now, &udp6(a, b, 1, b"last hop"))
        .unwrap();
    spoke
        .handle_tun_packet(now, &udp6(a, v6("fd00:100::1"), 64, b"to the hub"))
        .unwrap();
    // A forged IPv6 source never leaves the spoke.
    assert_eq!(
        spoke.handle_tun_packet(now, &udp6(v6("fd00:100::99"), b, 64, b"forged")),
        Err(DropReason::SpoofedSource)
    );
    world.run_for(Duration::from_millis(200));

    let at_b = world.spokes[1].host.device.captured.clone();
    assert_eq!(at_b.len(), 1, "only the packet with hops left arrives");
    let h = IpHeader::parse(&at_b[0]).unwrap();
    assert_eq!((h.src, h.dst, h.ttl), (IpAddr::V6(a), IpAddr::V6(b), 8));

    let at_a = world.spokes[0].host.device.captured.clone();
    assert_eq!(at_a.len(), 1);
    let h = IpHeader::parse(&at_a[0]).unwrap();
    assert_eq!(h.protocol, PROTO_ICMPV6);
    assert_eq!(h.src, IpAddr::V6(v6("fd00:100::1")));
    assert_eq!(at_a[0][40], 3, "ICMPv6 Time Exceeded");
    let IpAddr::V6(src) = h.src else {
        unreachable!()
    };
    let pseudo = packet::ipv6_pseudo_header_sum(src, a, (at_a[0].len() - 40) as u32, PROTO_ICMPV6);
    assert_eq!(
        packet::checksum(&at_a[0][40..], pseudo),
        0,
        "valid ICMPv6 checksum"
    );

    let at_hub = world.hub().host.device.captured.clone();
    assert_eq!(at_hub.len(), 1);
    assert!(at_hub[0].ends_with(b"to the hub"));
}

/// A spoke that restarted (new process, new UDP port) while its old session still looked
/// alive: the new session replaces the old one at once, inherits its address, and the old
/// one ends with REPLACED.
#[test]
fn a_restarted_spoke_replaces_its_old_session_and_keeps_its_address() {
    use slopn_proto::control::CloseCode;
    use slopn_proto::{DisconnectReason, HubEvent, SpokeState};

    let pki = pki();
    let mut world = World::new(51, hub_config(&pki));
    world.add_spoke(spoke_config(&pki, 0), LinkParams::pair());
    world.add_spoke(spoke_config(&pki, 1), LinkParams::pair());
    assert!(world.all_established(Duration::from_secs(5)));
    let before = crate::basic::assigned(&world, 0);
    // The old process vanishes without a word; a new one starts with the same credential.
    let old = world.spokes[0].addr;
    world.net.set_partitioned(old, true);
    let mut config = spoke_config(&pki, 0);
    config.seed = [99; 32];
    let new = world.add_spoke(config, LinkParams::pair());
    assert!(world.run_until(Duration::from_secs(5), |w| {
        w.spokes[new].spoke.state() == SpokeState::Established
    }));
    assert_eq!(crate::basic::assigned(&world, new), before);
    let replaced = world.hub().events.iter().any(|e| {
        matches!(e, HubEvent::Disconnected {
            reason: DisconnectReason::Local { code, .. }, ..
        } if *code == CloseCode::REPLACED)
    });
    assert!(replaced, "{:?}", world.hub().events);
    let b = crate::basic::assigned(&world, 1);
    assert!(crate::basic::ping(&mut world, Some(new), b, 7).is_some());
    world.run_for(Duration::from_secs(3));
    let hub = world.hub().hub.stats();
    assert_eq!((hub.connections, hub.spokes_assigned), (2, 2), "{hub:?}");
}
