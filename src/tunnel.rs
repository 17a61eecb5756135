//! A spoke's tunnel: its TUN device, UDP socket and event loop, started from a spoke file and
//! watched by a thread that publishes its events, gives up when the first session never
//! comes, and turns how it ended into a sentence. `spoke run` runs one until a signal; the
//! spoke service starts and stops them on request.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use slopn_control::{SpokeStatus as StatusDocument, Topic, TunnelState};
use slopn_driver::{Machine, Options, RoutePolicy, RunError, SpokeCommand, SpokeStatus};
use slopn_proto::control::CloseCode;
use slopn_proto::{DisconnectReason, Spoke, SpokeConfig, SpokeEvent};
use slopn_tun::{Tun, TunConfig};
use tracing::{info, warn};

use crate::config::{DnsSetting, SpokeFile, SpokeRuntime};
use crate::key_exchange::{KeyExchangeSetting, no_common_group, refusal_hint};
use crate::kill_switch::{KillSwitch, kill_switch, remove_kill_switch};
use crate::runtime::Loop;
use crate::status::{self, Rates};

/// What the event stream tells beyond the loop's own snapshot.
#[derive(Debug, Default)]
struct Watch {
    /// When the current session was established.
    established_at: Option<Instant>,
    /// When the next attempt starts, while waiting to reconnect.
    retry_at: Option<Instant>,
    /// How the loop ended: `Ok` for an orderly stop, else the sentence for the user.
    ended: Option<Result<(), String>>,
}

/// The watch, and a signal for when the watcher records how the loop ended.
#[derive(Debug, Default)]
struct Watched {
    watch: Mutex<Watch>,
    ended: Condvar,
}

/// How long a status request waits for the watcher to record why a loop that has just
/// ended ended (it does at once; this only bounds a stuck watcher).
const ENDED_WAIT: Duration = Duration::from_secs(1);

/// A running (or ended) spoke tunnel.
pub struct Tunnel {
    handle: Arc<Loop<Spoke>>,
    rates: Arc<Rates>,
    watch: Arc<Watched>,
    hub: String,
    /// The hub's UDP endpoint, which the kill switch lets through.
    hub_addr: SocketAddr,
    tun_name: String,
    /// How often the spoke pings an idle hub (`keep_alive_secs`): the silence it explains.
    keep_alive: Duration,
    watcher: Mutex<Option<JoinHandle<()>>>,
    /// Removed once the tunnel has ended ([`wait`](Self::wait)), unless locked (lockdown).
    kill_switch: Mutex<Option<KillSwitch>>,
}

/// Where a tunnel's configuration came from, for messages.
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    /// A file given to `spoke run` (relative paths in it start from its directory).
    File(&'a Path),
    /// A profile stored by the spoke service, under this name.
    Profile(&'a str),
}

impl Origin<'_> {
    fn label(&self) -> String {
        match self {
            Origin::File(path) => path.display().to_string(),
            Origin::Profile(name) => format!("profile {name:?}"),
        }
    }
}

/// Whether to use the TUN device's segmentation offload: yes unless the environment says
/// `SLOPN_TUN_OFFLOAD=off` (for comparisons, or to rule offload out when troubleshooting).
pub fn tun_offload() -> bool {
    std::env::var("SLOPN_TUN_OFFLOAD").map_or(true, |v| v != "off")
}

/// Binds a UDP socket, saying what to do when that fails.
pub fn bind(addr: SocketAddr) -> Result<UdpSocket, String> {
    UdpSocket::bind(addr).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                " Another process (another hub?) uses this port: stop it or change `listen`."
            }
            std::io::ErrorKind::PermissionDenied => {
                " Ports below 1024 need root or CAP_NET_BIND_SERVICE."
            }
            std::io::ErrorKind::AddrNotAvailable => " This host has no such address: fix `listen`.",
            _ => "",
        };
        format!("cannot use UDP address {addr}: {e}.{hint}")
    })
}

