//! The control-stream codec: pure encode and decode of capsules, fuzzable on its own.
//!
//! Every message on the control stream is a capsule: `Type (i), Length (i), Value (..)`,
//! with QUIC variable-length integers (RFC 9000 §16). ADDRESS_ASSIGN, ADDRESS_REQUEST and
//! ROUTE_ADVERTISEMENT follow RFC 9484 §4.7 byte for byte; HELLO, WELCOME, ERROR and GOODBYE
//! are SloPN's own. `docs/PROTOCOL.md` is the normative description.
//!
//! Every length is bounded; anything malformed, unknown or out of bounds is a
//! [`DecodeError`], which the receiver answers by closing that one connection with
//! [`CloseCode::PROTOCOL_ERROR`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use thiserror::Error;

mod codec;
mod limits;
#[cfg(test)]
mod tests;

pub use codec::{decode, encode, put_varint};
pub use limits::{LimitError, check_dns_servers, check_ranges, check_reason};

/// The one protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// The TLS ALPN identifier: protocol name and major version. A mismatch fails the handshake.
pub const ALPN: &[u8] = b"slopn/1";

/// Largest capsule value accepted, in bytes. Larger announced lengths are a protocol error.
pub const MAX_CAPSULE_LEN: usize = 64 * 1024;
/// Largest credential in a HELLO.
pub const MAX_CREDENTIAL_LEN: usize = 4096;
/// Largest identity name in a WELCOME.
pub const MAX_IDENTITY_LEN: usize = 255;
/// Largest reason text in an ERROR or GOODBYE.
pub const MAX_REASON_LEN: usize = 1024;
/// Most addresses in one ADDRESS_ASSIGN or ADDRESS_REQUEST, and hub addresses in a WELCOME.
pub const MAX_ADDRESSES: usize = 64;
/// Most ranges in one ROUTE_ADVERTISEMENT.
pub const MAX_ROUTES: usize = 1024;

/// Capsule type codes.
pub(crate) mod kind {
    pub const ADDRESS_ASSIGN: u64 = 0x01;
    pub const ADDRESS_REQUEST: u64 = 0x02;
    pub const ROUTE_ADVERTISEMENT: u64 = 0x03;
    pub const HELLO: u64 = 0x10;
    pub const WELCOME: u64 = 0x11;
    pub const ERROR: u64 = 0x12;
    pub const GOODBYE: u64 = 0x13;
    pub const DNS_SERVERS: u64 = 0x14;
}

/// One control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capsule {
    /// Hub to spoke: the full list of addresses currently assigned to the spoke (RFC 9484).
    AddressAssign(Vec<AssignedAddress>),
    /// Spoke to hub: a request for addresses, each answered in an ADDRESS_ASSIGN (RFC 9484).
    AddressRequest(Vec<RequestedAddress>),
    /// Hub to spoke: the full list of ranges the spoke should send into the tunnel (RFC 9484).
    RouteAdvertisement(Vec<IpRange>),
    /// Spoke to hub, first on the stream: protocol version and credential.
    Hello {
        /// Protocol version the spoke speaks.
        version: u64,
        /// Opaque credential (an access token).
        credential: Bytes,
    },
    /// Hub to spoke, answer to a valid HELLO.
    Welcome {
        /// Protocol version the hub chose.
        version: u64,
        /// The identity the hub authenticated the spoke as.
        identity: String,
        /// The hub's own addresses inside the tunnel, each with its pool's prefix length
        /// (e.g. 10.100.0.1/24): the tunnel networks.
        hub_addresses: Vec<ipnet::IpNet>,
    },
    /// Hub to spoke: the full list of DNS servers the spoke should use while connected.
    DnsServers(Vec<IpAddr>),
    /// Either side: the session failed; the connection closes with the same code.
    Error {
        /// What went wrong.
        code: CloseCode,
        /// A short human-readable explanation.
        reason: String,
    },
    /// Either side: an orderly end of the session; the connection closes with the same code.
    Goodbye {
        /// Why the session ends.
        code: CloseCode,
        /// A short human-readable explanation.
        reason: String,
    },
}

impl Capsule {
    /// The capsule type's name, as in docs/PROTOCOL.md.
    pub fn name(&self) -> &'static str {
        match self {
            Self::AddressAssign(_) => "ADDRESS_ASSIGN",
            Self::AddressRequest(_) => "ADDRESS_REQUEST",
            Self::RouteAdvertisement(_) => "ROUTE_ADVERTISEMENT",
            Self::Hello { .. } => "HELLO",
            Self::Welcome { .. } => "WELCOME",
            Self::Error { .. } => "ERROR",
            Self::Goodbye { .. } => "GOODBYE",
            Self::DnsServers(_) => "DNS_SERVERS",
        }
    }
}

