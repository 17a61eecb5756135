//! What hub and spoke share about a session: its identifier and why it ended.

use std::fmt;

use quinn_proto::ConnectionError;

use crate::control::CloseCode;

/// Identifies one session (one QUIC connection) at the hub. Never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// This side ended it, with this code and reason.
    Local {
        /// The close code sent.
        code: CloseCode,
        /// The reason sent.
        reason: String,
    },
    /// The peer ended it (GOODBYE, ERROR or an application CONNECTION_CLOSE).
    Remote {
        /// The peer's close code.
        code: CloseCode,
        /// The peer's reason.
        reason: String,
    },
    /// Nothing was heard from the peer for the idle timeout.
    TimedOut,
    /// The peer answered with a stateless reset: it restarted and lost the connection.
    Reset,
    /// A QUIC or TLS failure.
    Transport {
        /// What failed.
        error: String,
        /// Whether it was a TLS failure (certificate, ALPN): retrying will not help.
        tls: bool,
        /// Whether the peer reported it (it refused us) rather than this side (we refused
        /// the peer).
        by_peer: bool,
    },
}

impl DisconnectReason {
    pub(crate) fn from_quinn(error: &ConnectionError) -> Self {
        match error {
            ConnectionError::ApplicationClosed(close) => Self::Remote {
                code: CloseCode(close.error_code.into_inner()),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            ConnectionError::TimedOut => Self::TimedOut,
            ConnectionError::Reset => Self::Reset,
            ConnectionError::ConnectionClosed(close) => Self::Transport {
                error: close.to_string(),
                tls: is_tls(u64::from(close.error_code)),
                by_peer: true,
            },
            ConnectionError::TransportError(e) => Self::Transport {
                error: e.to_string(),
                tls: is_tls(u64::from(e.code)),
                by_peer: false,
            },
            ConnectionError::VersionMismatch => Self::Transport {
                error: "no common QUIC version".into(),
                tls: true,
                by_peer: true,
            },
            other => Self::Transport {
                error: other.to_string(),
                tls: false,
                by_peer: false,
            },
        }
    }
}

/// QUIC carries TLS alerts as transport error codes 0x100 to 0x1ff (RFC 9001 §4.8).
fn is_tls(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local { code, reason } => write!(f, "closed locally: {code}: {reason}"),
            Self::Remote { code, reason } => write!(f, "closed by peer: {code}: {reason}"),
            Self::TimedOut => f.write_str("timed out"),
            Self::Reset => f.write_str("reset by peer (it restarted)"),
            Self::Transport { error, .. } => write!(f, "transport failure: {error}"),
        }
    }
}
