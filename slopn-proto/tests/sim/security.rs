//! Authentication: tokens and client certificates, expiry, revocation, and what floods of
//! bad attempts and handshakes cost.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use quinn_proto::ConnectionError;
use slopn_proto::control::{Capsule, CloseCode, PROTOCOL_VERSION};
use slopn_proto::pki::{CertificateAuthority, Validity};
use slopn_proto::{Credential, DisconnectReason, HubEvent, SpokeEvent, SpokeState, tls};

use crate::basic::ping;
use crate::net::LinkParams;
use crate::raw::client_config;
use crate::world::{World, hub_ip};
use crate::{Pki, hub_config, pki, sim_wall_clock, spoke_config, token};

fn disconnect_reason(world: &World, i: usize) -> Option<(DisconnectReason, Option<Duration>)> {
    world.spokes[i].events.iter().find_map(|e| match e {
        SpokeEvent::Disconnected { reason, retry_in } => Some((reason.clone(), *retry_in)),
        _ => None,
    })
}

/// A hub whose credentials are tokens for spoke-0 .. spoke-2 and certificates for cert-0 and
/// cert-1, trusting `pki.ca` for client certificates.
fn mixed_hub(pki: &Pki) -> slopn_proto::HubConfig {
    let mut config = hub_config(pki);
    config.credentials.truncate(3);
    config.credentials.push(Credential::certificate("cert-0"));
    config.credentials.push(Credential::certificate("cert-1"));
    config.client_ca = tls::parse_certificates(pki.ca.cert_pem().as_bytes()).unwrap();
    config
}

/// A spoke configuration authenticating with a certificate for `name` from `ca`.
fn cert_spoke(
    pki: &Pki,
    ca: &CertificateAuthority,
    name: &str,
    validity: Validity,
    seed: u8,
) -> slopn_proto::SpokeConfig {
    let mut config = spoke_config(pki, seed as usize);
    config.token = String::new();
    let cert = ca.issue_client(name, [seed; 32], validity).unwrap();
    config.client_certificate = Some(cert.certified_key().unwrap());
    config
}

fn valid() -> Validity {
    Validity::days_from(sim_wall_clock(), 30)
}

#[test]
fn certificate_and_token_spokes_side_by_side() {
    let pki = pki();
    let mut world = World::new(60, mixed_hub(&pki));
    world.add_spoke(spoke_config(&pki, 0), LinkParams::pair());
    let c = world.add_spoke(
        cert_spoke(&pki, &pki.ca, "cert-0", valid(), 40),
        LinkParams::pair(),
    );
    assert!(world.all_established(Duration::from_secs(5)));
    assert_eq!(
        world.spokes[c].spoke.identity(),
        Some("cert-0"),
        "identity from the certificate"
    );
    let other = world.spokes[0].spoke.addresses()[0];
    ping(&mut world, Some(c), other, 1).expect("the certificate spoke reaches the token spoke");
    ping(&mut world, Some(c), hub_ip(), 2).expect("and the hub");
}

