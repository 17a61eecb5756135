//! A jumbo-frame network: every link between hub and spoke carries 9000-byte packets and both
//! files say `link_mtu = 9000`. Path MTU discovery climbs to 8952-byte datagrams, the tunnel
//! carries 8914-byte IP packets unfragmented both ways, and bulk data moves in them.

use std::time::Duration;

use crate::lab::Lab;
use crate::traffic::transfer;
use crate::{MIB, established};

const LINK_MTU: u16 = 9000;
/// `link_mtu` less IPv6 and UDP (48) and QUIC's short header, tag and DATAGRAM frame (38).
const TUNNEL_MTU: u64 = 8914;

#[test]
fn a_jumbo_frame_link_gives_a_jumbo_tunnel_both_ways() {
    let Some(mut lab) = Lab::new("jumbo", 1) else {
        return;
    };
    let mtu = LINK_MTU.to_string();
    for link in ["hub", "s0"] {
        lab.wan
            .ip(&["link", "set", "dev", link, "mtu", &mtu])
            .unwrap();
    }
    for ns in [&lab.hub_ns, &lab.spoke_ns[0]] {
        ns.ip(&["link", "set", "dev", "wan0", "mtu", &mtu]).unwrap();
    }
    lab.edit_hub(|h| h.link_mtu = LINK_MTU);
    lab.edit_spoke(0, |s| s.link_mtu = LINK_MTU);
    established(&mut lab, 1);

    // The hub's TUN device is made at the largest size; the spoke's follows its path as
    // discovery climbs, and the hub's connection finds the same path.
    let hub_tun = lab.hub_ns.ip(&["link", "show", "dev", "slopn0"]).unwrap();
    assert!(hub_tun.contains(&format!("mtu {TUNNEL_MTU} ")), "{hub_tun}");
    let took = lab.wait_for(
        "the spoke's tunnel MTU to reach 8914",
        Duration::from_secs(10),
        |lab| lab.spoke_status(0).unwrap()["tun_mtu"] == TUNNEL_MTU,
    );
    println!("spoke's tunnel MTU {TUNNEL_MTU} after {took:?}");
    lab.wait_for(
        "the hub's path to reach 8914",
        Duration::from_secs(10),
        |lab| lab.hub_status().unwrap()["sessions"][0]["max_packet"] == TUNNEL_MTU,
    );

    // The largest packet the tunnel takes crosses it whole, each way ("don't fragment").
    let spoke = lab.address(0);
    let payload = (TUNNEL_MTU - 28).to_string();
    for (from, to) in [
        (&lab.spoke_ns[0], "10.100.0.1"),
        (&lab.hub_ns, spoke.as_str()),
    ] {
        let out = from
            .command("ping")
            .args([
                "-c", "3", "-i", "0.2", "-W", "2", "-M", "do", "-s", &payload, to,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{TUNNEL_MTU}-byte pings to {to}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let sent = |lab: &Lab| lab.spoke_status(0).unwrap()["tx_packets"].as_u64().unwrap();
    let before = sent(&lab);
    let up = transfer(
        &lab.spoke_ns[0],
        &lab.hub_ns,
        "10.100.0.1:5001".parse().unwrap(),
        64 * MIB,
        |_| {},
    );
    let up_packets = sent(&lab) - before;
    let down = transfer(
        &lab.hub_ns,
        &lab.spoke_ns[0],
        format!("{spoke}:5002").parse().unwrap(),
        64 * MIB,
        |_| {},
    );
    let (hub, spoke) = (lab.hub_status().unwrap(), lab.spoke_status(0).unwrap());
    println!(
        "64 MiB each way, every byte checked: up {:.2} s, down {:.2} s (debug build); \
         drops: hub {}, spoke {}",
        up.as_secs_f64(),
        down.as_secs_f64(),
        hub["drops"],
        spoke["drops"]
    );
    // The upload went in jumbo packets: 7,600 or so, where 1414-byte ones would be 48,000.
    println!("{up_packets} packets into the tunnel for 64 MiB up");
    assert!(
        up_packets < 64 * MIB as u64 / 4000,
        "{up_packets} packets: {spoke}"
    );
    assert_eq!(spoke["tun_mtu"], TUNNEL_MTU, "no MTU dip: {spoke}");
}
