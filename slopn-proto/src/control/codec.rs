//! Encoding and decoding of capsules: bytes in, bytes out, every length bounded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::BufMut;

use super::{
    AssignedAddress, Capsule, CloseCode, DecodeError, IpPrefix, IpRange, LimitError, MAX_ADDRESSES,
    MAX_CAPSULE_LEN, MAX_CREDENTIAL_LEN, MAX_IDENTITY_LEN, MAX_REASON_LEN, MAX_ROUTES,
    RequestedAddress, kind,
};

/// Encodes one capsule, appending to `out`. A capsule some decoder would refuse (see
/// [`Capsule::check`]) is refused here instead, and nothing is appended.
pub fn encode(capsule: &Capsule, out: &mut Vec<u8>) -> Result<(), LimitError> {
    capsule.check()?;
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
    super::limits::check_value_len(value.len())?;
    put_varint(out, kind);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(&value);
    Ok(())
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
                if list.last().is_some_and(|prev| !range.follows(prev)) {
                    return Err(malformed("ranges out of order or overlapping"));
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
