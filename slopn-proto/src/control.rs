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

use bytes::{BufMut, Bytes};
use thiserror::Error;

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
mod kind {
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

/// Encodes one capsule, appending to `out`.
pub fn encode(capsule: &Capsule, out: &mut Vec<u8>) {
    let mut value = Vec::new();
    let kind = match capsule {
        Capsule::AddressAssign(list) => {
            for a in list {
                put_varint(&mut value, a.request_id);
                put_prefix(&mut value, a.prefix);
            }
            kind::ADDRESS_ASSIGN
        }
        Capsule::AddressRequest(list) => {
            for r in list {
                put_varint(&mut value, r.request_id);
                put_prefix(&mut value, r.prefix);
            }
            kind::ADDRESS_REQUEST
        }
        Capsule::RouteAdvertisement(list) => {
            for r in list {
                value.put_u8(if r.start.is_ipv4() { 4 } else { 6 });
                put_addr(&mut value, r.start);
                put_addr(&mut value, r.end);
                value.put_u8(r.protocol);
            }
            kind::ROUTE_ADVERTISEMENT
        }
        Capsule::Hello {
            version,
            credential,
        } => {
            put_varint(&mut value, *version);
            put_bytes(&mut value, credential);
            kind::HELLO
        }
        Capsule::Welcome {
            version,
            identity,
            hub_addresses,
        } => {
            put_varint(&mut value, *version);
            put_bytes(&mut value, identity.as_bytes());
            put_varint(&mut value, hub_addresses.len() as u64);
            for net in hub_addresses {
                value.put_u8(if net.addr().is_ipv4() { 4 } else { 6 });
                put_addr(&mut value, net.addr());
                value.put_u8(net.prefix_len());
            }
            kind::WELCOME
        }
        Capsule::DnsServers(servers) => {
            for addr in servers {
                value.put_u8(if addr.is_ipv4() { 4 } else { 6 });
                put_addr(&mut value, *addr);
            }
            kind::DNS_SERVERS
        }
        Capsule::Error { code, reason } | Capsule::Goodbye { code, reason } => {
            put_varint(&mut value, code.0);
            put_bytes(&mut value, reason.as_bytes());
            if matches!(capsule, Capsule::Error { .. }) {
                kind::ERROR
            } else {
                kind::GOODBYE
            }
        }
    };
    put_varint(out, kind);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(&value);
}

/// Decodes one capsule from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a capsule (read more and call again),
/// `Ok(Some((capsule, consumed)))` when a whole capsule was decoded, and an error when the
/// bytes can never form a valid capsule. An over-long announced length is reported as soon
/// as the header is complete, so a receiver never buffers more than [`MAX_CAPSULE_LEN`].
pub fn decode(buf: &[u8]) -> Result<Option<(Capsule, usize)>, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let Some(kind) = r.varint() else {
        return Ok(None);
    };
    let Some(len) = r.varint() else {
        return Ok(None);
    };
    if len > MAX_CAPSULE_LEN as u64 {
        return Err(DecodeError::TooLong(len));
    }
    let start = r.pos;
    let end = start + len as usize;
    if buf.len() < end {
        // Reject unknown types before their (possibly large) value arrives.
        return match kind_name(kind) {
            Some(_) => Ok(None),
            None => Err(DecodeError::UnknownType(kind)),
        };
    }
    let name = kind_name(kind).ok_or(DecodeError::UnknownType(kind))?;
    let mut v = Reader {
        buf: &buf[start..end],
        pos: 0,
    };
    let malformed = |what| DecodeError::Malformed { kind: name, what };
    let capsule = match kind {
        kind::ADDRESS_ASSIGN => {
            let mut list = Vec::new();
            while !v.done() {
                if list.len() == MAX_ADDRESSES {
                    return Err(malformed("too many addresses"));
                }
                let request_id = v.varint().ok_or(malformed("truncated request id"))?;
                let prefix = v.prefix().map_err(malformed)?;
                list.push(AssignedAddress { request_id, prefix });
            }
            Capsule::AddressAssign(list)
        }
        kind::ADDRESS_REQUEST => {
            let mut list = Vec::new();
            while !v.done() {
                if list.len() == MAX_ADDRESSES {
                    return Err(malformed("too many addresses"));
                }
                let request_id = v.varint().ok_or(malformed("truncated request id"))?;
                if request_id == 0 {
                    return Err(malformed("request id 0"));
                }
                let prefix = v.prefix().map_err(malformed)?;
                list.push(RequestedAddress { request_id, prefix });
            }
            if list.is_empty() {
                return Err(malformed("no requested address"));
            }
            Capsule::AddressRequest(list)
        }
        kind::ROUTE_ADVERTISEMENT => {
            let mut list: Vec<IpRange> = Vec::new();
            while !v.done() {
                if list.len() == MAX_ROUTES {
                    return Err(malformed("too many ranges"));
                }
                let version = v.u8().ok_or(malformed("truncated range"))?;
                let start = v.addr(version).map_err(malformed)?;
                let end = v.addr(version).map_err(malformed)?;
                let protocol = v.u8().ok_or(malformed("truncated range"))?;
                let range =
                    IpRange::new(start, end, protocol).ok_or(malformed("range start after end"))?;
                if let Some(prev) = list.last() {
                    let ordered = match prev.key().cmp(&range.key()) {
                        std::cmp::Ordering::Less => {
                            prev.key().0 != range.key().0
                                || prev.protocol != range.protocol
                                || addr_to_u128(prev.end) < addr_to_u128(range.start)
                        }
                        _ => false,
                    };
                    if !ordered {
                        return Err(malformed("ranges out of order or overlapping"));
                    }
                }
                list.push(range);
            }
            Capsule::RouteAdvertisement(list)
        }
        kind::HELLO => {
            let version = v.varint().ok_or(malformed("truncated version"))?;
            let credential = v
                .bytes(MAX_CREDENTIAL_LEN)
                .map_err(malformed)?
                .to_vec()
                .into();
            v.finish().map_err(malformed)?;
            Capsule::Hello {
                version,
                credential,
            }
        }
        kind::WELCOME => {
            let version = v.varint().ok_or(malformed("truncated version"))?;
            let identity = v.text(MAX_IDENTITY_LEN).map_err(malformed)?;
            let count = v.varint().ok_or(malformed("truncated address count"))?;
            if count > MAX_ADDRESSES as u64 {
                return Err(malformed("too many hub addresses"));
            }
            let mut hub_addresses = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let version = v.u8().ok_or(malformed("truncated address"))?;
                let addr = v.addr(version).map_err(malformed)?;
                let len = v.u8().ok_or(malformed("truncated prefix length"))?;
                let net =
                    ipnet::IpNet::new(addr, len).map_err(|_| malformed("bad prefix length"))?;
                hub_addresses.push(net);
            }
            v.finish().map_err(malformed)?;
            Capsule::Welcome {
                version,
                identity,
                hub_addresses,
            }
        }
        kind::DNS_SERVERS => {
            let mut servers = Vec::new();
            while !v.done() {
                if servers.len() == MAX_ADDRESSES {
                    return Err(malformed("too many servers"));
                }
                let version = v.u8().ok_or(malformed("truncated address"))?;
                servers.push(v.addr(version).map_err(malformed)?);
            }
            Capsule::DnsServers(servers)
        }
        kind::ERROR | kind::GOODBYE => {
            let code = CloseCode(v.varint().ok_or(malformed("truncated code"))?);
            let reason = v.text(MAX_REASON_LEN).map_err(malformed)?;
            v.finish().map_err(malformed)?;
            if kind == kind::ERROR {
                Capsule::Error { code, reason }
            } else {
                Capsule::Goodbye { code, reason }
            }
        }
        _ => unreachable!("kind_name accepted only known types"),
    };
    Ok(Some((capsule, end)))
}

