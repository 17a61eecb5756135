//! The messages: requests, the documents answers carry, and the limits both sides keep.
//! docs/PROTOCOL.md §8 is the specification; this module is its Rust form.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks. Version 1 had `status`, `events`, `connect` and
/// `disconnect`; version 2 added `version`, `logs` and, for the spoke service, `profiles`,
/// `import`, `remove` and `connect {profile}`. A version-1 server answers `version` with a
/// refusal, which [`Client::version`](crate::Client::version) reports as version 1.
pub const PROTOCOL_VERSION: u32 = 2;

/// The longest request line a server reads (without its `\n`). A longer one is refused and
/// the connection closed: no valid request comes near it (a spoke file is a few KiB).
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// The longest profile a spoke service imports (the TOML text).
pub const MAX_PROFILE_BYTES: usize = 64 * 1024;

/// The most profiles a spoke service keeps.
pub const MAX_PROFILES: usize = 100;

/// The longest profile name.
pub const MAX_PROFILE_NAME: usize = 64;

/// The longest access token (the wire protocol's credential limit).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The spoke's control socket, for `spoke run` and the spoke service.
#[cfg(not(windows))]
pub const SPOKE_SOCKET: &str = "/run/slopn/spoke.sock";

/// The spoke's control pipe, for `spoke run` and the spoke service.
#[cfg(windows)]
pub const SPOKE_SOCKET: &str = r"\\.\pipe\slopn-spoke";

/// Whether `name` may name a profile: 1 to [`MAX_PROFILE_NAME`] of `A-Za-z0-9._-`, not
/// starting with `.` (so no `/`, no `..`, no hidden file).
pub fn is_profile_name(name: &str) -> bool {
    (1..=MAX_PROFILE_NAME).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The port of a hub address written `host:port` (or `[v6]:port`), if it is one.
pub fn hub_port(hub: &str) -> Option<u16> {
    let (host, port) = hub.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok()?;
    (!host.is_empty() && !host.contains(char::is_whitespace) && port != 0).then_some(port)
}

/// A request from a client: one JSON object with a `command` field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Which protocol version and role the server has.
    Version,
    /// The current status and counters.
    Status,
    /// Subscribe: the server streams every event as it happens until the client hangs up.
    Events,
    /// Subscribe: the server's recent log lines, then new ones as they come.
    Logs,
    /// Spoke service: the stored profiles.
    Profiles,
    /// Spoke service: store a profile, the text of a spoke file as `hub init` or
    /// `hub add-spoke` write it.
    Import {
        /// The profile's name (1-64 of `A-Za-z0-9._-`, not starting with `.`).
        name: String,
        /// The spoke file's content.
        toml: String,
    },
    /// Spoke service: delete a stored profile.
    Remove {
        /// The profile's name.
        name: String,
    },
    /// Spoke: connect (again) now. The spoke service needs the profile to connect with
    /// (default: the one it used last).
    Connect {
        /// Spoke service: which profile.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
    },
    /// Spoke service: turn the kill switch of a stored profile on or off (saved in the
    /// profile; applied at once if the tunnel runs with it). Full-tunnel profiles only.
    SetKillSwitch {
        /// The profile's name.
        profile: String,
        /// On or off.
        on: bool,
    },
    /// Spoke: say goodbye and stay disconnected (the service also removes the TUN device,
    /// routes and DNS). Hub: end session `session`.
    Disconnect {
        /// Hub only: the session to end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
    },
}

impl Request {
    /// The command's name as on the wire, for messages (never the request's content, which
    /// may hold a token or a key).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::Status => "status",
            Self::Events => "events",
            Self::Logs => "logs",
            Self::Profiles => "profiles",
            Self::Import { .. } => "import",
            Self::Remove { .. } => "remove",
            Self::Connect { .. } => "connect",
            Self::SetKillSwitch { .. } => "set_kill_switch",
            Self::Disconnect { .. } => "disconnect",
        }
    }

    /// The request as one line of JSON, without the `\n`.
    pub fn to_line(&self) -> String {
        // A derived Serialize of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What serves a control socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A hub (`hub run`).
    Hub,
    /// A spoke running one configuration file (`spoke run`).
    Spoke,
    /// The spoke service (`spoke service`): profiles, connect and disconnect on request.
    SpokeService,
    /// A server too old to say (protocol version 1), or a role this crate does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl Role {
    /// What the role is, for sentences: "a hub", "a spoke (`spoke run`)", "the spoke service".
    pub fn describe(self) -> &'static str {
        match self {
            Self::Hub => "a hub",
            Self::Spoke => "a spoke (`spoke run`)",
            Self::SpokeService => "the spoke service",
            Self::Unknown => "an unknown program",
        }
    }
}

