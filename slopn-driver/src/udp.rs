//! The UDP socket: batched receive with GRO and send with GSO through `quinn-udp`.

use std::io::{self, IoSliceMut};

use quinn_udp::{BATCH_SIZE, RecvMeta, UdpSocketState};
use slopn_proto::{Datagram, EcnCodepoint, Transmit};
use tracing::{debug, warn};

/// Room for one receive call's worth of coalesced datagrams per slot.
const SLOT: usize = 64 * 1024;

/// The socket type: std's on Unix, where any runtime waits on its descriptor; mio's on
/// Windows, where mio's readiness is re-armed only by calls made through it
/// ([`syscall`]), so the mio loop registers this very socket.
#[cfg(unix)]
pub(crate) type Socket = std::net::UdpSocket;
/// The socket type (see the Unix definition).
#[cfg(windows)]
pub(crate) type Socket = mio::net::UdpSocket;

/// Makes one socket call: directly on Unix; on Windows through mio's `try_io`, which
/// re-arms the socket's readiness when the call would block.
#[cfg(unix)]
fn syscall<T>(_socket: &Socket, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    f()
}

/// Makes one socket call (see the Unix definition).
#[cfg(windows)]
fn syscall<T>(socket: &Socket, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    socket.try_io(f)
}

/// A non-blocking UDP socket with quinn-udp's offloads and one pending transmit.
pub(crate) struct Udp {
    pub(crate) socket: Socket,
    state: UdpSocketState,
    recv_buf: Vec<u8>,
    metas: [RecvMeta; BATCH_SIZE],
    /// A transmit the socket refused with `WouldBlock`, sent again when writable.
    pending: Option<(Transmit, Vec<u8>)>,
    pub(crate) send_errors: u64,
    /// Segments per GSO send that keep it within the kernel's 64 KiB limit.
    segment_limit: usize,
}

impl Udp {
    /// Wraps `socket`, enabling GRO/GSO where the kernel has them and asking for buffers of
    /// `buffer_bytes` each way (warning when the kernel grants less).
    /// Datagrams are at most `max_payload` bytes.
    pub(crate) fn new(
        socket: std::net::UdpSocket,
        buffer_bytes: usize,
        max_payload: u16,
    ) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        #[cfg(windows)]
        let socket = mio::net::UdpSocket::from_std(socket);
        let state = UdpSocketState::new((&socket).into())?;
        no_receive_timestamps(&socket);
        for (what, set, get) in [
            (
                "receive",
                UdpSocketState::set_recv_buffer_size as fn(&UdpSocketState, _, usize) -> _,
                UdpSocketState::recv_buffer_size as fn(&UdpSocketState, _) -> _,
            ),
            (
                "send",
                UdpSocketState::set_send_buffer_size,
                UdpSocketState::send_buffer_size,
            ),
        ] {
            if let Err(e) = set(&state, (&socket).into(), buffer_bytes) {
                warn!("could not set the UDP {what} buffer to {buffer_bytes} bytes: {e}");
            }
            // Linux reports twice the usable size it granted.
            let mut granted = get(&state, (&socket).into()).unwrap_or(0);
            if granted < buffer_bytes && force_buffer(&socket, what == "receive", buffer_bytes) {
                granted = get(&state, (&socket).into()).unwrap_or(0);
            }
            if granted < buffer_bytes {
                warn!(
                    "the kernel capped the UDP {what} buffer at {granted} bytes (asked {buffer_bytes}); \
                     raise net.core.{}mem_max for full throughput",
                    if what == "receive" { "r" } else { "w" }
                );
            }
        }
        debug!(
            gso_segments = state.max_gso_segments(),
            gro_segments = state.gro_segments(),
            "UDP socket ready"
        );
        Ok(Self {
            socket,
            recv_buf: vec![0; SLOT * BATCH_SIZE],
            metas: [RecvMeta::default(); BATCH_SIZE],
            state,
            pending: None,
            send_errors: 0,
            segment_limit: usize::from(u16::MAX / max_payload.max(1)).max(1),
        })
    }

    /// How many datagrams one transmit may carry: as many as the kernel takes in one GSO
    /// send (64 KiB): 45 of 1452 bytes.
    pub(crate) fn max_segments(&self) -> usize {
        self.state.max_gso_segments().min(self.segment_limit).max(1)
    }

    /// Receives one batch and hands every datagram to `f`. Returns whether the socket may
    /// hold more: a batch that came back short means the receive queue was emptied (and, with
    /// edge-triggered readiness, a later arrival raises a new event), so no further call is
    /// needed just to see `WouldBlock`. `WouldBlock` when none was waiting.
    pub(crate) fn recv_batch(&mut self, mut f: impl FnMut(Datagram<'_>)) -> io::Result<bool> {
        let mut chunks = self.recv_buf.chunks_mut(SLOT);
        let mut slices: [IoSliceMut<'_>; BATCH_SIZE] =
            std::array::from_fn(|_| IoSliceMut::new(chunks.next().expect("one slot per slice")));
        let n = syscall(&self.socket, || {
            self.state
                .recv((&self.socket).into(), &mut slices, &mut self.metas)
        })?;
        for (meta, slot) in self.metas[..n].iter().zip(self.recv_buf.chunks(SLOT)) {
            let ecn = meta.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
            let stride = meta.stride.max(1);
            for payload in slot[..meta.len].chunks(stride) {
                f(Datagram {
                    remote: meta.addr,
                    local_ip: meta.dst_ip,
                    ecn,
                    payload,
                });
            }
        }
        // Windows: mio's readiness comes back only after a call saw `WouldBlock`.
        Ok(n == BATCH_SIZE || cfg!(windows))
    }

    /// Whether a transmit waits for the socket to become writable.
    pub(crate) fn is_blocked(&self) -> bool {
        self.pending.is_some()
    }

    /// Sends `data` as described by `t`. On `WouldBlock` the transmit is kept and `false`
    /// returned: call [`Self::retry`] once the socket is writable. Other errors are counted
    /// and logged (UDP is unreliable anyway; QUIC retransmits).
    pub(crate) fn send(&mut self, t: &Transmit, data: &[u8]) -> bool {
        match self.try_send(t, data) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut kept = self.pending.take().map(|(_, b)| b).unwrap_or_default();
                kept.clear();
                kept.extend_from_slice(data);
                let copy = Transmit {
                    destination: t.destination,
                    ecn: t.ecn,
                    size: t.size,
                    segment_size: t.segment_size,
                    src_ip: t.src_ip,
                };
                self.pending = Some((copy, kept));
                false
            }
            Err(e) => {
                self.count_error(&e);
                true
            }
        }
    }

    /// Sends the pending transmit, if any. Returns whether the socket is free again.
    pub(crate) fn retry(&mut self) -> bool {
        let Some((t, data)) = self.pending.take() else {
            return true;
        };
        match self.try_send(&t, &data) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.pending = Some((t, data));
                false
            }
            Err(e) => {
                self.count_error(&e);
                true
            }
        }
    }

    fn try_send(&self, t: &Transmit, data: &[u8]) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: t.destination,
            ecn: t
                .ecn
                .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
            contents: data,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        syscall(&self.socket, || {
            self.state.try_send((&self.socket).into(), &transmit)
        })
    }

    fn count_error(&mut self, e: &io::Error) {
        // EMSGSIZE: an MTU probe larger than the local interface allows. Expected.
        #[cfg(unix)]
        const EMSGSIZE: i32 = libc::EMSGSIZE;
        #[cfg(windows)]
        const EMSGSIZE: i32 = 10040; // WSAEMSGSIZE
        if e.raw_os_error() == Some(EMSGSIZE) {
            return;
        }
        self.send_errors += 1;
        if self.send_errors.is_power_of_two() {
            warn!(errors = self.send_errors, "UDP send failed: {e}");
        }
    }
}

