//! Dual stack inside the tunnel: with a `pool6`, every spoke gets an IPv4 and an IPv6
//! address, and IPv6 carries pings and TCP from spoke to hub and spoke to spoke.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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
}
