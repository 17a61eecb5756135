//! What the hub's configuration may hold: secret seeds, and nothing the control protocol
//! cannot carry (which would close every session with PROTOCOL_ERROR, in a loop).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use slopn_proto::control::{CloseCode, LimitError, MAX_ADDRESSES, MAX_REASON_LEN, MAX_ROUTES};
use slopn_proto::{Hub, HubError, SpokeError, SpokeEvent, SpokeState};

use crate::net::LinkParams;
use crate::world::World;
use crate::{hub_config, pki, sim_wall_clock, spoke_config};

fn dns(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::V4([10, 53, 0, i as u8].into()))
        .collect()
}

/// `n` networks that do not touch, so that none merge into one advertised range.
fn disjoint_routes(n: usize) -> Vec<IpNet> {
    (0..n as u32)
        .map(|i| IpNet::new(IpAddr::V4((0x0b00_0000 + (i << 9)).into()), 24).unwrap())
        .collect()
}

/// A seed of zeros is a public key: Retry tokens and stateless resets anyone could forge.
#[test]
fn all_zero_seeds_are_refused() {
    let pki = pki();
    let now = Instant::now();
    let mut config = hub_config(&pki);
    config.seed = [0; 32];
    let err = Hub::new(config, now, sim_wall_clock()).unwrap_err();
    assert!(matches!(err, HubError::ZeroSeed), "{err}");
    assert!(err.to_string().contains("OS randomness"), "{err}");

    let mut config = hub_config(&pki);
    config.stateless_reset_key = Some([0; 32]);
    let err = Hub::new(config, now, sim_wall_clock()).unwrap_err();
    assert!(matches!(err, HubError::ZeroSeed), "{err}");

    let mut config = spoke_config(&pki, 0);
    config.seed = [0; 32];
    let err = slopn_proto::Spoke::new(config, now, sim_wall_clock()).unwrap_err();
    assert!(matches!(err, SpokeError::ZeroSeed), "{err}");
}

#[test]
fn a_configuration_the_protocol_cannot_carry_is_refused_at_start() {
    let pki = pki();
    let now = Instant::now();
    let mut config = hub_config(&pki);
    config.dns_servers = dns(MAX_ADDRESSES + 1);
    let err = Hub::new(config, now, sim_wall_clock()).unwrap_err();
    assert!(
        matches!(err, HubError::Limit(LimitError::TooMany { count: 65, .. })),
        "{err}"
    );
    assert!(err.to_string().contains("65 DNS servers"), "{err}");

    let mut config = hub_config(&pki);
    // The pool is one more range.
    config.routes = disjoint_routes(MAX_ROUTES);
    let err = Hub::new(config, now, sim_wall_clock()).unwrap_err();
    assert!(matches!(err, HubError::Limit(_)), "{err}");

    let mut config = hub_config(&pki);
    config.dns_servers = dns(MAX_ADDRESSES);
    config.routes = disjoint_routes(MAX_ROUTES - 1);
    Hub::new(config, now, sim_wall_clock()).expect("exactly at the limits");

    let mut config = spoke_config(&pki, 0);
    config.token = "t".repeat(4097);
    assert!(slopn_proto::Spoke::new(config, now, sim_wall_clock()).is_err());
}

/// Changes beyond the limits are refused as a whole; connected spokes keep what they had and
/// stay connected.
#[test]
fn changes_the_protocol_cannot_carry_are_refused_and_sessions_go_on() {
    let pki = pki();
    let mut config = hub_config(&pki);
    config.dns_servers = dns(2);
    let mut world = World::new(71, config);
    world.add_spoke(spoke_config(&pki, 0), LinkParams::pair());
    assert!(
        world.run_until(Duration::from_secs(5), |w| w.spokes[0].spoke.state()
            == SpokeState::Established)
    );
    let routes_before = world.spokes[0].spoke.routes().to_vec();
    let now = world.instant();
    let hub = &mut world.hub().hub;
    assert!(hub.set_dns_servers(now, dns(MAX_ADDRESSES + 1)).is_err());
    assert!(hub.set_routes(now, disjoint_routes(MAX_ROUTES)).is_err());
    let id = hub.spokes()[0].id;
    let long = "x".repeat(MAX_REASON_LEN + 1);
    assert!(hub.disconnect(now, id, CloseCode::REVOKED, &long).is_err());
    assert!(hub.close(now, &long).is_err());
    assert_eq!(hub.advertised_routes().len(), routes_before.len());

    world.run_for(Duration::from_secs(3));
    let spoke = &world.spokes[0];
    assert_eq!(spoke.spoke.state(), SpokeState::Established);
    assert_eq!(spoke.spoke.dns_servers(), dns(2));
    assert_eq!(spoke.spoke.routes(), routes_before);
    assert!(
        !spoke
            .events
            .iter()
            .any(|e| matches!(e, SpokeEvent::Disconnected { .. })),
        "no session ended"
    );

    // The largest lists that fit get through.
    let now = world.instant();
    let hub = &mut world.hub().hub;
    hub.set_dns_servers(now, dns(MAX_ADDRESSES)).unwrap();
    hub.set_routes(now, disjoint_routes(MAX_ROUTES - 1))
        .unwrap();
    world.run_for(Duration::from_secs(1));
    let spoke = &world.spokes[0];
    assert_eq!(spoke.spoke.state(), SpokeState::Established);
    assert_eq!(spoke.spoke.dns_servers().len(), MAX_ADDRESSES);
    assert_eq!(spoke.spoke.routes().len(), MAX_ROUTES);
}
