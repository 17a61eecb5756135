//! What the window shows, derived from the service's status document and from whether the
//! service can be reached at all. Pure: the tests feed it documents and read sentences.

use serde::Serialize;
use slopn_control::{ClientError, ProfileSummary, SpokeStatus, TunnelState, VersionInfo};

/// Seconds of traffic history the chart shows.
pub const HISTORY_SECS: usize = 60;

/// Whether the GUI can use the service, and if not, why (as a sentence with the fix).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "message")]
pub enum ServiceAccess {
    /// Talking to the service.
    #[default]
    Ok,
    /// Not reached yet (the first attempt is under way).
    Unknown,
    /// A problem, in words, with what to do.
    Problem(String),
}

/// What to run about the service, in this system's words.
#[cfg(not(windows))]
mod fix {
    /// Starts the service.
    pub const START: &str = "sudo systemctl start slopn-spoke";
    /// Restarts the service.
    pub const RESTART: &str = "sudo systemctl restart slopn-spoke";
    /// Why this user may not use the service, and how they may.
    pub const FORBIDDEN: &str = "belongs to the group slopn). Add yourself to that group \
                                 with: sudo usermod -aG slopn $USER, then log out and back in.";
    /// Where an old service is updated.
    pub const UPDATE: &str = "Update the slopn package";
}

/// What to run about the service, in this system's words.
#[cfg(windows)]
mod fix {
    /// Starts the service.
    pub const START: &str = "sc start SloPN (in a prompt run as administrator), or install \
                             it there: spoke service install";
    /// Restarts the service.
    pub const RESTART: &str = "sc stop SloPN, then sc start SloPN (in a prompt run as \
                               administrator)";
    /// Why this user may not use the service, and how they may.
    pub const FORBIDDEN: &str = "allows SYSTEM, the Administrators and the user who \
                                 installed the service). Reinstall it from your own \
                                 prompt run as administrator: spoke service uninstall, then \
                                 spoke service install.";
    /// Where an old service is updated.
    pub const UPDATE: &str = "Install the new SloPN";
}

impl ServiceAccess {
    /// The sentence for a failure to talk to the service at `socket`.
    pub fn from_error(error: &ClientError) -> Self {
        Self::Problem(match error {
            ClientError::NotRunning(path) => format!(
                "The SloPN service is not running (nothing answers on {}). Start it with: {}",
                path.display(),
                fix::START
            ),
            ClientError::Forbidden(path) => format!(
                "You may not use the SloPN service ({} {}",
                path.display(),
                fix::FORBIDDEN
            ),
            other => format!(
                "Cannot talk to the SloPN service: {other}. Restart it with: {}",
                fix::RESTART
            ),
        })
    }

    /// `Ok`, or the problem with a service of this version.
    pub fn from_version(version: &VersionInfo) -> Self {
        use slopn_control::Role;
        if version.protocol < 2 {
            return Self::Problem(format!(
                "The SloPN service is older than this app and cannot manage profiles. {}, \
                 then restart the service: {}",
                fix::UPDATE,
                fix::RESTART
            ));
        }
        match version.role {
            Role::SpokeService => Self::Ok,
            Role::Spoke => Self::Problem(format!(
                "A spoke started with `spoke run` holds the control socket; the app needs the \
                 SloPN service instead. Stop that spoke, then: {}",
                fix::START
            )),
            _ => Self::Problem(format!(
                "Something other than the SloPN spoke service answers on the control socket. \
                 Check the socket path, then: {}",
                fix::RESTART
            )),
        }
    }
}

/// The state as the window presents it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No tunnel.
    #[default]
    Disconnected,
    /// The first session of this tunnel is being set up.
    Connecting,
    /// The tunnel carries packets.
    Connected,
    /// It was connected and is finding the hub again.
    Reconnecting,
    /// Saying goodbye.
    Disconnecting,
    /// It gave up; the headline's detail says why.
    Stopped,
    /// The service cannot be used; see [`View::service`].
    Unavailable,
}

impl Phase {
    /// From a status document. A tunnel that has had a session and is not established is
    /// reconnecting, whatever step of the attempt it is in.
    pub fn of(status: &SpokeStatus) -> Self {
        match status.state {
            TunnelState::Disconnected => Self::Disconnected,
            TunnelState::Established => Self::Connected,
            TunnelState::Closing => Self::Disconnecting,
            TunnelState::Stopped if status.error.is_some() => Self::Stopped,
            TunnelState::Stopped => Self::Disconnected,
            TunnelState::Connecting | TunnelState::Authenticating | TunnelState::Reconnecting
                if status.sessions > 0 =>
            {
                Self::Reconnecting
            }
            TunnelState::Connecting | TunnelState::Authenticating | TunnelState::Reconnecting => {
                Self::Connecting
            }
            TunnelState::Unknown => Self::Unavailable,
        }
    }

