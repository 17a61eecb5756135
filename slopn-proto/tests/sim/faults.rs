//! Bad packets, bad peers and bad luck: each is dropped, counted and answered as a router
//! would, and none disturbs the other spokes.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use quinn_proto::ConnectionError;
use slopn_proto::control::{Capsule, CloseCode, IpPrefix, PROTOCOL_VERSION, RequestedAddress};
use slopn_proto::{DisconnectReason, DropReason, HubEvent, PoolConfig, SpokeEvent, SpokeState};

use crate::basic::{assigned, ping};
use crate::host::v4;
use crate::net::LinkParams;
use crate::raw::client_config;
use crate::world::{World, hub_ip};
use crate::{Pki, hub_config, pki, spoke_config, token, udp_packet};

/// A world with `n` well-behaved spokes, all established.
fn world_with(seed: u64, pki: &Pki, n: usize) -> World {
    let mut world = World::new(seed, hub_config(pki));
    for i in 0..n {
        world.add_spoke(spoke_config(pki, i), LinkParams::pair());
    }
    assert!(world.all_established(Duration::from_secs(10)));
    world
}

/// Connects a raw spoke with credential `i` and completes HELLO and address assignment.
fn raw_spoke(world: &mut World, pki: &Pki, i: usize) -> (usize, IpAddr) {
    let ca = slopn_proto::tls::parse_certificates(pki.ca.cert_pem().as_bytes()).unwrap();
    let r = world.add_raw(client_config(&ca, slopn_proto::control::ALPN));
    assert!(world.run_until(Duration::from_secs(5), |w| w.raws[r].connected));
    world.raws[r].send_capsule(&Capsule::Hello {
        version: PROTOCOL_VERSION,
        credential: Bytes::from(token(i)),
    });
    world.raws[r].send_capsule(&Capsule::AddressRequest(vec![RequestedAddress {
        request_id: 1,
        prefix: IpPrefix::rejection(false),
    }]));
    let mut addr = None;
    world.run_until(Duration::from_secs(5), |w| {
        addr = w.raws[r].capsules.iter().find_map(|c| match c {
            Capsule::AddressAssign(list) => list.first().map(|a| a.prefix.addr()),
            _ => None,
        });
        addr.is_some()
    });
    (r, addr.expect("raw spoke assigned"))
}

#[test]
fn spoofed_sources_are_dropped_and_counted() {
    let pki = pki();
    let mut world = world_with(10, &pki, 1);
    let (r, own) = raw_spoke(&mut world, &pki, 1);
    world.hub().host.device.capture = true;
    let legit = assigned(&world, 0);
    // Forged: another spoke's address, an unassigned one, and a foreign one.
    for forged in [legit, v4(10, 100, 0, 99), v4(192, 168, 1, 1)] {
        let p = udp_packet(forged, hub_ip(), 64, true, b"forged");
        world.raws[r].send_datagram(p);
    }
    // And one honest packet, which must get through.
    world.raws[r].send_datagram(udp_packet(own, hub_ip(), 64, true, b"honest"));
    world.run_for(Duration::from_millis(200));
    let hub_host_got = world.hub().host.device.captured.clone();
    assert_eq!(hub_host_got.len(), 1, "only the honest packet arrives");
    assert!(hub_host_got[0].ends_with(b"honest"));
    let stats = world.hub().hub.stats();
    assert_eq!(stats.drops.get(DropReason::SpoofedSource), 3);
    // The honest spoke is untouched.
    ping(&mut world, Some(0), hub_ip(), 7).expect("other spoke unaffected");
    assert_eq!(world.spokes[0].spoke.stats().sessions, 1);
}

#[test]
fn packets_to_unknown_addresses_are_answered_with_host_unreachable() {
    let pki = pki();
    let mut world = world_with(11, &pki, 1);
    let me = assigned(&world, 0);
    world.spokes[0].host.device.capture = true;
    let handle = world.spokes[0]
        .host
        .add_icmp(smoltcp::socket::icmp::Endpoint::Udp(
            smoltcp::wire::IpListenEndpoint {
                addr: None,
                port: 40001,
            },
        ));
    let p = udp_packet(me, v4(10, 100, 0, 77), 64, true, b"anyone there?");
    let now = world.instant();
    world.spokes[0].spoke.handle_tun_packet(now, &p).unwrap();
    world.run_for(Duration::from_millis(200));
    assert_eq!(world.spokes[0].host.captured_icmp_errors(), [(3, 1, 0)]);
    // smoltcp matched the error to the UDP port that sent the packet.
    let socket = world.spokes[0]
        .host
        .sockets
        .get_mut::<smoltcp::socket::icmp::Socket>(handle);
    assert!(
        socket.can_recv(),
        "the ICMP error reached the sender's socket"
    );
    assert_eq!(world.hub().hub.stats().drops.get(DropReason::NoRoute), 1);
}