/// The answer to [`Request::Version`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VersionInfo {
    /// The protocol version ([`PROTOCOL_VERSION`] for this crate's servers).
    pub protocol: u32,
    /// What serves the socket.
    pub role: Role,
    /// The server's software version.
    pub software: String,
}

/// Where a spoke's tunnel stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelState {
    /// Spoke service: no tunnel (no TUN device, no routes).
    #[default]
    Disconnected,
    /// Looking for the hub (QUIC and TLS handshake).
    Connecting,
    /// The handshake is done; waiting for the hub to accept the credential and assign
    /// addresses.
    Authenticating,
    /// Addresses assigned: the tunnel carries packets.
    Established,
    /// The session ended; the spoke will try again (see `retry_in_ms`).
    Reconnecting,
    /// Saying goodbye.
    Closing,
    /// Given up for good; `error` says why.
    Stopped,
    /// A state this crate does not know (a newer server).
    #[serde(other)]
    Unknown,
}

impl TunnelState {
    /// The name used on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disconnected => "disconnected",
            Self::Connecting => "connecting",
            Self::Authenticating => "authenticating",
            Self::Established => "established",
            Self::Reconnecting => "reconnecting",
            Self::Closing => "closing",
            Self::Stopped => "stopped",
            Self::Unknown => "unknown",
        }
    }
}

/// A spoke's status document (the `status` field of the answer to [`Request::Status`]).
/// Every field has a default, so a client reads the documents of older and newer servers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpokeStatus {
    /// Where the tunnel stands.
    pub state: TunnelState,
    /// Spoke service: the profile in use (or last used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Why the tunnel stopped, as a sentence for the user (with `state` `stopped`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The hub as written in the configuration (`host:port`).
    pub hub: String,
    /// The identity the hub knows this spoke by.
    pub identity: Option<String>,
    /// The spoke's tunnel addresses.
    pub addresses: Vec<IpAddr>,
    /// The hub's tunnel addresses.
    pub hub_addresses: Vec<IpAddr>,
    /// Networks routed into the tunnel (CIDR).
    pub routes: Vec<String>,
    /// DNS servers the hub pushed.
    pub dns_servers: Vec<IpAddr>,
    /// Whether the kill switch is on (nothing leaves this host but through the tunnel).
    pub kill_switch: bool,
    /// The TLS key exchange group of the current connection (`X25519MLKEM768`, the
    /// post-quantum hybrid, or `X25519`), once its handshake has settled on one.
    pub key_exchange: Option<String>,
    /// Round-trip time to the hub, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The TUN device's MTU.
    pub tun_mtu: Option<u16>,
    /// Times the current connection took losses for an MTU black hole and fell back to its
    /// smallest packets (path MTU discovery then climbs again).
    pub black_holes: u64,
    /// Seconds since the current session was established.
    pub connected_secs: Option<f64>,
    /// While established: seconds since a packet from the hub last authenticated, once
    /// that is longer than a keep-alive round explains (the hub may be down or the path to
    /// it broken; QUIC's idle timeout then ends the session and the spoke reconnects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub_silent_secs: Option<f64>,
    /// While reconnecting: milliseconds until the next attempt.
    pub retry_in_ms: Option<u64>,
    /// Packets received from the tunnel.
    pub rx_packets: u64,
    /// Bytes received from the tunnel.
    pub rx_bytes: u64,
    /// Packets sent into the tunnel.
    pub tx_packets: u64,
    /// Bytes sent into the tunnel.
    pub tx_bytes: u64,
    /// Bytes per second received, over the last second.
    pub rx_bytes_per_sec: f64,
    /// Bytes per second sent, over the last second.
    pub tx_bytes_per_sec: f64,
    /// Dropped packets by reason.
    pub drops: BTreeMap<String, u64>,
    /// Connection attempts so far.
    pub connect_attempts: u64,
    /// Sessions established so far.
    pub sessions: u64,
    /// New attempts scheduled, by why the previous one ended (non-zero counts only).
    pub reconnects: BTreeMap<String, u64>,
    /// The control socket's own counters.
    pub control: ControlStats,
}

