//! The TUN device.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};

use tracing::debug;
use tun_rs::{DeviceBuilder, SyncDevice};

use crate::TunError;

/// How to create a TUN device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name; `None` lets the kernel choose (`tun0`, ...).
    pub name: Option<String>,
    /// MTU in bytes.
    pub mtu: u16,
    /// Addresses with prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// A non-blocking TUN device carrying raw IP packets (no packet-information header).
pub struct Tun {
    device: SyncDevice,
    name: String,
    addresses: Vec<(IpAddr, u8)>,
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

impl Tun {
    /// Creates the device, sets its MTU and addresses and brings it up.
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
        let mut builder = DeviceBuilder::new().mtu(config.mtu).enable(true);
        if let Some(name) = &config.name {
            builder = builder.name(name);
        }
        let device = builder.build_sync().map_err(|e| open_error(e, config))?;
        device
            .set_nonblocking(true)
            .map_err(|e| TunError::io("making the TUN device non-blocking", e))?;
        let name = device
            .name()
            .map_err(|e| TunError::io("reading the TUN device's name", e))?;
        let mut tun = Self {
            device,
            name,
            addresses: Vec::new(),
        };
        tun.set_addresses(&config.addresses)?;
        debug!(name = %tun.name, mtu = config.mtu, addresses = ?config.addresses, "TUN device up");
        Ok(tun)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The addresses set on the device.
    pub fn addresses(&self) -> &[(IpAddr, u8)] {
        &self.addresses
    }

    /// Reads one packet; `WouldBlock` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.device.recv(buf)
    }

    /// Writes one packet; `WouldBlock` when the device queue is full.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.device.send(packet)
    }

    /// The MTU.
    pub fn mtu(&self) -> Result<u16, TunError> {
        self.device
            .mtu()
            .map_err(|e| TunError::io(format!("reading the MTU of {}", self.name), e))
    }

    /// Changes the MTU.
    pub fn set_mtu(&self, mtu: u16) -> Result<(), TunError> {
        self.device
            .set_mtu(mtu)
            .map_err(|e| TunError::io(format!("setting the MTU of {} to {mtu}", self.name), e))
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
}

impl Tun {
    fn set_ipv6(&self, enabled: bool) {
        let path = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", self.name);
        // Kernels without IPv6 have no such file; nothing to switch off then.
        let _ = std::fs::write(path, if enabled { "0" } else { "1" });
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.device.as_raw_fd()
    }
}

fn open_error(e: io::Error, config: &TunConfig) -> TunError {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => TunError::PermissionDenied,
        Some(libc::ENOENT | libc::ENODEV) => TunError::NoTunDevice,
        Some(libc::EBUSY) => TunError::NameInUse(config.name.clone().unwrap_or_default()),
        _ => TunError::io("creating the TUN device", e),
    }
}
