//! Round trips, hostile bytes, and the promise that whatever `encode` accepts `decode` accepts.

use super::*;
use proptest::prelude::*;

fn roundtrip(c: &Capsule) {
    let mut buf = Vec::new();
    encode(c, &mut buf).unwrap();
    let (decoded, used) = decode(&buf).unwrap().unwrap();
    assert_eq!(&decoded, c);
    assert_eq!(used, buf.len());
    // Every strict prefix is incomplete, never an error and never a capsule.
    for cut in 0..buf.len() {
        assert_eq!(decode(&buf[..cut]), Ok(None), "cut at {cut}");
    }
}

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn known_capsules_roundtrip() {
    roundtrip(&Capsule::Hello {
        version: 1,
        credential: Bytes::from_static(b"secret"),
    });
    roundtrip(&Capsule::Welcome {
        version: 1,
        identity: "alice".into(),
        hub_addresses: vec![
            "10.0.0.1/24".parse().unwrap(),
            "fd00::1/64".parse().unwrap(),
        ],
    });
    roundtrip(&Capsule::AddressRequest(vec![RequestedAddress {
        request_id: 7,
        prefix: IpPrefix::rejection(false),
    }]));
    roundtrip(&Capsule::AddressAssign(vec![]));
    roundtrip(&Capsule::RouteAdvertisement(normalize_ranges(vec![
        IpRange::from_net("10.0.0.0/24".parse().unwrap()),
        IpRange::from_net("0.0.0.0/0".parse().unwrap()),
        IpRange::from_net("fd00::/64".parse().unwrap()),
    ])));
    roundtrip(&Capsule::Error {
        code: CloseCode::POOL_EXHAUSTED,
        reason: "pool exhausted".into(),
    });
    roundtrip(&Capsule::Goodbye {
        code: CloseCode::SHUTTING_DOWN,
        reason: String::new(),
    });
    roundtrip(&Capsule::DnsServers(vec![
        v4("10.0.0.53"),
        "fd00::53".parse().unwrap(),
    ]));
    roundtrip(&Capsule::DnsServers(vec![]));
}

#[test]
fn wire_format_matches_rfc9484() {
    let mut buf = Vec::new();
    encode(
        &Capsule::AddressAssign(vec![AssignedAddress {
            request_id: 1,
            prefix: IpPrefix::host(v4("10.100.0.2")),
        }]),
        &mut buf,
    )
    .unwrap();
    assert_eq!(buf, [0x01, 0x07, 0x01, 0x04, 10, 100, 0, 2, 32]);
    buf.clear();
    encode(
        &Capsule::RouteAdvertisement(vec![IpRange::from_net("10.100.0.0/24".parse().unwrap())]),
        &mut buf,
    )
    .unwrap();
    assert_eq!(
        buf,
        [0x03, 0x0a, 0x04, 10, 100, 0, 0, 10, 100, 0, 255, 0x00]
    );
    // The remaining examples of docs/PROTOCOL.md §9.
    buf.clear();
    encode(
        &Capsule::Hello {
            version: 1,
            credential: Bytes::from_static(b"token-0"),
        },
        &mut buf,
    )
    .unwrap();
    assert_eq!(buf, b"\x10\x09\x01\x07token-0");
    buf.clear();
    encode(
        &Capsule::Error {
            code: CloseCode::POOL_EXHAUSTED,
            reason: "pool exhausted".into(),
        },
        &mut buf,
    )
    .unwrap();
    assert_eq!(buf, b"\x12\x10\x04\x0epool exhausted");
}

#[test]
fn rejects_bad_input() {
    assert_eq!(decode(&[0x3f, 0x00]), Err(DecodeError::UnknownType(0x3f)));
    // Unknown type is refused before its value arrives.
    assert_eq!(decode(&[0x3f, 0x10]), Err(DecodeError::UnknownType(0x3f)));
    assert_eq!(
        decode(&[0x01, 0x80, 0x01, 0x00, 0x01]),
        Err(DecodeError::TooLong(65537))
    );
    // Host bits set under a /24 prefix.
    assert!(decode(&[0x01, 0x07, 0x01, 0x04, 10, 0, 0, 1, 24]).is_err());
    // Overlapping ranges.
    let mut buf = vec![0x03, 20];
    for _ in 0..2 {
        buf.extend_from_slice(&[4, 10, 0, 0, 0, 10, 0, 0, 255, 0]);
    }
    assert!(decode(&buf).is_err());
    // Empty request.
    assert!(decode(&[0x02, 0x00]).is_err());
    // Trailing bytes in HELLO.
    assert!(decode(&[0x10, 0x03, 0x01, 0x00, 0xff]).is_err());
}

