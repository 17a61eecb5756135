//! Gateway mode: spokes reach an "internet" namespace through the hub's NAT, in full or
//! split tunnel; and the attacks a gateway must shrug off.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, SystemTime};

use slopn::config::{AuthMode, SpokeEntry};
use slopn::proto::pki::{CertificateAuthority, Validity};
use slopn_tun::netns::Namespace;

use crate::lab::Lab;

/// An HTTP server in `ns` answering every request with the client's address.
pub(crate) fn web_server(ns: &Namespace) -> std::thread::JoinHandle<()> {
    web_server_on(ns, "203.0.113.2:8080".parse().unwrap())
}

/// An HTTP server on `addr` in `ns` answering every request with the client's address.
pub(crate) fn web_server_on(ns: &Namespace, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let name = ns.name().to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        slopn_tun::netns::enter(&name).unwrap();
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(false).unwrap();
        ready_tx.send(()).unwrap();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            // One client at a time: one whose request never comes (a kill switch dropped
            // it) must not hold the others up.
            let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
            let Ok(peer) = conn.peer_addr() else { continue };
            let peer = peer.ip();
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request);
            if request.starts_with(b"GET /quit") {
                return;
            }
            let body = format!("hello from the internet; you are {peer}\n");
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    ready_rx.recv().unwrap();
    server
}

pub(crate) fn stop_web_server(ns: &Namespace, server: std::thread::JoinHandle<()>) {
    stop_web_server_on(ns, "203.0.113.2:8080", server);
}

/// Stops the server on `addr` (`host:port`, IPv6 in brackets) in `ns`.
pub(crate) fn stop_web_server_on(ns: &Namespace, addr: &str, server: std::thread::JoinHandle<()>) {
    let _ = ns.run(
        "curl",
        &["-s", "--max-time", "2", &format!("http://{addr}/quit")],
    );
    let _ = server.join();
}

/// `curl` from a namespace: the page, or `None` if it could not be fetched.
fn fetch(ns: &Namespace) -> Option<String> {
    ns.run(
        "curl",
        &["-s", "--max-time", "3", "http://203.0.113.2:8080/"],
    )
    .ok()
}

fn routes(ns: &Namespace) -> String {
    let v4 = ns.ip(&["-4", "route", "show"]).unwrap();
    let v6 = ns.ip(&["-6", "route", "show"]).unwrap();
    format!("{v4}{v6}")
}

