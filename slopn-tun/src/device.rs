//! The TUN device.

use std::io;
use std::net::IpAddr;
#[cfg(unix)]
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

use tracing::debug;
use tun_rs::{DeviceBuilder, SyncDevice};

use crate::TunError;
use crate::offload::{Receiver, Sender};

/// How to create a TUN device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name; `None` lets the kernel choose (`tun0`, ...).
    pub name: Option<String>,
    /// MTU in bytes.
    pub mtu: u16,
    /// Addresses with prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Whether to use the kernel's segmentation offload (Linux): reads deliver TCP
    /// super-packets of up to 64 KiB that are split here, and writes coalesce segments
    /// back. Far fewer system calls and far less work in the kernel's TCP stack. Falls
    /// back to plain packets where the kernel refuses.
    pub offload: bool,
}

/// A non-blocking TUN device carrying raw IP packets (no packet-information header), read
/// and written in batches. Its configuration after [`Tun::open`] goes through a
/// [`TunControl`], which can live on another thread.
pub struct Tun {
    device: Arc<SyncDevice>,
    name: String,
    /// The addresses [`Tun::open`] set.
    addresses: Vec<(IpAddr, u8)>,
    /// Whether the device speaks virtio-net headers (offload on).
    vnet_hdr: bool,
    receiver: Receiver,
    sender: Sender,
    dropped_reads: u64,
    dropped_writes: u64,
    /// Windows: the thread reading the adapter, once [`Tun::start_reader`] ran.
    #[cfg(windows)]
    reader: Option<crate::wintun_reader::Reader>,
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("addresses", &self.addresses)
            .field("offload", &self.vnet_hdr)
            .finish_non_exhaustive()
    }
}

