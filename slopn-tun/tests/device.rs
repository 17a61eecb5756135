//! A real TUN device and real routes, inside a network namespace of the test's own.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use slopn_tun::netns::{self, Namespace};
use slopn_tun::{Routes, Tun, TunConfig, TunError};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn tun_device_addresses_mtu_routes_and_packets() {
    if let Err(why) = netns::available() {
        eprintln!("SKIPPED tun_device_addresses_mtu_routes_and_packets: {why}");
        return;
    }
    let ns = Namespace::create(format!("{}-tun", netns::unique_prefix())).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter().unwrap();
            let config = TunConfig {
                name: Some("slopn-t0".into()),
                mtu: 1380,
                addresses: vec![(ip("10.9.0.1"), 24)],
                offload: true,
            };
            let mut tun = Tun::open(&config).unwrap();
            assert_eq!(tun.name(), "slopn-t0");
            let link = ns.ip(&["-o", "link", "show", "dev", "slopn-t0"]).unwrap();
            assert!(link.contains("mtu 1380") && link.contains(",UP"), "{link}");
            let addrs = ns.ip(&["-o", "addr", "show", "dev", "slopn-t0"]).unwrap();
            assert!(addrs.contains("10.9.0.1/24"), "{addrs}");

            tun.set_mtu(1300).unwrap();
            assert_eq!(tun.mtu().unwrap(), 1300);
            tun.set_addresses(&[(ip("10.9.0.2"), 32), (ip("fd00:9::2"), 64)])
                .unwrap();
            let addrs = ns.ip(&["-o", "addr", "show", "dev", "slopn-t0"]).unwrap();
            assert!(
                addrs.contains("10.9.0.2/32") && addrs.contains("fd00:9::2/64"),
                "{addrs}"
            );
            assert!(!addrs.contains("10.9.0.1/24"), "{addrs}");

            // Routes come and go.
            let mut routes = Routes::new("slopn-t0");
            routes
                .set(&[
                    "10.50.0.0/16".parse().unwrap(),
                    "fd00:50::/48".parse().unwrap(),
                ])
                .unwrap();
            let table = ns.ip(&["route", "show"]).unwrap();
            assert!(table.contains("10.50.0.0/16 dev slopn-t0"), "{table}");
            routes.set(&["10.60.0.0/16".parse().unwrap()]).unwrap();
            let table = ns.ip(&["route", "show"]).unwrap();
            assert!(
                !table.contains("10.50.0.0/16") && table.contains("10.60.0.0/16"),
                "{table}"
            );

            // A packet routed into the device comes out of it.
            let mut ping = ns
                .command("ping")
                .args(["-c", "1", "-W", "1", "10.60.1.1"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut found = None;
            let packet = loop {
                match tun.recv_packets(|p| {
                    if slopn_like_dst(p) == Some(ip("10.60.1.1")) {
                        found = Some(p.to_vec());
                    }
                }) {
                    Ok(_) => {
                        if let Some(p) = found.take() {
                            break p;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(
                            Instant::now() < deadline,
                            "no packet came out of the TUN device"
                        );
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            assert_eq!(packet[9], 1, "an ICMP echo request");
            let _ = ping.wait();

            // The name is taken while the device exists.
            match Tun::open(&config) {
                Err(TunError::NameInUse(name)) => assert_eq!(name, "slopn-t0"),
                other => panic!("expected NameInUse, got {other:?}"),
            }
            drop(routes);
            let table = ns.ip(&["route", "show"]).unwrap();
            assert!(!table.contains("10.60.0.0/16"), "{table}");
            drop(tun);
            assert!(
                ns.ip(&["link", "show", "dev", "slopn-t0"]).is_err(),
                "device removed"
            );
        })
        .join()
        .unwrap();
    });
}

#[test]
fn bad_names_are_refused_clearly() {
    let config = TunConfig {
        name: Some("a/very/long/and/bad/name".into()),
        mtu: 1400,
        addresses: vec![],
        offload: true,
    };
    let err = Tun::open(&config).unwrap_err();
    assert!(matches!(err, TunError::BadName(_)));
    assert!(err.to_string().contains("1 to 15 characters"));
}

/// The destination of an IPv4 packet.
fn slopn_like_dst(p: &[u8]) -> Option<IpAddr> {
    (p.len() >= 20 && p[0] >> 4 == 4).then(|| IpAddr::from([p[16], p[17], p[18], p[19]]))
}
