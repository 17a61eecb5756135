//! The same seed gives the same run, event for event.

use std::time::Duration;

use crate::basic::{assigned, ping};
use crate::net::LinkParams;
use crate::world::{World, hub_ip};
use crate::{hub_config, pki, spoke_config};

/// A busy scenario: lossy links, pings, a partition, a hub restart.
fn scenario(seed: u64) -> Vec<String> {
    let pki = pki();
    let mut world = World::new(seed, hub_config(&pki));
    for i in 0..3 {
        world.add_spoke(
            spoke_config(&pki, i),
            (LinkParams::lossy(), LinkParams::lossy()),
        );
    }
    world.run_for(Duration::from_secs(2));
    let b = assigned(&world, 1);
    let _ = ping(&mut world, Some(0), hub_ip(), 1);
    let _ = ping(&mut world, Some(2), b, 2);
    let addr = world.spokes[2].addr;
    world.net.set_partitioned(addr, true);
    world.run_for(Duration::from_secs(10));
    world.net.set_partitioned(addr, false);
    world.run_for(Duration::from_secs(3));
    world.kill_hub();
    world.run_for(Duration::from_secs(1));
    world.start_hub();
    world.run_for(Duration::from_secs(5));
    let mut trace = world.trace.clone();
    trace.push(format!("{:?}", world.net.stats));
    trace.push(format!("{:?}", world.hub().hub.stats()));
    for s in &mut world.spokes {
        trace.push(format!("{:?}", s.spoke.stats()));
    }
    trace
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let first = scenario(42);
    let second = scenario(42);
    assert!(first.len() > 30, "a real scenario: {} lines", first.len());
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        assert_eq!(a, b, "traces diverge at line {i}");
    }
    assert_eq!(first.len(), second.len());
    // And the seed matters.
    assert_ne!(first, scenario(43));
}
