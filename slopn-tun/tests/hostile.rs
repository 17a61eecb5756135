//! What a spoke sends reaches the hub's TUN batch after only header checks, so the merging
//! of TCP segments and UDP datagrams (IPv4 and IPv6) sees hostile input: batches of mangled,
//! truncated, duplicated and reordered packets (checksums fixed up half of the time, so that
//! they get past tun-rs's checksum test). They must never panic or end the device; and what
//! the kernel receives, read back from a capture, must be well-formed, must carry every
//! untouched packet's bytes at their place, and must not hold more than was written.

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

mod support;
use support::{Kind, capture, fix_checksums, in_namespace, offload_tun, segment, set_ip_length};

/// UDP port of the marker written after each batch: once it is captured, the batch is in.
const MARKER_PORT: u16 = 5999;

/// A packet written, and whether it left the generator untouched.
struct Written {
    bytes: Vec<u8>,
    intact: bool,
}

#[test]
fn hostile_segment_batches_are_written_or_dropped() {
    in_namespace(
        "hostile_segment_batches_are_written_or_dropped",
        "grofz",
        |_| {
            let mut tun = offload_tun("slopn-f0", &[("10.9.0.1", 24), ("fd00:9::1", 64)]);
            let capture = capture();
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            let (mut delivered, mut merged) = (0, 0);
            for round in 0..1000u32 {
                let batch = hostile_batch(&mut next);
                for p in &batch {
                    tun.queue_packet(&p.bytes).unwrap();
                }
                tun.flush()
                    .expect("a hostile batch must not end the device");
                tun.queue_packet(&marker(round)).unwrap();
                tun.flush().unwrap();
                let received = read_until_marker(&capture, round);
                merged += check(&batch, &received, round);
                delivered += received.len();
            }
            assert!(delivered > 1000, "the kernel received {delivered} packets");
            assert!(
                merged > 100,
                "only {merged} merged packets: merging went untested"
            );
        },
    );
}

/// One batch of one flow, some packets mangled, duplicated or swapped.
fn hostile_batch(next: &mut impl FnMut() -> u64) -> Vec<Written> {
    let kind = [Kind::Tcp4, Kind::Udp4, Kind::Tcp6, Kind::Udp6][(next() % 4) as usize];
    let count = 2 + next() % 40;
    let payload = 1 + (next() % 1300) as usize;
    let mut batch: Vec<Written> = (0..count as u32)
        .map(|i| Written {
            bytes: segment(kind, i, 1_000 + i * payload as u32, payload, false),
            intact: true,
        })
        .collect();
    for _ in 0..next() % 8 {
        let victim = (next() as usize) % batch.len();
        if next() % 6 == 5 {
            // A duplicate somewhere else in the batch.
            let copy = Written {
                bytes: batch[victim].bytes.clone(),
                intact: batch[victim].intact,
            };
            let at = (next() as usize) % batch.len();
            batch.insert(at, copy);
            continue;
        }
        let l3 = kind.l3_len();
        let w = &mut batch[victim];
        if w.bytes.len() < l3 + 20 {
            // Already truncated into the headers.
            continue;
        }
        w.intact = false;
        let p = &mut w.bytes;
        match next() % 5 {
            // A byte anywhere in the headers.
            0 => {
                let at = (next() as usize) % (l3 + 20);
                p[at] = next() as u8;
            }
            // Truncated, with or without fixing the IP length.
            1 => {
                let keep = (next() as usize % p.len()).max(1);
                p.truncate(keep);
                if next().is_multiple_of(2) {
                    set_ip_length(p);
                }
            }
            // TCP flags / data offset, or the UDP length.
            2 => p[l3 + 13] = next() as u8,
            3 => p[l3 + 12] = next() as u8,
            // Sequence numbers (TCP) or ports and length (UDP) that do not fit.
            _ => p[l3 + 4..l3 + 8].copy_from_slice(&(next() as u32).to_be_bytes()),
        }
        if next().is_multiple_of(2) {
            fix_checksums(p);
        }
    }
    if next().is_multiple_of(3) {
        let a = (next() as usize) % batch.len();
        let b = (next() as usize) % batch.len();
        batch.swap(a, b);
    }
    batch
}

/// A UDP datagram to [`MARKER_PORT`] carrying the round number.
fn marker(round: u32) -> Vec<u8> {
    let mut p = segment(Kind::Udp4, 0, 0, 4, false);
    p[22..24].copy_from_slice(&MARKER_PORT.to_be_bytes());
    p[28..32].copy_from_slice(&round.to_be_bytes());
    fix_checksums(&mut p);
    p
}

/// Our packets (from 10.9.0.2 or fd00:9::2) the stack received up to this round's marker.
fn read_until_marker(capture: &socket2::Socket, round: u32) -> Vec<Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 70_000];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            Instant::now() < deadline,
            "round {round}: the marker never arrived"
        );
        let Ok(n) = std::io::Read::read(&mut &*capture, &mut buf) else {
            continue;
        };
        let p = &buf[..n];
        let ours = match p.first().map(|b| b >> 4) {
            Some(4) => n >= 20 && p[12..16] == [10, 9, 0, 2],
            Some(6) => {
                n >= 40 && p[8..24] == "fd00:9::2".parse::<std::net::Ipv6Addr>().unwrap().octets()
            }
            _ => false,
        };
        if !ours {
            continue;
        }
        let is_marker = n == 32 && p[9] == 17 && p[22..24] == MARKER_PORT.to_be_bytes();
        if is_marker && p[28..32] == round.to_be_bytes() {
            return received;
        }
        if !is_marker {
            received.push(p.to_vec());
        }
    }
}

