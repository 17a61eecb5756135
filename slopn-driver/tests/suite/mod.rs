//! The runtime test suite: written once, run against every runtime (`slopn-mio` and
//! `slopn-tokio` include this file with `#[path]`, implement [`Runtime`] and expand
//! [`tests!`]). Hubs and spokes run on real UDP sockets and TUN devices, each in a network
//! namespace of the test's own, joined by veth pairs; the namespaces go when the test ends.
//!
//! Waits poll a condition until a bound derived from the configuration (how long a dead
//! peer takes to notice), never sleep for a guessed time. Tests that cannot run here (no
//! root, no /dev/net/tun) are skipped, and fail under `CI=true`.

// Each including crate uses every item, but not every helper from every test.
#![allow(dead_code)]

pub mod cases;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime};

use slopn_driver::{Machine, Options, RunError};
use slopn_proto::pki::{CertificateAuthority, Validity};
use slopn_proto::{
    Credential, Hub, HubConfig, PoolConfig, Spoke, SpokeConfig, SpokeEvent, TransportSettings, tls,
};
use slopn_tun::netns::{self, Namespace};
use slopn_tun::{Tun, TunConfig};

/// A runtime under test: starts a loop the way its crate's `spawn` does.
pub trait Runtime: 'static {
    /// Its handle, made blocking for the tests.
    type Loop<M: Machine>: Loop<M>;
    /// Starts `machine` on `tun` and `socket` (called in the namespace they belong to).
    fn spawn<M: Machine>(
        machine: M,
        tun: Tun,
        socket: UdpSocket,
        options: Options,
    ) -> Self::Loop<M>;
}

/// What the tests do with a running loop.
pub trait Loop<M: Machine>: Send + Sync {
    /// The next event, or `None` if none came within `timeout` or the loop ended.
    fn next_event(&self, timeout: Duration) -> Option<M::Event>;
    /// A statistics snapshot (`None` once ended).
    fn stats(&self) -> Option<M::Stats>;
    /// Sends a command.
    fn command(&self, command: M::Command);
    /// Asks for an orderly stop.
    fn stop(&self);
    /// Whether the loop has ended.
    fn is_finished(&self) -> bool;
    /// Waits for the end; how it ended.
    fn join(&self) -> Result<(), RunError>;
}

/// Expands to the suite's tests for `$runtime` (a type implementing [`Runtime`]).
macro_rules! tests {
    ($runtime:ty) => {
        #[test]
        fn hub_and_spokes_on_real_sockets_and_tun_devices() {
            $crate::suite::cases::hub_and_spokes::<$runtime>(
                "hub_and_spokes_on_real_sockets_and_tun_devices",
            );
        }

        #[test]
        fn advertised_routes_are_installed_and_refusals_counted() {
            $crate::suite::cases::advertised_routes::<$runtime>(
                "advertised_routes_are_installed_and_refusals_counted",
            );
        }

        #[test]
        fn a_route_the_tunnel_needs_that_fails_ends_the_loop() {
            $crate::suite::cases::fatal_route_failure::<$runtime>(
                "a_route_the_tunnel_needs_that_fails_ends_the_loop",
            );
        }

        #[test]
        fn a_route_that_cannot_be_removed_is_counted_not_fatal() {
            $crate::suite::cases::full_to_split_tunnel::<$runtime>(
                "a_route_that_cannot_be_removed_is_counted_not_fatal",
            );
        }
    };
}
pub(crate) use tests;

/// The hub's tunnel address.
pub const HUB_TUNNEL: &str = "10.100.0.1";

/// A hub namespace and spoke namespaces, each spoke joined to the hub by a veth pair
/// (192.168.10N.1 on the hub's side, .2 on spoke N's), and the PKI.
pub struct Lab {
    pub hub: Namespace,
    pub spokes: Vec<Namespace>,
    ca: CertificateAuthority,
}

impl Lab {
    /// The namespaces for a hub and `spokes` spokes, or `None` if `test` cannot run here.
    pub fn new(test: &str, spokes: usize) -> Option<Self> {
        if !netns::runnable(test) {
            return None;
        }
        let prefix = netns::unique_prefix();
        let hub = Namespace::create(format!("{prefix}-hub")).unwrap();
        let spokes = (1..=spokes)
            .map(|i| {
                let ns = Namespace::create(format!("{prefix}-s{i}")).unwrap();
                hub.veth(
                    &format!("to-s{i}"),
                    &format!("192.168.10{i}.1/24"),
                    &ns,
                    "uplink",
                    &format!("192.168.10{i}.2/24"),
                )
                .unwrap();
                ns
            })
            .collect();
        let validity = Validity::days_from(SystemTime::now(), 2);
        let ca = CertificateAuthority::generate("test CA", [1; 32], validity).unwrap();
        Some(Self { hub, spokes, ca })
    }

