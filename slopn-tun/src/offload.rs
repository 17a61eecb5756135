//! Batched packet I/O on the TUN device with the kernel's segmentation offload.
//!
//! With `IFF_VNET_HDR` the kernel hands over TCP (and, from Linux 6.2, UDP) super-packets of
//! up to 64 KiB, each behind a virtio-net header, instead of one read per MTU-sized packet;
//! [`Receiver`] splits them into MTU-sized packets (what fits a QUIC datagram). The other
//! way, [`Sender`] queues packets and coalesces consecutive segments of one flow back into
//! super-packets (GRO) before writing, so the kernel's TCP stack handles a few large
//! packets per batch rather than many small ones. Without offload (other systems, or when
//! asked) both degrade to one packet per system call.
//!
//! tun-rs does the splitting and the coalescing; it checks every checksum before it
//! coalesces, so a corrupt packet from the network is never passed on as locally built.

use std::io;

use tun_rs::SyncDevice;

/// How many packets one write batch (and one split super-packet) holds at most.
#[cfg(target_os = "linux")]
pub(crate) const BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;
#[cfg(not(target_os = "linux"))]
pub(crate) const BATCH: usize = 1;

/// Room before each queued packet for the virtio-net header.
#[cfg(target_os = "linux")]
const HEADER_ROOM: usize = tun_rs::VIRTIO_NET_HDR_LEN;
#[cfg(not(target_os = "linux"))]
const HEADER_ROOM: usize = 0;

/// A coalesced write buffer larger than this is shrunk after its batch, so a burst of
/// coalescing does not keep megabytes resident.
const KEEP_CAPACITY: usize = 16 * 1024;

/// Slack above the MTU in each segment slot (the kernel never exceeds the MTU; this is
/// for a device whose MTU was raised behind our back).
const SLOT_SLACK: usize = 256;

/// Splits what the device delivers into packets.
pub(crate) struct Receiver {
    /// One raw read: virtio-net header and up to 64 KiB of packet.
    raw: Vec<u8>,
    /// `BATCH` slots of `slot` bytes, one packet each.
    slots: Vec<u8>,
    slot: usize,
    sizes: [usize; BATCH],
}

impl Receiver {
    pub(crate) fn new(mtu: u16) -> Self {
        let mut receiver = Self {
            raw: vec![0; HEADER_ROOM + 65536],
            slots: Vec::new(),
            slot: 0,
            sizes: [0; BATCH],
        };
        receiver.reserve_mtu(mtu);
        receiver
    }

    /// Grows the slots to hold packets of `mtu` bytes.
    pub(crate) fn reserve_mtu(&mut self, mtu: u16) {
        self.slot = self.slot.max(usize::from(mtu) + SLOT_SLACK);
        self.slots.resize(self.slot * BATCH, 0);
    }

    /// Reads once and calls `each` for every packet. `Ok(0)` when the read held nothing
    /// usable (counted by the caller as a dropped read).
    pub(crate) fn recv(
        &mut self,
        device: &SyncDevice,
        vnet_hdr: bool,
        mut each: impl FnMut(&[u8]),
    ) -> io::Result<usize> {
        #[cfg(not(target_os = "linux"))]
        let _ = (vnet_hdr, &self.raw);
        let mut chunks = self.slots.chunks_mut(self.slot);
        #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
        let mut bufs: [&mut [u8]; BATCH] =
            std::array::from_fn(|_| chunks.next().expect("one slot per packet"));
        let count = match () {
            #[cfg(target_os = "linux")]
            () if vnet_hdr => read_split(device, &mut self.raw, &mut bufs, &mut self.sizes)?,
            () => {
                self.sizes[0] = device.recv(bufs[0])?;
                1
            }
        };
        for (buf, &size) in bufs.iter().zip(&self.sizes).take(count) {
            each(&buf[..size]);
        }
        Ok(count)
    }
}