    /// Whether a tunnel exists or is being made (the toggle then reads "Disconnect").
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Self::Connecting | Self::Connected | Self::Reconnecting | Self::Disconnecting
        )
    }

    /// The tray and status colour: `grey`, `amber`, `green` or `red`.
    pub fn tone(self) -> &'static str {
        match self {
            Self::Disconnected | Self::Disconnecting => "grey",
            Self::Connecting | Self::Reconnecting => "amber",
            Self::Connected => "green",
            Self::Stopped | Self::Unavailable => "red",
        }
    }
}

/// Everything the window and the tray show, sent to the frontend as one document.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct View {
    /// Whether the service can be used.
    pub service: ServiceAccess,
    /// The state.
    pub phase: Phase,
    /// `grey`, `amber`, `green` or `red`.
    pub tone: &'static str,
    /// One line: "Connected", "Reconnecting…", "Stopped"...
    pub headline: String,
    /// A sentence under the headline: why it stopped, what is happening.
    pub detail: Option<String>,
    /// The profile in use or last used.
    pub profile: Option<String>,
    /// The stored profiles.
    pub profiles: Vec<ProfileSummary>,
    /// The tunnel addresses, comma-separated.
    pub address: Option<String>,
    /// The hub (`host:port`).
    pub hub: Option<String>,
    /// Round-trip time in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The tunnel MTU.
    pub mtu: Option<u16>,
    /// Whether the kill switch is on now (nothing leaves but through the tunnel).
    pub kill_switch: bool,
    /// The TLS key exchange group of the session (`X25519MLKEM768`: post-quantum).
    pub key_exchange: Option<String>,
    /// Seconds connected.
    pub connected_secs: Option<f64>,
    /// Milliseconds until the next attempt, while reconnecting.
    pub retry_in_ms: Option<u64>,
    /// Connection attempts of this tunnel.
    pub attempts: u64,
    /// Download now, bytes per second.
    pub rx_rate: f64,
    /// Upload now, bytes per second.
    pub tx_rate: f64,
    /// Bytes received through the tunnel.
    pub rx_total: u64,
    /// Bytes sent through the tunnel.
    pub tx_total: u64,
    /// The last minute of (download, upload) rates, one sample a second, oldest first.
    pub history: Vec<(f64, f64)>,
}

impl View {
    /// The view of a service that cannot be used.
    /// (The sentence is in `service`; the window shows it once, in its banner.)
    pub fn unavailable(service: ServiceAccess) -> Self {
        let headline = match service {
            ServiceAccess::Unknown => "Looking for the service…",
            _ => "Service unavailable",
        };
        Self {
            service,
            phase: Phase::Unavailable,
            tone: Phase::Unavailable.tone(),
            headline: headline.into(),
            ..Self::default()
        }
    }

