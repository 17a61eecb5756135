//! The post-quantum key exchange with the real binaries: X25519MLKEM768 by default (shown in
//! both status documents), the time from start to established with it and with classic
//! X25519, and a hybrid-only hub refusing a classic spoke with a sentence on both sides.

use std::time::Duration;

use slopn::key_exchange::KeyExchangeSetting;

use crate::lab::Lab;

/// Seconds since midnight of a log line's RFC 3339 timestamp (`...T18:00:34.094341Z`).
fn seconds(line: &str) -> f64 {
    let time = line.split(['T', 'Z']).nth(1).unwrap();
    time.split(':')
        .map(|part| part.parse::<f64>().unwrap())
        .fold(0.0, |total, part| total * 60.0 + part)
}

/// From the spoke's log: the time from "spoke running" (its socket and TUN device are up)
/// to "connected to the hub" (established: handshake, HELLO, assignment, routes).
fn start_to_established(log: &str) -> Duration {
    let at = |needle: &str| seconds(log.lines().find(|l| l.contains(needle)).unwrap());
    Duration::from_secs_f64(at("connected to the hub") - at("spoke running"))
}

/// Starts the hub and spoke 0; the time from the spoke's start to established, and the
/// group each side reports.
fn connect(lab: &mut Lab) -> (Duration, String, String) {
    lab.start_hub();
    lab.start_spoke(0);
    lab.wait_established(&[0], Duration::from_secs(10));
    let took = start_to_established(&lab.log("spoke-0.log"));
    let spoke = lab.spoke_status(0).unwrap();
    let hub = lab.hub_status().unwrap();
    let group = |v: &serde_json::Value| v.as_str().unwrap_or("none").to_owned();
    let groups = (
        group(&spoke["key_exchange"]),
        group(&hub["sessions"][0]["key_exchange"]),
    );
    assert!(lab.signal_spoke(0, "TERM").success());
    assert!(lab.signal_hub("TERM").success());
    (took, groups.0, groups.1)
}

#[test]
fn sessions_are_post_quantum_by_default_and_classic_when_set() {
    let Some(mut lab) = Lab::new("sessions_are_post_quantum", 1) else {
        return;
    };
    let mut times = Vec::new();
    for setting in [KeyExchangeSetting::Hybrid, KeyExchangeSetting::Classic].repeat(3) {
        lab.edit_hub(|h| h.key_exchange = setting);
        lab.edit_spoke(0, |s| s.key_exchange = setting);
        let (took, spoke, hub) = connect(&mut lab);
        let expected = match setting {
            KeyExchangeSetting::Classic => "X25519",
            _ => "X25519MLKEM768",
        };
        assert_eq!((spoke.as_str(), hub.as_str()), (expected, expected));
        times.push(format!("{setting:?} {:.2} ms", took.as_secs_f64() * 1e3));
    }
    println!("start to established (debug build): {}", times.join(", "));
}

#[test]
fn a_hybrid_only_hub_refuses_a_classic_spoke_with_a_sentence_each() {
    let Some(mut lab) = Lab::new("a_hybrid_only_hub_refuses", 1) else {
        return;
    };
    lab.edit_hub(|h| h.key_exchange = KeyExchangeSetting::HybridOnly);
    lab.edit_spoke(0, |s| s.key_exchange = KeyExchangeSetting::Classic);
    lab.start_hub();
    lab.start_spoke(0);
    let status = lab
        .wait_spoke_exit(0, Duration::from_secs(20))
        .expect("the spoke gives up");
    assert!(!status.success());
    let spoke_log = lab.log("spoke-0.log");
    let last = spoke_log.lines().last().unwrap_or_default().to_owned();
    assert!(
        last.contains(
            "the hub refused the TLS handshake: the two ends have no key exchange in common"
        ) && last.contains("set key_exchange = \"hybrid\" in this spoke's file"),
        "{last}"
    );
    let hub_log = lab.log("hub.log");
    assert!(
        hub_log.contains("refused a spoke in the TLS handshake: it offers no key exchange group"),
        "{hub_log}"
    );
    let hub = lab.hub_status().unwrap();
    assert_eq!(hub["spokes_assigned"], 0);
    println!("spoke: {last}");
}