/// How long [`Tun::open`] waits for a name held by a device on its way out.
const NAME_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl Tun {
    /// Creates the device, sets its MTU and addresses and brings it up. A name in use is
    /// waited for up to 3 s (a killed owner's device is still being torn down) before
    /// [`TunError::NameInUse`].
    pub fn open(config: &TunConfig) -> Result<Self, TunError> {
        if let Some(name) = &config.name
            && (name.is_empty()
                || name.len() > 15
                || name.contains(['/', ':', ' ', '\0', '\t', '\n']))
        {
            return Err(TunError::BadName(name.clone()));
        }
        if cfg!(target_os = "linux") && !std::path::Path::new("/dev/net/tun").exists() {
            return Err(TunError::NoTunDevice);
        }
        let build = |offload: bool| {
            let mut builder = DeviceBuilder::new().mtu(config.mtu).enable(true);
            if let Some(name) = &config.name {
                builder = builder.name(name);
            }
            #[cfg(target_os = "linux")]
            {
                builder = builder.offload(offload);
            }
            #[cfg(not(target_os = "linux"))]
            let _ = offload;
            builder.build_sync()
        };
        // A process killed a moment ago keeps its device until the kernel has torn it down
        // (a second or so): a restart right after waits for the name rather than failing.
        let started = std::time::Instant::now();
        let mut offload = config.offload;
        let device = loop {
            match build(offload) {
                Ok(device) => break device,
                // Old kernels without TUNSETOFFLOAD: plain packets still work.
                Err(e) if offload && e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!("TUN offload unavailable ({e}); reading one packet at a time");
                    offload = false;
                }
                Err(e) => match open_error(e, config) {
                    TunError::NameInUse(_) if started.elapsed() < NAME_RELEASE_WAIT => {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    error => return Err(error),
                },
            }
        };
        #[cfg(unix)]
        device
            .set_nonblocking(true)
            .map_err(|e| TunError::io("making the TUN device non-blocking", e))?;
        let name = device
            .name()
            .map_err(|e| TunError::io("reading the TUN device's name", e))?;
        #[cfg(target_os = "linux")]
        let vnet_hdr = device.tcp_gso();
        #[cfg(target_os = "linux")]
        if vnet_hdr {
            cap_segments(&name);
        }
        #[cfg(not(target_os = "linux"))]
        let vnet_hdr = false;
        let mut tun = Self {
            device: Arc::new(device),
            name,
            addresses: Vec::new(),
            vnet_hdr,
            receiver: Receiver::new(config.mtu),
            sender: Sender::new(),
            dropped_reads: 0,
            dropped_writes: 0,
            #[cfg(windows)]
            reader: None,
        };
        let mut control = tun.control();
        control.set_addresses(&config.addresses)?;
        tun.addresses = control.addresses;
        debug!(name = %tun.name, mtu = config.mtu, addresses = ?config.addresses, offload = vnet_hdr, "TUN device up");
        Ok(tun)
    }

    /// A handle that configures this device's MTU and addresses, starting from the
    /// addresses set now. Its ioctls and netlink requests act in the network namespace of
    /// the thread that calls them, and may wait: keep them off the datapath. The device
    /// exists until the `Tun` and every such handle are dropped.
    pub fn control(&self) -> TunControl {
        TunControl {
            device: self.device.clone(),
            name: self.name.clone(),
            addresses: self.addresses.clone(),
        }
    }

    /// Makes room for packets of `mtu` bytes in the read buffers, before the device's MTU
    /// grows to it (buffers never shrink: the kernel may still hand over packets of the
    /// old size).
    pub fn reserve_mtu(&mut self, mtu: u16) {
        self.receiver.reserve_mtu(mtu);
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the kernel's segmentation offload is on.
    pub fn offload(&self) -> bool {
        self.vnet_hdr
    }

    /// Reads what the kernel has queued (one packet, or one super-packet split into
    /// MTU-sized packets) and calls `each` for every packet. Returns how many there were;
    /// `WouldBlock` when nothing was waiting. A super-packet that cannot be split is
    /// dropped and counted ([`Self::dropped_reads`]).
    ///
    /// On Windows the packets come from the reading thread (`Tun::start_reader`).
    pub fn recv_packets(&mut self, each: impl FnMut(&[u8])) -> io::Result<usize> {
        #[cfg(windows)]
        if let Some(reader) = &mut self.reader {
            return reader.recv(each);
        }
        let n = self.receiver.recv(&self.device, self.vnet_hdr, each)?;
        if n == 0 {
            self.dropped_reads += 1;
        }
        Ok(n)
    }

    /// Queues one packet for writing; a full batch is written at once. Call
    /// [`Self::flush`] once there is nothing more to queue for now.
    pub fn queue_packet(&mut self, packet: &[u8]) -> io::Result<()> {
        if self.sender.is_full() {
            self.flush()?;
        }
        self.sender.queue(packet);
        Ok(())
    }

    /// Writes the queued packets, coalescing segments of a flow where offload is on.
    /// Packets the device refuses (its queue is full, or the kernel finds one malformed)
    /// are dropped and counted ([`Self::dropped_writes`]), as a full NIC queue drops; only
    /// a device that is gone is an error.
    pub fn flush(&mut self) -> io::Result<()> {
        self.dropped_writes += self.sender.flush(&self.device, self.vnet_hdr)?;
        Ok(())
    }

    /// Windows: starts the thread that reads the adapter (Wintun offers nothing to wait
    /// on); `wake` is called when packets wait for [`Self::recv_packets`] after none did.
    #[cfg(windows)]
    pub fn start_reader(&mut self, wake: crate::WakeFn) -> Result<(), TunError> {
        let reader = crate::wintun_reader::Reader::spawn(self.device.clone(), wake)
            .map_err(|e| TunError::io("starting the Wintun reading thread", e))?;
        self.reader = Some(reader);
        Ok(())
    }

    /// Reads dropped because the kernel's super-packet could not be split.
    pub fn dropped_reads(&self) -> u64 {
        self.dropped_reads
    }

    /// Writes the device refused (queue full, malformed packet, device down).
    pub fn dropped_writes(&self) -> u64 {
        self.dropped_writes
    }
}

/// Configures a [`Tun`]'s MTU and addresses from any thread (see [`Tun::control`]).
pub struct TunControl {
    device: Arc<SyncDevice>,
    name: String,
    addresses: Vec<(IpAddr, u8)>,
}

impl std::fmt::Debug for TunControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunControl")
            .field("name", &self.name)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

impl TunControl {
    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The addresses set on the device through this handle (or at open).
    pub fn addresses(&self) -> &[(IpAddr, u8)] {
        &self.addresses
    }

    /// The MTU.
    pub fn mtu(&self) -> Result<u16, TunError> {
        self.device
            .mtu()
            .map_err(|e| TunError::io(format!("reading the MTU of {}", self.name), e))
    }

    /// Changes the MTU.
    pub fn set_mtu(&mut self, mtu: u16) -> Result<(), TunError> {
        self.device
            .set_mtu(mtu)
            .map_err(|e| TunError::io(format!("setting the MTU of {} to {mtu}", self.name), e))?;
        Ok(())
    }

    /// Makes the device's addresses exactly `addresses`, adding and removing as needed.
    /// Without an IPv6 address, IPv6 is switched off on the device, so the kernel does not
    /// send router solicitations and multicast reports into the tunnel.
    pub fn set_addresses(&mut self, addresses: &[(IpAddr, u8)]) -> Result<(), TunError> {
        self.set_ipv6(addresses.iter().any(|(a, _)| a.is_ipv6()));
        for &(addr, prefix) in addresses {
            if self.addresses.contains(&(addr, prefix)) {
                continue;
            }
            let result = match addr {
                IpAddr::V4(a) => self.device.add_address_v4(a, prefix),
                IpAddr::V6(a) => self.device.add_address_v6(a, prefix),
            };
            result
                .map_err(|e| TunError::io(format!("adding {addr}/{prefix} to {}", self.name), e))?;
            self.addresses.push((addr, prefix));
        }
        let stale: Vec<_> = self
            .addresses
            .iter()
            .copied()
            .filter(|a| !addresses.contains(a))
            .collect();
        for (addr, prefix) in stale {
            self.device.remove_address(addr).map_err(|e| {
                TunError::io(format!("removing {addr}/{prefix} from {}", self.name), e)
            })?;
            self.addresses.retain(|a| *a != (addr, prefix));
        }
        Ok(())
    }

    fn set_ipv6(&self, enabled: bool) {
        let path = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.name);
        // Kernels without IPv6 have no such file; nothing to switch off then.
        let _ = std::fs::write(path, if enabled { "0" } else { "1" });
    }
}