    /// A hub configuration for the pool 10.100.0.0/24, one token per spoke, advertising
    /// `routes`.
    pub fn hub_config(&self, routes: &[&str]) -> HubConfig {
        let validity = Validity::days_from(SystemTime::now(), 2);
        let cert = self
            .ca
            .issue_server(&["hub.slopn.test".into()], [2; 32], validity)
            .unwrap();
        let credentials = (1..=self.spokes.len())
            .map(|i| Credential::token(format!("spoke-{i}"), &format!("token-{i}")))
            .collect();
        let mut config = HubConfig::new(
            cert.certified_key().unwrap(),
            vec![PoolConfig::new("10.100.0.0/24".parse().unwrap())],
            credentials,
            [1; 32],
        );
        config.routes = routes.iter().map(|r| r.parse().unwrap()).collect();
        config
    }

    /// Starts the hub in its namespace.
    pub fn start_hub<R: Runtime>(&self, config: HubConfig) -> R::Loop<Hub> {
        inside(&self.hub, || {
            let tun = Tun::open(&TunConfig {
                name: Some("slopn0".into()),
                mtu: config.transport.max_tunnel_mtu(),
                addresses: vec![(HUB_TUNNEL.parse().unwrap(), 24)],
                offload: true,
            })
            .unwrap();
            let socket = UdpSocket::bind("0.0.0.0:4433").unwrap();
            let hub = Hub::new(config, Instant::now(), SystemTime::now()).unwrap();
            R::spawn(hub, tun, socket, Options::default())
        })
    }

    /// Spoke `i`'s configuration (counting from 0).
    pub fn spoke_config(&self, i: usize) -> SpokeConfig {
        let hub: SocketAddr = format!("192.168.10{}.1:4433", i + 1).parse().unwrap();
        let trust = tls::parse_certificates(self.ca.cert_pem().as_bytes()).unwrap();
        let token = format!("token-{}", i + 1);
        SpokeConfig::new(hub, "hub.slopn.test", trust, token, [i as u8 + 2; 32])
    }

    /// Starts spoke `i` in its namespace.
    pub fn start_spoke<R: Runtime>(
        &self,
        i: usize,
        config: SpokeConfig,
        options: Options,
    ) -> R::Loop<Spoke> {
        inside(&self.spokes[i], || {
            let tun = Tun::open(&TunConfig {
                name: Some("slopn0".into()),
                mtu: 1280,
                addresses: vec![],
                offload: true,
            })
            .unwrap();
            let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
            let spoke = Spoke::new(config, Instant::now(), SystemTime::now()).unwrap();
            R::spawn(spoke, tun, socket, options)
        })
    }

    /// Every namespace, hub last.
    pub fn all(&self) -> impl Iterator<Item = &Namespace> {
        self.spokes.iter().chain([&self.hub])
    }
}

/// Runs `f` on a thread inside `ns` and returns its result.
pub fn inside<T: Send>(ns: &Namespace, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter().unwrap();
            f()
        })
        .join()
        .unwrap()
    })
}

/// How long anything in these tests may take: the time a dead peer takes to be noticed
/// (keep-alive interval plus idle timeout). A handshake, a goodbye or an OS action that
/// takes longer has failed.
pub fn patience(transport: &TransportSettings) -> Duration {
    transport.idle_timeout + transport.keep_alive_interval.unwrap_or_default()
}

/// Polls `condition` until it holds; panics naming `what` after `within`.
pub fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the spoke's address assignment; the addresses.
pub fn wait_assigned(spoke: &impl Loop<Spoke>, within: Duration) -> Vec<IpAddr> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(SpokeEvent::Assigned { addresses, .. }) =
            spoke.next_event(Duration::from_millis(100))
        {
            return addresses;
        }
    }
    panic!("spoke not assigned within {within:?}");
}

/// Whether two pings from `ns` to `to` get through.
pub fn ping(ns: &Namespace, to: &str) -> bool {
    ns.command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "2", to])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// The routes through the spoke's TUN device.
pub fn tun_routes(ns: &Namespace) -> String {
    ns.ip(&["route", "show", "dev", "slopn0"])
        .unwrap_or_default()
}

/// Asserts that nothing SloPN added is left in any namespace: no TUN device, no route to
/// the tunnel network or through the device.
pub fn assert_cleaned_up(lab: &Lab) {
    for ns in lab.all() {
        assert!(
            ns.ip(&["link", "show", "dev", "slopn0"]).is_err(),
            "TUN removed in {}",
            ns.name()
        );
        let routes = ns.ip(&["route", "show"]).unwrap();
        assert!(!routes.contains("10.100.0."), "{routes}");
        assert!(!routes.contains("slopn0"), "{routes}");
    }
}
