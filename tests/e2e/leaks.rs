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

use crate::gateway::{stop_web_server, stop_web_server_on, web_server, web_server_on};
use crate::lab::Lab;

/// Counts what leaves `wan0` for anywhere but the hub's endpoint (IPv6 neighbour discovery
/// and multicast listener reports, which never leave the link, excepted), after the output
/// hook: what a kill switch drops is not counted.
pub(crate) struct LeakCounter {
    /// The spoke's namespace.
    ns: String,
}

impl LeakCounter {
    pub(crate) fn install(ns: &Namespace, hub: SocketAddr) -> Self {
        Self::install_for(ns, hub, "")
    }

    /// Counts only what matches `only` too (an nftables match such as `ip daddr NET`).
    fn install_for(ns: &Namespace, hub: SocketAddr, only: &str) -> Self {
        let rules = format!(
            "table inet slopn_leaks {{
                counter leaked {{}}
                chain out {{
                    type filter hook postrouting priority 100; policy accept;
                    oifname != \"wan0\" return
                    ip daddr {} udp dport {} return
                    icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld2-listener-report }} return
                    {only} counter name \"leaked\"
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
    pub(crate) fn leaked(&self) -> u64 {
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

/// Requests to a web server from `ns`, one after another, until stopped.
pub(crate) struct Requests {
    running: Arc<AtomicBool>,
    /// Connections tried.
    attempts: Arc<AtomicU64>,
    /// Answers that came back through the tunnel (the server saw the hub's address).
    tunneled: Arc<AtomicU64>,
    /// Answers that came back from elsewhere (the server saw the spoke's own address).
    outside: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Requests {
    /// Requests to `server`; an answer naming `tunneled` ("you are 203.0.113.1", the hub)
    /// came through the tunnel, any other from around it.
    fn start(ns: &Namespace, server: SocketAddr, tunneled_marker: &'static str) -> Self {
        let name = ns.name().to_owned();
        let running = Arc::new(AtomicBool::new(true));
        let attempts = Arc::new(AtomicU64::new(0));
        let (tunneled, outside) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let thread = std::thread::spawn({
            let (running, attempts) = (running.clone(), attempts.clone());
            let (tunneled, outside) = (tunneled.clone(), outside.clone());
            move || {
                slopn_tun::netns::enter(&name).unwrap();
                while running.load(Ordering::Relaxed) {
                    attempts.fetch_add(1, Ordering::Relaxed);
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
                        if page.contains(tunneled_marker) {
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
            attempts,
            tunneled,
            outside,
            thread: Some(thread),
        }
    }

    /// Requests to the internet's web server; answers naming the hub's uplink came
    /// through the tunnel.
    pub(crate) fn to_internet(ns: &Namespace) -> Self {
        Self::start(
            ns,
            "203.0.113.2:8080".parse().unwrap(),
            "you are 203.0.113.1",
        )
    }

    fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    pub(crate) fn tunneled(&self) -> u64 {
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
    let Some(mut lab) = Lab::with_gateway("a_full_tunnel_leaks_nothing", 1) else {
        return;
    };
    let internet = lab.internet.take().unwrap();
    let server = web_server(&internet);
    lab.route_around_the_tunnel(&internet);
    let counter = LeakCounter::install(&lab.spoke_ns[0], lab.hub_addr());
    let requests = Requests::to_internet(&lab.spoke_ns[0]);
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

#[test]
fn ipv6_does_not_leak_around_the_full_tunnel_of_an_ipv4_only_hub() {
    let Some(mut lab) = Lab::with_gateway("ipv6_does_not_leak_around_an_ipv4_tunnel", 1) else {
        return;
    };
    // The spoke's underlay has IPv6, and an IPv6 server lies beyond its router.
    let spoke = &lab.spoke_ns[0];
    spoke
        .ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:1::2/64",
            "dev",
            "wan0",
            "nodad",
        ])
        .unwrap();
    lab.wan
        .ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:1::1/64",
            "dev",
            "s0",
            "nodad",
        ])
        .unwrap();
    lab.wan
        .ip(&["-6", "addr", "add", "2001:db8:ff::1/128", "dev", "lo"])
        .unwrap();
    spoke
        .ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"])
        .unwrap();
    let server = web_server_on(&lab.wan, "[2001:db8:ff::1]:8080".parse().unwrap());
    let counter = LeakCounter::install(spoke, lab.hub_addr());
    let requests = Requests::start(
        spoke,
        "[2001:db8:ff::1]:8080".parse().unwrap(),
        "you are 10.100.0.",
    );
    lab.wait_for(
        "IPv6 answered around the tunnel",
        Duration::from_secs(10),
        |_| requests.outside() > 0,
    );
    assert!(
        counter.leaked() > 0,
        "the counter sees IPv6 outside the tunnel"
    );

    lab.start_hub();
    lab.start_spoke(0);
    lab.wait_established(&[0], Duration::from_secs(10));
    let established = counter.leaked();
    let outside = requests.outside();
    let attempts = requests.attempts();
    lab.wait_for("IPv6 requests tried", Duration::from_secs(20), |_| {
        requests.attempts() >= attempts + 10
    });
    assert_eq!(
        counter.leaked(),
        established,
        "IPv6 left outside the tunnel of an IPv4-only hub"
    );
    assert!(
        requests.outside() <= outside + 1,
        "IPv6 answered around the tunnel (one request may have been under way)"
    );
    // Refused at once ("network unreachable"), not left to time out.
    let table = lab.spoke_ns[0].ip(&["-6", "route", "show"]).unwrap();
    assert!(
        table.contains("unreachable ::/1") && table.contains("unreachable 8000::/1"),
        "{table}"
    );
    println!(
        "IPv6 around an IPv4-only full tunnel: {established} packets out before it was \
         established, none in {} requests after",
        requests.attempts() - attempts
    );
    // Stopped, the spoke takes them away again.
    assert!(lab.signal_spoke(0, "TERM").success());
    let table = lab.spoke_ns[0].ip(&["-6", "route", "show"]).unwrap();
    assert!(!table.contains("unreachable"), "{table}");
    drop(requests);
    stop_web_server_on(&lab.wan, "[2001:db8:ff::1]:8080", server);
}

pub(crate) fn kill_switch_table(ns: &Namespace) -> Option<String> {
    ns.run("nft", &["list", "table", "inet", "slopn_ks_slopn0"])
        .ok()
}

#[test]
fn the_kill_switch_lets_nothing_out_while_connecting_and_lockdown_holds_after_a_crash() {
    let Some(mut lab) = Lab::with_gateway("the_kill_switch_lets_nothing_out", 1) else {
        return;
    };
    let internet = lab.internet.take().unwrap();
    let server = web_server(&internet);
    lab.edit_spoke(0, |s| {
        s.kill_switch = true;
        s.lockdown = true;
    });
    lab.route_around_the_tunnel(&internet);
    let counter = LeakCounter::install(&lab.spoke_ns[0], lab.hub_addr());
    let requests = Requests::to_internet(&lab.spoke_ns[0]);
    lab.wait_for(
        "requests answered around the tunnel",
        Duration::from_secs(10),
        |_| requests.outside() > 0,
    );

    // The spoke starts while the hub is down: connecting, and nothing leaves.
    lab.start_spoke(0);
    lab.wait_for("the kill switch", Duration::from_secs(10), |l| {
        kill_switch_table(&l.spoke_ns[0]).is_some()
    });
    let on = counter.leaked();
    let outside = requests.outside();
    let attempts = requests.attempts();
    lab.wait_for(
        "requests tried while connecting",
        Duration::from_secs(20),
        |_| requests.attempts() >= attempts + 10,
    );
    assert_eq!(
        counter.leaked(),
        on,
        "packets left while the spoke was connecting"
    );
    assert!(
        requests.outside() <= outside + 1,
        "answered around the tunnel while connecting"
    );

    lab.start_hub();
    lab.wait_established(&[0], Duration::from_secs(20));
    let tunneled = requests.tunneled();
    lab.wait_for(
        "requests through the tunnel",
        Duration::from_secs(10),
        |_| requests.tunneled() >= tunneled + 20,
    );

    // Lockdown: the spoke is killed, its TUN device and routes go, the table stays.
    lab.signal_spoke(0, "KILL");
    let attempts = requests.attempts();
    lab.wait_for(
        "requests tried after the crash",
        Duration::from_secs(20),
        |_| requests.attempts() >= attempts + 10,
    );
    assert!(
        kill_switch_table(&lab.spoke_ns[0]).is_some(),
        "lockdown keeps the table"
    );
    assert_eq!(
        counter.leaked(),
        on,
        "packets left after the spoke was killed"
    );
    let blocked = kill_switch_table(&lab.spoke_ns[0]).unwrap();

    // `spoke unlock`: traffic leaves normally again.
    let spoke = lab.binary("spoke");
    let out = lab.spoke_ns[0]
        .run(spoke.to_str().unwrap(), &["unlock"])
        .unwrap();
    assert!(out.contains("removed"), "{out}");
    assert!(kill_switch_table(&lab.spoke_ns[0]).is_none());
    let outside = requests.outside();
    lab.wait_for(
        "requests answered around the tunnel again",
        Duration::from_secs(10),
        |_| requests.outside() > outside,
    );
    let out = lab.spoke_ns[0]
        .run(spoke.to_str().unwrap(), &["unlock"])
        .unwrap();
    assert!(out.contains("nothing to unlock"), "{out}");

    // Without lockdown the table goes with an orderly stop.
    lab.edit_spoke(0, |s| s.lockdown = false);
    lab.start_spoke(0);
    lab.wait_established(&[0], Duration::from_secs(20));
    assert!(kill_switch_table(&lab.spoke_ns[0]).is_some());
    assert!(lab.signal_spoke(0, "TERM").success());
    assert!(
        kill_switch_table(&lab.spoke_ns[0]).is_none(),
        "removed on an orderly stop"
    );
    println!(
        "kill switch: {on} packets left before it was on, none while connecting, \
         established or after the crash; {} requests through the tunnel; the table dropped \
         {} packets",
        requests.tunneled(),
        blocked
            .split("packets ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("?")
    );
    drop(requests);
    stop_web_server(&internet, server);
}

#[test]
fn a_kill_switch_is_refused_in_a_split_tunnel_with_a_sentence() {
    let Some(mut lab) = Lab::new("a_kill_switch_is_refused_in_a_split_tunnel", 1) else {
        return;
    };
    lab.edit_spoke(0, |s| {
        s.kill_switch = true;
        s.accept_default_route = false;
    });
    lab.start_spoke(0);
    let status = lab.wait_spoke_exit(0, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the spoke refuses to start"
    );
    let log = lab.log("spoke-0.log");
    assert!(
        log.contains("kill_switch = true needs a full tunnel (accept_default_route = true)"),
        "{log}"
    );
}

#[test]
fn a_split_tunnel_carries_the_pushed_networks_and_leaves_the_rest_outside() {
    let Some(mut lab) = Lab::with_gateway("a_split_tunnel_carries_the_pushed", 1) else {
        return;
    };
    let internet = lab.internet.take().unwrap();
    let pushed = web_server(&internet);
    lab.edit_hub(|h| {
        h.default_route = false;
        h.routes = vec!["203.0.113.0/24".parse().unwrap()];
    });
    // Elsewhere: a server beyond the spoke's own router.
    lab.wan
        .ip(&["addr", "add", "198.51.100.1/32", "dev", "lo"])
        .unwrap();
    let elsewhere = web_server_on(&lab.wan, "198.51.100.1:8080".parse().unwrap());
    // Counts the pushed network leaving around the tunnel.
    let counter =
        LeakCounter::install_for(&lab.spoke_ns[0], lab.hub_addr(), "ip daddr 203.0.113.0/24");
    lab.start_hub();
    lab.start_spoke(0);
    lab.wait_established(&[0], Duration::from_secs(10));
    let into = Requests::to_internet(&lab.spoke_ns[0]);
    let around = Requests::start(
        &lab.spoke_ns[0],
        "198.51.100.1:8080".parse().unwrap(),
        "you are 10.100.0.",
    );
    lab.wait_for("both kinds answered", Duration::from_secs(10), |_| {
        into.tunneled() >= 20 && around.outside() >= 20
    });
    assert_eq!(
        counter.leaked(),
        0,
        "the pushed network left around the tunnel"
    );
    assert_eq!(
        into.outside(),
        0,
        "the pushed network answered from outside"
    );
    assert_eq!(around.tunneled(), 0, "the rest went into the tunnel");
    let table = lab.spoke_ns[0].ip(&["route", "show"]).unwrap();
    assert!(!table.contains("0.0.0.0/1"), "no default halves: {table}");
    println!(
        "split tunnel: {} requests to the pushed network through the tunnel, {} to the rest \
         around it, none of the first outside",
        into.tunneled(),
        around.outside()
    );
    drop((into, around));
    stop_web_server(&internet, pushed);
    stop_web_server_on(&lab.wan, "198.51.100.1:8080", elsewhere);
}