#[test]
fn full_and_split_tunnels_through_the_gateway() {
    let Some(mut lab) = Lab::with_gateway("gateway_tunnels", 2) else {
        return;
    };
    let internet = lab.internet.take().unwrap();
    let server = web_server(&internet);
    lab.edit_spoke(1, |s| s.accept_default_route = false);
    assert!(
        fetch(&lab.spoke_ns[0]).is_none(),
        "the internet is unreachable without the VPN"
    );
    let before = routes(&lab.spoke_ns[0]);
    let forward_before = lab
        .hub_ns
        .run("sysctl", &["-n", "net.ipv4.ip_forward"])
        .unwrap();

    lab.start_hub();
    lab.start_spoke(0);
    lab.start_spoke(1);
    lab.wait_established(&[0, 1], Duration::from_secs(10));
    for line in lab.log("spoke-0.log").lines() {
        if let Some(at) = line.find("routes in place") {
            println!("full-tunnel spoke: {}", &line[at..]);
        }
    }
    let table = lab
        .hub_ns
        .run("nft", &["list", "table", "inet", "slopn_slopn0"])
        .unwrap();
    assert!(table.contains("masquerade"), "{table}");

    // Full tunnel: the page comes back, and the server saw the hub's uplink address.
    let page = fetch(&lab.spoke_ns[0]).expect("full-tunnel spoke reaches the internet");
    println!("full tunnel: {}", page.trim());
    assert!(page.contains("you are 203.0.113.1"), "masqueraded: {page}");
    let table = routes(&lab.spoke_ns[0]);
    assert!(
        table.contains("0.0.0.0/1 dev slopn0") && table.contains("128.0.0.0/1 dev slopn0"),
        "{table}"
    );
    assert!(
        table.contains("10.0.0.2 via 10.0.1.1"),
        "the hub stays on the underlay: {table}"
    );

    // Split tunnel: not without a pushed route; with one, yes. (The hub stops pushing the
    // default route, which would swallow the narrower one.)
    assert!(
        fetch(&lab.spoke_ns[1]).is_none(),
        "split tunnel ignores the default route"
    );
    lab.edit_hub(|h| {
        h.default_route = false;
        h.routes = vec!["203.0.113.0/24".parse().unwrap()];
    });
    lab.reload_hub();
    lab.wait_for("the pushed route", Duration::from_secs(5), |l| {
        l.spoke_status(1)
            .is_some_and(|s| s["routes"].to_string().contains("203.0.113.0/24"))
    });
    let page = fetch(&lab.spoke_ns[1]).expect("split-tunnel spoke reaches a pushed route");
    println!("split tunnel with the route pushed: {}", page.trim());
    assert!(page.contains("you are 203.0.113.1"));
    assert!(!routes(&lab.spoke_ns[1]).contains("0.0.0.0/1"));
    // The former full-tunnel spoke is now split too: halves and bypass gone, page still there.
    lab.wait_for("the default route withdrawn", Duration::from_secs(5), |l| {
        !routes(&l.spoke_ns[0]).contains("0.0.0.0/1")
    });
    assert!(
        !routes(&lab.spoke_ns[0]).contains("10.0.0.2 via"),
        "bypass removed"
    );
    assert!(fetch(&lab.spoke_ns[0]).is_some());
    // Back to full tunnel for the rest.
    lab.edit_hub(|h| {
        h.default_route = true;
        h.routes.clear();
    });
    lab.reload_hub();
    lab.wait_for("the default route again", Duration::from_secs(5), |l| {
        routes(&l.spoke_ns[0]).contains("0.0.0.0/1")
    });

    // Stopping the VPN restores the spoke's routes exactly, and the internet is gone again.
    assert!(lab.signal_spoke(0, "TERM").success());
    assert_eq!(routes(&lab.spoke_ns[0]), before);
    assert!(fetch(&lab.spoke_ns[0]).is_none());

    // A crash and a restart leave the routes as they were, too.
    lab.start_spoke(0);
    lab.wait_established(&[0], Duration::from_secs(10));
    lab.signal_spoke(0, "KILL");
    lab.start_spoke(0);
    lab.wait_established(&[0], Duration::from_secs(10));
    assert!(
        fetch(&lab.spoke_ns[0]).is_some(),
        "working again after the crash"
    );
    assert!(lab.signal_spoke(0, "TERM").success());
    assert_eq!(
        routes(&lab.spoke_ns[0]),
        before,
        "restored after crash and restart"
    );

    // The hub removes its table and restores forwarding.
    assert!(lab.signal_hub("TERM").success());
    assert!(
        lab.hub_ns
            .run("nft", &["list", "table", "inet", "slopn_slopn0"])
            .is_err()
    );
    let forward_after = lab
        .hub_ns
        .run("sysctl", &["-n", "net.ipv4.ip_forward"])
        .unwrap();
    assert_eq!(forward_after, forward_before);
    stop_web_server(&internet, server);
}

