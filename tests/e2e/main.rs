//! End-to-end tests: the real `hub` and `spoke` binaries, real TUN devices and UDP sockets,
//! in network namespaces this test creates and removes. They need root (CI runs as root);
//! elsewhere they print SKIPPED and why, except under CI (`CI=true`), where they fail.

mod dns;
mod dual_stack;
mod gateway;
mod jumbo;
mod key_exchange;
mod kill_switch_service;
mod lab;
mod leaks;
mod metrics;
mod pmtu;
mod segments;
mod service;
mod traffic;
mod windows;

use std::time::{Duration, Instant};

use lab::{HUB_IP, Lab};
use traffic::{Impairment, Relay, transfer};

const MIB: usize = 1 << 20;

fn established(lab: &mut Lab, spokes: usize) {
    lab.start_hub();
    for i in 0..spokes {
        lab.start_spoke(i);
    }
    let took = lab.wait_established(&(0..spokes).collect::<Vec<_>>(), Duration::from_secs(10));
    println!("{spokes} spokes established {took:?} after start");
}

#[test]
fn spokes_reach_the_hub_and_each_other_and_move_data_intact() {
    let Some(mut lab) = Lab::new("spokes_reach_the_hub", 2) else {
        return;
    };
    established(&mut lab, 2);
    let (a, b) = (lab.address(0), lab.address(1));
    assert_ne!(a, b);
    let hub_rtt = lab
        .ping(&lab.spoke_ns[0], "10.100.0.1", 5)
        .expect("spoke 0 pings the hub");
    lab.ping(&lab.spoke_ns[1], "10.100.0.1", 3)
        .expect("spoke 1 pings the hub");
    let s2s_rtt = lab.ping(&lab.spoke_ns[0], &b, 5).expect("spoke to spoke");
    lab.ping(&lab.hub_ns, &a, 3).expect("hub to spoke");
    let direct = lab.ping(&lab.spoke_ns[0], HUB_IP, 5).unwrap();
    println!(
        "ping spoke->hub {hub_rtt:.3} ms, spoke->spoke {s2s_rtt:.3} ms, underlay {direct:.3} ms"
    );

    let took = transfer(
        &lab.spoke_ns[0],
        &lab.hub_ns,
        "10.100.0.1:5001".parse().unwrap(),
        64 * MIB,
        |_| {},
    );
    println!(
        "64 MiB spoke->hub over TCP, every byte checked: {:.2} s, {:.0} Mbit/s (debug build)",
        took.as_secs_f64(),
        64.0 * 8.0 * 1.048_576 / took.as_secs_f64()
    );
    let status = lab.spoke_status(0).unwrap();
    assert!(status["tx_bytes"].as_u64().unwrap() > 64 * MIB as u64);
    assert_eq!(status["sessions"], 1);
    let hub = lab.hub_status().unwrap();
    assert_eq!(hub["spokes_assigned"], 2);

    // Everything stops cleanly and leaves nothing behind.
    for i in 0..2 {
        assert!(lab.signal_spoke(i, "TERM").success());
    }
    assert!(lab.signal_hub("TERM").success());
    for ns in lab.spoke_ns.iter().chain([&lab.hub_ns]) {
        assert!(
            ns.ip(&["link", "show", "dev", "slopn0"]).is_err(),
            "TUN device left"
        );
        let routes = ns.ip(&["route", "show"]).unwrap();
        assert!(!routes.contains("10.100.0."), "route left: {routes}");
    }
    assert!(!lab.dir.join("hub.sock").exists(), "control socket left");
    let names: Vec<String> = [&lab.wan, &lab.hub_ns]
        .into_iter()
        .chain(&lab.spoke_ns)
        .map(|n| n.name().to_owned())
        .collect();
    drop(lab);
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    for name in names {
        assert!(!left.contains(&name), "namespace {name} left behind");
    }
}

