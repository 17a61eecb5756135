//! Running a hub or a spoke: configuration in, TUN device and socket up, the event loop
//! started, control socket served, signals handled, and a clear sentence out when something
//! goes wrong.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use slopn_mio::{Handle, HubCommand, Machine, Options, RoutePolicy, RunError, SpokeCommand, spawn};
use slopn_proto::control::CloseCode;
use slopn_proto::{DisconnectReason, Hub, SessionId, Spoke, SpokeEvent};
use slopn_tun::{Gateway, Tun, TunConfig, default_uplink};
use tracing::{info, warn};

use crate::config::{self, HubFile, SpokeFile};
use crate::control::{ControlServer, Request, Service};
use crate::status::{self, Rates};

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Stops the loop on SIGINT or SIGTERM (with goodbyes; the TUN device and routes go away as
/// the loop ends) and calls `on_hangup` on SIGHUP.
fn handle_signals<M: Machine>(
    handle: &Arc<Handle<M>>,
    on_hangup: impl Fn() + Send + 'static,
) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let handle = handle.clone();
    std::thread::Builder::new()
        .name("slopn-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    on_hangup();
                } else {
                    info!(signal, "stopping");
                    handle.stop();
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// Samples byte counters once a second for the rates in `status`.
fn sample_rates<M: Machine>(
    handle: &Arc<Handle<M>>,
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

fn bind(addr: SocketAddr) -> Result<UdpSocket, String> {
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

fn open_tun(config: &TunConfig) -> Result<Tun, String> {
    Tun::open(config).map_err(|e| {
        format!(
            "cannot create the TUN device {}: {e}",
            config.name.as_deref().unwrap_or("")
        )
    })
}

struct HubService {
    handle: Arc<Handle<Hub>>,
    rates: Arc<Rates>,
}

impl Service for HubService {
    fn status(&self) -> serde_json::Value {
        match self.handle.stats() {
            Some(s) => status::hub_status(&s, &self.rates),
            None => serde_json::json!({ "state": "stopped" }),
        }
    }

    fn command(&self, request: &Request) -> Result<(), String> {
        match request {
            Request::Disconnect { session: Some(id) } => {
                self.handle.command(HubCommand::Disconnect {
                    id: SessionId(*id),
                    code: CloseCode::NO_ERROR,
                    reason: "disconnected by the hub operator".into(),
                });
                Ok(())
            }
            Request::Disconnect { session: None } => {
                Err("say which session to disconnect (\"session\": N)".into())
            }
            other => Err(format!("a hub does not take {other:?}")),
        }
    }
}

/// Whether to use the TUN device's segmentation offload: yes unless the environment says
/// `SLOPN_TUN_OFFLOAD=off` (for comparisons, or to rule offload out when troubleshooting).
fn tun_offload() -> bool {
    std::env::var("SLOPN_TUN_OFFLOAD").map_or(true, |v| v != "off")
}

/// Runs a hub from its configuration file until SIGINT or SIGTERM.
pub fn run_hub(path: &Path) -> Result<(), String> {
    let file: HubFile = config::load(path, "hub").map_err(|e| e.to_string())?;
    let (config, runtime) = file.resolve(path).map_err(|e| e.to_string())?;
    let tun = open_tun(&TunConfig {
        name: Some(runtime.tun_name.clone()),
        mtu: runtime.tun_mtu,
        addresses: runtime.tun_addresses.clone(),
        offload: tun_offload(),
    })?;
    let socket = bind(runtime.listen)?;
    // Gateway mode: forwarding and NAT, undone when `_gateway` drops after the loop ends.
    let _gateway = if file.gateway {
        let uplink = match &file.uplink {
            Some(uplink) => uplink.clone(),
            None => default_uplink().map_err(|e| format!("gateway mode: {e}"))?,
        };
        let pools: Vec<IpNet> = config.pools.iter().map(|p| p.network).collect();
        let gateway = Gateway::install(&runtime.tun_name, &uplink, &pools)
            .map_err(|e| format!("gateway mode: cannot set up NAT out of {uplink}: {e}"))?;
        info!(%uplink, table = gateway.table(), "gateway mode: spokes reach other networks through NAT");
        Some(gateway)
    } else {
        None
    };
    let hub = Hub::new(config, Instant::now(), SystemTime::now())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let handle = Arc::new(spawn(hub, tun, socket, Options::default()).map_err(|e| e.to_string())?);
    info!(
        listen = %runtime.listen, tun = %runtime.tun_name, addresses = ?runtime.tun_addresses,
        spokes = file.spokes.len(), "hub running"
    );
    let rates = Arc::new(Rates::default());
    let server = ControlServer::start(
        &runtime.control_socket,
        Arc::new(HubService {
            handle: handle.clone(),
            rates: rates.clone(),
        }),
    );
    let server = match server {
        Ok(server) => Some(server),
        Err(e) => {
            handle.stop();
            let _ = handle.join();
            return Err(e);
        }
    };
    let (reload_handle, reload_path) = (handle.clone(), path.to_owned());
    handle_signals(&handle, move || {
        let reload =
            config::load::<HubFile>(&reload_path, "hub").and_then(|file| file.reload(&reload_path));
        match reload {
            Ok(reload) => {
                info!(
                    spokes = reload.credentials.len(),
                    "SIGHUP: reloading spokes, routes and DNS servers"
                );
                reload_handle.command(HubCommand::SetCredentials(reload.credentials));
                reload_handle.command(HubCommand::SetRoutes(reload.routes));
                reload_handle.command(HubCommand::SetDnsServers(reload.dns));
            }
            Err(e) => warn!("SIGHUP: configuration not reloaded: {e}"),
        }
    })?;
    sample_rates(&handle, &rates, |s: &slopn_mio::HubSnapshot| {
        (s.hub.traffic.rx_bytes, s.hub.traffic.tx_bytes)
    });
    for event in handle.events() {
        if let Some(server) = &server {
            server.publish(&status::hub_event(&event));
        }
    }
    handle.join().map_err(|e| e.to_string())?;
    info!("hub stopped");
    Ok(())
}

struct SpokeService {
    handle: Arc<Handle<Spoke>>,
    rates: Arc<Rates>,
    hub: String,
}

impl Service for SpokeService {
    fn status(&self) -> serde_json::Value {
        match self.handle.stats() {
            Some(s) => status::spoke_status(&s, &self.hub, &self.rates),
            None => serde_json::json!({ "state": "stopped" }),
        }
    }

    fn command(&self, request: &Request) -> Result<(), String> {
        match request {
            Request::Connect => self.handle.command(SpokeCommand::Connect),
            Request::Disconnect { .. } => self.handle.command(SpokeCommand::Disconnect),
            other => return Err(format!("a spoke does not take {other:?}")),
        }
        Ok(())
    }
}

/// Runs a spoke from its configuration file until SIGINT or SIGTERM, or until the hub
/// refuses it for good.
pub fn run_spoke(path: &Path) -> Result<(), String> {
    let file: SpokeFile = config::load(path, "spoke").map_err(|e| e.to_string())?;
    let (config, runtime) = file.resolve(path).map_err(|e| e.to_string())?;
    let hub_addr = config.hub;
    let tun = open_tun(&TunConfig {
        name: Some(runtime.tun_name.clone()),
        mtu: 1280,
        addresses: Vec::new(),
        offload: tun_offload(),
    })?;
    let local: SocketAddr = if hub_addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let socket = bind(local)?;
    let spoke = Spoke::new(config, Instant::now(), SystemTime::now())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let options = Options {
        routes: RoutePolicy {
            accept_default_route: file.accept_default_route,
            only: file.routes.clone(),
            hub: Some(hub_addr.ip()),
        },
        ..Options::default()
    };
    let handle = Arc::new(spawn(spoke, tun, socket, options).map_err(|e| e.to_string())?);
    info!(hub = %runtime.hub, address = %hub_addr, tun = %runtime.tun_name, "spoke running");
    let rates = Arc::new(Rates::default());
    let server = match ControlServer::start(
        &runtime.control_socket,
        Arc::new(SpokeService {
            handle: handle.clone(),
            rates: rates.clone(),
            hub: runtime.hub.clone(),
        }),
    ) {
        Ok(server) => server,
        Err(e) => {
            handle.stop();
            let _ = handle.join();
            return Err(e);
        }
    };
    handle_signals(&handle, || info!("SIGHUP ignored by the spoke"))?;
    sample_rates(&handle, &rates, |s: &slopn_mio::SpokeStatus| {
        (s.stats.traffic.rx_bytes, s.stats.traffic.tx_bytes)
    });

    let started = Instant::now();
    let mut assigned_once = false;
    let mut last_reason: Option<DisconnectReason> = None;
    let mut failure: Option<String> = None;
    loop {
        match handle.next_event(Duration::from_millis(200)) {
            Ok(event) => {
                match &event {
                    SpokeEvent::Assigned { addresses, .. } if !assigned_once => {
                        assigned_once = true;
                        info!(?addresses, "connected to the hub");
                    }
                    SpokeEvent::Disconnected { reason, .. } => last_reason = Some(reason.clone()),
                    _ => {}
                }
                server.publish(&status::spoke_event(&event));
            }
            Err(RecvTimeoutError::Timeout) => {
                if !assigned_once
                    && failure.is_none()
                    && started.elapsed() > runtime.connect_timeout
                {
                    failure = Some(unreachable(
                        &runtime.hub,
                        hub_addr,
                        runtime.connect_timeout,
                        last_reason.as_ref(),
                    ));
                    warn!("giving up: no session with the hub");
                    handle.stop();
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    match handle.join() {
        Err(RunError::GaveUp(reason)) => Err(refused(&reason, path)),
        Err(e) => Err(e.to_string()),
        Ok(()) => failure.map_or(Ok(()), Err),
    }
}

fn unreachable(
    hub: &str,
    addr: SocketAddr,
    waited: Duration,
    last: Option<&DisconnectReason>,
) -> String {
    let why = match last {
        Some(DisconnectReason::Local { reason, .. }) => reason.clone(),
        Some(other) => other.to_string(),
        None => "no answer".into(),
    };
    format!(
        "could not reach the hub at {hub} ({addr}) within {} s: {why}. Check the address and \
         port, that the hub is running, and that UDP port {} is not blocked by a firewall.",
        waited.as_secs(),
        addr.port()
    )
}

fn refused(reason: &DisconnectReason, path: &Path) -> String {
    let file = path.display();
    match reason {
        DisconnectReason::Remote { code, reason } => match *code {
            CloseCode::AUTH_FAILED => format!(
                "the hub refused this spoke: authentication failed. Check `token` in {file}, or \
                 ask the hub operator for a new spoke configuration (`hub add-spoke`)."
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
             certificate, check that `certificate_pem` in {file} was issued by the hub's CA and \
             is still valid (`hub add-spoke --auth certificate` issues a new one)."
        ),
        DisconnectReason::Transport {
            error, tls: true, ..
        } => format!(
            "the TLS handshake with the hub failed: {error}. Check that `ca` (or `ca_pem`) in \
             {file} is the CA that signed the hub's certificate, and that `server_name` is a \
             name in that certificate."
        ),
        other => format!("the session with the hub ended: {other}"),
    }
}