#[cfg(unix)]
impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }
}

#[cfg(unix)]
impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }
}

/// Caps the segments in each super-packet the kernel hands this device at what one read
/// splits into ([`BATCH`](crate::offload::BATCH)). Without the cap, TCP at a small MSS (under
/// about 512 bytes) gets super-packets of up to 64 KiB in hundreds of segments, and each such
/// read is dropped whole. A kernel that refuses the setting keeps working, with those flows
/// slower; the warning says so.
#[cfg(target_os = "linux")]
fn cap_segments(name: &str) {
    let segments = crate::offload::BATCH as u32;
    let capped = crate::netlink::interface_index(name)
        .and_then(|index| crate::netlink::Netlink::open()?.set_gso_max_segs(index, segments));
    if let Err(e) = capped {
        tracing::warn!(
            "could not cap {name}'s super-packets at {segments} segments ({e}): TCP flows with \
             segments under 512 bytes will lose packets; SLOPN_TUN_OFFLOAD=off avoids it, at a cost \
             in speed"
        );
    }
}

#[cfg(windows)]
fn open_error(e: io::Error, _config: &TunConfig) -> TunError {
    // ERROR_ACCESS_DENIED; loading a missing DLL fails with ERROR_MOD_NOT_FOUND, or as a
    // libloading error without a code.
    match e.raw_os_error() {
        Some(5) => TunError::PermissionDenied,
        Some(126) => TunError::NoTunDevice,
        _ if is_missing_dll(&e.to_string()) => TunError::NoTunDevice,
        _ => TunError::io("creating the Wintun adapter", e),
    }
}

/// Whether tun-rs's error says `wintun.dll` could not be loaded (libloading reports
/// "LoadLibraryExW failed" without an OS code).
#[cfg_attr(unix, allow(dead_code))]
fn is_missing_dll(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("wintun.dll") || message.contains("loadlibrary")
}

#[cfg(unix)]
fn open_error(e: io::Error, config: &TunConfig) -> TunError {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => TunError::PermissionDenied,
        Some(libc::ENOENT | libc::ENODEV) => TunError::NoTunDevice,
        Some(libc::EBUSY) => TunError::NameInUse(config.name.clone().unwrap_or_default()),
        _ => TunError::io("creating the TUN device", e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_wintun_dll_is_recognised() {
        assert!(super::is_missing_dll("LoadLibraryExW failed"));
        assert!(super::is_missing_dll("could not load wintun.dll"));
        assert!(!super::is_missing_dll("the adapter name is in use"));
    }
}