/// An address (or prefix) assigned to the receiver, as in RFC 9484's ADDRESS_ASSIGN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssignedAddress {
    /// The request this answers, or 0 for an unsolicited assignment.
    pub request_id: u64,
    /// The assigned prefix. All-zero with the full length (`0.0.0.0/32`, `::/128`) rejects
    /// the request with this ID.
    pub prefix: IpPrefix,
}

/// An address request, as in RFC 9484's ADDRESS_REQUEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestedAddress {
    /// Unique, non-zero identifier of this request.
    pub request_id: u64,
    /// The preferred prefix; an all-zero address asks for any address of that family.
    pub prefix: IpPrefix,
}

/// An IP address with a prefix length whose host bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// A prefix; `None` if `len` exceeds the address width or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let width = addr_width(addr);
        if len > width {
            return None;
        }
        let value = addr_to_u128(addr);
        let host_bits = u32::from(width - len);
        let host_mask = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        (value & host_mask == 0).then_some(Self { addr, len })
    }

    /// A single address (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            len: addr_width(addr),
        }
    }

    /// The rejection marker of RFC 9484: the all-zero address with the full length.
    pub fn rejection(ipv6: bool) -> Self {
        Self::host(if ipv6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        })
    }

    /// The address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether this is the all-zero address (a rejection, or "any address" in a request).
    pub fn is_unspecified(&self) -> bool {
        self.addr.is_unspecified()
    }

    /// Whether `addr` lies inside this prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        if addr.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let shift = u32::from(addr_width(addr) - self.len);
        if shift >= 128 {
            return true;
        }
        addr_to_u128(addr) >> shift == addr_to_u128(self.addr) >> shift
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// An inclusive range of destination addresses for one IP protocol (0 = all), as in
/// RFC 9484's ROUTE_ADVERTISEMENT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpRange {
    start: IpAddr,
    end: IpAddr,
    protocol: u8,
}

impl IpRange {
    /// A range; `None` if the families differ or `start > end`.
    pub fn new(start: IpAddr, end: IpAddr, protocol: u8) -> Option<Self> {
        (start.is_ipv4() == end.is_ipv4() && addr_to_u128(start) <= addr_to_u128(end)).then_some(
            Self {
                start,
                end,
                protocol,
            },
        )
    }

    /// The range covering a network, for all protocols.
    pub fn from_net(net: ipnet::IpNet) -> Self {
        Self {
            start: net.network(),
            end: net.broadcast(),
            protocol: 0,
        }
    }

    /// First address.
    pub fn start(&self) -> IpAddr {
        self.start
    }

    /// Last address (inclusive).
    pub fn end(&self) -> IpAddr {
        self.end
    }

    /// IP protocol number this range is for; 0 means every protocol.
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// Whether a packet to `addr` with IP protocol `protocol` falls in this range. ICMP is
    /// always allowed, as RFC 9484 requires.
    pub fn matches(&self, addr: IpAddr, protocol: u8) -> bool {
        let proto_ok = self.protocol == 0
            || self.protocol == protocol
            || protocol == crate::packet::PROTO_ICMP
            || protocol == crate::packet::PROTO_ICMPV6;
        proto_ok
            && addr.is_ipv4() == self.start.is_ipv4()
            && (addr_to_u128(self.start)..=addr_to_u128(self.end)).contains(&addr_to_u128(addr))
    }

    /// The smallest set of CIDR networks that covers exactly this range (for routing tables).
    pub fn to_nets(&self) -> Vec<ipnet::IpNet> {
        let width = u32::from(addr_width(self.start));
        let (mut lo, hi) = (addr_to_u128(self.start), addr_to_u128(self.end));
        let mut nets = Vec::new();
        // The last address of the aligned block of 2^bits addresses starting at `lo`.
        let block_last = |lo: u128, bits: u32| {
            let mask = if bits >= 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            };
            lo.checked_add(mask)
        };
        loop {
            // Largest aligned block starting at `lo` that stays within `hi`.
            let mut bits = lo.trailing_zeros().min(width);
            while bits > 0 && block_last(lo, bits).is_none_or(|last| last > hi) {
                bits -= 1;
            }
            let addr = u128_to_addr(lo, self.start.is_ipv4());
            let net = ipnet::IpNet::new(addr, (width - bits) as u8).expect("prefix fits width");
            nets.push(net);
            match block_last(lo, bits) {
                Some(last) if last < hi => lo = last + 1,
                _ => break,
            }
        }
        nets
    }

    fn key(&self) -> (u8, u8, u128) {
        (
            addr_width(self.start),
            self.protocol,
            addr_to_u128(self.start),
        )
    }

    /// Whether this range may come right after `prev` in a ROUTE_ADVERTISEMENT: RFC 9484's
    /// order (family, protocol, start) with no overlap inside one family and protocol.
    pub(crate) fn follows(&self, prev: &IpRange) -> bool {
        match prev.key().cmp(&self.key()) {
            std::cmp::Ordering::Less => {
                prev.key().0 != self.key().0
                    || prev.protocol != self.protocol
                    || addr_to_u128(prev.end) < addr_to_u128(self.start)
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)?;
        if self.protocol != 0 {
            write!(f, " proto {}", self.protocol)?;
        }
        Ok(())
    }
}

