//! The post-quantum key exchange in whole handshakes: X25519MLKEM768 by default, X25519 when
//! one end is classic (without a HelloRetryRequest), a hybrid-only hub refusing a classic
//! spoke, a HelloRetryRequest to the hybrid, and the larger ClientHello over a 1280-byte
//! path and through Retry.

use std::sync::Arc;
use std::time::Duration;

use rustls::NamedGroup;
use slopn_proto::key_exchange::KeyExchange;
use slopn_proto::{DisconnectReason, HubEvent, SpokeEvent, SpokeState};

use crate::net::LinkParams;
use crate::world::World;
use crate::{hub_config, pki, seeded_crypto, spoke_config};

/// A world whose hub offers `hub`, with one spoke per entry of `spokes`.
fn world_of(hub: KeyExchange, spokes: &[KeyExchange], links: LinkParams) -> World {
    let pki = pki();
    let mut config = hub_config(&pki);
    config.crypto = seeded_crypto::provider_with(1, hub);
    let mut world = World::new(1, config);
    for (i, kx) in spokes.iter().enumerate() {
        let mut config = spoke_config(&pki, i);
        config.crypto = seeded_crypto::provider_with(i as u64 + 2, *kx);
        world.add_spoke(config, (links.clone(), links.clone()));
    }
    world
}

/// The group each spoke's connection and the hub's session of it settled on.
fn groups(world: &mut World) -> Vec<(Option<NamedGroup>, Option<NamedGroup>)> {
    let hub: Vec<_> = world.hub().hub.spokes();
    world
        .spokes
        .iter_mut()
        .map(|s| {
            let mine = s.spoke.stats().key_exchange;
            let addresses = s.spoke.addresses();
            let theirs = hub
                .iter()
                .find(|h| h.addresses == addresses)
                .and_then(|h| h.key_exchange);
            (mine, theirs)
        })
        .collect()
}

#[test]
fn every_session_negotiates_x25519mlkem768_by_default() {
    let mut world = world_of(
        KeyExchange::Hybrid,
        &[KeyExchange::Hybrid, KeyExchange::HybridOnly],
        LinkParams::default(),
    );
    assert!(world.all_established(Duration::from_secs(5)));
    let hybrid = Some(NamedGroup::X25519MLKEM768);
    assert_eq!(groups(&mut world), [(hybrid, hybrid), (hybrid, hybrid)]);
}

#[test]
fn a_classic_end_settles_on_x25519_either_way() {
    // A classic spoke and a hybrid hub.
    let mut world = world_of(
        KeyExchange::Hybrid,
        &[KeyExchange::Classic],
        LinkParams::default(),
    );
    assert!(world.all_established(Duration::from_secs(5)));
    let classic = Some(NamedGroup::X25519);
    assert_eq!(groups(&mut world), [(classic, classic)]);
    // A hybrid spoke and a classic hub: the spoke's second key share (its X25519 part)
    // is taken as it is, with no HelloRetryRequest.
    let mut world = world_of(
        KeyExchange::Classic,
        &[KeyExchange::Hybrid],
        LinkParams::default(),
    );
    assert!(world.all_established(Duration::from_secs(5)));
    assert_eq!(groups(&mut world), [(classic, classic)]);
}

/// The reason the spoke's first connection ended, after it stopped.
fn refused(world: &mut World) -> Option<DisconnectReason> {
    world.run_until(Duration::from_secs(5), |w| {
        w.spokes[0].spoke.state() == SpokeState::Stopped
    });
    assert_eq!(world.spokes[0].spoke.state(), SpokeState::Stopped);
    world.spokes[0].events.iter().find_map(|e| match e {
        SpokeEvent::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
}

#[test]
fn a_hybrid_only_spoke_is_refused_by_a_classic_hub() {
    // Its ClientHello takes two packets: the hub refuses it in the handshake.
    let mut world = world_of(
        KeyExchange::Classic,
        &[KeyExchange::HybridOnly],
        LinkParams::default(),
    );
    let refusal = refused(&mut world);
    assert!(
        matches!(refusal, Some(DisconnectReason::Transport { tls: true, .. })),
        "{refusal:?}"
    );
    let handshakes = world.hub().hub.stats().handshakes;
    assert_eq!(handshakes.failed_tls, 1, "{handshakes:?}");
}

#[test]
fn a_hybrid_only_hub_refuses_a_classic_spoke_in_the_handshake() {
    let mut world = world_of(
        KeyExchange::HybridOnly,
        &[KeyExchange::Classic],
        LinkParams::default(),
    );
    world.run_until(Duration::from_secs(5), |w| {
        w.spokes[0].spoke.state() == SpokeState::Stopped
    });
    assert_eq!(world.spokes[0].spoke.state(), SpokeState::Stopped);
    let refusal = world.spokes[0].events.iter().find_map(|e| match e {
        SpokeEvent::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        matches!(
            refusal,
            Some(DisconnectReason::Transport {
                tls: true,
                by_peer: true,
                ..
            })
        ),
        "{refusal:?}"
    );
    let stats = world.hub().hub.stats();
    assert!(stats.handshakes.failed_tls >= 1, "{:?}", stats.handshakes);
    assert_eq!(stats.spokes_assigned, 0);
    // The operator is told what to change.
    let told = world.hub().events.iter().any(|e| {
        matches!(e, HubEvent::AuthFailed { reason, .. }
            if reason.contains("no key exchange group this hub accepts"))
    });
    assert!(told, "{:?}", world.hub().events);
}

#[test]
fn a_spoke_that_offers_x25519_first_is_asked_again_for_the_hybrid() {
    // Its first key share is X25519, the hybrid is only listed: a hybrid-only hub answers
    // with a HelloRetryRequest for X25519MLKEM768, and the second ClientHello carries it.
    let pki = pki();
    let mut config = hub_config(&pki);
    config.crypto = seeded_crypto::provider_with(1, KeyExchange::HybridOnly);
    let mut world = World::new(1, config);
    let mut spoke = spoke_config(&pki, 0);
    let mut provider = seeded_crypto::provider_with(2, KeyExchange::Hybrid)
        .as_ref()
        .clone();
    provider.kx_groups.reverse();
    assert_eq!(provider.kx_groups[0].name(), NamedGroup::X25519);
    spoke.crypto = Arc::new(provider);
    world.add_spoke(spoke, LinkParams::pair());
    assert!(world.all_established(Duration::from_secs(5)));
    let hybrid = Some(NamedGroup::X25519MLKEM768);
    assert_eq!(groups(&mut world), [(hybrid, hybrid)]);
}

#[test]
fn the_larger_client_hello_connects_over_a_1280_byte_path_and_through_retry() {
    // 1280 bytes of IPv6 path: 1232 bytes of UDP payload. The ClientHello (about 1.4 KB
    // with both key shares) spans two Initial packets, each with the Retry token.
    let narrow = LinkParams {
        mtu: 1232,
        ..LinkParams::default()
    };
    let pki = pki();
    let mut config = hub_config(&pki);
    config.retry_above = 0;
    let mut world = World::new(1, config);
    for i in 0..3 {
        world.add_spoke(spoke_config(&pki, i), (narrow.clone(), narrow.clone()));
    }
    assert!(world.all_established(Duration::from_secs(5)));
    let hybrid = Some(NamedGroup::X25519MLKEM768);
    assert_eq!(groups(&mut world), [(hybrid, hybrid); 3]);
    let handshakes = world.hub().hub.stats().handshakes;
    assert_eq!(handshakes.completed, 3, "{handshakes:?}");
    assert!(
        world.hub().hub.stats().retries >= 3,
        "every spoke went through Retry"
    );
}