#[test]
fn oversize_packets_get_packet_too_big_with_the_usable_size() {
    let pki = pki();
    let mut world = world_with(12, &pki, 2);
    world.run_for(Duration::from_secs(2));
    let (a, b) = (assigned(&world, 0), assigned(&world, 1));
    let mtu = world.spokes[0].spoke.tun_mtu().expect("mtu known");
    assert!(
        mtu > 1300,
        "path MTU discovery raised the tunnel MTU: {mtu}"
    );

    // From a spoke's host: the spoke itself answers.
    world.spokes[0].host.device.capture = true;
    let big = udp_packet(a, b, 64, true, &vec![0; usize::from(mtu)]);
    let now = world.instant();
    assert_eq!(
        world.spokes[0].spoke.handle_tun_packet(now, &big),
        Err(DropReason::TooLarge {
            max: usize::from(mtu)
        })
    );
    world.run_for(Duration::from_millis(100));
    assert_eq!(world.spokes[0].host.captured_icmp_errors(), [(3, 4, mtu)]);

    // From the hub's host towards a spoke: the hub answers on its TUN side.
    world.hub().host.device.capture = true;
    let big = udp_packet(hub_ip(), b, 64, true, &vec![0; 1500]);
    let now = world.instant();
    let result = world.hub().hub.handle_tun_packet(now, &big);
    assert!(
        matches!(result, Err(DropReason::TooLarge { .. })),
        "{result:?}"
    );
    world.run_for(Duration::from_millis(100));
    let errors = world.hub().host.captured_icmp_errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0..=errors[0].1, 3..=4);

    // Without "don't fragment", the hub fragments as a router must.
    world.spokes[1].host.device.capture = true;
    let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let unfragmentable = udp_packet(hub_ip(), b, 64, false, &payload);
    let now = world.instant();
    world
        .hub()
        .hub
        .handle_tun_packet(now, &unfragmentable)
        .unwrap();
    world.run_for(Duration::from_millis(100));
    let fragments = world.spokes[1].host.device.captured.clone();
    assert!(fragments.len() >= 3, "{} fragments", fragments.len());
    let mut data = Vec::new();
    for f in &fragments {
        slopn_proto::packet::IpHeader::parse(f).expect("valid fragment");
        data.extend_from_slice(&f[20..]);
    }
    assert_eq!(
        &data[8..],
        &payload[..],
        "fragments carry the whole datagram in order"
    );
}

#[test]
fn expiring_ttl_is_answered_with_time_exceeded_and_forwarding_decrements_it() {
    let pki = pki();
    let mut world = world_with(13, &pki, 2);
    let (a, b) = (assigned(&world, 0), assigned(&world, 1));
    world.spokes[0].host.device.capture = true;
    world.spokes[1].host.device.capture = true;
    let now = world.instant();
    world.spokes[0]
        .spoke
        .handle_tun_packet(now, &udp_packet(a, b, 1, true, b"ttl 1"))
        .unwrap();
    world.spokes[0]
        .spoke
        .handle_tun_packet(now, &udp_packet(a, b, 9, true, b"ttl 9"))
        .unwrap();
    world.run_for(Duration::from_millis(200));
    // Time Exceeded from the hub (and Port Unreachable from the far host for the packet that
    // got through: nothing listens on port 9).
    assert_eq!(
        world.spokes[0].host.captured_icmp_errors(),
        [(11, 0, 0), (3, 3, 0)]
    );
    let arrived = world.spokes[1].host.device.captured.clone();
    assert_eq!(arrived.len(), 1, "only the packet with TTL left arrives");
    let header = slopn_proto::packet::IpHeader::parse(&arrived[0]).expect("checksum fixed up");
    assert_eq!(header.ttl, 8);
    assert_eq!(world.hub().hub.stats().drops.get(DropReason::TtlExpired), 1);
}

