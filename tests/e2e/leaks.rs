//! A full tunnel leaks nothing: an nftables counter on the spoke's underlay interface counts
//! every packet that leaves for anywhere but the hub's endpoint, while a loop of requests
//! to the "internet" runs through the connect, the session and a hub restart.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use slopn_tun::netns::Namespace;

use crate::gateway::{stop_web_server, web_server};
use crate::lab::{HUB_IP, Lab};

/// Counts what leaves `wan0` for anywhere but the hub's endpoint (IPv6 neighbour discovery
/// and multicast listener reports, which never leave the link, excepted).
struct LeakCounter {
    /// The spoke's namespace.
    ns: String,
}

impl LeakCounter {
    fn install(ns: &Namespace, hub: SocketAddr) -> Self {
        let rules = format!(
            "table inet slopn_leaks {{
                counter leaked {{}}
                chain out {{
                    type filter hook output priority 0; policy accept;
                    oifname != \"wan0\" return
                    ip daddr {} udp dport {} return
                    icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld2-listener-report }} return
                    counter name \"leaked\"
                }}
            }}",
            hub.ip(),
            hub.port()
        );
        let out = ns
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .and_then(|mut nft| {
                nft.stdin.take().unwrap().write_all(rules.as_bytes())?;
                nft.wait()
            })
            .unwrap();
        assert!(out.success(), "nft refused the leak counter");
        Self {
            ns: ns.name().to_owned(),
        }
    }

    /// Packets counted so far.
    fn leaked(&self) -> u64 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(["nft", "list", "counter", "inet", "slopn_leaks", "leaked"])
            .output()
            .unwrap();
        assert!(out.status.success(), "the leak counter is gone");
        let out = String::from_utf8_lossy(&out.stdout);
        let words: Vec<&str> = out.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "packets").unwrap();
        words[at + 1].parse().unwrap()
    }
}

/// Requests to the internet's web server from `ns`, one after another, until stopped.
struct Requests {
    running: Arc<AtomicBool>,
    /// Answers that came back through the tunnel (the server saw the hub's address).
    tunneled: Arc<AtomicU64>,
    /// Answers that came back from elsewhere (the server saw the spoke's own address).
    outside: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Requests {
    fn start(ns: &Namespace) -> Self {
        let name = ns.name().to_owned();
        let running = Arc::new(AtomicBool::new(true));
        let (tunneled, outside) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let thread = std::thread::spawn({
            let (running, tunneled, outside) = (running.clone(), tunneled.clone(), outside.clone());
            move || {
                slopn_tun::netns::enter(&name).unwrap();
                let server: SocketAddr = "203.0.113.2:8080".parse().unwrap();
                while running.load(Ordering::Relaxed) {
                    let Ok(mut conn) =
                        TcpStream::connect_timeout(&server, Duration::from_millis(200))
                    else {
                        continue;
                    };
                    let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                    let mut page = String::new();
                    if conn.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok()
                        && conn.read_to_string(&mut page).is_ok()
                    {
                        if page.contains("you are 203.0.113.1") {
                            tunneled.fetch_add(1, Ordering::Relaxed);
                        } else if page.contains("you are") {
                            outside.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
        Self {
            running,
            tunneled,
            outside,
            thread: Some(thread),
        }
    }

    fn tunneled(&self) -> u64 {
        self.tunneled.load(Ordering::Relaxed)
    }

    fn outside(&self) -> u64 {
        self.outside.load(Ordering::Relaxed)
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_full_tunnel_leaks_nothing_once_established_nor_while_the_hub_restarts() {
    let Some(mut lab) = Lab::with_internet("a_full_tunnel_leaks_nothing", 1) else {
        return;
    };
    let internet = lab.internet.take().unwrap();
    let server = web_server(&internet);
    lab.edit_hub(|h| {
        h.gateway = true;
        h.uplink = Some("up0".into());
    });
    // The spoke's own way to the internet, around the tunnel (through the hub's host,
    // unmasqueraded): a leak gets an answer that says "you are 10.0.1.2".
    lab.wan
        .ip(&["route", "add", "203.0.113.0/24", "via", HUB_IP])
        .unwrap();
    lab.hub_ns
        .run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    internet
        .ip(&["route", "add", "10.0.0.0/16", "via", "203.0.113.1"])
        .unwrap();
    let counter = LeakCounter::install(&lab.spoke_ns[0], format!("{HUB_IP}:4433").parse().unwrap());
    let requests = Requests::start(&lab.spoke_ns[0]);
    lab.wait_for(
        "requests answered outside the tunnel",
        Duration::from_secs(10),
        |_| requests.outside() > 0,
    );
    let before = counter.leaked();
    assert!(before > 0, "the counter sees traffic outside the tunnel");

    lab.start_hub();
    lab.start_spoke(0);
    lab.wait_established(&[0], Duration::from_secs(10));
    let established = counter.leaked();
    let tunneled = requests.tunneled();
    lab.wait_for(
        "requests through the tunnel",
        Duration::from_secs(10),
        |_| requests.tunneled() >= tunneled + 20,
    );
    assert_eq!(
        counter.leaked(),
        established,
        "packets left outside the tunnel after it was established"
    );

    // The hub dies and comes back: requests fail meanwhile, nothing leaves, then they
    // come through again.
    lab.signal_hub("KILL");
    lab.wait_for("the spoke to notice", Duration::from_secs(30), |l| {
        l.spoke_state(0) != "established"
    });
    let outside = requests.outside();
    lab.start_hub();
    lab.wait_established(&[0], Duration::from_secs(30));
    let tunneled = requests.tunneled();
    lab.wait_for(
        "requests through the tunnel again",
        Duration::from_secs(10),
        |_| requests.tunneled() >= tunneled + 20,
    );
    assert_eq!(
        counter.leaked(),
        established,
        "packets left outside the tunnel while the hub restarted"
    );
    assert_eq!(
        requests.outside(),
        outside,
        "no answer came from outside the tunnel"
    );
    println!(
        "{} requests answered through the tunnel; {} packets left outside it before it was \
         established, none after",
        requests.tunneled(),
        established
    );
    drop(requests);
    stop_web_server(&internet, server);
}