#[cfg(target_os = "linux")]
fn read_split(
    device: &SyncDevice,
    raw: &mut [u8],
    bufs: &mut [&mut [u8]; BATCH],
    sizes: &mut [usize; BATCH],
) -> io::Result<usize> {
    match device.recv_multiple(raw, bufs, sizes, 0) {
        Ok(n) => Ok(n),
        // tun-rs reports a super-packet it cannot split (too many segments, a header it does
        // not understand) as an error without an OS code: drop that one read.
        Err(e) if e.raw_os_error().is_none() && e.kind() != io::ErrorKind::WouldBlock => {
            tracing::debug!("TUN read dropped: {e}");
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

/// Largest coalesced write: the virtio-net header room before it and after it (tun-rs
/// wants both) around a 64 KiB IP packet.
#[cfg(target_os = "linux")]
const GRO_CAPACITY: usize = 2 * HEADER_ROOM + 65_535;

/// One queued packet after its header room.
///
/// tun-rs coalesces a TCP segment into an earlier one only if the earlier one's buffer
/// reports room for the result, and never grows a buffer itself to make room. A slot
/// reports room for a whole 64 KiB packet but holds one MTU until a segment is actually
/// coalesced into it: then it grows once, to that size.
#[derive(Default)]
struct Slot(Vec<u8>);

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for Slot {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

#[cfg(target_os = "linux")]
impl Slot {
    /// Makes room for `len` bytes: one reallocation to the largest size rather than
    /// doubling step by step as segments are merged in.
    fn reserve_for(&mut self, len: usize) {
        if len > self.0.capacity() {
            self.0.reserve_exact(GRO_CAPACITY.max(len) - self.0.len());
        }
    }
}

#[cfg(target_os = "linux")]
impl tun_rs::ExpandBuffer for Slot {
    fn buf_capacity(&self) -> usize {
        self.0.capacity().max(GRO_CAPACITY)
    }

    fn buf_resize(&mut self, new_len: usize, value: u8) {
        self.reserve_for(new_len);
        self.0.resize(new_len, value);
    }

    fn buf_extend_from_slice(&mut self, src: &[u8]) {
        self.reserve_for(self.0.len() + src.len());
        self.0.extend_from_slice(src);
    }
}

/// Queues packets and writes them in coalesced batches.
pub(crate) struct Sender {
    /// Header room followed by one packet each; the first `queued` are in use.
    bufs: Vec<Slot>,
    queued: usize,
    #[cfg(target_os = "linux")]
    gro: tun_rs::GROTable,
}

impl Sender {
    pub(crate) fn new() -> Self {
        Self {
            bufs: Vec::new(),
            queued: 0,
            #[cfg(target_os = "linux")]
            gro: tun_rs::GROTable::default(),
        }
    }

    /// Whether the batch is full and must be flushed before the next packet.
    pub(crate) fn is_full(&self) -> bool {
        self.queued == BATCH
    }

    /// Copies `packet` into the batch (which must not be full).
    pub(crate) fn queue(&mut self, packet: &[u8]) {
        if self.queued == self.bufs.len() {
            self.bufs.push(Slot(Vec::with_capacity(HEADER_ROOM + 1500)));
        }
        let buf = &mut self.bufs[self.queued].0;
        buf.clear();
        buf.resize(HEADER_ROOM, 0);
        buf.extend_from_slice(packet);
        self.queued += 1;
    }

    /// Writes the batch. Returns how many writes the device refused (those packets are
    /// dropped, as a full NIC queue drops): because its queue was full, or because the kernel
    /// found a packet malformed. Packets come from the network, so no packet may end the
    /// loop; only a device that is gone ([`is_fatal`]) does.
    pub(crate) fn flush(&mut self, device: &SyncDevice, vnet_hdr: bool) -> io::Result<u64> {
        #[cfg(not(target_os = "linux"))]
        let _ = vnet_hdr;
        if self.queued == 0 {
            return Ok(0);
        }
        let bufs = &mut self.bufs[..self.queued];
        self.queued = 0;
        let mut refused = 0;
        let result = match () {
            #[cfg(target_os = "linux")]
            () if vnet_hdr => device
                .send_multiple(&mut self.gro, bufs, HEADER_ROOM)
                .map(|_| ()),
            () => {
                let mut last = Ok(());
                for buf in bufs.iter() {
                    match device.send(&buf.0[HEADER_ROOM..]) {
                        Ok(_) => {}
                        Err(e) if is_fatal(&e) => last = Err(e),
                        Err(_) => refused += 1,
                    }
                }
                last
            }
        };
        for Slot(buf) in bufs.iter_mut() {
            if buf.capacity() > KEEP_CAPACITY {
                buf.clear();
                buf.shrink_to(HEADER_ROOM + 1500);
            }
        }
        match result {
            Ok(()) => Ok(refused),
            Err(e) if is_fatal(&e) => Err(e),
            // tun-rs goes on after a refused write and reports the last error: at least one.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(refused.max(1)),
            Err(e) => {
                tracing::debug!("TUN write dropped: {e}");
                Ok(refused.max(1))
            }
        }
    }
}

/// Whether a write error means the device is unusable (rather than one packet refused:
/// `EINVAL` for a malformed packet, `EIO` while the device is down, `ENOBUFS`).
fn is_fatal(e: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    const GONE: &[i32] = &[libc::EBADF, libc::EBADFD];
    #[cfg(not(target_os = "linux"))]
    const GONE: &[i32] = &[libc::EBADF];
    e.raw_os_error().is_some_and(|code| GONE.contains(&code))
}