/// An IPv4 UDP packet from `src` to `dst` (checksums left to the kernel and to nobody).
fn udp_packet(src: [u8; 4], dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4")
    };
    let total = (28 + payload.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst.ip().octets());
    p.extend_from_slice(&40000u16.to_be_bytes());
    p.extend_from_slice(&dst.port().to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

#[test]
fn attacks_on_the_gateway_are_refused_and_other_spokes_do_not_notice() {
    let Some(mut lab) = Lab::with_gateway("gateway_attacks", 5) else {
        return;
    };
    let internet = lab.internet.take().unwrap();
    let server = web_server(&internet);
    lab.edit_hub(|h| {
        for name in ["cert-2", "cert-3", "cert-4"] {
            h.spokes.push(SpokeEntry {
                name: name.into(),
                auth: AuthMode::Certificate,
                token_sha256: None,
            });
        }
    });
    // Spokes 2-4 authenticate with certificates: from another CA, expired, and good.
    let read = |f: &str| std::fs::read_to_string(lab.dir.join(f)).unwrap();
    let ca = CertificateAuthority::from_pem(&read("ca.pem"), &read("ca.key")).unwrap();
    let stranger = CertificateAuthority::generate(
        "another CA",
        [5; 32],
        Validity::days_from(SystemTime::now(), 30),
    )
    .unwrap();
    let now = SystemTime::now();
    let expired = Validity {
        not_before: now - Duration::from_secs(40 * 86_400),
        not_after: now - Duration::from_secs(86_400),
    };
    let certs = [
        stranger
            .issue_client("cert-2", [6; 32], Validity::days_from(now, 30))
            .unwrap(),
        ca.issue_client("cert-3", [7; 32], expired).unwrap(),
        ca.issue_client("cert-4", [8; 32], Validity::days_from(now, 30))
            .unwrap(),
    ];
    for (i, cert) in (2..5).zip(certs) {
        lab.edit_spoke(i, |s| {
            s.token = String::new();
            s.certificate_pem = Some(cert.cert_pem.clone());
            s.private_key_pem = Some(cert.key_pem.clone());
        });
    }
    lab.start_hub();
    lab.start_spoke(0);
    lab.start_spoke(1);
    lab.wait_established(&[0, 1], Duration::from_secs(10));

    // Revocation: spoke-1 leaves the configuration; a reload ends its session at once.
    lab.edit_hub(|h| h.spokes.retain(|s| s.name != "spoke-1"));
    lab.reload_hub();
    let status = lab
        .wait_spoke_exit(1, Duration::from_secs(5))
        .expect("revoked spoke stops");
    assert!(!status.success());
    let log = lab.log("spoke-1.log");
    println!("revoked: {}", log.lines().last().unwrap_or_default());
    assert!(log.contains("revoked"), "{log}");
    // Its token no longer works.
    lab.start_spoke(1);
    lab.wait_spoke_exit(1, Duration::from_secs(10))
        .expect("refused");
    assert!(lab.log("spoke-1.log").contains("authentication failed"));

    for i in 2..5 {
        lab.start_spoke(i);
    }
    lab.wait_established(&[4], Duration::from_secs(10));
    for (i, needle) in [
        (2, "hub refused the TLS handshake"),
        (3, "hub refused the TLS handshake"),
    ] {
        lab.wait_spoke_exit(i, Duration::from_secs(10))
            .expect("refused");
        let log = lab.log(&format!("spoke-{i}.log"));
        println!("spoke-{i}: {}", log.lines().last().unwrap_or_default());
        assert!(log.contains(needle), "{log}");
        assert!(
            lab.spoke_ns[i]
                .ip(&["link", "show", "dev", "slopn0"])
                .is_err()
        );
    }
    let good = lab.spoke_status(4).unwrap();
    assert_eq!(good["identity"], "cert-4", "identity from the certificate");

    // A forged source written into the TUN device with a raw socket reaches nobody.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let listen = |ns: &Namespace, addr: &str| {
        let name = ns.name().to_owned();
        let addr = addr.to_owned();
        let ready = ready_tx.clone();
        std::thread::spawn(move || {
            slopn_tun::netns::enter(&name).unwrap();
            let socket = UdpSocket::bind(addr).unwrap();
            ready.send(()).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                got.push((from, buf[..n].to_vec()));
            }
            got
        })
    };
    let at_internet = listen(&internet, "203.0.113.2:9999");
    let at_spoke = listen(&lab.spoke_ns[4], "0.0.0.0:9999");
    for _ in 0..2 {
        ready_rx.recv().unwrap();
    }
    let victim: SocketAddr = format!("{}:9999", lab.address(4)).parse().unwrap();
    let targets: [SocketAddr; 2] = ["203.0.113.2:9999".parse().unwrap(), victim];
    let ns0 = lab.spoke_ns[0].name().to_owned();
    std::thread::spawn(move || {
        slopn_tun::netns::enter(&ns0).unwrap();
        let raw = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(255)),
        )
        .unwrap();
        for target in targets {
            raw.send_to(
                &udp_packet([10, 100, 0, 99], target, b"forged"),
                &target.into(),
            )
            .unwrap();
            // And an honest one, which must arrive.
            let honest = UdpSocket::bind("0.0.0.0:0").unwrap();
            honest.send_to(b"honest", target).unwrap();
        }
    })
    .join()
    .unwrap();
    for (what, got) in [
        ("internet", at_internet.join().unwrap()),
        ("spoke-4", at_spoke.join().unwrap()),
    ] {
        assert!(
            got.iter().all(|(_, d)| d != b"forged"),
            "a forged packet reached {what}"
        );
        assert!(
            got.iter().any(|(_, d)| d == b"honest"),
            "the honest packet reached {what}"
        );
    }
    let drops = lab.spoke_status(0).unwrap()["drops"]["spoofed_source"]
        .as_u64()
        .unwrap_or(0);
    assert!(drops >= 2, "counted: {drops}");

    // Nobody on the uplink side can open connections to spokes, even with a route to them.
    internet
        .ip(&["route", "add", "10.100.0.0/24", "via", "203.0.113.1"])
        .unwrap();
    let reached = internet
        .command("ping")
        .args(["-c", "2", "-W", "1", "-q", &lab.address(0)])
        .status()
        .unwrap()
        .success();
    assert!(!reached, "the uplink reached a spoke unasked");

    // The good spokes never noticed any of it.
    for i in [0, 4] {
        let s = lab.spoke_status(i).unwrap();
        assert_eq!(s["sessions"], 1, "spoke {i}");
        assert_eq!(s["state"], "established");
    }
    assert!(fetch(&lab.spoke_ns[0]).is_some());
    let hub = lab.hub_status().unwrap();
    println!(
        "hub: {} spokes assigned, {} authentication failures, drops {}",
        hub["spokes_assigned"], hub["auth_failures"], hub["drops"]
    );
    assert_eq!(hub["spokes_assigned"], 2);
    // The revoked token and the two refused certificates all count against their sources.
    assert!(hub["auth_failures"].as_u64().unwrap() >= 3, "{hub}");
    stop_web_server(&internet, server);
}