fn kind_name(kind: u64) -> Option<&'static str> {
    Some(match kind {
        kind::ADDRESS_ASSIGN => "ADDRESS_ASSIGN",
        kind::ADDRESS_REQUEST => "ADDRESS_REQUEST",
        kind::ROUTE_ADVERTISEMENT => "ROUTE_ADVERTISEMENT",
        kind::HELLO => "HELLO",
        kind::WELCOME => "WELCOME",
        kind::ERROR => "ERROR",
        kind::GOODBYE => "GOODBYE",
        kind::DNS_SERVERS => "DNS_SERVERS",
        _ => return None,
    })
}

/// Appends a QUIC variable-length integer. Values above 2^62 - 1 are clamped; no field of
/// this protocol can hold one.
pub fn put_varint(out: &mut Vec<u8>, value: u64) {
    let value = value.min((1 << 62) - 1);
    if value < 1 << 6 {
        out.put_u8(value as u8);
    } else if value < 1 << 14 {
        out.put_u16(0x4000 | value as u16);
    } else if value < 1 << 30 {
        out.put_u32(0x8000_0000 | value as u32);
    } else {
        out.put_u64(0xc000_0000_0000_0000 | value);
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_addr(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

fn put_prefix(out: &mut Vec<u8>, prefix: IpPrefix) {
    out.put_u8(if prefix.addr.is_ipv4() { 4 } else { 6 });
    put_addr(out, prefix.addr);
    out.put_u8(prefix.len);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn done(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn finish(&self) -> Result<(), &'static str> {
        if self.done() {
            Ok(())
        } else {
            Err("trailing bytes")
        }
    }

    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn varint(&mut self) -> Option<u64> {
        let first = *self.buf.get(self.pos)?;
        let len = 1usize << (first >> 6);
        let bytes = self.take(len)?;
        let mut value = u64::from(first & 0x3f);
        for b in &bytes[1..] {
            value = (value << 8) | u64::from(*b);
        }
        Some(value)
    }

    fn bytes(&mut self, max: usize) -> Result<&[u8], &'static str> {
        let len = self.varint().ok_or("truncated length")?;
        if len > max as u64 {
            return Err("field too long");
        }
        self.take(len as usize).ok_or("truncated field")
    }

    fn text(&mut self, max: usize) -> Result<String, &'static str> {
        let bytes = self.bytes(max)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| "text is not UTF-8")
    }

    fn addr(&mut self, version: u8) -> Result<IpAddr, &'static str> {
        match version {
            4 => {
                let b: [u8; 4] = self.take(4).ok_or("truncated address")?.try_into().unwrap();
                Ok(IpAddr::V4(Ipv4Addr::from(b)))
            }
            6 => {
                let b: [u8; 16] = self
                    .take(16)
                    .ok_or("truncated address")?
                    .try_into()
                    .unwrap();
                Ok(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => Err("IP version is neither 4 nor 6"),
        }
    }

    fn prefix(&mut self) -> Result<IpPrefix, &'static str> {
        let version = self.u8().ok_or("truncated address")?;
        let addr = self.addr(version)?;
        let len = self.u8().ok_or("truncated prefix length")?;
        IpPrefix::new(addr, len).ok_or("bad prefix length or host bits set")
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(c: &Capsule) {
        let mut buf = Vec::new();
        encode(c, &mut buf);
        let (decoded, used) = decode(&buf).unwrap().unwrap();
        assert_eq!(&decoded, c);
        assert_eq!(used, buf.len());
        // Every strict prefix is incomplete, never an error and never a capsule.
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]), Ok(None), "cut at {cut}");
        }
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn known_capsules_roundtrip() {
        roundtrip(&Capsule::Hello {
            version: 1,
            credential: Bytes::from_static(b"secret"),
        });
        roundtrip(&Capsule::Welcome {
            version: 1,
            identity: "alice".into(),
            hub_addresses: vec![
                "10.0.0.1/24".parse().unwrap(),
                "fd00::1/64".parse().unwrap(),
            ],
        });
        roundtrip(&Capsule::AddressRequest(vec![RequestedAddress {
            request_id: 7,
            prefix: IpPrefix::rejection(false),
        }]));
        roundtrip(&Capsule::AddressAssign(vec![]));
        roundtrip(&Capsule::RouteAdvertisement(normalize_ranges(vec![
            IpRange::from_net("10.0.0.0/24".parse().unwrap()),
            IpRange::from_net("0.0.0.0/0".parse().unwrap()),
            IpRange::from_net("fd00::/64".parse().unwrap()),
        ])));
        roundtrip(&Capsule::Error {
            code: CloseCode::POOL_EXHAUSTED,
            reason: "pool exhausted".into(),
        });
        roundtrip(&Capsule::Goodbye {
            code: CloseCode::SHUTTING_DOWN,
            reason: String::new(),
        });
        roundtrip(&Capsule::DnsServers(vec![
            v4("10.0.0.53"),
            "fd00::53".parse().unwrap(),
        ]));
        roundtrip(&Capsule::DnsServers(vec![]));
    }

    #[test]
    fn wire_format_matches_rfc9484() {
        let mut buf = Vec::new();
        encode(
            &Capsule::AddressAssign(vec![AssignedAddress {
                request_id: 1,
                prefix: IpPrefix::host(v4("10.100.0.2")),
            }]),
            &mut buf,
        );
        assert_eq!(buf, [0x01, 0x07, 0x01, 0x04, 10, 100, 0, 2, 32]);
        buf.clear();
        encode(
            &Capsule::RouteAdvertisement(vec![IpRange::from_net("10.100.0.0/24".parse().unwrap())]),
            &mut buf,
        );
        assert_eq!(
            buf,
            [0x03, 0x0a, 0x04, 10, 100, 0, 0, 10, 100, 0, 255, 0x00]
        );
        // The remaining examples of docs/PROTOCOL.md §8.
        buf.clear();
        encode(
            &Capsule::Hello {
                version: 1,
                credential: Bytes::from_static(b"token-0"),
            },
            &mut buf,
        );
        assert_eq!(buf, b"\x10\x09\x01\x07token-0");
        buf.clear();
        encode(
            &Capsule::Error {
                code: CloseCode::POOL_EXHAUSTED,
                reason: "pool exhausted".into(),
            },
            &mut buf,
        );
        assert_eq!(buf, b"\x12\x10\x04\x0epool exhausted");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode(&[0x3f, 0x00]), Err(DecodeError::UnknownType(0x3f)));
        // Unknown type is refused before its value arrives.
        assert_eq!(decode(&[0x3f, 0x10]), Err(DecodeError::UnknownType(0x3f)));
        assert_eq!(
            decode(&[0x01, 0x80, 0x01, 0x00, 0x01]),
            Err(DecodeError::TooLong(65537))
        );
        // Host bits set under a /24 prefix.
        assert!(decode(&[0x01, 0x07, 0x01, 0x04, 10, 0, 0, 1, 24]).is_err());
        // Overlapping ranges.
        let mut buf = vec![0x03, 20];
        for _ in 0..2 {
            buf.extend_from_slice(&[4, 10, 0, 0, 0, 10, 0, 0, 255, 0]);
        }
        assert!(decode(&buf).is_err());
        // Empty request.
        assert!(decode(&[0x02, 0x00]).is_err());
        // Trailing bytes in HELLO.
        assert!(decode(&[0x10, 0x03, 0x01, 0x00, 0xff]).is_err());
    }

    #[test]
    fn ranges_to_nets() {
        let r = IpRange::new(v4("10.0.0.1"), v4("10.0.0.6"), 0).unwrap();
        let nets: Vec<String> = r.to_nets().iter().map(ToString::to_string).collect();
        assert_eq!(
            nets,
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        let all = IpRange::from_net("0.0.0.0/0".parse().unwrap());
        assert_eq!(all.to_nets(), vec!["0.0.0.0/0".parse().unwrap()]);
        let all6 = IpRange::from_net("::/0".parse().unwrap());
        assert_eq!(all6.to_nets(), vec!["::/0".parse().unwrap()]);
    }

    fn arb_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|v| IpAddr::V4(v.into())),
            any::<u128>().prop_map(|v| IpAddr::V6(v.into())),
        ]
    }

    fn arb_prefix() -> impl Strategy<Value = IpPrefix> {
        (arb_addr(), any::<u8>()).prop_map(|(addr, len)| {
            let len = len % (addr_width(addr) + 1);
            let shift = u32::from(addr_width(addr) - len);
            let value = if shift >= 128 {
                0
            } else {
                addr_to_u128(addr) >> shift << shift
            };
            IpPrefix::new(u128_to_addr(value, addr.is_ipv4()), len).unwrap()
        })
    }

    fn arb_text(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..16)
            .prop_map(move |c| c.into_iter().collect::<String>())
            .prop_filter("fits", move |s| s.len() <= max)
    }

    fn arb_capsule() -> impl Strategy<Value = Capsule> {
        let id = 1u64..(1 << 62);
        prop_oneof![
            proptest::collection::vec(
                (0u64..(1 << 62), arb_prefix())
                    .prop_map(|(request_id, prefix)| AssignedAddress { request_id, prefix }),
                0..8
            )
            .prop_map(Capsule::AddressAssign),
            proptest::collection::vec(
                (id, arb_prefix())
                    .prop_map(|(request_id, prefix)| RequestedAddress { request_id, prefix }),
                1..8
            )
            .prop_map(Capsule::AddressRequest),
            proptest::collection::vec(
                (arb_addr(), arb_addr(), any::<u8>()).prop_filter_map(
                    "same family",
                    |(a, b, p)| {
                        let (lo, hi) = if addr_to_u128(a) <= addr_to_u128(b) {
                            (a, b)
                        } else {
                            (b, a)
                        };
                        IpRange::new(lo, hi, p)
                    }
                ),
                0..8
            )
            .prop_map(|r| Capsule::RouteAdvertisement(normalize_ranges(r))),
            (
                0u64..(1 << 62),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(version, c)| Capsule::Hello {
                    version,
                    credential: c.into()
                }),
            (
                0u64..(1 << 62),
                arb_text(MAX_IDENTITY_LEN),
                proptest::collection::vec(
                    (arb_addr(), any::<u8>()).prop_map(|(a, l)| {
                        ipnet::IpNet::new(a, l % (addr_width(a) + 1)).unwrap()
                    }),
                    0..4
                )
            )
                .prop_map(|(version, identity, hub_addresses)| Capsule::Welcome {
                    version,
                    identity,
                    hub_addresses
                }),
            proptest::collection::vec(arb_addr(), 0..8).prop_map(Capsule::DnsServers),
            (0u64..(1 << 62), arb_text(MAX_REASON_LEN)).prop_map(|(c, reason)| Capsule::Error {
                code: CloseCode(c),
                reason
            }),
            (0u64..(1 << 62), arb_text(MAX_REASON_LEN)).prop_map(|(c, reason)| {
                Capsule::Goodbye {
                    code: CloseCode(c),
                    reason,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn any_capsule_roundtrips(c in arb_capsule()) {
            let mut buf = Vec::new();
            encode(&c, &mut buf);
            let (decoded, used) = decode(&buf).unwrap().unwrap();
            prop_assert_eq!(decoded, c);
            prop_assert_eq!(used, buf.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some((capsule, used))) = decode(&bytes) {
                prop_assert!(used <= bytes.len());
                // Whatever decodes re-encodes to something that decodes the same.
                let mut buf = Vec::new();
                encode(&capsule, &mut buf);
                prop_assert_eq!(decode(&buf).unwrap().unwrap().0, capsule);
            }
        }

        #[test]
        fn normalized_ranges_are_valid(ranges in proptest::collection::vec(
            (arb_addr(), arb_addr(), 0u8..3), 0..16)) {
            let ranges: Vec<IpRange> = ranges.into_iter().filter_map(|(a, b, p)| {
                let (lo, hi) = if addr_to_u128(a) <= addr_to_u128(b) { (a, b) } else { (b, a) };
                IpRange::new(lo, hi, p)
            }).collect();
            let normalized = normalize_ranges(ranges.clone());
            // Every input address is still covered.
            for r in &ranges {
                prop_assert!(normalized.iter().any(|n| n.protocol == r.protocol
                    && n.start.is_ipv4() == r.start.is_ipv4()
                    && addr_to_u128(n.start) <= addr_to_u128(r.start)
                    && addr_to_u128(n.end) >= addr_to_u128(r.end)));
            }
            let mut buf = Vec::new();
            encode(&Capsule::RouteAdvertisement(normalized), &mut buf);
            prop_assert!(decode(&buf).is_ok());
        }
    }
}
