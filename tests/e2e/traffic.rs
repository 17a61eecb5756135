//! Traffic for the end-to-end tests: a checked TCP transfer between two namespaces, and an
//! impairment relay that loses, reorders and duplicates UDP datagrams.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use slopn_tun::netns::Namespace;

fn pattern(i: usize) -> u8 {
    ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8
}

/// Sends `bytes` over TCP from namespace `from` to a server listening at `listen` in
/// namespace `to`, checking every byte; `during` runs on the calling thread meanwhile, given
/// the count of bytes received so far. Returns how long the transfer took.
pub fn transfer(
    from: &Namespace,
    to: &Namespace,
    listen: SocketAddr,
    bytes: usize,
    during: impl FnOnce(&AtomicUsize),
) -> Duration {
    transfer_with_mss(from, to, listen, bytes, None, during)
}

/// [`transfer`] with the sender's TCP segments held to `mss` bytes (`TCP_MAXSEG`), if given.
pub fn transfer_with_mss(
    from: &Namespace,
    to: &Namespace,
    listen: SocketAddr,
    bytes: usize,
    mss: Option<u32>,
    during: impl FnOnce(&AtomicUsize),
) -> Duration {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let received = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let received = &received;
        let server = s.spawn(move || {
            to.enter().unwrap();
            let listener = TcpListener::bind(listen).unwrap();
            ready_tx.send(()).unwrap();
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0;
            while got < bytes {
                let n = conn.read(&mut buf).expect("transfer stalled");
                assert!(n > 0, "connection closed after {got} of {bytes} bytes");
                for (k, b) in buf[..n].iter().enumerate() {
                    assert_eq!(*b, pattern(got + k), "byte {} corrupted", got + k);
                }
                got += n;
                received.store(got, Ordering::Relaxed);
            }
            got
        });
        ready_rx.recv().unwrap();
        let client = s.spawn(move || {
            from.enter().unwrap();
            let start = Instant::now();
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(listen),
                socket2::Type::STREAM,
                None,
            )
            .unwrap();
            if let Some(mss) = mss {
                socket.set_tcp_mss(mss).unwrap();
            }
            socket
                .connect_timeout(&listen.into(), Duration::from_secs(5))
                .unwrap();
            let mut conn = TcpStream::from(socket);
            conn.set_write_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut chunk = vec![0u8; 64 * 1024];
            let mut sent = 0;
            while sent < bytes {
                let n = chunk.len().min(bytes - sent);
                for (k, b) in chunk[..n].iter_mut().enumerate() {
                    *b = pattern(sent + k);
                }
                conn.write_all(&chunk[..n]).expect("transfer stalled");
                sent += n;
            }
            conn.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
            start.elapsed()
        });
        during(received);
        let elapsed = client.join().unwrap();
        assert_eq!(server.join().unwrap(), bytes);
        elapsed
    })
}

/// What the relay does to datagrams, in each direction independently.
#[derive(Clone, Copy, Debug)]
pub struct Impairment {
    pub loss: f64,
    pub duplicate: f64,
    /// Probability that a datagram is held back and sent after the next one.
    pub reorder: f64,
}

/// Counts of what the relay did.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub forwarded: AtomicU64,
    pub lost: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
}

/// A UDP relay running in a namespace: clients talk to `listen`, it talks to `upstream`
/// from one socket per client, impairing traffic both ways.
pub struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<RelayStats>,
}

impl Relay {
    pub fn start(
        ns: &Namespace,
        listen: SocketAddr,
        upstream: SocketAddr,
        impairment: Impairment,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RelayStats::default());
        let (socket_tx, socket_rx) = std::sync::mpsc::channel();
        let ns_name = ns.name().to_owned();
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            enter(&ns_name);
            let front = UdpSocket::bind(listen).unwrap();
            front
                .set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            socket_tx.send(()).unwrap();
            let mut clients: Vec<(SocketAddr, UdpSocket)> = Vec::new();
            let mut backs = Vec::new();
            let mut dir = Direction::new(impairment, 1, stats2.clone());
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                match front.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        let back = match clients.iter().find(|(c, _)| *c == from) {
                            Some((_, s)) => s.try_clone().unwrap(),
                            None => {
                                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                                s.connect(upstream).unwrap();
                                s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
                                let (s2, front2) =
                                    (s.try_clone().unwrap(), front.try_clone().unwrap());
                                let (stop3, stats3) = (stop2.clone(), stats2.clone());
                                let seed = 2 + clients.len() as u64;
                                backs.push(std::thread::spawn(move || {
                                    let mut dir = Direction::new(impairment, seed, stats3);
                                    let mut buf = vec![0u8; 65536];
                                    while !stop3.load(Ordering::Relaxed) {
                                        match s2.recv(&mut buf) {
                                            Ok(n) => dir.pass(&buf[..n], |d| {
                                                let _ = front2.send_to(d, from);
                                            }),
                                            Err(_) => dir.flush(|d| {
                                                let _ = front2.send_to(d, from);
                                            }),
                                        }
                                    }
                                }));
                                clients.push((from, s.try_clone().unwrap()));
                                s
                            }
                        };
                        dir.pass(&buf[..n], |d| {
                            let _ = back.send(d);
                        });
                    }
                    Err(_) => {
                        for (_, back) in &clients {
                            dir.flush(|d| {
                                let _ = back.send(d);
                            });
                        }
                    }
                }
            }
            for b in backs {
                let _ = b.join();
            }
        });
        socket_rx.recv().unwrap();
        Self {
            stop,
            threads: vec![thread],
            stats,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn enter(ns: &str) {
    slopn_tun::netns::enter(ns).unwrap();
}

/// One direction of the relay: loss, duplication, hold-one-back reordering.
struct Direction {
    impairment: Impairment,
    rng: StdRng,
    held: Option<Vec<u8>>,
    stats: Arc<RelayStats>,
}

impl Direction {
    fn new(impairment: Impairment, seed: u64, stats: Arc<RelayStats>) -> Self {
        Self {
            impairment,
            rng: StdRng::seed_from_u64(seed),
            held: None,
            stats,
        }
    }

    fn pass(&mut self, datagram: &[u8], mut send: impl FnMut(&[u8])) {
        if self.rng.random_bool(self.impairment.loss) {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.held.is_none() && self.rng.random_bool(self.impairment.reorder) {
            self.stats.reordered.fetch_add(1, Ordering::Relaxed);
            self.held = Some(datagram.to_vec());
            return;
        }
        send(datagram);
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        if self.rng.random_bool(self.impairment.duplicate) {
            self.stats.duplicated.fetch_add(1, Ordering::Relaxed);
            send(datagram);
        }
        self.flush(send);
    }

    fn flush(&mut self, mut send: impl FnMut(&[u8])) {
        if let Some(held) = self.held.take() {
            send(&held);
            self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}
