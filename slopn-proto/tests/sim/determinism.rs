//! The same seed gives the same run, event for event and byte for byte on the wire.

use std::time::Duration;

use crate::basic::{assigned, ping};
use crate::net::LinkParams;
use crate::world::{World, hub_ip};
use crate::{hub_config, pki, spoke_config};

/// A busy scenario: lossy links, pings, a partition, a hub restart. With `os_crypto`, TLS
/// draws from the operating system instead of the seed.
fn scenario(seed: u64, os_crypto: bool) -> Vec<String> {
    let pki = pki();
    let mut config = hub_config(&pki);
    if os_crypto {
        config.crypto = slopn_proto::tls::default_provider();
    }
    let mut world = World::new(seed, config);
    for i in 0..3 {
        let mut config = spoke_config(&pki, i);
        if os_crypto {
            config.crypto = slopn_proto::tls::default_provider();
        }
        world.add_spoke(config, (LinkParams::lossy(), LinkParams::lossy()));
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
    let base = world.base;
    for s in &mut world.spokes {
        // Instants differ between runs; their offsets from the world's start do not.
        let mut stats = s.spoke.stats();
        let heard = stats.last_heard.take().map(|t| t - base);
        trace.push(format!("{stats:?}, heard at {heard:?}"));
    }
    trace
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let first = scenario(42, false);
    let second = scenario(42, false);
    assert!(first.len() > 30, "a real scenario: {} lines", first.len());
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        assert_eq!(a, b, "traces diverge at line {i}");
    }
    assert_eq!(first.len(), second.len());
    // And the seed matters.
    assert_ne!(first, scenario(43, false));
}

/// With the operating system's randomness in the handshakes the events still replay, but
/// not the bytes: why the simulation injects a seeded crypto provider.
#[test]
fn os_randomness_in_tls_changes_the_bytes_but_not_the_events() {
    let first = scenario(42, true);
    let second = scenario(42, true);
    let wire = |trace: &[String]| trace[trace.len() - 5].clone();
    assert!(wire(&first).contains("wire_digest"), "{}", wire(&first));
    assert_ne!(
        wire(&first),
        wire(&second),
        "OS randomness reaches the wire"
    );
    let strip = |trace: &[String]| trace[..trace.len() - 5].to_vec();
    assert_eq!(strip(&first), strip(&second), "events do not depend on it");
}
