//! Dual stack: with a `pool6` every spoke gets an IPv4 and an IPv6 address and IPv6
//! carries pings and TCP from spoke to hub and spoke to spoke; a hub listening on `[::]`
//! serves a spoke whose underlay is IPv6 only; and the gateway NATs IPv6 (NAT66).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::Duration;

use slopn_tun::netns::Namespace;

use crate::MIB;
use crate::lab::Lab;
use crate::traffic::transfer;

/// The spoke's tunnel address of the family `v6`.
fn address(lab: &Lab, i: usize, v6: bool) -> IpAddr {
    let status = lab.spoke_status(i).unwrap();
    status["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse::<IpAddr>().unwrap())
        .find(|a| a.is_ipv6() == v6)
        .unwrap_or_else(|| panic!("spoke {i} has no address of that family: {status}"))
}

#[test]
fn spokes_get_both_families_and_reach_each_other_over_ipv6() {
    let Some(mut lab) = Lab::new("dual_stack", 2) else {
        return;
    };
    lab.edit_hub(|h| h.pool6 = Some("fd00:100::/64".parse().unwrap()));
    lab.start_hub();
    lab.start_spoke(0);
    lab.start_spoke(1);
    lab.wait_established(&[0, 1], Duration::from_secs(10));

    let (a4, a6, b6) = (
        address(&lab, 0, false),
        address(&lab, 0, true),
        address(&lab, 1, true),
    );
    assert!(a4.is_ipv4() && a6.is_ipv6() && b6 != a6);
    let hub = lab.spoke_status(0).unwrap()["hub_addresses"].clone();
    assert!(
        hub.as_array().unwrap().iter().any(|a| a == "fd00:100::1"),
        "the hub's IPv6 tunnel address: {hub}"
    );
    lab.ping(&lab.spoke_ns[0], "fd00:100::1", 3)
        .expect("spoke 0 pings the hub over IPv6");
    let rtt = lab
        .ping(&lab.spoke_ns[0], &b6.to_string(), 3)
        .expect("spoke 0 pings spoke 1 over IPv6");
    lab.ping(&lab.spoke_ns[1], &a4.to_string(), 3)
        .expect("and IPv4 still works");
    println!("spoke to spoke over IPv6: {rtt:.3} ms");

    let took = transfer(
        &lab.spoke_ns[0],
        &lab.spoke_ns[1],
        SocketAddr::new(b6, 5002),
        16 * MIB,
        |_| {},
    );
    println!(
        "16 MiB spoke to spoke over IPv6, every byte checked: {:.2} s (debug build)",
        took.as_secs_f64()
    );
    let hub = lab.hub_status().unwrap();
    assert!(hub["tx_bytes"].as_u64().unwrap() > 16 * MIB as u64, "{hub}");

    // The kernels' own link-local traffic on the TUN devices (router solicitations from
    // fe80::, MLD reports) is told apart from forged or unroutable packets: nothing here
    // forged or misrouted anything. (The first solicitation leaves within a second of the
    // device coming up, long before now.)
    let spoke = lab.spoke_status(0).unwrap();
    for (what, drops) in [("hub", &hub["drops"]), ("spoke 0", &spoke["drops"])] {
        println!("{what} drops on a quiet dual-stack tunnel: {drops}");
        for reason in ["spoofed_source", "no_route", "malformed"] {
            assert!(drops.get(reason).is_none(), "{what}: {drops}");
        }
    }
}

/// Over a 1280-byte underlay the tunnel carries 1194-byte packets, below IPv6's 1280-byte
/// minimum: the spokes' TUN devices stay at 1280 and hosts ignore "packet too big" under it,
/// so TCP over IPv6 only works because the tunnel clamps the MSS of the SYNs it carries.
#[test]
fn tcp_over_ipv6_works_on_a_path_below_ipv6s_minimum_mtu() {
    let Some(mut lab) = Lab::new("ipv6_small", 2) else {
        return;
    };
    lab.edit_hub(|h| {
        h.pool6 = Some("fd00:100::/64".parse().unwrap());
        h.link_mtu = 1280;
    });
    for i in 0..2 {
        lab.edit_spoke(i, |s| s.link_mtu = 1280);
    }
    lab.start_hub();
    lab.start_spoke(0);
    lab.start_spoke(1);
    lab.wait_established(&[0, 1], Duration::from_secs(10));
    let (a6, b6) = (address(&lab, 0, true), address(&lab, 1, true));
    // Both ways between the spokes and between a spoke and the hub's own address: each
    // direction's segments are sized by the SYN of the other end.
    for (what, from, to, listen) in [
        (
            "spoke 0 -> spoke 1",
            &lab.spoke_ns[0],
            &lab.spoke_ns[1],
            SocketAddr::new(b6, 5003),
        ),
        (
            "spoke 1 -> spoke 0",
            &lab.spoke_ns[1],
            &lab.spoke_ns[0],
            SocketAddr::new(a6, 5004),
        ),
        (
            "spoke 0 -> hub",
            &lab.spoke_ns[0],
            &lab.hub_ns,
            "[fd00:100::1]:5005".parse().unwrap(),
        ),
        (
            "hub -> spoke 0",
            &lab.hub_ns,
            &lab.spoke_ns[0],
            SocketAddr::new(a6, 5006),
        ),
    ] {
        let took = transfer(from, to, listen, 4 * MIB, |_| {});
        println!(
            "4 MiB over IPv6 {what} with 1194-byte tunnel packets: {:.2} s",
            took.as_secs_f64()
        );
    }
    let status = lab.spoke_status(0).unwrap();
    assert_eq!(status["tun_mtu"], 1280, "{status}");
}

/// Adds `addr` (with its prefix) to `dev` in `ns`, usable at once (no duplicate address
/// detection: the namespaces are ours alone).
fn add6(ns: &Namespace, dev: &str, addr: &str) {
    ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"])
        .unwrap();
}

#[test]
fn a_hub_on_ipv6_serves_spokes_over_an_ipv6_only_underlay() {
    let Some(mut lab) = Lab::new("ipv6_underlay", 1) else {
        return;
    };
    // The wan routes IPv6 too; the spoke's underlay is IPv6 only.
    lab.wan
        .run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])
        .unwrap();
    add6(&lab.wan, "hub", "fd01:0:0:0::1/64");
    add6(&lab.hub_ns, "wan0", "fd01:0:0:0::2/64");
    lab.hub_ns
        .ip(&["-6", "route", "add", "default", "via", "fd01::1"])
        .unwrap();
    add6(&lab.wan, "s0", "fd01:0:0:1::1/64");
    add6(&lab.spoke_ns[0], "wan0", "fd01:0:0:1::2/64");
    lab.spoke_ns[0]
        .ip(&["-4", "addr", "flush", "dev", "wan0"])
        .unwrap();
    lab.spoke_ns[0]
        .ip(&["-6", "route", "add", "default", "via", "fd01:0:0:1::1"])
        .unwrap();
    lab.edit_hub(|h| h.listen = "[::]:4433".parse().unwrap());
    lab.edit_spoke(0, |s| s.hub = "[fd01::2]:4433".into());

    lab.start_hub();
    lab.start_spoke(0);
    lab.wait_established(&[0], Duration::from_secs(10));
    let hub = lab.hub_status().unwrap();
    let remote = hub["sessions"][0]["remote"].as_str().unwrap().to_owned();
    assert!(
        remote.starts_with("[fd01:0:0:1::2]"),
        "the spoke came over IPv6: {hub}"
    );
    lab.ping(&lab.spoke_ns[0], "10.100.0.1", 3)
        .expect("IPv4 inside, IPv6 outside");
    transfer(
        &lab.spoke_ns[0],
        &lab.hub_ns,
        "10.100.0.1:5003".parse().unwrap(),
        8 * MIB,
        |_| {},
    );
}

