//! A simulated underlay network in virtual time: every node has an access link with its own
//! latency, jitter, loss, duplication, reordering, MTU, rate and queue, and can be cut off
//! (partitioned). A packet from A to B crosses A's uplink and then B's downlink. Delivery is
//! ordered by time, ties by send order, so a seed fully determines what happens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// One direction of an access link.
#[derive(Clone, Debug)]
pub struct LinkParams {
    pub latency: Duration,
    /// Uniform extra delay in [0, jitter).
    pub jitter: Duration,
    pub loss: f64,
    pub duplicate: f64,
    /// Probability that a packet is held back by `reorder_delay` (arriving after later ones).
    pub reorder: f64,
    pub reorder_delay: Duration,
    /// Largest UDP payload carried (IP and UDP headers excluded); larger ones are dropped, as
    /// a "don't fragment" packet would be.
    pub mtu: usize,
    /// Bits per second; `None` for unlimited.
    pub rate: Option<u64>,
    /// Bytes that may wait for the link when it is busy; more are dropped (tail drop).
    pub queue_bytes: usize,
}

impl Default for LinkParams {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(3),
            mtu: 1472,
            rate: None,
            queue_bytes: 256 * 1024,
        }
    }
}

impl LinkParams {
    /// Default links in both directions.
    pub fn pair() -> (Self, Self) {
        (Self::default(), Self::default())
    }

    /// 5 % loss, 2 % duplication, 5 % reordering, some jitter: a bad but usable link.
    pub fn lossy() -> Self {
        Self {
            loss: 0.05,
            duplicate: 0.02,
            reorder: 0.05,
            jitter: Duration::from_micros(500),
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Direction {
    params: LinkParams,
    /// When the link finishes sending what is queued on it.
    busy_until: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct Access {
    up: Direction,
    down: Direction,
    pub partitioned: bool,
}

/// A UDP datagram in flight.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

enum Stage {
    /// Crossed the sender's uplink; about to enter the receiver's downlink.
    AtCore,
    /// Arrived.
    Delivered,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct NetStats {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub too_big: u64,
    pub queue_drops: u64,
    pub duplicated: u64,
    /// A digest of every byte sent, in order: equal digests mean byte-identical runs.
    pub wire_digest: u64,
}

pub struct Network {
    nodes: BTreeMap<SocketAddr, Access>,
    in_flight: BTreeMap<(Duration, u64), (Stage, Datagram)>,
    seq: u64,
    rng: StdRng,
    pub stats: NetStats,
}

impl Network {
    pub fn new(seed: u64) -> Self {
        Self {
            nodes: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            stats: NetStats::default(),
        }
    }

    pub fn add_node(&mut self, addr: SocketAddr, up: LinkParams, down: LinkParams) {
        self.nodes.insert(
            addr,
            Access {
                up: Direction {
                    params: up,
                    busy_until: Duration::ZERO,
                },
                down: Direction {
                    params: down,
                    busy_until: Duration::ZERO,
                },
                partitioned: false,
            },
        );
    }

    pub fn set_links(&mut self, addr: SocketAddr, up: LinkParams, down: LinkParams) {
        let node = self.nodes.get_mut(&addr).expect("known node");
        node.up.params = up;
        node.down.params = down;
    }

    pub fn set_partitioned(&mut self, addr: SocketAddr, partitioned: bool) {
        self.nodes.get_mut(&addr).expect("known node").partitioned = partitioned;
    }

    /// Sends a datagram at `now`.
    pub fn send(&mut self, now: Duration, datagram: Datagram) {
        self.stats.sent += 1;
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&(self.stats.wire_digest, &datagram.payload), &mut hasher);
        self.stats.wire_digest = std::hash::Hasher::finish(&hasher);
        let Some(access) = self.nodes.get_mut(&datagram.src) else {
            return;
        };
        if access.partitioned {
            self.stats.lost += 1;
            return;
        }
        let (dir, rng) = (&mut access.up, &mut self.rng);
        if let Some(arrivals) = traverse(dir, now, datagram.payload.len(), rng, &mut self.stats) {
            for at in arrivals {
                self.seq += 1;
                self.in_flight
                    .insert((at, self.seq), (Stage::AtCore, datagram.clone()));
            }
        }
    }

    /// When the next datagram moves.
    pub fn next_time(&self) -> Option<Duration> {
        self.in_flight.keys().next().map(|(t, _)| *t)
    }

    /// The next datagram delivered at or before `now`, after moving everything due.
    pub fn pop_delivered(&mut self, now: Duration) -> Option<Datagram> {
        loop {
            let (&key, _) = self.in_flight.first_key_value()?;
            if key.0 > now {
                return None;
            }
            let (stage, datagram) = self.in_flight.remove(&key).expect("present");
            match stage {
                Stage::Delivered => {
                    self.stats.delivered += 1;
                    return Some(datagram);
                }
                Stage::AtCore => {
                    let Some(access) = self.nodes.get_mut(&datagram.dst) else {
                        self.stats.lost += 1;
                        continue;
                    };
                    if access.partitioned {
                        self.stats.lost += 1;
                        continue;
                    }
                    let (dir, rng) = (&mut access.down, &mut self.rng);
                    if let Some(arrivals) =
                        traverse(dir, key.0, datagram.payload.len(), rng, &mut self.stats)
                    {
                        for at in arrivals {
                            self.seq += 1;
                            self.in_flight
                                .insert((at, self.seq), (Stage::Delivered, datagram.clone()));
                        }
                    }
                }
            }
        }
    }
}

/// Puts a packet of `len` bytes on a link at `now`: the instants it comes out (none if lost,
/// two if duplicated).
fn traverse(
    dir: &mut Direction,
    now: Duration,
    len: usize,
    rng: &mut StdRng,
    stats: &mut NetStats,
) -> Option<Vec<Duration>> {
    let p = &dir.params;
    if len > p.mtu {
        stats.too_big += 1;
        return None;
    }
    let mut depart = now;
    if let Some(rate) = p.rate {
        let start = dir.busy_until.max(now);
        let queued_bytes = (start - now).as_secs_f64() * rate as f64 / 8.0;
        if queued_bytes > p.queue_bytes as f64 {
            stats.queue_drops += 1;
            return None;
        }
        // 28 bytes of IPv4 and UDP headers on the wire.
        let serialization = Duration::from_secs_f64((len + 28) as f64 * 8.0 / rate as f64);
        depart = start + serialization;
        dir.busy_until = depart;
    }
    if p.loss > 0.0 && rng.random_bool(p.loss) {
        stats.lost += 1;
        return None;
    }
    let mut delay = p.latency;
    if !p.jitter.is_zero() {
        delay += Duration::from_nanos(rng.random_range(0..p.jitter.as_nanos() as u64));
    }
    if p.reorder > 0.0 && rng.random_bool(p.reorder) {
        delay += p.reorder_delay;
    }
    let mut out = vec![depart + delay];
    if p.duplicate > 0.0 && rng.random_bool(p.duplicate) {
        stats.duplicated += 1;
        out.push(depart + delay + Duration::from_micros(100));
    }
    Some(out)
}
