//! The simulated world: one hub and its spokes on a simulated network, each with a smoltcp
//! host behind its TUN side, all driven in virtual time.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use slopn_proto::{DropReason, Hub, HubConfig, HubEvent, Spoke, SpokeConfig, SpokeEvent};

use crate::host::{Host, v4};
use crate::memory;
use crate::net::{Datagram, LinkParams, Network};
use crate::raw::RawSpoke;

pub const HUB_UDP: &str = "192.0.2.1:4433";
/// The hub's tunnel address and the pool's prefix length used by every test.
pub const POOL_PREFIX: u8 = 24;

pub fn hub_ip() -> IpAddr {
    v4(10, 100, 0, 1)
}

pub struct HubNode {
    pub hub: Hub,
    pub host: Host,
    pub events: Vec<HubEvent>,
}

pub struct SpokeNode {
    pub name: String,
    pub addr: SocketAddr,
    pub spoke: Spoke,
    pub host: Host,
    pub events: Vec<SpokeEvent>,
    /// Drops reported by `handle_tun_packet`.
    pub tun_drops: Vec<DropReason>,
}

pub struct World {
    pub base: Instant,
    pub now: Duration,
    pub wall: SystemTime,
    pub net: Network,
    pub hub_addr: SocketAddr,
    pub hub_config: HubConfig,
    pub hub: Option<HubNode>,
    pub spokes: Vec<SpokeNode>,
    pub raws: Vec<RawSpoke>,
    /// Every event of every node, with its virtual time.
    pub trace: Vec<String>,
    /// Steps taken (each processes one instant).
    pub steps: u64,
    buf: Vec<u8>,
    /// Host MTU for new hosts.
    pub host_mtu: usize,
    /// When set, a copy of every datagram delivered to a spoke (to replay or corrupt).
    pub tap: Option<Vec<Datagram>>,
}

impl World {
    pub fn new(seed: u64, hub_config: HubConfig) -> Self {
        crate::error_trap::install();
        let hub_addr: SocketAddr = HUB_UDP.parse().unwrap();
        let mut net = Network::new(seed);
        net.add_node(hub_addr, LinkParams::default(), LinkParams::default());
        let mut world = Self {
            base: Instant::now(),
            now: Duration::ZERO,
            wall: crate::sim_wall_clock(),
            net,
            hub_addr,
            hub_config,
            hub: None,
            spokes: Vec::new(),
            raws: Vec::new(),
            trace: Vec::new(),
            steps: 0,
            buf: Vec::new(),
            host_mtu: 1500,
            tap: None,
        };
        world.start_hub();
        world
    }

    pub fn instant(&self) -> Instant {
        self.base + self.now
    }

    /// Starts (or restarts) the hub with the stored configuration: a fresh process.
    pub fn start_hub(&mut self) {
        let now = self.instant();
        let wall = self.wall + self.now;
        let config = self.hub_config.clone();
        let hub = memory::in_hub(|| Hub::new(config, now, wall).expect("hub config"));
        let mut host = Host::new(self.host_mtu);
        host.configure(hub_ip(), POOL_PREFIX, None);
        self.hub = Some(HubNode {
            hub,
            host,
            events: Vec::new(),
        });
        self.trace("hub started".into());
    }

    /// Kills the hub without a word (like SIGKILL).
    pub fn kill_hub(&mut self) {
        if let Some(node) = self.hub.take() {
            memory::in_hub(|| drop(node));
        }
        self.trace("hub killed".into());
    }

    pub fn hub(&mut self) -> &mut HubNode {
        self.hub.as_mut().expect("hub running")
    }

    pub fn add_spoke(&mut self, config: SpokeConfig, links: (LinkParams, LinkParams)) -> usize {
        let i = self.spokes.len();
        let addr: SocketAddr = format!("198.51.{}.{}:50000", 100 + i / 250, 1 + i % 250)
            .parse()
            .unwrap();
        self.net.add_node(addr, links.0, links.1);
        let spoke = Spoke::new(config, self.instant(), self.wall + self.now).expect("spoke config");
        self.spokes.push(SpokeNode {
            name: format!("spoke-{i}"),
            addr,
            spoke,
            host: Host::new(self.host_mtu),
            events: Vec::new(),
            tun_drops: Vec::new(),
        });
        i
    }

