//! Spokes get addresses and reach the hub and each other.

use std::time::Duration;

use slopn_proto::{DropReason, SpokeState};

use crate::host::v4;
use crate::net::LinkParams;
use crate::world::{World, hub_ip};
use crate::{hub_config, pki, spoke_config};

/// Pings `to` from the host behind spoke `from` (or the hub's host for `None`) and waits
/// for the reply.
pub fn ping(
    world: &mut World,
    from: Option<usize>,
    to: std::net::IpAddr,
    ident: u16,
) -> Option<Duration> {
    use smoltcp::socket::icmp::Endpoint;
    let host = match from {
        Some(i) => &mut world.spokes[i].host,
        None => &mut world.hub().host,
    };
    let handle = host.add_icmp(Endpoint::Ident(ident));
    host.send_ping(handle, to, ident, 1, 56);
    let start = world.now;
    let mut got = false;
    world.run_until(Duration::from_secs(5), |w| {
        let host = match from {
            Some(i) => &mut w.spokes[i].host,
            None => &mut w.hub().host,
        };
        got |= host
            .recv_pongs(handle)
            .iter()
            .any(|(src, seq)| *src == to && *seq == 1);
        got
    });
    got.then(|| world.now - start)
}

pub fn assigned(world: &World, i: usize) -> std::net::IpAddr {
    world.spokes[i].spoke.addresses()[0]
}

#[test]
fn three_spokes_get_distinct_addresses_and_reach_everyone() {
    let pki = pki();
    let mut world = World::new(1, hub_config(&pki));
    for i in 0..3 {
        world.add_spoke(spoke_config(&pki, i), LinkParams::pair());
    }
    assert!(world.all_established(Duration::from_secs(5)));
    let addrs: Vec<_> = (0..3).map(|i| assigned(&world, i)).collect();
    assert_eq!(
        addrs,
        [v4(10, 100, 0, 2), v4(10, 100, 0, 3), v4(10, 100, 0, 4)]
    );

    let mut ident = 1;
    for i in 0..3 {
        let rtt = ping(&mut world, Some(i), hub_ip(), ident).expect("spoke pings hub");
        assert!(
            rtt >= Duration::from_millis(20),
            "two 5 ms links each way: {rtt:?}"
        );
        ident += 1;
        for (j, to) in addrs.iter().enumerate() {
            if i != j {
                ping(&mut world, Some(i), *to, ident).expect("spoke pings spoke");
                ident += 1;
            }
        }
    }
    // And the hub's host reaches every spoke.
    for (i, addr) in addrs.iter().enumerate() {
        ping(&mut world, None, *addr, 100 + i as u16).expect("hub pings spoke");
    }
    let stats = world.hub().hub.stats();
    assert_eq!(stats.spokes_assigned, 3);
    assert_eq!(stats.drops.total(), 0, "{:?}", stats.drops);
}

#[test]
fn isolated_spokes_reach_the_hub_but_not_each_other() {
    let pki = pki();
    let mut config = hub_config(&pki);
    config.isolate_spokes = true;
    let mut world = World::new(2, config);
    for i in 0..2 {
        world.add_spoke(spoke_config(&pki, i), LinkParams::pair());
    }
    world.all_established(Duration::from_secs(5));
    let b = assigned(&world, 1);
    ping(&mut world, Some(0), hub_ip(), 1).expect("hub reachable");
    world.spokes[0].host.device.capture = true;
    assert_eq!(
        ping(&mut world, Some(0), b, 2),
        None,
        "spoke-to-spoke refused"
    );
    // The refusal is counted and answered with "administratively prohibited".
    let stats = world.hub().hub.stats();
    assert!(stats.drops.get(DropReason::Isolated) >= 1);
    let errors = world.spokes[0].host.captured_icmp_errors();
    assert!(errors.contains(&(3, 13, 0)), "{errors:?}");
}

#[test]
fn idle_sessions_stay_up_on_keep_alives() {
    let pki = pki();
    let mut world = World::new(5, hub_config(&pki));
    world.add_spoke(spoke_config(&pki, 0), LinkParams::pair());
    world.run_for(Duration::from_secs(60));
    let spoke = &mut world.spokes[0];
    assert_eq!(spoke.spoke.state(), SpokeState::Established);
    assert_eq!(
        spoke.spoke.stats().sessions,
        1,
        "never dropped: {:?}",
        spoke.events
    );
    // A keep-alive every 2 s, each acknowledged: a few packets per second at most.
    let sent = world.net.stats.sent;
    assert!(
        (40..200).contains(&sent),
        "{sent} packets in a minute of idling"
    );
}
