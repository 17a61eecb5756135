//! A smoltcp host standing behind a TUN side: the hub's, or a spoke's. Real TCP and ICMP run
//! through the tunnel between such hosts, with checksums checked.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, Ipv4Address, Ipv4Packet,
};

/// An in-memory IP device: what the tunnel delivers waits in `rx`; what the host sends
/// collects in `tx`.
pub struct TunDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    pub mtu: usize,
    /// Every packet delivered to the host, kept when `capture` is set.
    pub captured: Vec<Vec<u8>>,
    pub capture: bool,
}

pub struct RxToken(Vec<u8>);
pub struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for TunDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

pub struct Host {
    pub iface: Interface,
    /// Address, prefix and gateway, to re-apply when the interface is rebuilt.
    config: Vec<(IpAddr, u8, Option<IpAddr>)>,
    pub device: TunDevice,
    pub sockets: SocketSet<'static>,
    /// Set when the test touched sockets, so the host is polled before time moves on.
    pub dirty: bool,
}

pub fn smol_now(elapsed: Duration) -> SmolInstant {
    SmolInstant::from_micros(elapsed.as_micros() as i64)
}

fn ip(addr: IpAddr) -> IpAddress {
    match addr {
        IpAddr::V4(a) => IpAddress::Ipv4(a),
        IpAddr::V6(a) => IpAddress::Ipv6(a),
    }
}

