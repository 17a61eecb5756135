//! The demo, narrated: a hub and three spokes in the simulated network, pinging and moving
//! data through the tunnel. `scripts/demo` runs it with its output shown.

use std::time::{Duration, Instant};

use crate::basic::{assigned, ping};
use crate::net::LinkParams;
use crate::tcp::transfer;
use crate::world::{World, hub_ip};
use crate::{hub_config, pki, spoke_config};

#[test]
fn demo() {
    let wall = Instant::now();
    let pki = pki();
    let mut world = World::new(7, hub_config(&pki));
    let link = LinkParams {
        latency: Duration::from_millis(10),
        rate: Some(100_000_000),
        ..LinkParams::default()
    };
    println!(
        "hub: QUIC on {}, pool 10.100.0.0/24, hub address {}",
        world.hub_addr,
        hub_ip()
    );
    for i in 0..3 {
        world.add_spoke(spoke_config(&pki, i), (link.clone(), link.clone()));
    }
    assert!(world.all_established(Duration::from_secs(5)));
    for s in &mut world.spokes {
        println!(
            "{}: assigned {:?} after {:.1} ms (simulated), tunnel MTU {:?}",
            s.name,
            s.spoke.addresses(),
            world.now.as_secs_f64() * 1e3,
            s.spoke.tun_mtu()
        );
    }
    world.run_for(Duration::from_secs(1));
    let rtt = ping(&mut world, Some(0), hub_ip(), 1).expect("ping hub");
    println!(
        "spoke-0 -> hub {}: ping {:.1} ms (two 10 ms links each way)",
        hub_ip(),
        rtt.as_secs_f64() * 1e3
    );
    let b = assigned(&world, 1);
    let rtt = ping(&mut world, Some(0), b, 2).expect("ping spoke");
    println!(
        "spoke-0 -> spoke-1 {b}: ping {:.1} ms (through the hub)",
        rtt.as_secs_f64() * 1e3
    );
    let bytes = 4 * 1024 * 1024;
    let took = transfer(&mut world, 2, 1, bytes, Duration::from_secs(60));
    println!(
        "spoke-2 -> spoke-1: {} MiB over TCP in {:.2} s simulated ({:.1} Mbit/s), every byte checked",
        bytes >> 20,
        took.as_secs_f64(),
        bytes as f64 * 8.0 / took.as_secs_f64() / 1e6
    );
    let stats = world.hub().hub.stats();
    println!(
        "hub: {} spokes, {} packets forwarded, {} dropped; {:.2} s of wall time for {:.1} s simulated",
        stats.spokes_assigned,
        stats.traffic.tx_packets,
        stats.drops.total(),
        wall.elapsed().as_secs_f64(),
        world.now.as_secs_f64()
    );
    assert_eq!(stats.drops.total(), 0);
}