/// The IP header length, L4 protocol, ports, TCP sequence number and L4 payload of a
/// well-formed TCP or UDP packet without IPv6 extension headers.
fn parse(p: &[u8]) -> Option<(u8, u16, u32, &[u8])> {
    let (l3, protocol) = match p.first()? >> 4 {
        4 => (usize::from(p[0] & 0x0f) * 4, *p.get(9)?),
        _ => (40, *p.get(6)?),
    };
    let l4 = match protocol {
        6 => usize::from(p.get(l3 + 12)? >> 4) * 4,
        17 => 8,
        _ => return None,
    };
    let dport = u16::from_be_bytes([*p.get(l3 + 2)?, *p.get(l3 + 3)?]);
    let seq = u32::from_be_bytes(p.get(l3 + 4..l3 + 8)?.try_into().ok()?);
    Some((protocol, dport, seq, p.get(l3 + l4..)?))
}

/// Checks one round; returns how many received packets the device built by merging.
fn check(batch: &[Written], received: &[Vec<u8>], round: u32) -> usize {
    let mut merged = 0;
    // A packet passed through unchanged may be as broken as it was written (the stack drops
    // it after the capture); one the device built by merging must be well-formed and made
    // of written payloads only, each at its sequence number.
    for p in received {
        if batch.iter().any(|w| &w.bytes == p) {
            continue;
        }
        merged += 1;
        let len = match p[0] >> 4 {
            4 if p.len() >= 20 => usize::from(u16::from_be_bytes([p[2], p[3]])),
            6 if p.len() >= 40 => usize::from(u16::from_be_bytes([p[4], p[5]])) + 40,
            _ => panic!("round {round}: a merged packet of {} bytes", p.len()),
        };
        assert_eq!(len, p.len(), "round {round}: IP length of a merged packet");
        assert!(
            made_of_written_payloads(p, batch),
            "round {round}: a merged packet of {len} bytes holds bytes no written packet had"
        );
    }
    // Nothing made up: merging only removes headers.
    let written: usize = batch.iter().map(|w| w.bytes.len()).sum();
    let got: usize = received.iter().map(Vec::len).sum();
    assert!(
        got <= written,
        "round {round}: {got} bytes received of {written} written"
    );
    // Every untouched packet's payload arrived, at its place in some received packet.
    for w in batch.iter().filter(|w| w.intact) {
        let (protocol, port, seq, payload) = parse(&w.bytes).expect("generated packets parse");
        let same_family = |r: &&Vec<u8>| r[0] >> 4 == w.bytes[0] >> 4;
        let found = received
            .iter()
            .filter(same_family)
            .filter_map(|r| parse(r))
            .any(|(rp, rport, rseq, rdata)| {
                if (rp, rport) != (protocol, port) {
                    return false;
                }
                if protocol == 6 {
                    let at = seq.wrapping_sub(rseq) as usize;
                    rdata.get(at..at + payload.len()) == Some(payload)
                } else {
                    rdata.chunks(payload.len()).any(|chunk| chunk == payload)
                }
            });
        assert!(
            found,
            "round {round}: an untouched {} packet (seq {seq}, {} bytes) never arrived",
            if protocol == 6 { "TCP" } else { "UDP" },
            payload.len()
        );
    }
    merged
}

/// Whether the L4 payload of merged packet `p` is a sequence of payloads of written packets
/// of the same family and port: contiguous sequence numbers for TCP, whole datagrams for UDP.
fn made_of_written_payloads(p: &[u8], batch: &[Written]) -> bool {
    let Some((protocol, port, seq, data)) = parse(p) else {
        return false;
    };
    let pieces: Vec<(u32, &[u8])> = batch
        .iter()
        .filter(|w| w.bytes[0] >> 4 == p[0] >> 4)
        .filter_map(|w| parse(&w.bytes))
        .filter(|&(wp, wport, _, wdata)| (wp, wport) == (protocol, port) && !wdata.is_empty())
        .map(|(_, _, wseq, wdata)| (wseq, wdata))
        .collect();
    if protocol == 17 {
        return udp_from(&pieces, data);
    }
    tcp_from(&pieces, seq, data)
}

/// Whether `data`, starting at sequence number `seq`, is a concatenation of `pieces`.
fn tcp_from(pieces: &[(u32, &[u8])], seq: u32, data: &[u8]) -> bool {
    data.is_empty()
        || pieces.iter().any(|&(wseq, wdata)| {
            wseq == seq
                && data.starts_with(wdata)
                && tcp_from(
                    pieces,
                    seq.wrapping_add(wdata.len() as u32),
                    &data[wdata.len()..],
                )
        })
}

/// Whether `data` is a concatenation of the datagram payloads in `pieces`.
fn udp_from(pieces: &[(u32, &[u8])], data: &[u8]) -> bool {
    data.is_empty()
        || pieces
            .iter()
            .any(|&(_, d)| data.starts_with(d) && udp_from(pieces, &data[d.len()..]))
}