#[test]
fn nothing_is_forwarded_before_hello_and_assignment() {
    let pki = pki();
    let mut config = hub_config(&pki);
    config.hello_timeout = Duration::from_secs(3);
    let mut world = World::new(23, config);
    world.hub().host.device.capture = true;
    let ca = slopn_proto::tls::parse_certificates(pki.ca.cert_pem().as_bytes()).unwrap();
    let r = world.add_raw(client_config(&ca, slopn_proto::control::ALPN));
    assert!(world.run_until(Duration::from_secs(5), |w| w.raws[r].connected));
    // Connected, not authenticated: a plausible packet to the hub goes nowhere.
    assert!(world.raws[r].send_datagram(udp_packet(
        v4(10, 100, 0, 3),
        hub_ip(),
        64,
        true,
        b"early"
    )));
    world.run_for(Duration::from_millis(100));
    assert!(world.hub().host.device.captured.is_empty());
    assert_eq!(
        world.hub().hub.stats().drops.get(DropReason::NotAssigned),
        1
    );
    // Silence past the hello timeout (and before the idle timeout) ends the connection.
    world.run_for(Duration::from_secs(4));
    assert!(
        matches!(
            &world.raws[r].lost,
            Some(ConnectionError::ApplicationClosed(c)) if c.error_code.into_inner() == CloseCode::HELLO_TIMEOUT.0
        ),
        "{:?}",
        world.raws[r].lost
    );
}

#[test]
fn malformed_control_data_closes_only_that_connection() {
    let pki = pki();
    let mut world = world_with(14, &pki, 2);
    let (r, _) = raw_spoke(&mut world, &pki, 5);
    // Garbage datagrams after assignment: dropped and counted, connection stays.
    world.raws[r].send_datagram(vec![0x00, 0x01, 0x02]);
    world.raws[r].send_datagram(vec![0x45; 30]);
    world.run_for(Duration::from_millis(100));
    assert!(world.raws[r].lost.is_none());
    assert_eq!(world.hub().hub.stats().drops.get(DropReason::Malformed), 2);
    // An unknown capsule type closes the connection with a protocol error.
    world.raws[r].send_raw(&[0x3f, 0x02, 0xde, 0xad]);
    world.run_for(Duration::from_millis(300));
    match &world.raws[r].lost {
        Some(ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(close.error_code.into_inner(), CloseCode::PROTOCOL_ERROR.0)
        }
        other => panic!("expected a protocol error close, got {other:?}"),
    }
    // The well-behaved spokes never noticed.
    for i in 0..2 {
        assert_eq!(world.spokes[i].spoke.state(), SpokeState::Established);
        assert_eq!(world.spokes[i].spoke.stats().sessions, 1);
    }
    let b = assigned(&world, 1);
    ping(&mut world, Some(0), b, 3).expect("spoke to spoke still works");

    // A second raw spoke sends a capsule only the hub may send.
    let (r2, _) = raw_spoke(&mut world, &pki, 6);
    world.raws[r2].send_capsule(&Capsule::AddressAssign(vec![]));
    world.run_for(Duration::from_millis(300));
    assert!(matches!(
        &world.raws[r2].lost,
        Some(ConnectionError::ApplicationClosed(c)) if c.error_code.into_inner() == CloseCode::PROTOCOL_ERROR.0
    ));
    // Its address went back to the pool: the hub holds the two good spokes only.
    assert_eq!(world.hub().hub.stats().spokes_assigned, 2);
}

#[test]
fn wrong_alpn_and_wrong_version_are_refused() {
    let pki = pki();
    let mut world = world_with(15, &pki, 1);
    let ca = slopn_proto::tls::parse_certificates(pki.ca.cert_pem().as_bytes()).unwrap();
    let r = world.add_raw(client_config(&ca, b"slopn/2"));
    world.run_for(Duration::from_secs(1));
    assert!(
        !world.raws[r].connected,
        "handshake with a wrong ALPN fails"
    );
    assert!(
        matches!(
            &world.raws[r].lost,
            Some(ConnectionError::ConnectionClosed(c)) if u64::from(c.error_code) == 0x178
        ),
        "no_application_protocol alert: {:?}",
        world.raws[r].lost
    );

    let r = world.add_raw(client_config(&ca, slopn_proto::control::ALPN));
    world.run_until(Duration::from_secs(2), |w| w.raws[r].connected);
    world.raws[r].send_capsule(&Capsule::Hello {
        version: 2,
        credential: Bytes::from(token(3)),
    });
    world.run_for(Duration::from_millis(300));
    assert!(world.raws[r].capsules.iter().any(|c| matches!(
        c,
        Capsule::Error { code, .. } if *code == CloseCode::UNSUPPORTED_VERSION
    )));
    assert!(world.raws[r].lost.is_some());
    assert_eq!(world.spokes[0].spoke.stats().sessions, 1);
}