    pub fn add_raw(&mut self, config: quinn_proto::ClientConfig) -> usize {
        let addr: SocketAddr = format!("203.0.113.{}:40000", 1 + self.raws.len())
            .parse()
            .unwrap();
        self.add_raw_at(config, addr)
    }

    /// A raw client at a given UDP address (several may share an IP address).
    pub fn add_raw_at(&mut self, config: quinn_proto::ClientConfig, addr: SocketAddr) -> usize {
        let i = self.raws.len();
        self.net
            .add_node(addr, LinkParams::default(), LinkParams::default());
        let raw = RawSpoke::connect(self.instant(), addr, self.hub_addr, config, 100 + i as u8);
        self.raws.push(raw);
        i
    }

    fn trace(&mut self, what: String) {
        self.trace
            .push(format!("{:>12.6} {what}", self.now.as_secs_f64()));
    }

    /// Processes everything due at the current instant, then moves time to the next event.
    /// Returns false when nothing is scheduled at all.
    pub fn step(&mut self) -> bool {
        self.settle();
        self.steps += 1;
        match self.next_event() {
            Some(next) => {
                self.now = self.now.max(next);
                true
            }
            None => false,
        }
    }

    /// Runs until `done` holds (checked after every step) or `limit` of virtual time passes.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut World) -> bool) -> bool {
        let end = self.now + limit;
        let (mut last, mut same) = (self.now, 0u32);
        loop {
            if self.now == last {
                same += 1;
                if same >= 100_000 {
                    let (now, pending) = (self.now, self.pending());
                    panic!("livelock at {now:?}: {pending}");
                }
            } else {
                (last, same) = (self.now, 0);
            }
            self.settle();
            if done(self) {
                return true;
            }
            let Some(next) = self.next_event() else {
                return false;
            };
            if next > end {
                self.now = end;
                self.settle();
                return done(self);
            }
            self.steps += 1;
            self.now = self.now.max(next);
        }
    }

    /// Runs until every spoke is established; false if `limit` passes first.
    pub fn all_established(&mut self, limit: Duration) -> bool {
        self.run_until(limit, |w| {
            w.spokes
                .iter()
                .all(|s| s.spoke.state() == slopn_proto::SpokeState::Established)
        })
    }

    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(duration, |_| false);
    }

    /// What every node is waiting for, to explain a livelock.
    fn pending(&mut self) -> String {
        let base = self.base;
        let mut out = format!("net next {:?}; ", self.net.next_time());
        if let Some(node) = &mut self.hub {
            let t = node
                .hub
                .poll_timeout()
                .map(|(t, why)| (t.saturating_duration_since(base), why));
            out += &format!("hub {t:?} host {:?}; ", node.host.poll_at(self.now));
        }
        for s in &mut self.spokes {
            let t = s
                .spoke
                .poll_timeout()
                .map(|(t, why)| (t.saturating_duration_since(base), why));
            out += &format!(
                "{} {t:?} {:?} host {:?}; ",
                s.name,
                s.spoke.state(),
                s.host.poll_at(self.now)
            );
        }
        out
    }

    fn next_event(&mut self) -> Option<Duration> {
        let base = self.base;
        let to_rel = |t: Instant| t.saturating_duration_since(base);
        let mut next = self.net.next_time();
        let mut consider = |t: Option<Duration>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Duration| n.min(t)));
            }
        };
        let now = self.now;
        if let Some(node) = &mut self.hub {
            consider(node.hub.poll_timeout().map(|(t, _)| to_rel(t)));
            consider(node.host.poll_at(now));
        }
        for s in &mut self.spokes {
            consider(s.spoke.poll_timeout().map(|(t, _)| to_rel(t)));
            consider(s.host.poll_at(now));
        }
        for r in &mut self.raws {
            consider(r.poll_timeout().map(to_rel));
        }
        next
    }

    /// Runs every node at the current instant until nothing more happens.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            if !self.settle_once() {
                return;
            }
        }
        panic!("livelock at {:?}: nodes keep producing work", self.now);
    }

    fn settle_once(&mut self) -> bool {
        let now = self.instant();
        let rel = self.now;
        let mut busy = false;

        while let Some(d) = self.net.pop_delivered(rel) {
            busy = true;
            if d.dst == self.hub_addr {
                if let Some(node) = &mut self.hub {
                    memory::in_hub(|| {
                        node.hub
                            .handle_udp(now, slopn_proto::Datagram::new(d.src, &d.payload))
                    });
                }
            } else if let Some(s) = self.spokes.iter_mut().find(|s| s.addr == d.dst) {
                if let Some(tap) = &mut self.tap {
                    tap.push(d.clone());
                }
                s.spoke
                    .handle_udp(now, slopn_proto::Datagram::new(d.src, &d.payload));
            } else if let Some(r) = self.raws.iter_mut().find(|r| r.addr == d.dst) {
                r.handle_udp(now, d.src, &d.payload);
            }
        }

        // Timers.
        if let Some(node) = &mut self.hub
            && node.hub.poll_timeout().is_some_and(|(t, _)| t <= now)
        {
            memory::in_hub(|| node.hub.handle_timeout(now));
            busy = true;
        }
        for s in &mut self.spokes {
            if s.spoke.poll_timeout().is_some_and(|(t, _)| t <= now) {
                s.spoke.handle_timeout(now);
                busy = true;
            }
        }
        for r in &mut self.raws {
            if r.poll_timeout().is_some_and(|t| t <= now) {
                r.handle_timeout(now);
                busy = true;
            }
        }

        // Hosts send into their TUN sides.
        if let Some(node) = &mut self.hub {
            if node.host.poll_at(rel).is_some_and(|t| t <= rel) {
                node.host.poll(rel);
            }
            while let Some(p) = node.host.device.tx.pop_front() {
                busy = true;
                let _ = memory::in_hub(|| node.hub.handle_tun_packet(now, &p));
            }
        }
        for s in &mut self.spokes {
            if s.host.poll_at(rel).is_some_and(|t| t <= rel) {
                s.host.poll(rel);
            }
            while let Some(p) = s.host.device.tx.pop_front() {
                busy = true;
                if let Err(reason) = s.spoke.handle_tun_packet(now, &p) {
                    s.tun_drops.push(reason);
                }
            }
        }

        // Drain every node's outputs in the documented order.
        let mut trace = Vec::new();
        if let Some(node) = &mut self.hub {
            let buf = &mut self.buf;
            let net = &mut self.net;
            let hub_addr = self.hub_addr;
            memory::in_hub(|| {
                while let Some(t) = node.hub.poll_transmit(now, 10, buf) {
                    busy = true;
                    send_segments(net, rel, hub_addr, &t, buf);
                }
                while let Some(p) = node.hub.poll_tun_packet() {
                    busy = true;
                    node.host.deliver(p.to_vec());
                }
            });
            while let Some(e) = memory::in_hub(|| node.hub.poll_event()) {
                busy = true;
                trace.push(format!("hub: {e:?}"));
                node.events.push(e);
            }
        }
        for s in &mut self.spokes {
            while let Some(t) = s.spoke.poll_transmit(now, 10, &mut self.buf) {
                busy = true;
                send_segments(&mut self.net, rel, s.addr, &t, &self.buf);
            }
            while let Some(p) = s.spoke.poll_tun_packet() {
                busy = true;
                s.host.deliver(p.to_vec());
            }
            while let Some(e) = s.spoke.poll_event() {
                busy = true;
                match &e {
                    SpokeEvent::Assigned { addresses, .. } => {
                        for a in addresses.iter().filter(|a| a.is_ipv4()) {
                            s.host.configure(*a, POOL_PREFIX, Some(hub_ip()));
                        }
                        if let Some(mtu) = s.spoke.tun_mtu() {
                            s.host.set_mtu(usize::from(mtu));
                        }
                    }
                    SpokeEvent::MtuChanged { tun_mtu } => s.host.set_mtu(usize::from(*tun_mtu)),
                    _ => {}
                }
                trace.push(format!("{}: {e:?}", s.name));
                s.events.push(e);
            }
        }
        for r in &mut self.raws {
            while let Some(t) = r.poll_transmit(now, &mut self.buf) {
                busy = true;
                send_segments(&mut self.net, rel, r.addr, &t, &self.buf);
            }
        }
        for line in trace {
            self.trace(line);
        }
        busy
    }
}

/// Splits a (possibly GSO) transmit into datagrams and sends them.
fn send_segments(
    net: &mut Network,
    now: Duration,
    src: SocketAddr,
    t: &slopn_proto::Transmit,
    buf: &[u8],
) {
    let segment = t.segment_size.unwrap_or(t.size);
    for chunk in buf[..t.size].chunks(segment) {
        net.send(
            now,
            Datagram {
                src,
                dst: t.destination,
                payload: chunk.to_vec(),
            },
        );
    }
}
