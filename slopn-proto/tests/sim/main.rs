//! Deterministic simulation tests: hubs and spokes over a simulated network, with smoltcp
//! hosts behind their TUN sides, in virtual time.
#![allow(missing_docs, dead_code)]

mod host;
mod net;
mod raw;
#[path = "../common/seeded_crypto.rs"]
mod seeded_crypto;
mod world;

mod addressing;
mod basic;
mod demo;
mod determinism;
mod faults;
mod key_exchange;
mod limits;
mod liveness;
mod mtu;
mod scale;
mod security;
mod tcp;

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use slopn_proto::pki::{CertificateAuthority, IssuedCertificate, Validity};
use slopn_proto::tls::{self, CertifiedKey};
use slopn_proto::{Credential, HubConfig, PoolConfig, SpokeConfig};

/// Heap accounting for the hub alone: bytes the hub allocated (while the test runs hub code
/// on this thread) and nobody freed yet, wherever they are freed.
#[allow(unsafe_code)]
pub mod memory {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static IN_HUB: Cell<bool> = const { Cell::new(false) };
        static HUB_LIVE: Cell<i64> = const { Cell::new(0) };
    }

    pub struct Counting;

    /// Every block carries a header saying whether the hub allocated it: a datagram the hub
    /// sent or an event it emitted is freed by the test, outside hub code, and must still
    /// leave the hub's count then (counting by where the free happens made an idle hub
    /// look as if it leaked 90 bytes per spoke a second).
    const HEADER: usize = 16;

    fn header(layout: Layout) -> usize {
        layout.align().max(HEADER)
    }

    fn outer(layout: Layout, size: usize) -> Layout {
        Layout::from_size_align(size + header(layout), header(layout)).expect("layout")
    }

    fn account(delta: i64) {
        let _ = HUB_LIVE.try_with(|l| l.set(l.get() + delta));
    }

    fn in_hub_now() -> bool {
        IN_HUB.try_with(Cell::get).unwrap_or(false)
    }

    /// Writes the owner into the header of `base` and returns the block for the caller.
    unsafe fn tag(base: *mut u8, layout: Layout) -> *mut u8 {
        if base.is_null() {
            return base;
        }
        let hub = in_hub_now();
        if hub {
            account(layout.size() as i64);
        }
        // SAFETY: `base` starts a block of at least `header(layout)` bytes more than asked.
        unsafe {
            base.write(u8::from(hub));
            base.add(header(layout))
        }
    }

    // SAFETY: every block is the system allocator's, `header` bytes larger, with the same
    // alignment or more; the pointer handed out is `header` bytes in, so that it keeps the
    // alignment asked for and the header sits right before it.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { tag(System.alloc(outer(layout, layout.size())), layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            unsafe { tag(System.alloc_zeroed(outer(layout, layout.size())), layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe {
                let base = ptr.sub(header(layout));
                if base.read() == 1 {
                    account(-(layout.size() as i64));
                }
                System.dealloc(base, outer(layout, layout.size()))
            }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            unsafe {
                let base = ptr.sub(header(layout));
                let hub = base.read() == 1;
                let grown = System.realloc(
                    base,
                    outer(layout, layout.size()),
                    new_size + header(layout),
                );
                if grown.is_null() {
                    return grown;
                }
                if hub {
                    account(new_size as i64 - layout.size() as i64);
                }
                grown.add(header(layout))
            }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Runs `f` with its allocations counted as the hub's.
    pub fn in_hub<R>(f: impl FnOnce() -> R) -> R {
        let was = IN_HUB.with(|c| c.replace(true));
        let r = f();
        IN_HUB.with(|c| c.set(was));
        r
    }

    /// Heap bytes the hub holds on this thread.
    pub fn hub_live_bytes() -> i64 {
        HUB_LIVE.with(Cell::get)
    }
}

/// The calendar time the simulations pretend it is.
pub fn sim_wall_clock() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(raw::SIM_UNIX_TIME)
}

pub struct Pki {
    pub ca: CertificateAuthority,
    pub hub: IssuedCertificate,
}

pub fn pki() -> Pki {
    let validity = Validity::days_from(sim_wall_clock(), 365);
    let ca = CertificateAuthority::generate("SloPN test CA", [7; 32], validity).unwrap();
    let hub = ca
        .issue_server(&["hub.slopn.test".into()], [8; 32], validity)
        .unwrap();
    Pki { ca, hub }
}

pub fn token(i: usize) -> String {
    format!("token-{i:04}-0123456789abcdef")
}

/// A hub with a 10.100.0.0/24 pool and credentials spoke-0 .. spoke-255.
pub fn hub_config(pki: &Pki) -> HubConfig {
    let credentials = (0..256)
        .map(|i| Credential::token(format!("spoke-{i}"), &token(i)))
        .collect();
    let identity: CertifiedKey = pki.hub.certified_key().unwrap();
    let mut config = HubConfig::new(
        identity,
        vec![PoolConfig::new("10.100.0.0/24".parse().unwrap())],
        credentials,
        [1; 32],
    );
    // Handshakes replay byte for byte too.
    config.crypto = seeded_crypto::provider(1);
    config
}

pub fn spoke_config(pki: &Pki, i: usize) -> SpokeConfig {
    let trust = tls::parse_certificates(pki.ca.cert_pem().as_bytes()).unwrap();
    let mut config = SpokeConfig::new(
        world::HUB_UDP.parse().unwrap(),
        "hub.slopn.test",
        trust,
        token(i),
        [i as u8 + 2; 32],
    );
    config.crypto = seeded_crypto::provider(i as u64 + 2);
    config
}

/// An IPv4 UDP packet with valid checksums.
pub fn udp_packet(
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    dont_fragment: bool,
    payload: &[u8],
) -> Vec<u8> {
    use slopn_proto::packet::checksum;
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 only")
    };
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[
        0x12,
        0x34,
        if dont_fragment { 0x40 } else { 0 },
        0,
        ttl,
        17,
        0,
        0,
    ]);
    p.extend_from_slice(&s.octets());
    p.extend_from_slice(&d.octets());
    let sum = checksum(&p, 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&40001u16.to_be_bytes());
    udp.extend_from_slice(&9u16.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&s.octets());
    pseudo.extend_from_slice(&d.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let partial = pseudo
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let sum = checksum(&udp, partial);
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&udp);
    p
}

/// Fails the test on any `error!` log, from SloPN or its libraries: catches what the
/// assertions miss.
pub mod error_trap {
    use std::fmt::{Debug, Write};
    use std::sync::Once;

    use tracing::field::Field;
    use tracing::{Event, Level, Metadata, Subscriber, span};

    struct PanicOnError;

    impl Subscriber for PanicOnError {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            *metadata.level() == Level::ERROR
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut message = String::new();
            event.record(&mut |field: &Field, value: &dyn Debug| {
                let _ = write!(message, "{}={value:?} ", field.name());
            });
            panic!("error logged by {}: {message}", event.metadata().target());
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }

    pub fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            tracing::subscriber::set_global_default(PanicOnError).expect("first subscriber")
        });
    }
}