#[test]
fn a_full_pool_refuses_the_extra_spoke_with_a_clear_error_and_nothing_else_changes() {
    let pki = pki();
    let mut config = hub_config(&pki);
    config.pools = vec![PoolConfig::new("10.100.0.0/29".parse().unwrap())];
    let mut world = World::new(16, config);
    for i in 0..5 {
        world.add_spoke(spoke_config(&pki, i), LinkParams::pair());
    }
    assert!(world.all_established(Duration::from_secs(10)));
    // Let path MTU discovery finish so that no event is expected from the others.
    world.run_for(Duration::from_secs(2));
    let before: Vec<usize> = world.spokes.iter().map(|s| s.events.len()).collect();
    let late = world.add_spoke(spoke_config(&pki, 5), LinkParams::pair());
    world.run_for(Duration::from_secs(2));
    let refusal = world.spokes[late].events.iter().find_map(|e| match e {
        SpokeEvent::Disconnected { reason, retry_in } => Some((reason.clone(), *retry_in)),
        _ => None,
    });
    let (reason, retry_in) = refusal.expect("refused");
    match reason {
        DisconnectReason::Remote { code, reason } => {
            assert_eq!(code, CloseCode::POOL_EXHAUSTED);
            assert!(reason.contains("pool exhausted"), "{reason}");
        }
        other => panic!("unexpected reason {other:?}"),
    }
    assert_eq!(
        retry_in,
        Some(Duration::from_secs(10)),
        "retries later, slowly"
    );
    assert!(world.spokes[late].spoke.addresses().is_empty());
    for (i, n) in before.iter().enumerate() {
        assert_eq!(world.spokes[i].events.len(), *n, "spoke {i} saw nothing");
        assert_eq!(world.spokes[i].spoke.state(), SpokeState::Established);
    }
    assert_eq!(world.hub().hub.stats().spokes_assigned, 5);
    // When a spoke leaves, the waiting one gets its address on its next try.
    let now = world.instant();
    world.spokes[0].spoke.disconnect(now);
    assert!(
        world.run_until(Duration::from_secs(15), |w| w.spokes[late].spoke.state()
            == SpokeState::Established)
    );
}

#[test]
fn a_wrong_token_gets_no_address_and_forwards_nothing() {
    let pki = pki();
    let mut world = world_with(17, &pki, 1);
    let mut config = spoke_config(&pki, 1);
    config.token = "not-a-valid-token".into();
    let bad = world.add_spoke(config, LinkParams::pair());
    world.run_for(Duration::from_secs(2));
    let spoke = &mut world.spokes[bad];
    assert_eq!(
        spoke.spoke.state(),
        SpokeState::Stopped,
        "no pointless retries"
    );
    assert!(spoke.spoke.addresses().is_empty());
    assert!(spoke.events.iter().any(|e| matches!(
        e,
        SpokeEvent::Disconnected {
            reason: DisconnectReason::Remote {
                code: CloseCode::AUTH_FAILED,
                ..
            },
            retry_in: None
        }
    )));
    // Its packets go nowhere.
    let p = udp_packet(v4(10, 100, 0, 3), hub_ip(), 64, true, b"let me in");
    let now = world.instant();
    assert_eq!(
        world.spokes[bad].spoke.handle_tun_packet(now, &p),
        Err(DropReason::NotAssigned)
    );
    let hub = &mut world.hub();
    assert!(
        hub.events
            .iter()
            .any(|e| matches!(e, HubEvent::AuthFailed { .. }))
    );
    let stats = hub.hub.stats();
    assert_eq!(stats.auth_failures, 1);
    assert_eq!(stats.spokes_assigned, 1);
    assert_eq!(stats.tun_out_packets, 0);
}

