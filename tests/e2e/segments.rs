//! Small TCP segments. With segmentation offload the kernel hands the TUN reader TCP
//! super-packets of up to 64 KiB; at a small MSS one of them is hundreds of segments, more
//! than one read batch splits into. The TUN device caps the segments per super-packet at what
//! a batch holds, so no read is dropped whole (which stalled such flows to a tenth of their
//! speed: every dropped read is up to 64 KiB of the sender's data lost at once).

use crate::lab::Lab;
use crate::traffic::transfer_with_mss;
use crate::{MIB, established};

/// The sender's MSS: 188 bytes of payload with TCP timestamps, about 350 segments in a
/// 64 KiB super-packet.
const MSS: u32 = 200;

#[test]
fn small_tcp_segments_cross_the_tunnel_both_ways_without_a_dropped_read() {
    let Some(mut lab) = Lab::new("small_segments", 1) else {
        return;
    };
    established(&mut lab, 1);
    let spoke = lab.address(0);
    let up = transfer_with_mss(
        &lab.spoke_ns[0],
        &lab.hub_ns,
        "10.100.0.1:5001".parse().unwrap(),
        16 * MIB,
        Some(MSS),
        |_| {},
    );
    let down = transfer_with_mss(
        &lab.hub_ns,
        &lab.spoke_ns[0],
        format!("{spoke}:5002").parse().unwrap(),
        16 * MIB,
        Some(MSS),
        |_| {},
    );
    let (hub, spoke) = (lab.hub_status().unwrap(), lab.spoke_status(0).unwrap());
    println!(
        "16 MiB each way in {MSS}-byte segments, every byte checked: up {:.2} s, down {:.2} s \
         (debug build); drops: hub {}, spoke {}",
        up.as_secs_f64(),
        down.as_secs_f64(),
        hub["drops"],
        spoke["drops"]
    );
    for (side, status) in [("hub", &hub), ("spoke", &spoke)] {
        assert!(
            status["drops"].get("tun_read_unsplit").is_none(),
            "the {side} dropped TUN reads it could not split: {}",
            status["drops"]
        );
    }
}