#[test]
fn ranges_to_nets() {
    let r = IpRange::new(v4("10.0.0.1"), v4("10.0.0.6"), 0).unwrap();
    let nets: Vec<String> = r.to_nets().iter().map(ToString::to_string).collect();
    assert_eq!(
        nets,
        ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
    );
    let all = IpRange::from_net("0.0.0.0/0".parse().unwrap());
    assert_eq!(all.to_nets(), vec!["0.0.0.0/0".parse().unwrap()]);
    let all6 = IpRange::from_net("::/0".parse().unwrap());
    assert_eq!(all6.to_nets(), vec!["::/0".parse().unwrap()]);
}

fn arb_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(v.into())),
        any::<u128>().prop_map(|v| IpAddr::V6(v.into())),
    ]
}

fn arb_prefix() -> impl Strategy<Value = IpPrefix> {
    (arb_addr(), any::<u8>()).prop_map(|(addr, len)| {
        let len = len % (addr_width(addr) + 1);
        let shift = u32::from(addr_width(addr) - len);
        let value = if shift >= 128 {
            0
        } else {
            addr_to_u128(addr) >> shift << shift
        };
        IpPrefix::new(u128_to_addr(value, addr.is_ipv4()), len).unwrap()
    })
}

fn arb_text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..16)
        .prop_map(move |c| c.into_iter().collect::<String>())
        .prop_filter("fits", move |s| s.len() <= max)
}

fn arb_capsule() -> impl Strategy<Value = Capsule> {
    let id = 1u64..(1 << 62);
    prop_oneof![
        proptest::collection::vec(
            (0u64..(1 << 62), arb_prefix())
                .prop_map(|(request_id, prefix)| AssignedAddress { request_id, prefix }),
            0..8
        )
        .prop_map(Capsule::AddressAssign),
        proptest::collection::vec(
            (id, arb_prefix())
                .prop_map(|(request_id, prefix)| RequestedAddress { request_id, prefix }),
            1..8
        )
        .prop_map(Capsule::AddressRequest),
        proptest::collection::vec(
            (arb_addr(), arb_addr(), any::<u8>()).prop_filter_map("same family", |(a, b, p)| {
                let (lo, hi) = if addr_to_u128(a) <= addr_to_u128(b) {
                    (a, b)
                } else {
                    (b, a)
                };
                IpRange::new(lo, hi, p)
            }),
            0..8
        )
        .prop_map(|r| Capsule::RouteAdvertisement(normalize_ranges(r))),
        (
            0u64..(1 << 62),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(version, c)| Capsule::Hello {
                version,
                credential: c.into()
            }),
        (
            0u64..(1 << 62),
            arb_text(MAX_IDENTITY_LEN),
            proptest::collection::vec(
                (arb_addr(), any::<u8>())
                    .prop_map(|(a, l)| { ipnet::IpNet::new(a, l % (addr_width(a) + 1)).unwrap() }),
                0..4
            )
        )
            .prop_map(|(version, identity, hub_addresses)| Capsule::Welcome {
                version,
                identity,
                hub_addresses
            }),
        proptest::collection::vec(arb_addr(), 0..8).prop_map(Capsule::DnsServers),
        (0u64..(1 << 62), arb_text(MAX_REASON_LEN)).prop_map(|(c, reason)| Capsule::Error {
            code: CloseCode(c),
            reason
        }),
        (0u64..(1 << 62), arb_text(MAX_REASON_LEN)).prop_map(|(c, reason)| {
            Capsule::Goodbye {
                code: CloseCode(c),
                reason,
            }
        }),
    ]
}