#[test]
fn a_spoke_trusting_another_ca_refuses_the_hub() {
    let pki = pki();
    let mut world = world_with(18, &pki, 0);
    let other = slopn_proto::pki::CertificateAuthority::generate(
        "other CA",
        [9; 32],
        slopn_proto::pki::Validity::days_from(crate::sim_wall_clock(), 10),
    )
    .unwrap();
    let mut config = spoke_config(&pki, 0);
    config.trust_anchors =
        slopn_proto::tls::parse_certificates(other.cert_pem().as_bytes()).unwrap();
    let s = world.add_spoke(config, LinkParams::pair());
    world.run_for(Duration::from_secs(2));
    assert_eq!(world.spokes[s].spoke.state(), SpokeState::Stopped);
    assert!(world.spokes[s].events.iter().any(|e| matches!(
        e,
        SpokeEvent::Disconnected {
            reason: DisconnectReason::Transport { tls: true, .. },
            retry_in: None
        }
    )));
}

#[test]
fn a_partition_longer_than_the_idle_timeout_ends_in_a_reconnect_to_the_same_address() {
    let pki = pki();
    let mut world = world_with(19, &pki, 2);
    let before = assigned(&world, 0);
    let addr = world.spokes[0].addr;
    world.net.set_partitioned(addr, true);
    world.run_for(Duration::from_secs(15));
    // Both sides noticed.
    assert!(world.spokes[0].events.iter().any(|e| matches!(
        e,
        SpokeEvent::Disconnected {
            reason: DisconnectReason::TimedOut,
            retry_in: Some(_)
        }
    )));
    assert!(world.hub().events.iter().any(|e| matches!(
        e,
        HubEvent::Disconnected {
            reason: DisconnectReason::TimedOut,
            ..
        }
    )));
    assert_ne!(world.spokes[0].spoke.state(), SpokeState::Established);
    // The other spoke takes no notice.
    assert_eq!(world.spokes[1].spoke.stats().sessions, 1);
    world.net.set_partitioned(addr, false);
    let healed = world.now;
    assert!(
        world.run_until(Duration::from_secs(5), |w| w.spokes[0].spoke.state()
            == SpokeState::Established)
    );
    let took = world.now - healed;
    println!("partition of 15 s: reconnected {took:?} after it healed, same address");
    assert!(
        took < Duration::from_secs(2),
        "reconnected {took:?} after the partition healed"
    );
    assert_eq!(assigned(&world, 0), before, "same address back");
    let b = assigned(&world, 1);
    ping(&mut world, Some(0), b, 9).expect("traffic flows again");
}

#[test]
fn a_killed_hub_is_noticed_and_its_restart_found_at_once() {
    let pki = pki();
    let mut world = world_with(20, &pki, 2);
    let before: Vec<IpAddr> = (0..2).map(|i| assigned(&world, i)).collect();
    // While the hub lives, an idle spoke hears from it at least every keep-alive round.
    let keep_alive = spoke_config(&pki, 0).transport.keep_alive_interval.unwrap();
    let mut longest = Duration::ZERO;
    world.run_until(Duration::from_secs(9), |w| {
        let now = w.instant();
        let heard = w.spokes[0].spoke.stats().last_heard.unwrap();
        longest = longest.max(now - heard);
        false
    });
    assert!(
        longest <= keep_alive + Duration::from_millis(300),
        "silent for {longest:?}"
    );
    world.tap = Some(Vec::new());
    ping(&mut world, Some(0), before[1], 2).expect("ping");
    world.kill_hub();
    let killed = world.now;
    // (What was on its way arrives.)
    world.run_for(Duration::from_millis(500));
    let last_heard = world.spokes[0].spoke.stats().last_heard;
    // What the hub sent, replayed and corrupted (its connection ID kept) as an attacker on
    // the path could: neither is the hub, and neither may hide its silence.
    let hub = world.hub_addr;
    let captured: Vec<_> = world.tap.take().unwrap();
    let to_spoke = world.spokes[0].addr;
    let captured: Vec<Vec<u8>> = captured
        .into_iter()
        .filter(|d| d.dst == to_spoke)
        .map(|d| d.payload)
        .collect();
    assert!(!captured.is_empty());
    let now = world.instant();
    for payload in &captured {
        let mut corrupted = payload.clone();
        let last = corrupted.len() - 1;
        corrupted[last] ^= 0x55;
        let spoke = &mut world.spokes[0].spoke;
        spoke.handle_udp(now, slopn_proto::Datagram::new(hub, payload));
        spoke.handle_udp(now, slopn_proto::Datagram::new(hub, &corrupted));
    }
    assert_eq!(world.spokes[0].spoke.stats().last_heard, last_heard);
    assert!(world.run_until(Duration::from_secs(10), |w| {
        // Nothing more is heard: the status counts the silence from the kill.
        let established = w.spokes[0].spoke.state() == SpokeState::Established;
        assert!(!established || w.spokes[0].spoke.stats().last_heard == last_heard);
        w.spokes
            .iter()
            .all(|s| s.spoke.state() != SpokeState::Established)
    }));
    let noticed = world.now - killed;
    assert!(
        noticed <= Duration::from_secs(10),
        "noticed after {noticed:?}"
    );
    world.run_for(Duration::from_secs(7));
    world.start_hub();
    let back = world.now;
    assert!(world.all_established(Duration::from_secs(5)));
    let took = world.now - back;
    println!(
        "hub killed: spokes noticed after {noticed:?} (heard from it at least every \
         {longest:?} before), reconnected {took:?} after it returned"
    );
    assert!(
        took < Duration::from_secs(1),
        "reconnected {took:?} after the hub returned"
    );
    for (i, addr) in before.iter().enumerate() {
        assert_eq!(assigned(&world, i), *addr, "spoke {i} kept its address");
    }
    ping(&mut world, Some(0), before[1], 4).expect("ping works again");
}