    /// The view of a status document and the profiles.
    pub fn from_status(status: &SpokeStatus, profiles: Vec<ProfileSummary>) -> Self {
        let phase = Phase::of(status);
        let (headline, detail) = match phase {
            Phase::Disconnected => ("Disconnected".to_owned(), None),
            Phase::Connecting => (
                "Connecting…".to_owned(),
                Some(format!("Reaching the hub at {}.", status.hub)),
            ),
            Phase::Connected => (
                "Connected".to_owned(),
                status.hub_silent_secs.map(|secs| {
                    format!(
                        "Nothing heard from the hub for {secs:.0} s: it may be down or the \
                         network in between broken. The tunnel reconnects by itself if this \
                         lasts."
                    )
                }),
            ),
            Phase::Reconnecting => (
                "Reconnecting…".to_owned(),
                Some(match status.retry_in_ms {
                    Some(ms) => format!(
                        "The connection to the hub was lost. Next attempt in {:.1} s \
                         (attempt {}).",
                        ms as f64 / 1000.0,
                        status.connect_attempts + 1
                    ),
                    None => format!(
                        "The connection to the hub was lost. Trying again (attempt {}).",
                        status.connect_attempts
                    ),
                }),
            ),
            Phase::Disconnecting => ("Disconnecting…".to_owned(), None),
            Phase::Stopped => ("Stopped".to_owned(), status.error.as_deref().map(sentence)),
            Phase::Unavailable => (
                "Unknown state".to_owned(),
                Some("The service reports a state this app does not know: update the app.".into()),
            ),
        };
        let connected = phase == Phase::Connected;
        // A hub gone silent turns the card amber before the tunnel gives up on it.
        let silent = connected && status.hub_silent_secs.is_some();
        Self {
            service: ServiceAccess::Ok,
            phase,
            tone: if silent { "amber" } else { phase.tone() },
            headline,
            detail,
            profile: status.profile.clone(),
            profiles,
            address: (!status.addresses.is_empty()).then(|| {
                status
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
            hub: (!status.hub.is_empty()).then(|| status.hub.clone()),
            rtt_ms: status.rtt_ms.filter(|_| connected),
            mtu: status.tun_mtu,
            kill_switch: status.kill_switch,
            key_exchange: status.key_exchange.clone(),
            connected_secs: status.connected_secs,
            retry_in_ms: status.retry_in_ms,
            attempts: status.connect_attempts,
            rx_rate: status.rx_bytes_per_sec,
            tx_rate: status.tx_bytes_per_sec,
            rx_total: status.rx_bytes,
            tx_total: status.tx_bytes,
            history: Vec::new(),
        }
    }
}

/// The service's sentence with a capital first letter, as the window shows it.
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn status(state: TunnelState, sessions: u64) -> SpokeStatus {
        SpokeStatus {
            state,
            sessions,
            hub: "hub.example.com:4433".into(),
            ..SpokeStatus::default()
        }
    }

    #[test]
    fn phases_follow_the_service_and_its_history() {
        use TunnelState as T;
        assert_eq!(Phase::of(&status(T::Connecting, 0)), Phase::Connecting);
        assert_eq!(Phase::of(&status(T::Authenticating, 0)), Phase::Connecting);
        assert_eq!(Phase::of(&status(T::Connecting, 1)), Phase::Reconnecting);
        assert_eq!(Phase::of(&status(T::Reconnecting, 3)), Phase::Reconnecting);
        assert_eq!(Phase::of(&status(T::Established, 1)), Phase::Connected);
        assert_eq!(Phase::of(&status(T::Stopped, 1)), Phase::Disconnected);
        let mut refused = status(T::Stopped, 0);
        refused.error = Some("the hub refused this spoke: authentication failed.".into());
        let view = View::from_status(&refused, Vec::new());
        assert_eq!(view.phase, Phase::Stopped);
        assert_eq!(view.tone, "red");
        assert_eq!(
            view.detail.as_deref(),
            Some("The hub refused this spoke: authentication failed.")
        );
    }

    #[test]
    fn reconnecting_counts_down() {
        let mut s = status(TunnelState::Reconnecting, 1);
        s.retry_in_ms = Some(400);
        s.connect_attempts = 6;
        let view = View::from_status(&s, Vec::new());
        assert_eq!(view.headline, "Reconnecting…");
        assert_eq!(
            view.detail.as_deref(),
            Some("The connection to the hub was lost. Next attempt in 0.4 s (attempt 7).")
        );
        assert_eq!(view.tone, "amber");
    }

    #[test]
    fn a_silent_hub_shows_before_the_tunnel_gives_up() {
        let mut s = status(TunnelState::Established, 1);
        let view = View::from_status(&s, Vec::new());
        assert_eq!((view.tone, view.detail), ("green", None));
        s.hub_silent_secs = Some(4.4);
        let view = View::from_status(&s, Vec::new());
        assert_eq!((view.headline.as_str(), view.tone), ("Connected", "amber"));
        assert_eq!(
            view.detail.as_deref(),
            Some(
                "Nothing heard from the hub for 4 s: it may be down or the network in between \
                 broken. The tunnel reconnects by itself if this lasts."
            )
        );
    }

    #[test]
    fn service_problems_say_what_to_do() {
        let down = ServiceAccess::from_error(&ClientError::NotRunning(PathBuf::from("/s")));
        let ServiceAccess::Problem(sentence) = down else {
            panic!()
        };
        assert!(sentence.contains(fix::START), "{sentence}");
        #[cfg(not(windows))]
        assert!(
            sentence.contains("sudo systemctl start slopn-spoke"),
            "{sentence}"
        );
        let forbidden = ServiceAccess::from_error(&ClientError::Forbidden(PathBuf::from("/s")));
        let ServiceAccess::Problem(sentence) = forbidden else {
            panic!()
        };
        assert!(sentence.contains(fix::FORBIDDEN), "{sentence}");
        #[cfg(not(windows))]
        assert!(sentence.contains("usermod -aG slopn $USER"), "{sentence}");
        let old = ServiceAccess::from_version(&VersionInfo {
            protocol: 1,
            ..VersionInfo::default()
        });
        assert!(matches!(old, ServiceAccess::Problem(s) if s.contains("older than this app")));
        let view = View::unavailable(ServiceAccess::from_error(&ClientError::NotRunning(
            PathBuf::from("/s"),
        )));
        assert_eq!((view.phase, view.tone), (Phase::Unavailable, "red"));
    }
}