#[test]
fn bad_certificates_fail_in_the_handshake_or_at_hello_and_change_nothing() {
    let pki = pki();
    let mut world = World::new(61, mixed_hub(&pki));
    world.add_spoke(spoke_config(&pki, 0), LinkParams::pair());
    assert!(
        world.run_until(Duration::from_secs(5), |w| w.spokes[0].spoke.state()
            == SpokeState::Established)
    );
    let other_ca = CertificateAuthority::generate("someone else's CA", [66; 32], valid()).unwrap();
    let expired = Validity {
        not_before: sim_wall_clock() - Duration::from_secs(30 * 86_400),
        not_after: sim_wall_clock() - Duration::from_secs(86_400),
    };
    let foreign = world.add_spoke(
        cert_spoke(&pki, &other_ca, "cert-0", valid(), 41),
        LinkParams::pair(),
    );
    let stale = world.add_spoke(
        cert_spoke(&pki, &pki.ca, "cert-1", expired, 42),
        LinkParams::pair(),
    );
    let unlisted = world.add_spoke(
        cert_spoke(&pki, &pki.ca, "cert-9", valid(), 43),
        LinkParams::pair(),
    );
    world.run_for(Duration::from_secs(3));
    for (i, what) in [
        (foreign, "certificate from another CA"),
        (stale, "expired certificate"),
    ] {
        let (reason, retry) = disconnect_reason(&world, i).expect(what);
        assert!(
            matches!(reason, DisconnectReason::Transport { tls: true, .. }),
            "{what}: {reason:?}"
        );
        assert_eq!(retry, None, "{what}: no pointless retries");
        assert_eq!(world.spokes[i].spoke.state(), SpokeState::Stopped);
        assert!(world.spokes[i].spoke.addresses().is_empty());
    }
    let (reason, _) = disconnect_reason(&world, unlisted).expect("unlisted identity");
    assert!(
        matches!(
            reason,
            DisconnectReason::Remote {
                code: CloseCode::AUTH_FAILED,
                ..
            }
        ),
        "{reason:?}"
    );
    let hub = world.hub();
    assert!(
        hub.events
            .iter()
            .any(|e| matches!(e, HubEvent::AuthFailed { reason, .. } if reason.contains("cert-9")))
    );
    let stats = hub.hub.stats();
    assert_eq!(
        stats.spokes_assigned, 1,
        "only the good spoke holds an address"
    );
    assert_eq!(
        world.spokes[0].spoke.stats().sessions,
        1,
        "the good spoke never noticed"
    );
}

#[test]
fn a_hub_of_certificate_spokes_demands_a_certificate_in_the_handshake() {
    let pki = pki();
    let mut config = hub_config(&pki);
    config.credentials = vec![Credential::certificate("cert-0")];
    config.client_ca = tls::parse_certificates(pki.ca.cert_pem().as_bytes()).unwrap();
    let mut world = World::new(62, config);
    let tokened = world.add_spoke(spoke_config(&pki, 0), LinkParams::pair());
    let good = world.add_spoke(
        cert_spoke(&pki, &pki.ca, "cert-0", valid(), 44),
        LinkParams::pair(),
    );
    world.run_for(Duration::from_secs(3));
    assert_eq!(world.spokes[good].spoke.state(), SpokeState::Established);
    let (reason, _) = disconnect_reason(&world, tokened).expect("refused");
    assert!(
        matches!(reason, DisconnectReason::Transport { tls: true, .. }),
        "{reason:?}"
    );
}

#[test]
fn revoked_credentials_end_their_session_at_once_and_stop_working() {
    let pki = pki();
    let mut world = World::new(63, hub_config(&pki));
    for i in 0..3 {
        world.add_spoke(spoke_config(&pki, i), LinkParams::pair());
    }
    assert!(world.all_established(Duration::from_secs(5)));
    // The operator removes spoke-1 and gives spoke-2 a new token, then reloads.
    let mut creds: Vec<Credential> = (0..256)
        .filter(|i| *i != 1 && *i != 2)
        .map(|i| Credential::token(format!("spoke-{i}"), &token(i)))
        .collect();
    creds.push(Credential::token("spoke-2", "a brand new token"));
    let now = world.instant();
    let revoked = world.hub().hub.set_credentials(now, &creds).unwrap();
    assert_eq!(revoked, 2);
    world.run_for(Duration::from_millis(300));
    for i in [1, 2] {
        let (reason, retry) = disconnect_reason(&world, i).expect("told");
        assert!(
            matches!(
                reason,
                DisconnectReason::Remote {
                    code: CloseCode::REVOKED,
                    ..
                }
            ),
            "{reason:?}"
        );
        assert_eq!(retry, None);
        assert_eq!(world.spokes[i].spoke.state(), SpokeState::Stopped);
    }
    assert_eq!(world.spokes[0].spoke.state(), SpokeState::Established);
    assert_eq!(
        world.spokes[0].spoke.stats().sessions,
        1,
        "spoke-0 kept its session"
    );
    // The old token no longer works.
    let now = world.instant();
    world.spokes[1].spoke.connect(now);
    world.run_for(Duration::from_secs(1));
    assert!(world.spokes[1].events.iter().any(|e| matches!(
        e,
        SpokeEvent::Disconnected {
            reason: DisconnectReason::Remote {
                code: CloseCode::AUTH_FAILED,
                ..
            },
            ..
        }
    )));
    assert_eq!(world.hub().hub.stats().spokes_assigned, 1);
}

