//! Running a spoke from its configuration file (`spoke run`): TUN device and socket up, the
//! event loop started, control socket served, signals handled, and a clear sentence out when
//! something goes wrong. (The hub is [`crate::hub`] on Unix; the spoke service, which runs
//! tunnels on request, is [`crate::service`].)

use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};
use slopn_control::{Access, Answer, Handler, Request, Role, Server, Topic};
use slopn_driver::SpokeCommand;
use tracing::info;

use crate::config::{self, SpokeFile};
use crate::metrics;
use crate::tunnel::{Origin, Resolved, Tunnel};

/// Calls `on_stop` on SIGINT or SIGTERM and `on_hangup` on SIGHUP, from a thread of its own.
#[cfg(unix)]
pub fn handle_signals(
    on_stop: impl Fn() + Send + 'static,
    on_hangup: impl Fn() + Send + 'static,
) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("slopn-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    on_hangup();
                } else {
                    info!(signal, "stopping");
                    on_stop();
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

/// Calls `on_stop` on Ctrl-C or Ctrl-Break, or when the console closes (Windows has no
/// SIGHUP: `on_hangup` is never called). The Windows service stops through its control
/// handler instead.
#[cfg(windows)]
pub fn handle_signals(
    on_stop: impl Fn() + Send + 'static,
    on_hangup: impl Fn() + Send + 'static,
) -> Result<(), String> {
    drop(on_hangup);
    ctrlc::set_handler(move || {
        info!("stopping");
        on_stop();
    })
    .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))
}

/// An answer with one field.
pub(crate) fn answer(field: &str, value: impl serde::Serialize) -> Answer {
    let mut fields = Map::new();
    fields.insert(
        field.to_owned(),
        serde_json::to_value(value).unwrap_or(Value::Null),
    );
    Ok(fields)
}

/// Answers the control socket of `spoke run`.
struct SpokeRunService {
    tunnel: Arc<Tunnel>,
}

impl Handler for SpokeRunService {
    fn role(&self) -> Role {
        Role::Spoke
    }

    fn handle(&self, request: &Request) -> Answer {
        match request {
            Request::Status => answer("status", self.tunnel.status()),
            Request::Connect { profile: None } => {
                self.tunnel.command(SpokeCommand::Connect);
                Ok(Map::new())
            }
            Request::Disconnect { .. } => {
                self.tunnel.command(SpokeCommand::Disconnect);
                Ok(Map::new())
            }
            other => Err(format!(
                "this spoke runs one configuration file (`spoke run`) and does not take the \
                 command {:?}; profiles need the spoke service (`spoke service`)",
                other.name()
            )),
        }
    }
}

/// Runs a spoke from its configuration file until SIGINT or SIGTERM, or until the hub
/// refuses it for good; `logs` is the log topic from [`crate::logs::init`].
pub fn run_spoke(path: &Path, logs: Arc<Topic>) -> Result<(), String> {
    let file: SpokeFile = config::load(path, "spoke").map_err(|e| e.to_string())?;
    let socket = file.control_socket.clone();
    let events = Arc::new(Topic::new(0));
    let resolved = Resolved::new(&file, Origin::File(path))?;
    let tunnel = Arc::new(Tunnel::start(&file, resolved, events.clone())?);
    let server = Server::start(
        socket
            .as_deref()
            .unwrap_or(Path::new(slopn_control::SPOKE_SOCKET)),
        Access::OWNER,
        Arc::new(SpokeRunService {
            tunnel: tunnel.clone(),
        }),
        events,
        logs,
    );
    let _server = match server {
        Ok(server) => server,
        Err(e) => {
            tunnel.stop();
            let _ = tunnel.wait();
            return Err(e.to_string());
        }
    };
    let source = tunnel.clone();
    let metrics = metrics::serve(file.metrics_listen, move |registry| {
        Some(metrics::spoke(registry, &source.status()))
    });
    let _metrics = match metrics {
        Ok(metrics) => metrics,
        Err(e) => {
            tunnel.stop();
            let _ = tunnel.wait();
            return Err(e);
        }
    };
    let stopping = tunnel.clone();
    handle_signals(
        move || stopping.stop(),
        || info!("SIGHUP ignored by the spoke"),
    )?;
    tunnel.wait()
}