impl Host {
    pub fn new(mtu: usize) -> Self {
        let mut device = TunDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
            captured: Vec::new(),
            capture: false,
        };
        let config = Config::new(HardwareAddress::Ip);
        let iface = Interface::new(config, &mut device, SmolInstant::ZERO);
        Self {
            iface,
            config: Vec::new(),
            device,
            sockets: SocketSet::new(Vec::new()),
            dirty: false,
        }
    }

    /// Gives the host `addr/prefix` and a default route via `gateway`.
    pub fn configure(&mut self, addr: IpAddr, prefix: u8, gateway: Option<IpAddr>) {
        self.config
            .retain(|(a, _, _)| a.is_ipv4() != addr.is_ipv4());
        self.config.push((addr, prefix, gateway));
        self.apply(addr, prefix, gateway);
    }

    /// Changes the MTU, as a driver sets the TUN device's MTU. smoltcp reads it only when
    /// the interface is built, so the interface is rebuilt; sockets and their connections
    /// survive, and new TCP connections use the new MSS.
    pub fn set_mtu(&mut self, mtu: usize) {
        if mtu == self.device.mtu {
            return;
        }
        self.device.mtu = mtu;
        self.iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut self.device,
            SmolInstant::ZERO,
        );
        for (addr, prefix, gateway) in self.config.clone() {
            self.apply(addr, prefix, gateway);
        }
    }

    fn apply(&mut self, addr: IpAddr, prefix: u8, gateway: Option<IpAddr>) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.retain(|a| a.address().version() != ip(addr).version());
            addrs.push(IpCidr::new(ip(addr), prefix)).expect("room");
        });
        if let Some(IpAddr::V4(gw)) = gateway {
            self.iface
                .routes_mut()
                .add_default_ipv4_route(gw)
                .expect("route");
        }
        self.dirty = true;
    }

    pub fn deliver(&mut self, packet: Vec<u8>) {
        if self.device.capture {
            self.device.captured.push(packet.clone());
        }
        self.device.rx.push_back(packet);
        self.dirty = true;
    }

    /// Runs the stack at `now`; returns whether anything happened.
    pub fn poll(&mut self, now: Duration) -> bool {
        self.dirty = false;
        let r = self
            .iface
            .poll(smol_now(now), &mut self.device, &mut self.sockets);
        r == smoltcp::iface::PollResult::SocketStateChanged
    }

    /// When the stack next needs polling.
    pub fn poll_at(&mut self, now: Duration) -> Option<Duration> {
        if self.dirty || !self.device.rx.is_empty() {
            return Some(now);
        }
        self.iface
            .poll_at(smol_now(now), &self.sockets)
            .map(|t| Duration::from_micros(t.total_micros().max(0) as u64))
    }

    pub fn add_tcp(&mut self, buffer: usize) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(vec![0; buffer]);
        let tx = tcp::SocketBuffer::new(vec![0; buffer]);
        self.dirty = true;
        self.sockets.add(tcp::Socket::new(rx, tx))
    }

    pub fn add_icmp(&mut self, endpoint: icmp::Endpoint) -> SocketHandle {
        let rx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 16], vec![0; 65536]);
        let tx = icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 16], vec![0; 65536]);
        let mut socket = icmp::Socket::new(rx, tx);
        socket.bind(endpoint).expect("bind icmp");
        self.dirty = true;
        self.sockets.add(socket)
    }

    pub fn add_udp(&mut self, port: u16) -> SocketHandle {
        let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 65536]);
        let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 65536]);
        let mut socket = udp::Socket::new(rx, tx);
        socket.bind(port).expect("bind udp");
        self.dirty = true;
        self.sockets.add(socket)
    }

    /// Sends an ICMP echo request with `ident`/`seq` and a payload of `size` bytes.
    pub fn send_ping(
        &mut self,
        handle: SocketHandle,
        to: IpAddr,
        ident: u16,
        seq: u16,
        size: usize,
    ) {
        let IpAddr::V4(_) = to else {
            panic!("IPv4 pings only")
        };
        let payload = vec![0xa5u8; size];
        let repr = Icmpv4Repr::EchoRequest {
            ident,
            seq_no: seq,
            data: &payload,
        };
        let socket = self.sockets.get_mut::<icmp::Socket>(handle);
        let buf = socket
            .send(repr.buffer_len(), ip(to))
            .expect("icmp send buffer");
        let mut packet = Icmpv4Packet::new_unchecked(buf);
        repr.emit(&mut packet, &smoltcp::phy::ChecksumCapabilities::default());
        self.dirty = true;
    }

    /// The sequence numbers of echo replies received on `handle`, with their sources.
    pub fn recv_pongs(&mut self, handle: SocketHandle) -> Vec<(IpAddr, u16)> {
        let socket = self.sockets.get_mut::<icmp::Socket>(handle);
        let mut out = Vec::new();
        while let Ok((data, from)) = socket.recv() {
            let packet = Icmpv4Packet::new_checked(data).expect("valid icmp");
            if let Ok(Icmpv4Repr::EchoReply { seq_no, .. }) =
                Icmpv4Repr::parse(&packet, &Default::default())
            {
                let from = match from {
                    IpAddress::Ipv4(a) => IpAddr::V4(a),
                    IpAddress::Ipv6(a) => IpAddr::V6(a),
                };
                out.push((from, seq_no));
            }
        }
        out
    }

    /// Every ICMPv4 error message (type, code, next-hop MTU) delivered to the host since
    /// capturing began, with valid IP and ICMP checksums.
    pub fn captured_icmp_errors(&self) -> Vec<(u8, u8, u16)> {
        self.device
            .captured
            .iter()
            .filter_map(|p| {
                let ip = Ipv4Packet::new_checked(p).ok()?;
                if !ip.verify_checksum() || ip.next_header() != smoltcp::wire::IpProtocol::Icmp {
                    return None;
                }
                let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
                if !icmp.verify_checksum() {
                    return None;
                }
                let (ty, code): (u8, u8) = (icmp.msg_type().into(), icmp.msg_code());
                if ty != 3 && ty != 11 {
                    return None;
                }
                let mtu = u16::from_be_bytes([ip.payload()[6], ip.payload()[7]]);
                Some((ty, code, mtu))
            })
            .collect()
    }
}

pub fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Address::new(a, b, c, d))
}