#[test]
fn a_flood_of_bad_tokens_from_one_address_is_refused_and_good_spokes_get_in() {
    let pki = pki();
    let mut world = World::new(64, hub_config(&pki));
    let ca = tls::parse_certificates(pki.ca.cert_pem().as_bytes()).unwrap();
    let attacker_ip = "203.0.113.66";
    let mut refused = 0;
    let mut auth_failed = 0;
    for round in 0..30u16 {
        let addr: SocketAddr = format!("{attacker_ip}:{}", 20000 + round).parse().unwrap();
        let r = world.add_raw_at(client_config(&ca, slopn_proto::control::ALPN), addr);
        world.run_until(Duration::from_secs(2), |w| {
            w.raws[r].connected || w.raws[r].lost.is_some()
        });
        if world.raws[r].connected {
            world.raws[r].send_capsule(&Capsule::Hello {
                version: PROTOCOL_VERSION,
                credential: Bytes::from(format!("guess-{round}")),
            });
            world.run_until(Duration::from_secs(2), |w| w.raws[r].lost.is_some());
        }
        match &world.raws[r].lost {
            Some(ConnectionError::ApplicationClosed(c))
                if c.error_code.into_inner() == CloseCode::AUTH_FAILED.0 =>
            {
                auth_failed += 1
            }
            Some(ConnectionError::ConnectionClosed(_)) => refused += 1,
            other => panic!("round {round}: {other:?}"),
        }
        if round == 15 {
            // A legitimate spoke arrives in the middle of the flood.
            world.add_spoke(spoke_config(&pki, 0), LinkParams::pair());
        }
    }
    world.run_until(Duration::from_secs(5), |w| {
        w.spokes[0].spoke.state() == SpokeState::Established
    });
    let stats = world.hub().hub.stats();
    println!(
        "flood of 30 bad attempts from one address: {auth_failed} reached HELLO, {refused} refused before the handshake"
    );
    assert_eq!(auth_failed, 10, "the limit is 10 failures a minute");
    assert_eq!(refused, 20);
    // Refusing is stateless: each of the two packets of a post-quantum ClientHello counts.
    assert_eq!(stats.refused, 40);
    assert_eq!(
        world.spokes[0].spoke.state(),
        SpokeState::Established,
        "good spokes get in"
    );
}

#[test]
fn under_handshake_load_the_hub_asks_for_retry_and_caps_half_open_connections() {
    let pki = pki();
    let mut config = hub_config(&pki);
    config.retry_above = 0;
    let mut world = World::new(65, config);
    for i in 0..3 {
        world.add_spoke(spoke_config(&pki, i), LinkParams::pair());
    }
    assert!(world.all_established(Duration::from_secs(5)));
    // One Retry per Initial packet: a post-quantum ClientHello takes two.
    assert_eq!(
        world.hub().hub.stats().retries,
        6,
        "each proved its address with a Retry first"
    );

    let mut config = hub_config(&pki);
    config.max_half_open = 1;
    let mut world = World::new(66, config);
    for i in 0..4 {
        world.add_spoke(spoke_config(&pki, i), LinkParams::pair());
    }
    assert!(world.all_established(Duration::from_secs(10)));
    let stats = world.hub().hub.stats();
    assert!(
        stats.refused >= 1,
        "handshakes beyond the cap were refused: {stats:?}"
    );
    assert_eq!(
        stats.spokes_assigned, 4,
        "and the spokes retried their way in"
    );
}