#[test]
fn data_arrives_intact_over_a_lossy_reordering_duplicating_underlay() {
    let Some(mut lab) = Lab::new("lossy_underlay", 1) else {
        return;
    };
    // The spoke talks to a relay in the wan namespace that impairs both directions.
    let relay = Relay::start(
        &lab.wan,
        "10.0.0.1:5555".parse().unwrap(),
        lab.hub_addr(),
        Impairment {
            loss: 0.05,
            duplicate: 0.02,
            reorder: 0.05,
        },
    );
    lab.edit_spoke(0, |s| s.hub = "10.0.0.1:5555".into());
    established(&mut lab, 1);
    let took = transfer(
        &lab.spoke_ns[0],
        &lab.hub_ns,
        "10.100.0.1:5001".parse().unwrap(),
        16 * MIB,
        |_| {},
    );
    let stats = &relay.stats;
    println!(
        "16 MiB spoke->hub with 5 % loss, 5 % reordering, 2 % duplication each way: {:.2} s \
         ({:.1} Mbit/s); relay forwarded {}, lost {}, reordered {}, duplicated {}",
        took.as_secs_f64(),
        16.0 * 8.0 * 1.048_576 / took.as_secs_f64(),
        stats.forwarded.load(std::sync::atomic::Ordering::Relaxed),
        stats.lost.load(std::sync::atomic::Ordering::Relaxed),
        stats.reordered.load(std::sync::atomic::Ordering::Relaxed),
        stats.duplicated.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(stats.lost.load(std::sync::atomic::Ordering::Relaxed) > 100);
    assert_eq!(
        lab.spoke_status(0).unwrap()["sessions"],
        1,
        "the session survived"
    );
}

#[test]
fn a_killed_hub_is_noticed_and_found_again_at_once() {
    let Some(mut lab) = Lab::new("killed_hub", 2) else {
        return;
    };
    established(&mut lab, 2);
    let before = [lab.address(0), lab.address(1)];
    let quiet = lab.spoke_status(0).unwrap();
    assert!(quiet["hub_silent_secs"].is_null(), "{quiet}");

    // SIGKILL: no goodbye. The spokes notice within their idle timeout.
    let killed = Instant::now();
    lab.signal_hub("KILL");
    let bound = lab.dead_hub_noticed_within(0);
    // Before that, the status says the hub has gone quiet (past a keep-alive round), and
    // `spoke status` says what it may mean.
    let keep_alive = Duration::from_secs(lab.spoke_file(0).keep_alive_secs);
    let mut silent = None;
    lab.wait_for("the status to say the hub is silent", bound, |l| {
        let status = l.spoke_status(0).unwrap_or_default();
        silent = status["hub_silent_secs"].as_f64();
        silent.is_some() && status["state"] == "established"
    });
    let silent = silent.unwrap();
    assert!(
        // (The last packet came up to a keep-alive round before the kill.)
        silent > keep_alive.as_secs_f64() + 1.0
            && silent <= (killed.elapsed() + keep_alive).as_secs_f64() + 1.0,
        "silent for {silent} s, {:?} after the kill",
        killed.elapsed()
    );
    // The command says so too (asked while the status still says it: the session ends a
    // few seconds later).
    let socket = lab.dir.join("spoke-0.sock");
    let mut cli = String::new();
    lab.wait_for("`spoke status` to warn", bound, |l| {
        cli = l.spoke_ns[0]
            .run(
                l.binary("spoke").to_str().unwrap(),
                &["status", "--socket", socket.to_str().unwrap()],
            )
            .unwrap();
        cli.contains("nothing heard from the hub for") || !cli.contains("state:     established")
    });
    assert!(cli.contains("nothing heard from the hub for"), "{cli}");
    lab.wait_for(
        "spokes to notice the dead hub",
        bound + Duration::from_secs(2),
        |l| (0..2).all(|i| l.spoke_state(i) != "established"),
    );
    let noticed = killed.elapsed();
    // The bound, plus scheduling and the status poll.
    assert!(
        noticed <= bound + Duration::from_millis(500),
        "noticed after {noticed:?}, beyond keep-alive + idle timeout ({bound:?})"
    );
    // The hub stays down until both spokes have retried against it twice more.
    let attempts = |l: &Lab, i| {
        l.spoke_status(i)
            .map_or(0, |s| s["connect_attempts"].as_u64().unwrap_or(0))
    };
    let tried = [attempts(&lab, 0), attempts(&lab, 1)];
    lab.wait_for(
        "spokes to retry the dead hub",
        Duration::from_secs(10),
        |l| (0..2).all(|i| attempts(l, i) >= tried[i] + 2),
    );
    lab.start_hub();
    let back = lab.wait_established(&[0, 1], Duration::from_secs(5));
    println!(
        "hub SIGKILLed: spokes noticed after {noticed:?}, back {back:?} after the hub restarted"
    );
    assert!(
        back < Duration::from_secs(1),
        "reconnected {back:?} after the hub's return"
    );
    assert_eq!([lab.address(0), lab.address(1)], before, "addresses kept");
    lab.ping(&lab.spoke_ns[0], &before[1], 3)
        .expect("ping works again");

    // SIGTERM: the hub says goodbye and the spokes retry at once.
    lab.signal_hub("TERM");
    let noticed = lab.wait_for("spokes to hear the goodbye", Duration::from_secs(5), |l| {
        (0..2).all(|i| l.spoke_state(i) != "established")
    });
    lab.start_hub();
    let back = lab.wait_established(&[0, 1], Duration::from_secs(5));
    println!("hub SIGTERMed: spokes knew after {noticed:?}, back {back:?} after the restart");
    assert!(noticed < Duration::from_secs(1));
    assert!(
        back < Duration::from_secs(1),
        "reconnected {back:?} after the hub's return"
    );
    assert_eq!([lab.address(0), lab.address(1)], before);
}

#[test]
fn the_session_survives_a_change_of_the_spokes_underlay_address() {
    let Some(mut lab) = Lab::new("migration", 1) else {
        return;
    };
    established(&mut lab, 1);
    let addr = lab.address(0);
    let ns = &lab.spoke_ns[0];
    ns.run(
        "sysctl",
        &["-qw", "net.ipv4.conf.wan0.promote_secondaries=1"],
    )
    .unwrap();
    let took = transfer(
        ns,
        &lab.hub_ns,
        "10.100.0.1:5001".parse().unwrap(),
        48 * MIB,
        |received| {
            // Move once the transfer is well under way.
            while received.load(std::sync::atomic::Ordering::Relaxed) < 8 * MIB {
                std::thread::sleep(Duration::from_millis(5));
            }
            ns.ip(&["addr", "add", "10.0.1.3/24", "dev", "wan0"])
                .unwrap();
            ns.ip(&["addr", "del", "10.0.1.2/24", "dev", "wan0"])
                .unwrap();
            let _ = ns.ip(&["route", "replace", "default", "via", "10.0.1.1"]);
        },
    );
    let hub = lab.hub_status().unwrap();
    let remote = hub["sessions"][0]["remote"].as_str().unwrap().to_owned();
    println!(
        "48 MiB while the spoke moved from 10.0.1.2 to 10.0.1.3: {:.2} s; hub sees {remote}",
        took.as_secs_f64()
    );
    assert!(
        remote.starts_with("10.0.1.3:"),
        "the hub follows the spoke: {remote}"
    );
    let status = lab.spoke_status(0).unwrap();
    assert_eq!(status["sessions"], 1, "same session");
    assert_eq!(lab.address(0), addr, "same address");
}

#[test]
fn refusals_fail_clearly_and_leave_nothing_behind() {
    let Some(mut lab) = Lab::new("refusals", 3) else {
        return;
    };
    lab.start_hub();
    // A wrong token.
    lab.edit_spoke(0, |s| s.token = "0".repeat(64));
    // A CA that did not sign the hub's certificate.
    let other = lab.dir.join("other");
    let out = std::process::Command::new(lab.binary("hub"))
        .args(["init", "--dir"])
        .arg(&other)
        .args(["--name", "hub.slopn.test"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let other_ca = std::fs::read_to_string(other.join("ca.pem")).unwrap();
    lab.edit_spoke(1, |s| s.ca_pem = Some(other_ca));
    // A hub that is not there.
    lab.edit_spoke(2, |s| {
        s.hub = "10.0.0.99:4433".into();
        s.connect_timeout_secs = 3;
    });
    let expect = [
        "authentication failed",
        "TLS handshake with the hub failed",
        "could not reach the hub at 10.0.0.99:4433 within 3 s",
    ];
    for i in 0..3 {
        lab.start_spoke(i);
    }
    for (i, needle) in expect.iter().enumerate() {
        let status = lab
            .wait_spoke_exit(i, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("spoke {i} kept running"));
        assert!(!status.success(), "spoke {i} must fail");
        let log = lab.log(&format!("spoke-{i}.log"));
        let last = log.lines().last().unwrap_or_default().to_owned();
        println!("spoke {i}: {last}");
        assert!(log.contains(needle), "spoke {i} said: {log}");
        let ns = &lab.spoke_ns[i];
        assert!(
            ns.ip(&["link", "show", "dev", "slopn0"]).is_err(),
            "TUN device left"
        );
        assert!(
            !ns.ip(&["route", "show"]).unwrap().contains("10.100."),
            "route left"
        );
    }
    let hub = lab.hub_status().unwrap();
    assert_eq!(hub["spokes_assigned"], 0, "nobody got an address");
    assert_eq!(hub["tun_out_packets"], 0, "nothing was forwarded");
    assert!(hub["auth_failures"].as_u64().unwrap() >= 1);

    // Wrong tokens again and again: the hub turns the address away for a minute, and the
    // spoke says so rather than blaming the network.
    lab.edit_spoke(0, |s| s.connect_timeout_secs = 3);
    let mut said = String::new();
    for _ in 0..15 {
        lab.start_spoke(0);
        lab.wait_spoke_exit(0, Duration::from_secs(10))
            .expect("spoke 0 kept running");
        said = lab.log("spoke-0.log");
        if said.contains("answered but refused") {
            break;
        }
    }
    let last = said.lines().last().unwrap_or_default();
    println!("spoke 0 after repeated failures: {last}");
    assert!(
        last.contains("answered but refused") && !last.contains("firewall"),
        "{said}"
    );
    // The hub's log says what it turned away (every 10 s in which it did).
    lab.wait_for(
        "the hub to log its refusals",
        Duration::from_secs(15),
        |lab| lab.log("hub.log").contains("connection packets refused"),
    );
}

#[test]
fn the_control_socket_disconnects_and_reconnects_a_spoke() {
    let Some(mut lab) = Lab::new("control_socket", 1) else {
        return;
    };
    established(&mut lab, 1);
    // The hub refuses to disconnect a session it does not have, and says so.
    let hub_sock = lab.dir.join("hub.sock");
    let unknown = slopn::control::Request::Disconnect {
        session: Some(999_999),
    };
    let refusal = slopn::control::request(&hub_sock, &unknown).unwrap_err();
    assert!(
        refusal.to_string().contains("no session 999999"),
        "{refusal}"
    );
    assert_eq!(lab.spoke_state(0), "established");
    let sock = lab.dir.join("spoke-0.sock");
    slopn::control::request(
        &sock,
        &slopn::control::Request::Disconnect { session: None },
    )
    .unwrap();
    lab.wait_for("disconnect", Duration::from_secs(3), |l| {
        l.spoke_state(0) == "stopped"
    });
    let hub_sees = lab.wait_for("hub to see the goodbye", Duration::from_secs(3), |l| {
        l.hub_status().is_some_and(|h| h["spokes_assigned"] == 0)
    });
    assert!(hub_sees < Duration::from_secs(1), "goodbye, not a timeout");
    slopn::control::request(&sock, &slopn::control::Request::Connect { profile: None }).unwrap();
    lab.wait_established(&[0], Duration::from_secs(3));
    lab.ping(&lab.spoke_ns[0], "10.100.0.1", 2)
        .expect("ping after reconnect");
}
