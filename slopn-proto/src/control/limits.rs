//! The limits every decoder enforces, checked before anything is encoded.
//!
//! A capsule the peer's decoder would refuse closes the session with PROTOCOL_ERROR, and the
//! spoke reconnects into the same refusal: a hub configured with 65 DNS servers would keep
//! every spoke in a reconnect loop. So the encoder refuses what the decoder refuses, and the
//! hub checks its configuration against the same limits where it enters.

use std::net::IpAddr;

use thiserror::Error;

use super::{
    Capsule, IpRange, MAX_ADDRESSES, MAX_CAPSULE_LEN, MAX_CREDENTIAL_LEN, MAX_IDENTITY_LEN,
    MAX_REASON_LEN, MAX_ROUTES,
};

/// Largest value a QUIC variable-length integer holds.
const MAX_VARINT: u64 = (1 << 62) - 1;

/// A value the control protocol cannot carry: what it is and the limit it breaks.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LimitError {
    /// A list is longer than the protocol allows.
    #[error("{count} {what} are more than the protocol carries ({max} at most)")]
    TooMany {
        /// What the list holds.
        what: &'static str,
        /// How many there are.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A text or byte string is longer than the protocol allows.
    #[error("the {what} is {len} bytes long; the protocol carries {max} at most")]
    TooLong {
        /// What it is.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value breaks another rule of the encoding.
    #[error("{0}")]
    Invalid(&'static str),
}

/// Checks a list of DNS servers for a DNS_SERVERS capsule.
pub fn check_dns_servers(servers: &[IpAddr]) -> Result<(), LimitError> {
    count("DNS servers", servers.len(), MAX_ADDRESSES)
}

/// Checks normalized ranges for a ROUTE_ADVERTISEMENT.
pub fn check_ranges(ranges: &[IpRange]) -> Result<(), LimitError> {
    count("advertised route ranges", ranges.len(), MAX_ROUTES)?;
    if ranges.windows(2).any(|w| !w[1].follows(&w[0])) {
        return Err(LimitError::Invalid(
            "advertised ranges must be sorted and must not overlap (see normalize_ranges)",
        ));
    }
    Ok(())
}

/// Checks the reason text of an ERROR or GOODBYE.
pub fn check_reason(reason: &str) -> Result<(), LimitError> {
    length("close reason", reason.len(), MAX_REASON_LEN)
}

impl Capsule {
    /// Checks that every decoder would accept this capsule: list lengths, text lengths,
    /// range order, request identifiers and integer sizes.
    pub fn check(&self) -> Result<(), LimitError> {
        match self {
            Capsule::AddressAssign(list) => {
                count("assigned addresses", list.len(), MAX_ADDRESSES)?;
                list.iter().try_for_each(|a| varint(a.request_id))
            }
            Capsule::AddressRequest(list) => {
                if list.is_empty() {
                    return Err(LimitError::Invalid(
                        "an address request must ask for something",
                    ));
                }
                count("requested addresses", list.len(), MAX_ADDRESSES)?;
                list.iter().try_for_each(|r| {
                    if r.request_id == 0 {
                        return Err(LimitError::Invalid("request id 0 is reserved"));
                    }
                    varint(r.request_id)
                })
            }
            Capsule::RouteAdvertisement(ranges) => check_ranges(ranges),
            Capsule::Hello {
                version,
                credential,
            } => {
                varint(*version)?;
                length("credential", credential.len(), MAX_CREDENTIAL_LEN)
            }
            Capsule::Welcome {
                version,
                identity,
                hub_addresses,
            } => {
                varint(*version)?;
                length("identity", identity.len(), MAX_IDENTITY_LEN)?;
                count("hub addresses", hub_addresses.len(), MAX_ADDRESSES)
            }
            Capsule::DnsServers(servers) => check_dns_servers(servers),
            Capsule::Error { code, reason } | Capsule::Goodbye { code, reason } => {
                varint(code.0)?;
                check_reason(reason)
            }
        }
    }
}

/// Checks the encoded value length (the lists above bound it; this is the last guard).
pub(super) fn check_value_len(len: usize) -> Result<(), LimitError> {
    length("capsule", len, MAX_CAPSULE_LEN)
}

fn count(what: &'static str, count: usize, max: usize) -> Result<(), LimitError> {
    if count > max {
        return Err(LimitError::TooMany { what, count, max });
    }
    Ok(())
}

fn length(what: &'static str, len: usize, max: usize) -> Result<(), LimitError> {
    if len > max {
        return Err(LimitError::TooLong { what, len, max });
    }
    Ok(())
}

fn varint(value: u64) -> Result<(), LimitError> {
    if value > MAX_VARINT {
        return Err(LimitError::Invalid(
            "an integer does not fit a QUIC varint (2^62)",
        ));
    }
    Ok(())
}
