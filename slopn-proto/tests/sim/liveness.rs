//! The control stream stays responsive while datagrams saturate the connection.

use std::time::Duration;

use slopn_proto::{DropReason, SpokeEvent};

use crate::basic::assigned;
use crate::net::LinkParams;
use crate::world::World;
use crate::{hub_config, pki, spoke_config, udp_packet};

#[test]
fn route_updates_get_through_a_saturated_tunnel() {
    let pki = pki();
    let mut world = World::new(40, hub_config(&pki));
    let link = |mbps: u64| LinkParams {
        rate: Some(mbps * 1_000_000),
        queue_bytes: 64 * 1024,
        ..LinkParams::default()
    };
    // A sends faster than B can receive: the hub's queue towards B runs full.
    world.add_spoke(spoke_config(&pki, 0), (link(50), link(50)));
    world.add_spoke(spoke_config(&pki, 1), (link(10), link(10)));
    assert!(world.all_established(Duration::from_secs(5)));
    world.run_for(Duration::from_secs(2));
    let (a, b) = (assigned(&world, 0), assigned(&world, 1));
    let rtt = world.spokes[1].spoke.stats().rtt.unwrap();
    // Spoke A floods spoke B with packets that fill whole QUIC packets, leaving no room for
    // control frames beside them. (Sized to the current tunnel MTU: congestion losses can make
    // QUIC fall back to its minimum MTU, its black-hole detection cannot tell them apart.)
    let flood = |w: &mut World| {
        let now = w.instant();
        let mtu = w
            .spokes
            .iter()
            .filter_map(|s| s.spoke.tun_mtu())
            .min()
            .unwrap();
        let packet = udp_packet(a, b, 64, true, &vec![0x55; usize::from(mtu) - 28]);
        for _ in 0..64 {
            if w.spokes[0].spoke.handle_tun_packet(now, &packet) == Err(DropReason::Congested) {
                break;
            }
        }
    };
    world.run_until(Duration::from_secs(3), |w| {
        flood(w);
        false
    });
    let delivered_before = world.spokes[1].spoke.stats().traffic.rx_packets;
    println!("delivered before the push: {delivered_before}");
    assert!(
        delivered_before > 2_000,
        "the flood flows: {delivered_before} packets"
    );

    let now = world.instant();
    let pushed = world.now;
    world
        .hub()
        .hub
        .set_routes(now, vec!["192.168.77.0/24".parse().unwrap()])
        .unwrap();
    let mut latency = None;
    world.run_until(Duration::from_secs(10), |w| {
        flood(w);
        if latency.is_none()
            && w.spokes[1]
                .events
                .iter()
                .any(|e| matches!(e, SpokeEvent::RoutesChanged { routes } if routes.len() == 2))
        {
            latency = Some(w.now - pushed);
        }
        latency.is_some()
    });
    let latency = latency.expect("the route update arrived");
    let congested = world.spokes[0]
        .spoke
        .stats()
        .drops
        .get(DropReason::Congested);
    println!(
        "route update through a saturated 10 Mbit/s tunnel: {:.1} ms (idle RTT {:.1} ms; {} \
         packets delivered during the flood, {congested} refused at the sender's full queue, \
         {} at the hub's queue towards B)",
        latency.as_secs_f64() * 1e3,
        rtt.as_secs_f64() * 1e3,
        world.spokes[1].spoke.stats().traffic.rx_packets,
        world.hub().hub.stats().drops.get(DropReason::Congested),
    );
    assert!(
        latency < Duration::from_millis(500),
        "control delayed {latency:?} behind datagrams"
    );
}
