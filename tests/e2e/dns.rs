//! Pushed DNS servers: with a full tunnel they are in the spoke's resolver (and the routes in
//! place) before the event stream says "assigned" and the status "established"; queries reach them through the tunnel (nothing counted leaving around
//! it), the kill switch blocks the resolver the host had, and the resolver file is put back
//! after an orderly stop and, after a crash, by `spoke unlock`.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use slopn::config::DnsSetting;
use slopn::control::{Client, Request};
use slopn_tun::netns::Namespace;

use crate::lab::Lab;
use crate::leaks::LeakCounter;

/// The name server in the "internet" namespace the hub pushes.
const SERVER: &str = "203.0.113.2";
/// What it answers for every name.
const ANSWER: &str = "198.51.100.7";
/// The resolver file the spoke's namespace starts with: a LAN resolver on its underlay.
const ORIGINAL: &str = "# from DHCP\nnameserver 10.0.1.1\nsearch lab.test\n";

/// A name server answering every A query with [`ANSWER`], noting who asked.
struct NameServer {
    running: Arc<AtomicBool>,
    askers: Arc<Mutex<Vec<SocketAddr>>>,
    thread: Option<JoinHandle<()>>,
}

impl NameServer {
    fn start(ns: &Namespace) -> Self {
        let name = ns.name().to_owned();
        let running = Arc::new(AtomicBool::new(true));
        let askers = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn({
            let (running, askers) = (running.clone(), askers.clone());
            move || {
                slopn_tun::netns::enter(&name).unwrap();
                let socket = UdpSocket::bind((SERVER, 53)).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 512];
                while running.load(Ordering::Relaxed) {
                    let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    askers.lock().unwrap().push(peer);
                    if let Some(reply) = answer(&buf[..len]) {
                        let _ = socket.send_to(&reply, peer);
                    }
                }
            }
        });
        ready_rx.recv().unwrap();
        Self {
            running,
            askers,
            thread: Some(thread),
        }
    }

    fn askers(&self) -> Vec<SocketAddr> {
        self.askers.lock().unwrap().clone()
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The answer to a query of one question: [`ANSWER`] for type A, no records otherwise.
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    // Header (12 bytes), then the question: labels up to a zero byte, type, class.
    let end = 12 + query.get(12..)?.iter().position(|&b| b == 0)? + 1 + 4;
    let question = query.get(12..end)?;
    let is_a = question[question.len() - 4..question.len() - 2] == [0, 1];
    let mut reply = query[..2].to_vec();
    reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(is_a), 0, 0, 0, 0]);
    reply.extend_from_slice(question);
    if is_a {
        // A pointer to the question's name, type A, class IN, 60 s, four bytes.
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&ANSWER.parse::<std::net::Ipv4Addr>().ok()?.octets());
    }
    Some(reply)
}

/// The namespace's own resolver file, which `ip netns exec` puts over `/etc/resolv.conf`
/// for what runs in it (the spoke too): the host's file is never touched. Removed on drop.
struct ResolvConf {
    dir: PathBuf,
}

impl ResolvConf {
    fn create(ns: &Namespace, text: &str) -> Self {
        let dir = PathBuf::from("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), text).unwrap();
        Self { dir }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(self.dir.join("resolv.conf")).unwrap()
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Resolves `name` in `ns` as applications do (glibc, through `/etc/resolv.conf`).
fn resolve(ns: &Namespace, name: &str) -> Option<String> {
    ns.run("getent", &["ahostsv4", name])
        .ok()
        .and_then(|out| out.split_whitespace().next().map(str::to_owned))
}

#[test]
fn pushed_dns_is_set_before_established_and_queried_through_the_tunnel() {
    let Some(mut lab) = Lab::with_gateway("pushed_dns_through_the_tunnel", 1) else {
        return;
    };
    let internet = lab.internet.take().unwrap();
    let server = NameServer::start(&internet);
    lab.edit_hub(|h| h.dns = vec![SERVER.parse().unwrap()]);
    lab.edit_spoke(0, |s| {
        s.dns_method = DnsSetting::ResolvConf;
        s.kill_switch = true;
    });
    let resolv_conf = ResolvConf::create(&lab.spoke_ns[0], ORIGINAL);
    let counter = LeakCounter::install(&lab.spoke_ns[0], lab.hub_addr());

    // The spoke starts first, to follow its events from the start.
    lab.start_spoke(0);
    let socket = lab.dir.join("spoke-0.sock");
    lab.wait_for("the spoke's socket", Duration::from_secs(10), |_| {
        Client::connect(&socket).is_ok()
    });
    let mut events = Client::connect(&socket)
        .unwrap()
        .subscribe(&Request::Events)
        .unwrap();
    lab.start_hub();
    // When the event stream says "assigned", the routes and the servers are in already.
    loop {
        let event = events.next_line().unwrap().expect("events until assigned");
        if event["event"] == "assigned" {
            break;
        }
    }
    let route = lab.spoke_ns[0]
        .ip(&["route", "get", "203.0.113.99"])
        .unwrap();
    assert!(route.contains("dev slopn0"), "not routed yet: {route}");
    let text = resolv_conf.text();
    let active: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        active,
        [format!("nameserver {SERVER}").as_str(), "search lab.test"],
        "{text}"
    );
    lab.wait_established(&[0], Duration::from_secs(10));
    drop(events);
    let log = lab.log("spoke-0.log");
    let routed = log
        .lines()
        .find_map(|l| l.split_once("routes in place ").map(|(_, t)| t.to_owned()))
        .unwrap_or_default();

    let resolved = resolve(&lab.spoke_ns[0], "www.example.test");
    assert_eq!(resolved.as_deref(), Some(ANSWER));
    let askers = server.askers();
    assert!(!askers.is_empty());
    assert!(
        askers.iter().all(|a| a.ip().to_string() == "203.0.113.1"),
        "queries came through the hub's NAT, not around the tunnel: {askers:?}"
    );

    // The resolver the host had is on the LAN, outside the tunnel: the kill switch blocks
    // queries an application sends it directly.
    let lan = lab.spoke_ns[0]
        .run(
            "bash",
            &[
                "-c",
                "echo query 2>/dev/null > /dev/udp/10.0.1.1/53 && echo sent || echo refused",
            ],
        )
        .unwrap_or_default();
    assert_eq!(
        lan.trim(),
        "refused",
        "the kill switch let a query to the LAN out"
    );
    assert_eq!(counter.leaked(), 0, "packets left around the tunnel");

    // An orderly stop puts the file back.
    assert!(lab.signal_spoke(0, "TERM").success());
    assert_eq!(resolv_conf.text(), ORIGINAL);

    // A crash leaves the tunnel's servers; `spoke unlock` puts the file back.
    lab.start_spoke(0);
    lab.wait_established(&[0], Duration::from_secs(10));
    lab.signal_spoke(0, "KILL");
    assert!(resolv_conf.text().contains(&format!("nameserver {SERVER}")));
    let spoke = lab.binary("spoke");
    let out = lab.spoke_ns[0]
        .run(spoke.to_str().unwrap(), &["unlock"])
        .unwrap();
    assert!(out.contains("/etc/resolv.conf put back"), "{out}");
    assert_eq!(resolv_conf.text(), ORIGINAL);
    println!(
        "pushed DNS: routes and /etc/resolv.conf in place {routed}; {} queries answered \
         through the tunnel, a direct query to the LAN resolver: {}, 0 packets left around \
         the tunnel; the file put back after a stop and by `spoke unlock` after a crash",
        askers.len(),
        lan.trim()
    );
}
