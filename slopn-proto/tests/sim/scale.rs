//! Many spokes at once, and what an idle one costs the hub.

use std::time::{Duration, Instant};

use crate::memory;
use crate::net::LinkParams;
use crate::world::World;
use crate::{hub_config, pki, spoke_config};

#[test]
fn two_hundred_spokes_at_once() {
    const N: usize = 200;
    let pki = pki();
    let wall = Instant::now();
    let mut world = World::new(30, hub_config(&pki));
    world.run_for(Duration::from_millis(10));
    let empty_hub = memory::hub_live_bytes();
    for i in 0..N {
        let links = LinkParams {
            latency: Duration::from_millis(5 + (i % 20) as u64),
            ..LinkParams::default()
        };
        world.add_spoke(spoke_config(&pki, i), (links.clone(), links));
    }
    assert!(world.all_established(Duration::from_secs(30)));
    let all_up = world.now;
    let mut addresses: Vec<_> = world
        .spokes
        .iter()
        .map(|s| s.spoke.addresses()[0])
        .collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), N, "distinct addresses");

    // Idle for a while: handshake state is gone, keep-alives keep everyone connected.
    world.run_for(Duration::from_secs(20));
    let per_spoke = (memory::hub_live_bytes() - empty_hub) / N as i64;
    let stats = world.hub().hub.stats();
    assert_eq!(stats.spokes_assigned, N);
    assert_eq!(
        stats.sessions_assigned_total, N as u64,
        "nobody reconnected"
    );
    println!(
        "{N} spokes: all assigned after {:.3} s simulated; hub heap per idle spoke {} bytes \
         ({:.1} KiB); {:.2} s wall",
        all_up.as_secs_f64(),
        per_spoke,
        per_spoke as f64 / 1024.0,
        wall.elapsed().as_secs_f64()
    );
    assert!(
        per_spoke <= 64 * 1024,
        "hub memory per idle spoke {per_spoke} bytes exceeds 64 KiB"
    );
}
