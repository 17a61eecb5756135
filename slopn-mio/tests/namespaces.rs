//! The event loop on real UDP sockets and TUN devices: a hub and two spokes, each in a
//! network namespace of the test's own, joined by veth pairs.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use slopn_mio::{Handle, Options, SpokeCommand, spawn};
use slopn_proto::pki::{CertificateAuthority, Validity};
use slopn_proto::{
    Credential, Hub, HubConfig, PoolConfig, Spoke, SpokeConfig, SpokeEvent, SpokeState, tls,
};
use slopn_tun::netns::{self, Namespace};
use slopn_tun::{Tun, TunConfig};

struct Net {
    hub: Namespace,
    spokes: Vec<Namespace>,
}

fn topology() -> Net {
    let prefix = netns::unique_prefix();
    let hub = Namespace::create(format!("{prefix}-hub")).unwrap();
    let spokes: Vec<Namespace> = (1..=2)
        .map(|i| {
            let ns = Namespace::create(format!("{prefix}-s{i}")).unwrap();
            hub.veth(
                &format!("to-s{i}"),
                &format!("192.168.10{i}.1/24"),
                &ns,
                "uplink",
                &format!("192.168.10{i}.2/24"),
            )
            .unwrap();
            ns
        })
        .collect();
    Net { hub, spokes }
}

/// Runs `f` on a thread inside `ns` and returns its result.
fn inside<T: Send>(ns: &Namespace, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter().unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

fn ping(ns: &Namespace, to: &str) -> bool {
    ns.command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "2", to])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn wait_assigned(handle: &Handle<Spoke>) -> Vec<IpAddr> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(SpokeEvent::Assigned { addresses, .. }) =
            handle.next_event(Duration::from_millis(100))
        {
            return addresses;
        }
    }
    panic!("spoke not assigned within 10 s");
}

#[test]
fn hub_and_spokes_on_real_sockets_and_tun_devices() {
    if !netns::runnable("hub_and_spokes_on_real_sockets_and_tun_devices") {
        return;
    }
    let net = topology();
    let validity = Validity::days_from(SystemTime::now(), 2);
    let ca = CertificateAuthority::generate("test CA", [1; 32], validity).unwrap();
    let cert = ca
        .issue_server(&["hub.slopn.test".into()], [2; 32], validity)
        .unwrap();
    let credentials = (1..=2)
        .map(|i| Credential::token(format!("spoke-{i}"), &format!("token-{i}")))
        .collect();
    let config = HubConfig::new(
        cert.certified_key().unwrap(),
        vec![PoolConfig::new("10.100.0.0/24".parse().unwrap())],
        credentials,
        [1; 32],
    );

    let hub = inside(&net.hub, || {
        let tun = Tun::open(&TunConfig {
            name: Some("slopn0".into()),
            mtu: config.transport.max_tunnel_mtu(),
            addresses: vec![("10.100.0.1".parse().unwrap(), 24)],
            offload: true,
        })
        .unwrap();
        let socket = std::net::UdpSocket::bind("0.0.0.0:4433").unwrap();
        let hub = Hub::new(config, Instant::now(), SystemTime::now()).unwrap();
        spawn(hub, tun, socket, Options::default()).unwrap()
    });

    let trust = tls::parse_certificates(ca.cert_pem().as_bytes()).unwrap();
    let spokes: Vec<Handle<Spoke>> = net
        .spokes
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let hub_addr: SocketAddr = format!("192.168.10{}.1:4433", i + 1).parse().unwrap();
            let config = SpokeConfig::new(
                hub_addr,
                "hub.slopn.test",
                trust.clone(),
                format!("token-{}", i + 1),
                [i as u8 + 2; 32],
            );
            inside(ns, || {
                let tun = Tun::open(&TunConfig {
                    name: Some("slopn0".into()),
                    mtu: 1280,
                    addresses: vec![],
                    offload: true,
                })
                .unwrap();
                let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
                let spoke = Spoke::new(config, Instant::now(), SystemTime::now()).unwrap();
                spawn(spoke, tun, socket, Options::default()).unwrap()
            })
        })
        .collect();

    let addresses: Vec<IpAddr> = spokes.iter().map(|h| wait_assigned(h)[0]).collect();
    assert_eq!(addresses.len(), 2);
    assert_ne!(addresses[0], addresses[1]);
    for (ns, addr) in net.spokes.iter().zip(&addresses) {
        let shown = ns.ip(&["-o", "addr", "show", "dev", "slopn0"]).unwrap();
        assert!(shown.contains(&format!("{addr}/32")), "{shown}");
        let routes = ns.ip(&["route", "show", "dev", "slopn0"]).unwrap();
        assert!(routes.contains("10.100.0.0/24"), "{routes}");
    }
    assert!(ping(&net.spokes[0], "10.100.0.1"), "spoke 1 pings the hub");
    assert!(ping(&net.spokes[1], "10.100.0.1"), "spoke 2 pings the hub");
    assert!(
        ping(&net.spokes[0], &addresses[1].to_string()),
        "spoke to spoke"
    );
    assert!(ping(&net.hub, &addresses[0].to_string()), "hub to spoke");

    let status = spokes[0].stats().unwrap();
    assert_eq!(status.state, SpokeState::Established);
    assert!(status.stats.traffic.tx_packets >= 4, "{status:?}");
    let hub_stats = hub.stats().unwrap();
    assert_eq!(hub_stats.hub.spokes_assigned, 2);

    // Disconnect and reconnect on command: same address.
    spokes[0].command(SpokeCommand::Disconnect);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(spokes[0].stats().unwrap().state, SpokeState::Stopped);
    spokes[0].command(SpokeCommand::Connect);
    assert_eq!(wait_assigned(&spokes[0])[0], addresses[0]);
    assert!(ping(&net.spokes[0], "10.100.0.1"), "after reconnecting");

    // Orderly shutdown: everything SloPN added to the namespaces goes away.
    for s in spokes {
        s.stop();
        s.join().unwrap();
    }
    hub.stop();
    hub.join().unwrap();
    for ns in net.spokes.iter().chain([&net.hub]) {
        assert!(
            ns.ip(&["link", "show", "dev", "slopn0"]).is_err(),
            "TUN removed"
        );
        let routes = ns.ip(&["route", "show"]).unwrap();
        assert!(!routes.contains("10.100.0."), "{routes}");
    }
}
