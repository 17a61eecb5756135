//! Routes through netlink (Linux): the routes of one change go to the kernel as one batch of
//! requests on one socket, each acknowledged, instead of one `ip` process per route (which
//! left a full tunnel half routed for milliseconds while the halves went in one by one).
//! Also the one link setting the TUN device needs beyond what tun-rs sets.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::constants::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

/// Where a route sends packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Via {
    /// The outgoing interface's index.
    pub(crate) interface: u32,
    /// The next hop, if not on-link.
    pub(crate) gateway: Option<IpAddr>,
}

/// What a route does with packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// Sends them out of an interface.
    Via(Via),
    /// Refuses them at once, "network unreachable" (`ip route add unreachable NET`).
    Unreachable,
}

/// One change to the main routing table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Adds the route, or replaces one to the same network (`ip route replace`).
    Replace(IpNet, Target),
    /// Removes the route to the network (through that interface) (`ip route del`).
    Delete(IpNet, Target),
}

/// The index of interface `name`.
pub(crate) fn interface_index(name: &str) -> io::Result<u32> {
    nix::net::if_::if_nametoindex(name).map_err(io::Error::from)
}

/// A netlink route socket.
pub(crate) struct Netlink {
    socket: Socket,
    sequence: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket to the kernel's routing, in the calling thread's network namespace.
    /// An answer that does not come within [`COMMAND_TIMEOUT`](crate::COMMAND_TIMEOUT)
    /// fails the change, as a stuck command would.
    pub(crate) fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let timeout =
            nix::sys::time::TimeVal::new(crate::COMMAND_TIMEOUT.as_secs() as nix::libc::time_t, 0);
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(io::Error::from)?;
        Ok(Self {
            socket,
            sequence: 0,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends every change, then collects every answer: the result of each, in order.
    pub(crate) fn apply(&mut self, changes: &[Change]) -> Vec<io::Result<()>> {
        let first = self.sequence.wrapping_add(1);
        let mut results: Vec<Option<io::Result<()>>> = Vec::with_capacity(changes.len());
        let mut batch = Vec::new();
        for change in changes {
            let (kind, flags, net, target) = match change {
                Change::Replace(net, target) => (
                    RouteNetlinkMessage::NewRoute as fn(RouteMessage) -> _,
                    NLM_F_CREATE | NLM_F_REPLACE,
                    net,
                    target,
                ),
                Change::Delete(net, target) => (
                    RouteNetlinkMessage::DelRoute as fn(RouteMessage) -> _,
                    0,
                    net,
                    target,
                ),
            };
            let message = route_message(*net, target, matches!(change, Change::Delete(..)));
            self.sequence = self.sequence.wrapping_add(1);
            batch.extend_from_slice(&request(kind(message), flags, self.sequence));
            results.push(None);
        }
        if let Err(e) = self.socket.send(&batch, 0) {
            return changes
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect();
        }
        let mut waiting = changes.len();
        while waiting > 0 {
            let answers = match self.receive() {
                Ok(answers) => answers,
                Err(e) => {
                    for slot in results.iter_mut().filter(|r| r.is_none()) {
                        *slot = Some(Err(io::Error::new(e.kind(), e.to_string())));
                    }
                    break;
                }
            };
            for (sequence, result) in answers {
                let index = sequence.wrapping_sub(first) as usize;
                if let Some(slot) = results.get_mut(index).filter(|r| r.is_none()) {
                    *slot = Some(result);
                    waiting -= 1;
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(io::ErrorKind::TimedOut.into())))
            .collect()
    }

    /// Caps the segments of one super-packet the kernel hands to interface `interface`
    /// (`ip link set dev DEVICE gso_max_segs SEGS`).
    pub(crate) fn set_gso_max_segs(&mut self, interface: u32, segs: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = interface;
        message.attributes.push(LinkAttribute::GsoMaxSegs(segs));
        let sequence = self.send_one(RouteNetlinkMessage::SetLink(message))?;
        loop {
            for (answered, result) in self.receive()? {
                if answered == sequence {
                    return result;
                }
            }
        }
    }

    /// The route the kernel would take to `dest` now.
    pub(crate) fn route_to(&mut self, dest: IpAddr) -> io::Result<Via> {
        let mut message = RouteMessage::default();
        message.header.address_family = family(dest);
        message.header.destination_prefix_length = if dest.is_ipv4() { 32 } else { 128 };
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dest)));
        let sequence = self.send_one(RouteNetlinkMessage::GetRoute(message))?;
        loop {
            self.buf.clear();
            self.socket.recv(&mut self.buf, 0)?;
            let mut offset = 0;
            while offset < self.buf.len() {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                offset += (message.header.length as usize).max(1);
                if message.header.sequence_number != sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                        let mut via = Via {
                            interface: 0,
                            gateway: None,
                        };
                        for attribute in route.attributes {
                            match attribute {
                                RouteAttribute::Oif(index) => via.interface = index,
                                RouteAttribute::Gateway(RouteAddress::Inet(a)) => {
                                    via.gateway = Some(a.into())
                                }
                                RouteAttribute::Gateway(RouteAddress::Inet6(a)) => {
                                    via.gateway = Some(a.into())
                                }
                                _ => {}
                            }
                        }
                        if via.interface == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::NotFound,
                                format!("no route to {dest}"),
                            ));
                        }
                        return Ok(via);
                    }
                    NetlinkPayload::Error(e) => {
                        return Err(e.code.map_or_else(
                            || {
                                io::Error::new(
                                    io::ErrorKind::NotFound,
                                    format!("no route to {dest}"),
                                )
                            },
                            |code| io::Error::from_raw_os_error(-code.get()),
                        ));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends one request under the next sequence number, which it returns.
    fn send_one(&mut self, message: RouteNetlinkMessage) -> io::Result<u32> {
        self.sequence = self.sequence.wrapping_add(1);
        self.socket.send(&request(message, 0, self.sequence), 0)?;
        Ok(self.sequence)
    }

    /// Reads one datagram of answers: (sequence number, result) of each acknowledgement.
    fn receive(&mut self) -> io::Result<Vec<(u32, io::Result<()>)>> {
        self.buf.clear();
        self.socket.recv(&mut self.buf, 0)?;
        let mut answers = Vec::new();
        let mut offset = 0;
        while offset < self.buf.len() {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            offset += (message.header.length as usize).max(1);
            if let NetlinkPayload::Error(e) = message.payload {
                let result = match e.code {
                    None => Ok(()),
                    Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                };
                answers.push((message.header.sequence_number, result));
            }
        }
        Ok(answers)
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// The message `ip route replace|del NET [via GATEWAY] dev DEVICE` (or `unreachable NET`)
/// sends.
fn route_message(net: IpNet, target: &Target, delete: bool) -> RouteMessage {
    let net = net.trunc();
    let mut message = RouteMessage::default();
    let header = &mut message.header;
    header.address_family = family(net.addr());
    header.destination_prefix_length = net.prefix_len();
    header.table = RouteHeader::RT_TABLE_MAIN;
    header.protocol = RouteProtocol::Boot;
    header.scope = match (delete, target) {
        (true, _) => RouteScope::NoWhere,
        (false, Target::Via(Via { gateway: None, .. })) => RouteScope::Link,
        (false, _) => RouteScope::Universe,
    };
    header.kind = match target {
        Target::Via(_) => RouteType::Unicast,
        Target::Unreachable => RouteType::Unreachable,
    };
    if net.prefix_len() > 0 {
        message
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(net.addr())));
    }
    if let Target::Via(via) = target {
        if let Some(gateway) = via.gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gateway)));
        }
        message.attributes.push(RouteAttribute::Oif(via.interface));
    }
    message
}

/// One request, serialized, asking for an acknowledgement.
fn request(message: RouteNetlinkMessage, flags: u16, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = sequence;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
    request.finalize();
    let mut buf = vec![0; request.header.length as usize];
    request.serialize(&mut buf);
    buf
}
