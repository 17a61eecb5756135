//! A real TUN device and real routes, inside a network namespace of the test's own.

#![cfg(target_os = "linux")]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use slopn_tun::netns;
use slopn_tun::{Routes, Tun, TunConfig, TunError};

mod support;
use support::{capture, in_namespace, ip, offload_tun, tcp_segment};

#[test]
fn tun_device_addresses_mtu_routes_and_packets() {
    in_namespace("tun_device_addresses_mtu_routes_and_packets", "tun", |ns| {
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

        let mut control = tun.control();
        control.set_mtu(1300).unwrap();
        assert_eq!(control.mtu().unwrap(), 1300);
        control
            .set_addresses(&[(ip("10.9.0.2"), 32), (ip("fd00:9::2"), 64)])
            .unwrap();
        let addrs = ns.ip(&["-o", "addr", "show", "dev", "slopn-t0"]).unwrap();
        assert!(
            addrs.contains("10.9.0.2/32") && addrs.contains("fd00:9::2/64"),
            "{addrs}"
        );
        assert!(!addrs.contains("10.9.0.1/24"), "{addrs}");

        // Routes come and go.
        let mut routes = Routes::new("slopn-t0");
        let failed = routes.set(&[
            "10.50.0.0/16".parse().unwrap(),
            "fd00:50::/48".parse().unwrap(),
        ]);
        assert!(failed.is_empty(), "{failed:?}");
        let table = ns.ip(&["route", "show"]).unwrap();
        assert!(table.contains("10.50.0.0/16 dev slopn-t0"), "{table}");
        assert!(routes.set(&["10.60.0.0/16".parse().unwrap()]).is_empty());
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
        // The device lives while the Tun or a TunControl does.
        drop(tun);
        assert!(ns.ip(&["link", "show", "dev", "slopn-t0"]).is_ok());
        drop(control);
        assert!(
            ns.ip(&["link", "show", "dev", "slopn-t0"]).is_err(),
            "device removed"
        );

        // A name still held by a device on its way out (its owner was just killed) is waited
        // for, not refused.
        let first = Tun::open(&config).unwrap();
        let started = Instant::now();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(first);
        });
        let second = Tun::open(&config).expect("the name, once released");
        let waited = started.elapsed();
        release.join().unwrap();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        drop(second);
    });
}

#[test]
fn a_full_tunnels_routes_and_bypass_go_in_and_come_out_whole() {
    in_namespace("a_full_tunnels_routes_go_in_whole", "full", |ns| {
        // An underlay with a default route, as a host has.
        ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"])
            .unwrap();
        ns.ip(&["link", "set", "up0", "up"]).unwrap();
        ns.ip(&["link", "set", "up1", "up"]).unwrap();
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "up0"])
            .unwrap();
        ns.ip(&["-6", "addr", "add", "2001:db8::1/64", "dev", "up0", "nodad"])
            .unwrap();
        ns.ip(&["route", "add", "default", "via", "192.0.2.254"])
            .unwrap();
        ns.ip(&["-6", "route", "add", "default", "via", "2001:db8::fe"])
            .unwrap();
        let before = format!(
            "{}{}",
            ns.ip(&["-4", "route", "show"]).unwrap(),
            ns.ip(&["-6", "route", "show"]).unwrap()
        );
        let tun = Tun::open(&TunConfig {
            name: Some("slopn-f0".into()),
            mtu: 1380,
            addresses: vec![(ip("10.9.0.2"), 24), (ip("fd00:9::2"), 64)],
            offload: false,
        })
        .unwrap();
        let full: Vec<ipnet::IpNet> = [
            "10.9.0.0/24",
            "fd00:9::/64",
            "0.0.0.0/1",
            "128.0.0.0/1",
            "::/1",
            "8000::/1",
        ]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
        let mut routes = Routes::new("slopn-f0");
        let start = Instant::now();
        routes.set_bypass(Some(ip("198.51.100.7"))).unwrap();
        let failed = routes.set(&full);
        let took = start.elapsed();
        assert!(failed.is_empty(), "{failed:?}");
        println!(
            "a full tunnel's bypass and {} routes installed in {:.2} ms",
            full.len(),
            took.as_secs_f64() * 1e3
        );
        let v4 = ns.ip(&["-4", "route", "show"]).unwrap();
        let v6 = ns.ip(&["-6", "route", "show"]).unwrap();
        for want in [
            "0.0.0.0/1 dev slopn-f0",
            "128.0.0.0/1 dev slopn-f0",
            "198.51.100.7 via 192.0.2.254 dev up0",
        ] {
            assert!(v4.contains(want), "{want}: {v4}");
        }
        for want in ["::/1 dev slopn-f0", "8000::/1 dev slopn-f0"] {
            assert!(v6.contains(want), "{want}: {v6}");
        }
        let got = ns.ip(&["route", "get", "203.0.113.9"]).unwrap();
        assert!(got.contains("dev slopn-f0"), "{got}");
        let got = ns.ip(&["route", "get", "198.51.100.7"]).unwrap();
        assert!(got.contains("dev up0"), "the hub stays outside: {got}");

        let start = Instant::now();
        drop(routes);
        println!(
            "and removed in {:.2} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
        drop(tun);
        let after = format!(
            "{}{}",
            ns.ip(&["-4", "route", "show"]).unwrap(),
            ns.ip(&["-6", "route", "show"]).unwrap()
        );
        assert_eq!(after, before, "the routes are as they were");
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

/// Contiguous TCP segments of one flow, queued and flushed together, reach the kernel as one
/// coalesced packet (the hub's fast path), not one write each.
#[test]
fn written_tcp_segments_are_coalesced() {
    in_namespace("written_tcp_segments_are_coalesced", "gro", |_| {
        let mut tun = offload_tun("slopn-g0", &[("10.9.0.1", 24)]);
        let offload = if tun.offload() {
            Ok(())
        } else {
            Err("no TUN offload here".into())
        };
        if !netns::skip_unless("written_tcp_segments_are_coalesced", offload) {
            return;
        }
        // A super-packet the kernel hands over never holds more segments than one read
        // splits into (else the read is dropped whole).
        let link = std::process::Command::new("ip")
            .args(["-d", "link", "show", "dev", "slopn-g0"])
            .output()
            .unwrap();
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(link.contains(" gso_max_segs 128 "), "{link}");
        let capture = capture();

        const SEGMENTS: u32 = 8;
        const PAYLOAD: usize = 1000;
        for i in 0..SEGMENTS {
            let last = i == SEGMENTS - 1;
            tun.queue_packet(&tcp_segment(i, 1_000 + i * PAYLOAD as u32, PAYLOAD, last))
                .unwrap();
        }
        tun.flush().unwrap();

        let mut sizes = Vec::new();
        let mut buf = [0u8; 70_000];
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match std::io::Read::read(&mut &capture, &mut buf) {
                // Ours come from 10.9.0.2; the kernel's answers (RSTs) from 10.9.0.1.
                Ok(n) if n >= 20 && buf[12..16] == [10, 9, 0, 2] => sizes.push(n),
                Ok(_) => {}
                Err(_) if !sizes.is_empty() => break,
                Err(_) => {}
            }
        }
        let total: usize = sizes.iter().map(|n| n - 40).sum();
        assert_eq!(
            total,
            SEGMENTS as usize * PAYLOAD,
            "every byte arrived: {sizes:?}"
        );
        assert!(
            sizes.len() < SEGMENTS as usize,
            "segments were written one by one: {sizes:?}"
        );
    });
}