/// Opens a TUN device, saying what to do when that fails.
pub fn open_tun(config: &TunConfig) -> Result<Tun, String> {
    Tun::open(config).map_err(|e| {
        format!(
            "cannot create the TUN device {}: {e}",
            config.name.as_deref().unwrap_or("")
        )
    })
}

/// Samples byte counters once a second for the rates in `status`, until the loop ends.
pub fn sample_rates<M: Machine>(
    handle: &Arc<Loop<M>>,
    rates: &Arc<Rates>,
    counters: fn(&M::Stats) -> (u64, u64),
) {
    let (handle, rates) = (handle.clone(), rates.clone());
    let _ = std::thread::Builder::new()
        .name("slopn-rates".into())
        .spawn(move || {
            while !handle.is_finished() {
                if let Some(stats) = handle.stats() {
                    let (rx, tx) = counters(&stats);
                    rates.sample(Instant::now(), rx, tx);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
}

/// A spoke file made ready to run: the state machine's configuration (the hub's name
/// resolved), the runtime settings, and how messages name the file.
pub struct Resolved {
    config: SpokeConfig,
    runtime: SpokeRuntime,
    label: String,
}

impl Resolved {
    /// Checks `file` and resolves its hub's name (which may take a while: do it before
    /// taking locks).
    pub fn new(file: &SpokeFile, origin: Origin<'_>) -> Result<Self, String> {
        let label = origin.label();
        let (config, runtime) = match origin {
            Origin::File(path) => file.resolve(path),
            Origin::Profile(_) => file.resolve_profile(&label),
        }
        .map_err(|e| e.to_string())?;
        Ok(Self {
            config,
            runtime,
            label,
        })
    }
}

impl Tunnel {
    /// Creates the TUN device and socket, and starts the loop and its watcher, which
    /// publishes every event to `events`.
    pub fn start(file: &SpokeFile, resolved: Resolved, events: Arc<Topic>) -> Result<Self, String> {
        let Resolved {
            config,
            runtime,
            label,
        } = resolved;
        let hub_addr = config.hub;
        let keep_alive = config
            .transport
            .keep_alive_interval
            .unwrap_or(config.transport.idle_timeout / 2);
        let tun = open_tun(&TunConfig {
            name: Some(runtime.tun_name.clone()),
            mtu: 1280,
            addresses: Vec::new(),
            offload: tun_offload(),
        })?;
        // Before the first packet to the hub: nothing leaves around the tunnel while it
        // connects either.
        let kill_switch = kill_switch(file, &runtime.tun_name, hub_addr)?;
        if file.dns_method == DnsSetting::ResolvConf {
            // A spoke that died left its servers there: the hub may be reachable by name
            // only through the resolver the host had.
            match slopn_tun::restore_resolv_conf() {
                Ok(true) => info!("/etc/resolv.conf put back as a spoke that died left it"),
                Ok(false) => {}
                Err(e) => warn!("{e}"),
            }
        }
        let local: SocketAddr = if hub_addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = bind(local)?;
        let max_udp_payload = config.transport.max_udp_payload();
        let spoke = Spoke::new(config, Instant::now(), SystemTime::now())
            .map_err(|e| format!("{label}: {e}"))?;
        let options = Options {
            routes: RoutePolicy {
                accept_default_route: file.accept_default_route,
                only: file.routes.clone(),
                hub: Some(hub_addr.ip()),
            },
            dns: file.dns_method.into(),
            ..Options::default().with_max_udp_payload(max_udp_payload)
        };
        let handle = Arc::new(Loop::spawn(file.runtime, spoke, tun, socket, options)?);
        info!(
            hub = %runtime.hub, address = %hub_addr, tun = %runtime.tun_name,
            runtime = ?file.runtime, "spoke running"
        );
        let rates = Arc::new(Rates::default());
        sample_rates(&handle, &rates, |s: &SpokeStatus| {
            (s.stats.traffic.rx_bytes, s.stats.traffic.tx_bytes)
        });
        let watch = Arc::new(Watched::default());
        let watcher = Watcher {
            handle: handle.clone(),
            watch: watch.clone(),
            events,
            hub: runtime.hub.clone(),
            hub_addr,
            label,
            connect_timeout: runtime.connect_timeout,
            key_exchange: file.key_exchange,
        };
        let watcher = std::thread::Builder::new()
            .name("slopn-tunnel".into())
            .spawn(move || watcher.run())
            .map_err(|e| {
                handle.stop();
                format!("cannot start the tunnel's watcher thread: {e}")
            })?;
        Ok(Self {
            handle,
            rates,
            watch,
            hub: runtime.hub,
            hub_addr,
            tun_name: runtime.tun_name,
            keep_alive,
            watcher: Mutex::new(Some(watcher)),
            kill_switch: Mutex::new(kill_switch),
        })
    }

    fn watch(&self) -> MutexGuard<'_, Watch> {
        self.watch.watch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How the loop ended, waiting briefly for the watcher to record it.
    fn wait_ended(&self) -> Option<Result<(), String>> {
        let watch = self.watch();
        let (watch, _) = self
            .watch
            .ended
            .wait_timeout_while(watch, ENDED_WAIT, |w| w.ended.is_none())
            .unwrap_or_else(|e| e.into_inner());
        watch.ended.clone()
    }

    /// The status document.
    pub fn status(&self) -> StatusDocument {
        let ended = self.watch().ended.clone();
        // A finished loop answers no more questions.
        let snapshot = match ended {
            None if !self.handle.is_finished() => self.handle.stats(),
            _ => None,
        };
        let Some(snapshot) = snapshot else {
            // The loop has ended; its watcher says why a moment later.
            let ended = ended.or_else(|| self.wait_ended());
            return StatusDocument {
                state: TunnelState::Stopped,
                hub: self.hub.clone(),
                error: ended.and_then(Result::err),
                ..StatusDocument::default()
            };
        };
        // Silence a live hub explains: a keep-alive, its answer a round trip later, and
        // room for a lost one to be sent again (at least 1 s, four round trips on long paths).
        let silence_allowed = self.keep_alive
            + snapshot
                .stats
                .rtt
                .map_or(Duration::ZERO, |rtt| rtt * 4)
                .max(Duration::from_secs(1));
        let last_heard = snapshot.stats.last_heard;
        let mut doc = status::spoke_status(&snapshot, &self.hub, &self.rates);
        doc.kill_switch = self.kill_switch().is_some();
        let watch = self.watch();
        let now = Instant::now();
        if doc.state == TunnelState::Established {
            doc.connected_secs = watch
                .established_at
                .map(|t| now.duration_since(t).as_secs_f64());
            doc.hub_silent_secs = last_heard
                .map(|t| now.saturating_duration_since(t))
                .filter(|silence| *silence > silence_allowed)
                .map(|silence| silence.as_secs_f64());
        }
        if doc.state == TunnelState::Reconnecting {
            doc.retry_in_ms = watch
                .retry_at
                .map(|t| t.saturating_duration_since(now).as_millis() as u64);
        }
        doc
    }

    fn kill_switch(&self) -> MutexGuard<'_, Option<KillSwitch>> {
        self.kill_switch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns the kill switch on or off as `file` (the profile, changed) now says, while
    /// the tunnel runs.
    pub fn set_kill_switch(&self, file: &SpokeFile) -> Result<(), String> {
        let mut current = self.kill_switch();
        if file.kill_switch {
            // Installing replaces the table in one step: nothing gets out in between.
            *current = kill_switch(file, &self.tun_name, self.hub_addr)?;
            return Ok(());
        }
        if current.take().is_some() {
            remove_kill_switch(&self.tun_name)?;
            info!(tun = %self.tun_name, "kill switch off: traffic leaves normally again");
        }
        Ok(())
    }

    /// Sends the machine a command.
    pub fn command(&self, command: SpokeCommand) {
        self.handle.command(command);
    }

    /// How the tunnel ended, once it has: `Ok` for an orderly stop, else why.
    pub fn ended(&self) -> Option<Result<(), String>> {
        self.watch().ended.clone()
    }

    /// Asks the loop to say goodbye and end (the TUN device and routes go with it).
    pub fn stop(&self) {
        self.handle.stop();
    }

    /// Waits until the loop and its watcher have ended, then removes the kill switch
    /// (unless locked); how it ended.
    pub fn wait(&self) -> Result<(), String> {
        let watcher = self.watcher.lock().ok().and_then(|mut w| w.take());
        if let Some(watcher) = watcher {
            let _ = watcher.join();
        }
        // Taken out and dropped here: removed unless locked.
        self.kill_switch().take();
        self.watch().ended.clone().unwrap_or(Ok(()))
    }
}

/// The thread that follows a tunnel's events.
struct Watcher {
    handle: Arc<Loop<Spoke>>,
    watch: Arc<Watched>,
    events: Arc<Topic>,
    hub: String,
    hub_addr: SocketAddr,
    label: String,
    connect_timeout: Duration,
    key_exchange: KeyExchangeSetting,
}

impl Watcher {
    fn run(self) {
        let started = Instant::now();
        let mut established_once = false;
        let mut last_reason: Option<DisconnectReason> = None;
        let mut failure: Option<String> = None;
        loop {
            match self.handle.next_event(Duration::from_millis(200)) {
                Ok(event) => {
                    self.note(&event);
                    match &event {
                        SpokeEvent::Assigned { addresses, .. } if !established_once => {
                            established_once = true;
                            info!(?addresses, "connected to the hub");
                        }
                        SpokeEvent::Disconnected { reason, .. } => {
                            last_reason = Some(reason.clone());
                        }
                        _ => {}
                    }
                    self.events.publish(status::spoke_event(&event).to_string());
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !established_once
                        && failure.is_none()
                        && started.elapsed() > self.connect_timeout
                    {
                        let sentence = unreachable(
                            &self.hub,
                            self.hub_addr,
                            self.connect_timeout,
                            last_reason.as_ref(),
                        );
                        warn!("giving up: {sentence}");
                        failure = Some(sentence);
                        self.handle.stop();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let ended = match self.handle.join() {
            Err(RunError::GaveUp(reason)) => Err(refused(&reason, &self.label, self.key_exchange)),
            Err(e) => Err(e.to_string()),
            Ok(()) => failure.map_or(Ok(()), Err),
        };
        if let Err(sentence) = &ended {
            warn!("the tunnel stopped: {sentence}");
        }
        self.events
            .publish(json!({ "event": "stopped", "error": ended.as_ref().err() }).to_string());
        if let Ok(mut watch) = self.watch.watch.lock() {
            watch.ended = Some(ended);
        }
        self.watch.ended.notify_all();
    }

    /// Keeps what the status document needs from the event.
    fn note(&self, event: &SpokeEvent) {
        let Ok(mut watch) = self.watch.watch.lock() else {
            return;
        };
        let now = Instant::now();
        match event {
            SpokeEvent::Assigned { .. } if watch.established_at.is_none() => {
                watch.established_at = Some(now);
            }
            SpokeEvent::Connecting { .. } => watch.retry_at = None,
            SpokeEvent::Disconnected { retry_in, .. } => {
                watch.established_at = None;
                watch.retry_at = retry_in.map(|d| now + d);
            }
            _ => {}
        }
    }
}

/// Why the first session never came.
fn unreachable(
    hub: &str,
    addr: SocketAddr,
    waited: Duration,
    last: Option<&DisconnectReason>,
) -> String {
    // The resolved address only where the configuration names the hub otherwise.
    let hub = if hub == addr.to_string() {
        hub.to_owned()
    } else {
        format!("{hub} ({addr})")
    };
    let why = match last {
        Some(DisconnectReason::Local { reason, .. }) => reason.clone(),
        // The hub answered with QUIC's CONNECTION_REFUSED (quinn describes it so): it turns
        // an address away for a minute after repeated failed logins, or is full. The network
        // is fine.
        Some(DisconnectReason::Transport {
            error,
            by_peer: true,
            ..
        }) if error.contains("refused to accept a new connection") => {
            return format!(
                "the hub at {hub} answered but refused the connection: it turns an address \
                 away for a minute after repeated failed logins from it, while many \
                 connections from it are being set up at once, and while it has no room for \
                 more spokes. Wait a minute and try again; if it goes on, ask the hub \
                 operator."
            );
        }
        Some(other) => other.to_string(),
        None => "no answer".into(),
    };
    format!(
        "could not reach the hub at {hub} within {} s: {why}. Check the address and \
         port, that the hub is running, and that UDP port {} is not blocked by a firewall.",
        waited.as_secs(),
        addr.port()
    )
}

/// Why the hub refused this spoke for good; `label` names the configuration to fix, which
/// is set to `key_exchange`.
fn refused(reason: &DisconnectReason, label: &str, key_exchange: KeyExchangeSetting) -> String {
    if let DisconnectReason::Transport {
        error, tls: true, ..
    } = reason
        && let Some(sentence) = no_common_group(error, key_exchange)
    {
        return sentence;
    }
    match reason {
        DisconnectReason::Remote { code, reason } => match *code {
            CloseCode::AUTH_FAILED => format!(
                "the hub refused this spoke: authentication failed. Check `token` in {label}, \
                 or ask the hub operator for a new spoke configuration (`hub add-spoke`)."
            ),
            CloseCode::UNSUPPORTED_VERSION => format!(
                "the hub speaks another protocol version ({reason}): upgrade the older side."
            ),
            CloseCode::REPLACED => "another spoke connected with the same identity and took \
                over: every spoke needs its own configuration (`hub add-spoke`)."
                .into(),
            CloseCode::REVOKED => "the hub operator revoked this spoke's access.".into(),
            _ => format!("the hub ended the session: {code}: {reason}"),
        },
        DisconnectReason::Transport {
            error,
            tls: true,
            by_peer: true,
        } => format!(
            "the hub refused the TLS handshake: {error}. If this spoke authenticates with a \
             certificate, check that `certificate_pem` in {label} was issued by the hub's CA \
             and is still valid (`hub add-spoke --auth certificate` issues a new one).{}",
            refusal_hint(key_exchange)
        ),
        DisconnectReason::Transport {
            error, tls: true, ..
        } => format!(
            "the TLS handshake with the hub failed: {error}. Check that `ca` (or `ca_pem`) in \
             {label} is the CA that signed the hub's certificate, and that `server_name` is a \
             name in that certificate.{}",
            refusal_hint(key_exchange)
        ),
        other => format!("the session with the hub ended: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_hub_is_named_once_or_with_the_address_it_resolved_to() {
        let addr: SocketAddr = "192.0.2.1:4433".parse().unwrap();
        let wait = Duration::from_secs(15);
        let by_address = unreachable("192.0.2.1:4433", addr, wait, None);
        assert!(
            by_address
                .starts_with("could not reach the hub at 192.0.2.1:4433 within 15 s: no answer."),
            "{by_address}"
        );
        let by_name = unreachable("hub.example:4433", addr, wait, None);
        assert!(
            by_name.contains("at hub.example:4433 (192.0.2.1:4433) within 15 s"),
            "{by_name}"
        );
        // A hub that answers with a refusal is not a network problem.
        let refused = DisconnectReason::Transport {
            error: "the server refused to accept a new connection".into(),
            tls: false,
            by_peer: true,
        };
        let locked_out = unreachable("192.0.2.1:4433", addr, wait, Some(&refused));
        assert!(
            locked_out.starts_with("the hub at 192.0.2.1:4433 answered but refused")
                && locked_out.contains("Wait a minute")
                && !locked_out.contains("firewall"),
            "{locked_out}"
        );
    }
}
