//! Running a hub from its configuration file (`hub run`, Linux): TUN device and socket up,
//! gateway mode's forwarding and NAT, the event loop started, control socket served,
//! SIGHUP reloading tokens, routes and DNS, and a clear sentence out when something goes
//! wrong.

use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ipnet::IpNet;
use serde_json::Map;
use slopn_control::{Access, Answer, Handler, Request, Role, Server, Topic};
use slopn_driver::{HubCommand, HubSnapshot, Machine, Options};
use slopn_proto::control::CloseCode;
use slopn_proto::{Hub, SessionId};
use slopn_tun::{Gateway, TunConfig, default_uplink};
use tracing::{info, warn};

use crate::config::{self, HubFile};
use crate::daemon::{answer, handle_signals};
use crate::metrics;
use crate::runtime::Loop;
use crate::status::{self, Rates};
use crate::tunnel::{bind, open_tun, sample_rates, tun_offload};

/// Stops the loop on SIGINT or SIGTERM (with goodbyes; the TUN device and routes go away as
/// the loop ends).
fn stop_on_signal<M: Machine>(
    handle: &Arc<Loop<M>>,
    on_hangup: impl Fn() + Send + 'static,
) -> Result<(), String> {
    let handle = handle.clone();
    handle_signals(move || handle.stop(), on_hangup)
}

struct HubService {
    handle: Arc<Loop<Hub>>,
    rates: Arc<Rates>,
}

impl Handler for HubService {
    fn role(&self) -> Role {
        Role::Hub
    }

    fn handle(&self, request: &Request) -> Answer {
        match request {
            Request::Status => match self.handle.stats() {
                Some(s) => answer("status", status::hub_status(&s, &self.rates)),
                None => answer("status", serde_json::json!({ "state": "stopped" })),
            },
            Request::Disconnect { session: Some(id) } => {
                // A session that ends between this look and the command is only logged.
                let known = self
                    .handle
                    .stats()
                    .is_some_and(|s| s.spokes.iter().any(|spoke| spoke.id.0 == *id));
                if !known {
                    return Err(format!(
                        "no session {id}: `status` lists the sessions (\"session\": N)"
                    ));
                }
                self.handle.command(HubCommand::Disconnect {
                    id: SessionId(*id),
                    code: CloseCode::NO_ERROR,
                    reason: "disconnected by the hub operator".into(),
                });
                Ok(Map::new())
            }
            Request::Disconnect { session: None } => {
                Err("say which session to disconnect (\"session\": N)".into())
            }
            other => Err(format!(
                "a hub does not take the command {:?}",
                other.name()
            )),
        }
    }
}

/// Runs a hub from its configuration file until SIGINT or SIGTERM; `logs` is the log
/// topic from [`crate::logs::init`].
pub fn run_hub(path: &Path, logs: Arc<Topic>) -> Result<(), String> {
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
    let max_udp_payload = config.transport.max_udp_payload();
    let hub = Hub::new(config, Instant::now(), SystemTime::now())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let handle = Arc::new(Loop::spawn(
        file.runtime,
        hub,
        tun,
        socket,
        Options::default().with_max_udp_payload(max_udp_payload),
    )?);
    info!(
        listen = %runtime.listen, tun = %runtime.tun_name, addresses = ?runtime.tun_addresses,
        spokes = file.spokes.len(), runtime = ?file.runtime, "hub running"
    );
    let rates = Arc::new(Rates::default());
    let events = Arc::new(Topic::new(0));
    let server = Server::start(
        &runtime.control_socket,
        Access::OWNER,
        Arc::new(HubService {
            handle: handle.clone(),
            rates: rates.clone(),
        }),
        events.clone(),
        logs,
    );
    let _server = match server {
        Ok(server) => server,
        Err(e) => {
            handle.stop();
            let _ = handle.join();
            return Err(e.to_string());
        }
    };
    let source = handle.clone();
    let metrics = metrics::serve(file.metrics_listen, move |registry| {
        source.stats().map(|s| metrics::hub(registry, &s))
    });
    let _metrics = match metrics {
        Ok(metrics) => metrics,
        Err(e) => {
            handle.stop();
            let _ = handle.join();
            return Err(e);
        }
    };
    let (reload_handle, reload_path, running) = (handle.clone(), path.to_owned(), file.clone());
    stop_on_signal(&handle, move || {
        let reload = config::load::<HubFile>(&reload_path, "hub").and_then(|file| {
            let restart = file.needs_restart(&running);
            if !restart.is_empty() {
                warn!(
                    "SIGHUP: {} changed in {}: a reload applies only the spokes, routes and \
                     DNS servers; restart the hub for the rest",
                    restart.join(", "),
                    reload_path.display()
                );
            }
            file.reload(&reload_path)
        });
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
    crate::load::watch(&handle);
    sample_rates(&handle, &rates, |s: &HubSnapshot| {
        (s.hub.traffic.rx_bytes, s.hub.traffic.tx_bytes)
    });
    for event in handle.events() {
        events.publish(status::hub_event(&event).to_string());
    }
    handle.join().map_err(|e| e.to_string())?;
    info!("hub stopped");
    Ok(())
}