/// The control socket's own counters, added to every status document as `control`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControlStats {
    /// Requests answered (successfully or not).
    pub requests: u64,
    /// Requests refused: not JSON, an unknown command, or refused by the handler.
    pub refused: u64,
    /// Connections closed for a line over [`MAX_REQUEST_BYTES`].
    pub oversized: u64,
    /// Clients turned away because [`MAX_CLIENTS`](crate::MAX_CLIENTS) were connected.
    pub busy: u64,
    /// Subscribers cut off because they stopped reading.
    pub cut_off: u64,
    /// Request connections closed for not completing a request within 60 s.
    pub timed_out: u64,
    /// Clients connected now.
    pub clients: u64,
}

/// A stored profile as the spoke service lists it (never with its secrets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileSummary {
    /// The profile's name.
    pub name: String,
    /// The hub as `host:port`.
    pub hub: String,
    /// The name in the hub's certificate.
    pub server_name: String,
    /// `token` or `certificate`.
    pub auth: String,
    /// Whether a default route the hub pushes takes all traffic (full tunnel).
    pub full_tunnel: bool,
    /// Whether the kill switch is on: nothing leaves but through the tunnel while it is
    /// meant to be up.
    pub kill_switch: bool,
    /// Whether the kill switch stays after the spoke ends, until a disconnect or
    /// `spoke unlock`.
    pub lockdown: bool,
}

/// One line of the server's log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogLine {
    /// When, in RFC 3339 (UTC, milliseconds).
    pub time: String,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The module that logged it.
    pub target: String,
    /// The message with its fields (`key=value`).
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_form() {
        let cases = [
            (Request::Version, r#"{"command":"version"}"#),
            (
                Request::Connect { profile: None },
                r#"{"command":"connect"}"#,
            ),
            (
                Request::Connect {
                    profile: Some("work".into()),
                },
                r#"{"command":"connect","profile":"work"}"#,
            ),
            (
                Request::Import {
                    name: "a".into(),
                    toml: "hub = \"x\"".into(),
                },
                r#"{"command":"import","name":"a","toml":"hub = \"x\""}"#,
            ),
            (
                Request::SetKillSwitch {
                    profile: "office".into(),
                    on: true,
                },
                r#"{"command":"set_kill_switch","profile":"office","on":true}"#,
            ),
            (
                Request::Disconnect { session: Some(3) },
                r#"{"command":"disconnect","session":3}"#,
            ),
        ];
        for (request, line) in cases {
            assert_eq!(request.to_line(), line);
            assert_eq!(serde_json::from_str::<Request>(line).unwrap(), request);
        }
    }

    #[test]
    fn profile_names_and_hub_addresses() {
        for good in ["alice", "work-vpn", "a.b_c", &"n".repeat(64)] {
            assert!(is_profile_name(good), "{good}");
        }
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "../etc",
            "a b",
            "ä",
            &"n".repeat(65),
        ] {
            assert!(!is_profile_name(bad), "{bad}");
        }
        assert_eq!(hub_port("hub.example.com:4433"), Some(4433));
        assert_eq!(hub_port("[2001:db8::1]:443"), Some(443));
        for bad in ["hub", "hub:0", ":4433", "hub:99999", "a b:1"] {
            assert_eq!(hub_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn documents_of_other_versions_still_parse() {
        let newer: SpokeStatus =
            serde_json::from_str(r#"{"state":"hibernating","future_field":1,"rx_bytes":5}"#)
                .unwrap();
        assert_eq!(newer.state, TunnelState::Unknown);
        assert_eq!(newer.rx_bytes, 5);
        let older: SpokeStatus = serde_json::from_str(r#"{"state":"established"}"#).unwrap();
        assert_eq!(older.state, TunnelState::Established);
        let role: VersionInfo = serde_json::from_str(r#"{"protocol":3,"role":"x"}"#).unwrap();
        assert_eq!(role.role, Role::Unknown);
    }
}