#[test]
fn the_gateway_nats_ipv6_to_the_internet() {
    let Some(mut lab) = Lab::with_internet("gateway_nat66", 1) else {
        return;
    };
    let internet = lab.internet.take().unwrap();
    add6(&lab.hub_ns, "up0", "2001:db8:1::1/64");
    add6(&internet, "eth0", "2001:db8:1::2/64");
    lab.hub_ns
        .ip(&["-6", "route", "add", "default", "via", "2001:db8:1::2"])
        .unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let name = internet.name().to_owned();
    let server = std::thread::spawn(move || {
        slopn_tun::netns::enter(&name).unwrap();
        let listener = TcpListener::bind("[2001:db8:1::2]:8080").unwrap();
        ready_tx.send(()).unwrap();
        let (mut conn, peer) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request);
        let body = format!("you are {}\n", peer.ip());
        let _ = write!(
            conn,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    });
    ready_rx.recv().unwrap();
    lab.edit_hub(|h| {
        h.gateway = true;
        h.uplink = Some("up0".into());
        h.pool6 = Some("fd00:100::/64".parse().unwrap());
    });
    lab.start_hub();
    lab.start_spoke(0);
    lab.wait_established(&[0], Duration::from_secs(10));

    let page = lab.spoke_ns[0]
        .run(
            "curl",
            &[
                "-6",
                "-s",
                "-g",
                "--max-time",
                "5",
                "http://[2001:db8:1::2]:8080/",
            ],
        )
        .expect("the spoke reaches the IPv6 internet through the hub");
    assert!(
        page.contains("you are 2001:db8:1::1"),
        "masqueraded: {page}"
    );
    server.join().unwrap();
}