proptest! {
    #[test]
    fn any_capsule_roundtrips(c in arb_capsule()) {
        let mut buf = Vec::new();
        encode(&c, &mut buf).unwrap();
        let (decoded, used) = decode(&buf).unwrap().unwrap();
        prop_assert_eq!(decoded, c);
        prop_assert_eq!(used, buf.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(Some((capsule, used))) = decode(&bytes) {
            prop_assert!(used <= bytes.len());
            // Whatever decodes re-encodes to something that decodes the same.
            let mut buf = Vec::new();
            encode(&capsule, &mut buf).unwrap();
            prop_assert_eq!(decode(&buf).unwrap().unwrap().0, capsule);
        }
    }

    #[test]
    fn normalized_ranges_are_valid(ranges in proptest::collection::vec(
        (arb_addr(), arb_addr(), 0u8..3), 0..16)) {
        let ranges: Vec<IpRange> = ranges.into_iter().filter_map(|(a, b, p)| {
            let (lo, hi) = if addr_to_u128(a) <= addr_to_u128(b) { (a, b) } else { (b, a) };
            IpRange::new(lo, hi, p)
        }).collect();
        let normalized = normalize_ranges(ranges.clone());
        // Every input address is still covered.
        for r in &ranges {
            prop_assert!(normalized.iter().any(|n| n.protocol == r.protocol
                && n.start.is_ipv4() == r.start.is_ipv4()
                && addr_to_u128(n.start) <= addr_to_u128(r.start)
                && addr_to_u128(n.end) >= addr_to_u128(r.end)));
        }
        let mut buf = Vec::new();
        encode(&Capsule::RouteAdvertisement(normalized), &mut buf).unwrap();
        prop_assert!(decode(&buf).is_ok());
    }
}

/// Capsules of every kind, many beyond the limits: lists around 64 and 1024 entries, texts
/// around their maximum lengths, unsorted ranges, request id 0, integers beyond 2^62.
fn arb_any_capsule() -> impl Strategy<Value = Capsule> {
    let text = |max: usize| (max - 8..max + 8).prop_map(|n| "é".repeat(n / 2) + &"x".repeat(n % 2));
    let ranges = |n: std::ops::Range<usize>| {
        proptest::collection::vec((any::<u32>(), 0u32..4, any::<bool>()), n).prop_map(|v| {
            v.into_iter()
                .map(|(a, len, v6)| {
                    let start = if v6 {
                        IpAddr::V6(u128::from(a).into())
                    } else {
                        IpAddr::V4(a.into())
                    };
                    let end = u128_to_addr(addr_to_u128(start) + u128::from(len), !v6);
                    IpRange::new(start, end, 0).unwrap_or(IpRange::new(start, start, 0).unwrap())
                })
                .collect::<Vec<_>>()
        })
    };
    prop_oneof![
        proptest::collection::vec(arb_addr(), 60..70).prop_map(Capsule::DnsServers),
        ranges(1000..1040).prop_map(|r| Capsule::RouteAdvertisement(normalize_ranges(r))),
        ranges(2..6).prop_map(Capsule::RouteAdvertisement),
        proptest::collection::vec(
            (0u64..4, arb_prefix())
                .prop_map(|(request_id, prefix)| RequestedAddress { request_id, prefix }),
            0..70
        )
        .prop_map(Capsule::AddressRequest),
        proptest::collection::vec(
            (any::<u64>(), arb_prefix())
                .prop_map(|(request_id, prefix)| AssignedAddress { request_id, prefix }),
            60..70
        )
        .prop_map(Capsule::AddressAssign),
        (any::<u64>(), MAX_CREDENTIAL_LEN - 4..MAX_CREDENTIAL_LEN + 4).prop_map(|(version, n)| {
            Capsule::Hello {
                version,
                credential: vec![7; n].into(),
            }
        }),
        (text(MAX_IDENTITY_LEN), 60usize..70).prop_map(|(identity, n)| Capsule::Welcome {
            version: 1,
            identity,
            hub_addresses: vec!["10.0.0.1/24".parse().unwrap(); n],
        }),
        (any::<u64>(), text(MAX_REASON_LEN)).prop_map(|(c, reason)| Capsule::Goodbye {
            code: CloseCode(c),
            reason
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// What the encoder produces, the decoder accepts (and returns unchanged); what the
    /// decoder would refuse, the encoder refuses without writing a byte.
    #[test]
    fn the_encoder_produces_only_what_decoders_accept(c in arb_any_capsule()) {
        let mut buf = vec![0xaa];
        match encode(&c, &mut buf) {
            Ok(()) => {
                let (decoded, used) = decode(&buf[1..]).unwrap().unwrap();
                prop_assert_eq!(decoded, c);
                prop_assert_eq!(used, buf.len() - 1);
            }
            Err(e) => {
                prop_assert_eq!(buf.len(), 1, "nothing written for a refused capsule");
                prop_assert!(c.check().is_err());
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}

#[test]
fn the_encoder_refuses_what_decoders_refuse() {
    let mut buf = Vec::new();
    let too_many_dns = Capsule::DnsServers(vec![v4("10.0.0.53"); MAX_ADDRESSES + 1]);
    assert_eq!(
        encode(&too_many_dns, &mut buf),
        Err(LimitError::TooMany {
            what: "DNS servers",
            count: 65,
            max: 64
        })
    );
    let long_reason = Capsule::Error {
        code: CloseCode::AUTH_FAILED,
        reason: "x".repeat(MAX_REASON_LEN + 1),
    };
    assert!(matches!(
        encode(&long_reason, &mut buf),
        Err(LimitError::TooLong { .. })
    ));
    // /24s with a gap between each, so that they do not merge: 1025 ranges.
    let spread: Vec<IpRange> = (0..=MAX_ROUTES as u32)
        .map(|i| IpRange::from_net(ipnet::IpNet::new(IpAddr::V4((i << 9).into()), 24).unwrap()))
        .collect();
    let spread = normalize_ranges(spread);
    assert_eq!(spread.len(), MAX_ROUTES + 1);
    assert!(matches!(
        encode(&Capsule::RouteAdvertisement(spread), &mut buf),
        Err(LimitError::TooMany { .. })
    ));
    assert!(buf.is_empty());
}