#[test]
fn a_restarting_hub_that_lost_its_state_resets_old_connections_at_once() {
    let pki = pki();
    let mut world = world_with(21, &pki, 1);
    world.run_for(Duration::from_secs(5));
    // The hub dies and comes straight back, before anyone's idle timeout.
    world.kill_hub();
    world.start_hub();
    let restarted = world.now;
    let ok = world.run_until(Duration::from_secs(8), |w| {
        w.spokes[0].events.iter().any(|e| {
            matches!(
                e,
                SpokeEvent::Disconnected {
                    reason: DisconnectReason::Reset,
                    ..
                }
            )
        }) && w.spokes[0].spoke.state() == SpokeState::Established
    });
    assert!(ok);
    let took = world.now - restarted;
    println!("hub restarted with its state lost: spoke reset and back after {took:?}");
    // Keep-alives go out every 2 s; the stateless reset answers the first one.
    assert!(took < Duration::from_secs(3), "back after {took:?}");
}

#[test]
fn a_restarted_hub_resets_a_hundred_spokes_at_once_not_fifty_a_second() {
    // quinn's default allows one stateless reset per 20 ms: most of these spokes, whose
    // keep-alives leave together, would have waited for their idle timeout (6 s).
    const N: usize = 100;
    let pki = pki();
    let mut world = world_with(23, &pki, N);
    let before: Vec<IpAddr> = (0..N).map(|i| assigned(&world, i)).collect();
    world.run_for(Duration::from_secs(1));
    for s in &mut world.spokes {
        s.events.clear();
    }
    world.kill_hub();
    world.start_hub();
    let restarted = world.now;
    let reset = |e: &SpokeEvent| {
        matches!(
            e,
            SpokeEvent::Disconnected {
                reason: DisconnectReason::Reset,
                ..
            }
        )
    };
    let ok = world.run_until(Duration::from_secs(8), |w| {
        w.spokes
            .iter()
            .all(|s| s.events.iter().any(reset) && s.spoke.state() == SpokeState::Established)
    });
    assert!(ok, "every spoke reset and back");
    let took = world.now - restarted;
    println!("hub restarted under {N} spokes: all reset and back after {took:?}");
    assert!(took < Duration::from_secs(3), "back after {took:?}");
    for (i, addr) in before.iter().enumerate() {
        assert_eq!(assigned(&world, i), *addr, "spoke {i} kept its address");
    }
}

#[test]
fn a_hub_closing_gracefully_sends_spokes_to_retry_at_once() {
    let pki = pki();
    let mut world = world_with(22, &pki, 2);
    let now = world.instant();
    world.hub().hub.close(now, "maintenance").unwrap();
    assert!(world.run_until(Duration::from_secs(3), |w| w.hub().hub.is_closed()));
    for s in &world.spokes {
        let e = s.events.iter().find_map(|e| match e {
            SpokeEvent::Disconnected { reason, retry_in } => Some((reason.clone(), *retry_in)),
            _ => None,
        });
        let (reason, retry_in) = e.expect("told");
        assert!(
            matches!(
                reason,
                DisconnectReason::Remote {
                    code: CloseCode::SHUTTING_DOWN,
                    ..
                }
            ),
            "{reason:?}"
        );
        assert!(retry_in.unwrap() < Duration::from_millis(100));
    }
    world.kill_hub();
    world.start_hub();
    assert!(world.all_established(Duration::from_secs(3)));
}
