//! The suite's test cases, generic over the runtime.

use std::net::IpAddr;
use std::time::Duration;

use slopn_driver::{HubCommand, Options, RoutePolicy, RunError, SpokeCommand};
use slopn_proto::{SpokeState, TransportSettings};

use super::{
    HUB_TUNNEL, Lab, Loop, Runtime, assert_cleaned_up, eventually, patience, ping, tun_routes,
    wait_assigned,
};

/// A hub and two spokes: addresses and routes set, traffic hub↔spoke and spoke↔spoke,
/// disconnect and reconnect to the same address, and an orderly stop that removes the TUN
/// devices and routes.
pub fn hub_and_spokes<R: Runtime>(test: &str) {
    let Some(lab) = Lab::new(test, 2) else {
        return;
    };
    let hub = lab.start_hub::<R>(lab.hub_config(&[]));
    let configs: Vec<_> = (0..2).map(|i| lab.spoke_config(i)).collect();
    let within = patience(&configs[0].transport);
    let spokes: Vec<_> = configs
        .into_iter()
        .enumerate()
        .map(|(i, config)| lab.start_spoke::<R>(i, config, Options::default()))
        .collect();

    let addresses: Vec<IpAddr> = spokes.iter().map(|s| wait_assigned(s, within)[0]).collect();
    assert_ne!(addresses[0], addresses[1]);
    for (ns, addr) in lab.spokes.iter().zip(&addresses) {
        // The helper thread sets them after the event: wait for it.
        eventually(within, "address and tunnel route set", || {
            let shown = ns.ip(&["-o", "addr", "show", "dev", "slopn0"]).unwrap();
            shown.contains(&format!("{addr}/32")) && tun_routes(ns).contains("10.100.0.0/24")
        });
    }
    assert!(ping(&lab.spokes[0], HUB_TUNNEL), "spoke 1 pings the hub");
    assert!(ping(&lab.spokes[1], HUB_TUNNEL), "spoke 2 pings the hub");
    assert!(
        ping(&lab.spokes[0], &addresses[1].to_string()),
        "spoke to spoke"
    );
    assert!(ping(&lab.hub, &addresses[0].to_string()), "hub to spoke");

    let status = spokes[0].stats().unwrap();
    assert_eq!(status.state, SpokeState::Established);
    assert!(status.stats.traffic.tx_packets >= 4, "{status:?}");
    assert_eq!(status.io.os_failures, 0, "{status:?}");
    assert!(
        status.io.os_actions >= 2,
        "addresses and routes: {status:?}"
    );
    assert_eq!(hub.stats().unwrap().hub.spokes_assigned, 2);

    // Disconnect and reconnect on command: same address.
    spokes[0].command(SpokeCommand::Disconnect);
    eventually(within, "spoke stopped after a disconnect", || {
        spokes[0].stats().unwrap().state == SpokeState::Stopped
    });
    spokes[0].command(SpokeCommand::Connect);
    assert_eq!(wait_assigned(&spokes[0], within)[0], addresses[0]);
    assert!(ping(&lab.spokes[0], HUB_TUNNEL), "after reconnecting");

    // Orderly shutdown: everything SloPN added to the namespaces goes away.
    for spoke in &spokes {
        spoke.stop();
        spoke.join().unwrap();
    }
    hub.stop();
    hub.join().unwrap();
    assert_cleaned_up(&lab);
}

/// Routes the hub advertises reach the spoke's routing table through the OS helper, also
/// when the hub changes them; one the kernel refuses (IPv6 on a spoke without IPv6) is
/// counted while the tunnel carries on.
pub fn advertised_routes<R: Runtime>(test: &str) {
    let Some(lab) = Lab::new(test, 1) else {
        return;
    };
    let hub = lab.start_hub::<R>(lab.hub_config(&["192.168.50.0/24", "2001:db8:50::/48"]));
    let config = lab.spoke_config(0);
    let within = patience(&config.transport);
    let spoke = lab.start_spoke::<R>(0, config, Options::default());
    let ns = &lab.spokes[0];

    wait_assigned(&spoke, within);
    eventually(within, "advertised route installed", || {
        tun_routes(ns).contains("192.168.50.0/24")
    });
    eventually(within, "the refused IPv6 route reported", || {
        spoke.stats().unwrap().io.os_failures == 1
    });
    assert_eq!(spoke.stats().unwrap().state, SpokeState::Established);
    assert!(ping(ns, HUB_TUNNEL), "the tunnel works regardless");

    hub.command(HubCommand::SetRoutes(vec![
        "192.168.60.0/24".parse().unwrap(),
    ]));
    eventually(within, "routes follow the hub's change", || {
        let routes = tun_routes(ns);
        routes.contains("192.168.60.0/24") && !routes.contains("192.168.50.0/24")
    });
    assert_eq!(spoke.stats().unwrap().io.os_failures, 1);

    spoke.stop();
    spoke.join().unwrap();
    hub.stop();
    hub.join().unwrap();
    assert_cleaned_up(&lab);
}

