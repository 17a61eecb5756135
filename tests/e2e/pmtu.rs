//! The path narrows under a running transfer: the tunnel's path MTU drops below what the
//! TUN devices' MTU lets hosts send, and the tunnel answers too-large packets with ICMP
//! "packet too big". Senders on the hub and on the spoke themselves must hear it (the kernel
//! drops an ICMP error that claims to come from one of its own addresses) and go on with
//! smaller segments instead of stalling.

use std::sync::atomic::Ordering;

use crate::lab::Lab;
use crate::traffic::transfer;
use crate::{MIB, established};

/// The router between hub and spoke now forwards at most 1300 bytes per packet either way
/// (a narrower link, or another tunnel, appearing on the path): larger packets, all marked
/// "don't fragment" by QUIC, are dropped, below the 1452-byte payloads the tunnel found.
fn narrow(lab: &Lab) {
    for link in ["hub", "s0"] {
        lab.wan
            .ip(&["link", "set", "dev", link, "mtu", "1300"])
            .unwrap();
    }
}

#[test]
fn transfers_survive_the_path_narrowing_beneath_them_both_ways() {
    let Some(mut lab) = Lab::new("narrowing_path", 1) else {
        return;
    };
    established(&mut lab, 1);
    let spoke = lab.address(0);
    let narrowed = std::sync::atomic::AtomicBool::new(false);
    // Hub to spoke, from a socket on the hub itself.
    let took = transfer(
        &lab.hub_ns,
        &lab.spoke_ns[0],
        format!("{spoke}:5001").parse().unwrap(),
        24 * MIB,
        |received| {
            while received.load(Ordering::Relaxed) < 4 * MIB {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            narrow(&lab);
            narrowed.store(true, Ordering::Relaxed);
        },
    );
    assert!(narrowed.load(Ordering::Relaxed));
    let hub = lab.hub_status().unwrap();
    let session = &hub["sessions"][0];
    println!(
        "24 MiB hub->spoke with the path narrowed to 1300 bytes after 4 MiB: {:.2} s; \
         max_packet {}, drops {}",
        took.as_secs_f64(),
        session["max_packet"],
        hub["drops"]
    );
    assert!(
        session["max_packet"].as_u64().unwrap() < 1300,
        "the tunnel noticed the narrower path: {session}"
    );
    assert!(
        hub["drops"]["too_large"].as_u64().unwrap_or(0) > 0,
        "the hub-side sender met the smaller MTU: {hub}"
    );

    // Spoke to hub, over the narrow path from the start of this transfer.
    let took = transfer(
        &lab.spoke_ns[0],
        &lab.hub_ns,
        "10.100.0.1:5002".parse().unwrap(),
        16 * MIB,
        |_| {},
    );
    println!(
        "16 MiB spoke->hub over the narrow path: {:.2} s",
        took.as_secs_f64()
    );
}