#[test]
fn one_source_gets_a_share_of_the_half_open_places_not_all() {
    let pki = pki();
    let mut config = hub_config(&pki);
    // Every handshake proves its source address with a Retry first.
    config.retry_above = 0;
    config.max_half_open_per_source = 4;
    // Room for the attacker's share and the good spokes, not for all twelve.
    config.max_half_open = 6;
    let mut world = World::new(67, config);
    let ca = tls::parse_certificates(pki.ca.cert_pem().as_bytes()).unwrap();
    // Twelve handshakes from one address that answer the Retries but never finish: the hub's
    // handshake packets (padded to 1200 bytes) are lost on the way back, its small Retries
    // are not.
    let stalled = LinkParams {
        mtu: 600,
        ..LinkParams::default()
    };
    for port in 0..12u16 {
        let addr: SocketAddr = format!("203.0.113.66:{}", 20000 + port).parse().unwrap();
        world.add_raw_at(client_config(&ca, slopn_proto::control::ALPN), addr);
        world
            .net
            .set_links(addr, LinkParams::default(), stalled.clone());
    }
    world.run_for(Duration::from_millis(300));
    let stats = world.hub().hub.stats();
    assert_eq!(
        stats.handshakes.started, 4,
        "one source holds its share: {stats:?}"
    );
    assert!(stats.refused >= 8, "the others were refused: {stats:?}");
    // Spokes from other addresses still get in while those handshakes hang.
    for i in 0..2 {
        world.add_spoke(spoke_config(&pki, i), LinkParams::pair());
    }
    assert!(world.all_established(Duration::from_secs(5)));
}

#[test]
fn junk_sent_to_the_hub_is_ignored_and_counted() {
    let pki = pki();
    let mut world = World::new(68, hub_config(&pki));
    world.add_spoke(spoke_config(&pki, 0), LinkParams::pair());
    assert!(world.all_established(Duration::from_secs(5)));
    let from: SocketAddr = "203.0.113.99:5555".parse().unwrap();
    let now = world.instant();
    // Short datagrams of one repeated byte: short headers for no connection, truncated long
    // headers, nothing QUIC can use.
    for i in 0..100u8 {
        let junk = vec![i; 1 + usize::from(i % 50)];
        world
            .hub()
            .hub
            .handle_udp(now, slopn_proto::Datagram::new(from, &junk));
    }
    let stats = world.hub().hub.stats();
    assert!(stats.ignored_datagrams >= 90, "{stats:?}");
    assert_eq!(stats.spokes_assigned, 1, "the spoke is undisturbed");
    assert_eq!(stats.handshakes.started, 1);
}

#[test]
fn dns_servers_are_pushed_and_updated() {
    let pki = pki();
    let mut config = hub_config(&pki);
    config.dns_servers = vec!["10.100.0.1".parse().unwrap()];
    let mut world = World::new(67, config);
    world.add_spoke(spoke_config(&pki, 0), LinkParams::pair());
    assert!(
        world.run_until(Duration::from_secs(5), |w| w.spokes[0].spoke.state()
            == SpokeState::Established)
    );
    assert_eq!(
        world.spokes[0].spoke.dns_servers(),
        ["10.100.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    let now = world.instant();
    world
        .hub()
        .hub
        .set_dns_servers(
            now,
            vec!["10.100.0.53".parse().unwrap(), "fd00::53".parse().unwrap()],
        )
        .unwrap();
    world.run_for(Duration::from_millis(200));
    assert_eq!(world.spokes[0].spoke.dns_servers().len(), 2);
    assert!(
        world.spokes[0]
            .events
            .iter()
            .filter(|e| matches!(e, SpokeEvent::DnsChanged { .. }))
            .count()
            == 2
    );
}