/// A full tunnel whose hub cannot be kept outside it (no route to the hub's underlay
/// address) must not route everything into the tunnel: the failure ends the loop with
/// the reason, after a goodbye to the hub, and everything is removed.
pub fn fatal_route_failure<R: Runtime>(test: &str) {
    let Some(lab) = Lab::new(test, 1) else {
        return;
    };
    let hub = lab.start_hub::<R>(lab.hub_config(&["0.0.0.0/0"]));
    let config = lab.spoke_config(0);
    let within = patience(&TransportSettings::default());
    // An underlay address the spoke's namespace has no route to.
    let unroutable: IpAddr = "198.51.100.1".parse().unwrap();
    let options = Options {
        routes: RoutePolicy {
            accept_default_route: true,
            only: Vec::new(),
            hub: Some(unroutable),
        },
        ..Options::default()
    };
    let spoke = lab.start_spoke::<R>(0, config, options);

    wait_assigned(&spoke, within);
    eventually(within, "the spoke's loop ends", || spoke.is_finished());
    match spoke.join() {
        Err(RunError::Os(failure)) => {
            assert!(failure.fatal, "{failure}");
            assert!(failure.to_string().contains("198.51.100.1"), "{failure}");
        }
        other => panic!("expected the route failure, got {other:?}"),
    }
    // The spoke said goodbye: the hub frees the session at once, not after its idle timeout.
    eventually(Duration::from_secs(1), "the hub frees the session", || {
        hub.stats().unwrap().hub.spokes_assigned == 0
    });
    hub.stop();
    hub.join().unwrap();
    assert_cleaned_up(&lab);
    assert!(
        !lab.spokes[0]
            .ip(&["route", "show"])
            .unwrap()
            .contains("0.0.0.0/1")
    );
}

/// A full tunnel that becomes a split one: the bypass route to the hub goes, and when
/// removing it fails (someone deleted it already) the failure is counted while the tunnel
/// carries on.
pub fn full_to_split_tunnel<R: Runtime>(test: &str) {
    let Some(lab) = Lab::new(test, 1) else {
        return;
    };
    let hub = lab.start_hub::<R>(lab.hub_config(&["0.0.0.0/0"]));
    let config = lab.spoke_config(0);
    let within = patience(&config.transport);
    let underlay = config.hub.ip();
    let options = Options {
        routes: RoutePolicy {
            accept_default_route: true,
            only: Vec::new(),
            hub: Some(underlay),
        },
        ..Options::default()
    };
    let spoke = lab.start_spoke::<R>(0, config, options);
    let ns = &lab.spokes[0];

    wait_assigned(&spoke, within);
    eventually(within, "the full tunnel routed", || {
        spoke.stats().unwrap().io.routed && tun_routes(ns).contains("0.0.0.0/1")
    });
    assert!(ping(ns, HUB_TUNNEL), "through the full tunnel");
    let bypass = format!("{underlay}/32");
    ns.ip(&["route", "del", &bypass]).unwrap();

    hub.command(HubCommand::SetRoutes(vec![
        "192.168.60.0/24".parse().unwrap(),
    ]));
    eventually(within, "the split tunnel's routes", || {
        let routes = tun_routes(ns);
        routes.contains("192.168.60.0/24") && !routes.contains("0.0.0.0/1")
    });
    eventually(within, "the failed bypass removal counted", || {
        spoke.stats().unwrap().io.os_failures == 1
    });
    assert!(
        !spoke.is_finished(),
        "a failed removal does not end the tunnel"
    );
    assert!(ping(ns, HUB_TUNNEL), "through the split tunnel");

    spoke.stop();
    spoke.join().unwrap();
    hub.stop();
    hub.join().unwrap();
    assert_cleaned_up(&lab);
}
