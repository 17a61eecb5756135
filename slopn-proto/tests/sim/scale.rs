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

#[test]
fn churn_leaves_the_hub_holding_what_it_held_before() {
    // Spokes leaving and coming back and spokes moving to a new address, round after
    // round: the hub's heap must come back to where it was (the soak in docs/BENCHMARKS.md
    // does the same for an hour over real sockets).
    const N: usize = 40;
    const ROUNDS: usize = 30;
    let pki = pki();
    let mut world = World::new(31, hub_config(&pki));
    for i in 0..N {
        world.add_spoke(spoke_config(&pki, i), LinkParams::pair());
    }
    assert!(world.all_established(Duration::from_secs(30)));
    world.run_for(Duration::from_secs(20));
    let before = memory::hub_live_bytes();
    for round in 0..ROUNDS {
        // Three leave with a goodbye and come back two seconds later.
        let leaving: Vec<usize> = (0..3).map(|k| (round * 7 + k * 13) % N).collect();
        let now = world.instant();
        for &i in &leaving {
            world.spokes[i].spoke.disconnect(now);
        }
        world.run_for(Duration::from_secs(2));
        let now = world.instant();
        for &i in &leaving {
            world.spokes[i].spoke.connect(now);
        }
        // Two move to a new address (QUIC migrates their sessions).
        for k in 0..2 {
            let i = (round * 11 + k * 17 + 5) % N;
            let moved: std::net::SocketAddr = format!("203.0.{}.{}:40000", 100 + round, 1 + k)
                .parse()
                .unwrap();
            world
                .net
                .add_node(moved, LinkParams::default(), LinkParams::default());
            world.spokes[i].addr = moved;
        }
        world.run_for(Duration::from_secs(3));
    }
    assert!(world.all_established(Duration::from_secs(30)));
    // Closed connections drain, old paths and connection IDs retire.
    world.run_for(Duration::from_secs(30));
    let after = memory::hub_live_bytes();
    let stats = world.hub().hub.stats();
    assert_eq!(stats.spokes_assigned, N);
    assert_eq!(stats.connections, N, "no connection left behind");
    println!(
        "{ROUNDS} rounds of churn over {N} spokes: hub heap {before} -> {after} bytes ({:+})",
        after - before
    );
    assert!(
        (after - before).abs() <= 64 * 1024,
        "the hub's heap went from {before} to {after} bytes"
    );
}