/// Sorts ranges into RFC 9484's required order and merges overlapping or adjacent ranges of
/// the same family and protocol, so that the result is a valid ROUTE_ADVERTISEMENT.
pub fn normalize_ranges(mut ranges: Vec<IpRange>) -> Vec<IpRange> {
    ranges.sort_by_key(IpRange::key);
    let mut out: Vec<IpRange> = Vec::with_capacity(ranges.len());
    for range in ranges {
        if let Some(last) = out.last_mut()
            && last.start.is_ipv4() == range.start.is_ipv4()
            && last.protocol == range.protocol
            && addr_to_u128(last.end).saturating_add(1) >= addr_to_u128(range.start)
        {
            if addr_to_u128(range.end) > addr_to_u128(last.end) {
                last.end = range.end;
            }
            continue;
        }
        out.push(range);
    }
    out
}

/// A close code: carried by ERROR and GOODBYE capsules and by the QUIC application
/// CONNECTION_CLOSE that ends the session.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u64);

impl CloseCode {
    /// An orderly goodbye with nothing wrong.
    pub const NO_ERROR: Self = Self(0x0);
    /// The peer sent something malformed, unknown or out of order.
    pub const PROTOCOL_ERROR: Self = Self(0x1);
    /// The HELLO carried a protocol version the hub does not speak.
    pub const UNSUPPORTED_VERSION: Self = Self(0x2);
    /// The credential was not accepted.
    pub const AUTH_FAILED: Self = Self(0x3);
    /// No address is free in the hub's pool.
    pub const POOL_EXHAUSTED: Self = Self(0x4);
    /// The spoke did not send its HELLO in time.
    pub const HELLO_TIMEOUT: Self = Self(0x5);
    /// The same identity connected again; this older session was replaced.
    pub const REPLACED: Self = Self(0x6);
    /// The hub is shutting down or restarting; reconnecting right away is welcome.
    pub const SHUTTING_DOWN: Self = Self(0x7);
    /// The spoke's access was revoked by the hub operator.
    pub const REVOKED: Self = Self(0x8);
    /// An internal error in the sender.
    pub const INTERNAL_ERROR: Self = Self(0x9);

    /// A short name for the code, for logs and user messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::NO_ERROR => "no error",
            Self::PROTOCOL_ERROR => "protocol error",
            Self::UNSUPPORTED_VERSION => "unsupported version",
            Self::AUTH_FAILED => "authentication failed",
            Self::POOL_EXHAUSTED => "pool exhausted",
            Self::HELLO_TIMEOUT => "hello timeout",
            Self::REPLACED => "replaced by a newer session",
            Self::SHUTTING_DOWN => "hub shutting down",
            Self::REVOKED => "access revoked",
            Self::INTERNAL_ERROR => "internal error",
            _ => "unknown code",
        }
    }
}

impl fmt::Debug for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} ({})", self.0, self.name())
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes on the control stream could not be decoded.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The capsule type is not one this version knows.
    #[error("unknown capsule type {0:#x}")]
    UnknownType(u64),
    /// The announced length exceeds [`MAX_CAPSULE_LEN`].
    #[error("capsule of {0} bytes exceeds the limit")]
    TooLong(u64),
    /// The value ended early, had bytes left over, or broke a field rule.
    #[error("malformed {kind} capsule: {what}")]
    Malformed {
        /// Capsule name.
        kind: &'static str,
        /// Which rule was broken.
        what: &'static str,
    },
}

/// Bits in an address of this family.
pub(crate) fn addr_width(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// The address as an integer (IPv4 in the low 32 bits).
pub(crate) fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of [`addr_to_u128`].
pub(crate) fn u128_to_addr(value: u128, ipv4: bool) -> IpAddr {
    if ipv4 {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(value))
    }
}