/// Asks for a buffer of `bytes` past the `net.core.{r,w}mem_max` cap, which a process with
/// CAP_NET_ADMIN (the hub and the spoke service run with it for the TUN device) may do,
/// as quic-go and wireguard-go do. The default cap (4 MiB here, 208 KiB on many systems)
/// holds a few thousand handshake packets: a 10,000-spoke reconnect storm overflowed it.
/// Returns whether the kernel took it.
#[cfg(unix)]
fn force_buffer(socket: &Socket, receive: bool, bytes: usize) -> bool {
    use nix::sys::socket::{setsockopt, sockopt};
    let result = if receive {
        setsockopt(socket, sockopt::RcvBufForce, &bytes)
    } else {
        setsockopt(socket, sockopt::SndBufForce, &bytes)
    };
    result.is_ok()
}

/// Turns off the receive timestamp quinn-udp asks for: nothing reads it, and it costs a
/// control message (and a clock read in the kernel) per datagram, which is most of the
/// datagrams received when the path has no GRO.
#[cfg(unix)]
fn no_receive_timestamps(socket: &Socket) {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimestampns};
    if let Err(e) = setsockopt(socket, ReceiveTimestampns, &false) {
        debug!("could not turn off UDP receive timestamps: {e}");
    }
}

/// Windows has no cap to pass: the size asked is the size granted.
#[cfg(windows)]
fn force_buffer(_socket: &Socket, _receive: bool, _bytes: usize) -> bool {
    false
}

/// Windows' quinn-udp asks for no receive timestamps.
#[cfg(windows)]
fn no_receive_timestamps(_socket: &Socket) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn with_cap_net_admin_the_buffers_pass_the_systems_cap() {
        if !slopn_tun::netns::runnable("udp_buffers_pass_the_cap") {
            return;
        }
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .expect("rmem_max")
            .trim()
            .parse()
            .expect("a number");
        // Linux doubles what it grants: capped, this would get 2 x rmem_max.
        let asked = 4 * rmem_max;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp = Udp::new(socket, asked, 1452).unwrap();
        let granted = udp.state.recv_buffer_size((&udp.socket).into()).unwrap();
        assert!(
            granted >= asked,
            "receive buffer {granted} bytes, asked {asked} (rmem_max {rmem_max})"
        );
    }
}
