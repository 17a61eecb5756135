//! The spoke service (`spoke service`): the privileged half of the desktop client.
//!
//! It starts with no profile and no TUN device and serves the control socket, by default to
//! root and the group `slopn`. On request it imports and removes profiles (spoke files, kept
//! in a directory only root reads), connects one (TUN device, routes, DNS), disconnects
//! (all of that removed again) and connects again, without restarting. Requests that change
//! something run one at a time; status requests never wait for them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, json};
use slopn_control::{
    Access, Answer, Handler, Request, Role, Server, SpokeStatus as StatusDocument, Topic,
    TunnelState,
};
use slopn_driver::SpokeCommand;
use tracing::{info, warn};

use crate::daemon::{answer, handle_signals};
use crate::metrics;
use crate::profiles::ProfileStore;
use crate::tunnel::{Origin, Resolved, Tunnel};

/// Where the service keeps profiles.
#[cfg(unix)]
pub const PROFILES: &str = "/var/lib/slopn/profiles";
/// Where the service keeps profiles (SYSTEM's and the Administrators' alone).
#[cfg(windows)]
pub const PROFILES: &str = r"C:\ProgramData\SloPN\profiles";
/// The group whose members may use the service's socket (if the group exists).
#[cfg(unix)]
pub const GROUP: &str = "slopn";

/// Where the service keeps things and who may talk to it.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// The control socket.
    pub socket: PathBuf,
    /// The profile directory.
    pub profiles: PathBuf,
    /// The group given access to the socket (mode 0660) when it exists; else the socket is
    /// root's alone (0600).
    #[cfg(unix)]
    pub group: String,
    /// Windows: the accounts (security identifiers, `S-1-5-21-…`) allowed to use the pipe
    /// besides SYSTEM and the Administrators: the user who installed the service.
    #[cfg(windows)]
    pub users: Vec<String>,
    /// Where to serve Prometheus metrics (`GET /metrics`) of the tunnel the service runs,
    /// if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            socket: slopn_control::SPOKE_SOCKET.into(),
            profiles: PROFILES.into(),
            #[cfg(unix)]
            group: GROUP.into(),
            #[cfg(windows)]
            users: Vec::new(),
            metrics_listen: None,
        }
    }
}

/// Who may use the socket: root and the group, if it exists.
#[cfg(unix)]
fn access(options: &ServiceOptions) -> Access {
    match nix::unistd::Group::from_name(&options.group) {
        Ok(Some(group)) => Access::group(group.gid.as_raw()),
        _ => {
            warn!(
                group = %options.group,
                "no such group: the control socket is for root only (mode 0600); create the \
                 group (groupadd {}) and restart to let its members use it",
                options.group
            );
            Access::OWNER
        }
    }
}

/// Who may use the pipe: SYSTEM, the Administrators and the listed accounts.
#[cfg(windows)]
fn access(options: &ServiceOptions) -> Access {
    if options.users.is_empty() {
        warn!(
            "no user allowed: the control pipe is for SYSTEM and the Administrators only; \
             reinstall from the user's elevated prompt (spoke service install) to let them use it"
        );
    }
    Access::users(options.users.clone())
}

/// Runs the service until SIGINT or SIGTERM (Ctrl-C on Windows), then disconnects in an
/// orderly way; `logs` is the log topic from [`crate::logs::init`].
pub fn run_service(options: &ServiceOptions, logs: Arc<Topic>) -> Result<(), String> {
    let (stop, stopped) = std::sync::mpsc::channel();
    handle_signals(
        move || {
            let _ = stop.send(());
        },
        || info!("SIGHUP ignored by the spoke service"),
    )?;
    serve_until(options, logs, &stopped)
}

/// Runs the service until `stop` receives (or its sender is dropped), then disconnects in
/// an orderly way. The Windows service's control handler stops it this way.
pub fn serve_until(
    options: &ServiceOptions,
    logs: Arc<Topic>,
    stop: &std::sync::mpsc::Receiver<()>,
) -> Result<(), String> {
    let store = ProfileStore::open(&options.profiles)?;
    let access = access(options);
    let events = Arc::new(Topic::new(0));
    let service = Arc::new(SpokeService {
        store,
        events: events.clone(),
        changes: Mutex::new(()),
        current: Mutex::new(Current::default()),
        stopping: AtomicBool::new(false),
    });
    let allowed = format!("{access:?}");
    let server = Server::start(&options.socket, access, service.clone(), events, logs)
        .map_err(|e| e.to_string())?;
    info!(
        socket = %options.socket.display(),
        access = allowed,
        profiles = %options.profiles.display(),
        "spoke service ready"
    );
    let source = service.clone();
    let _metrics = metrics::serve(options.metrics_listen, move |registry| {
        Some(metrics::spoke(registry, &source.status()))
    })?;
    let _ = stop.recv();
    // No new tunnel from here on, then the one there is, in order.
    service.stopping.store(true, Ordering::Relaxed);
    drop(server);
    service.disconnect(false);
    info!("spoke service stopped");
    Ok(())
}

/// The tunnel the service runs, if any, and the profile it runs (or last ran).
#[derive(Default)]
struct Current {
    tunnel: Option<Arc<Tunnel>>,
    profile: Option<String>,
    /// Why the last connect could not even start.
    error: Option<String>,
}

struct SpokeService {
    store: ProfileStore,
    events: Arc<Topic>,
    /// Held by requests that change the tunnel or the store, so they run one at a time.
    changes: Mutex<()>,
    /// Held only briefly, so status answers never wait for a change in progress.
    current: Mutex<Current>,
    /// Set when the service is ending: connects are refused.
    stopping: AtomicBool,
}

impl SpokeService {
    fn changes(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> StatusDocument {
        let (tunnel, profile, error) = {
            let c = self.current();
            (c.tunnel.clone(), c.profile.clone(), c.error.clone())
        };
        let mut doc = match tunnel {
            Some(tunnel) => match tunnel.ended() {
                // Ended in order: only a disconnect does that here.
                Some(Ok(())) => StatusDocument::default(),
                _ => tunnel.status(),
            },
            None => StatusDocument {
                state: match error {
                    Some(_) => TunnelState::Stopped,
                    None => TunnelState::Disconnected,
                },
                error,
                ..StatusDocument::default()
            },
        };
        doc.profile = profile;
        doc
    }

    fn connect(&self, profile: Option<&str>) -> Answer {
        let name =
            match profile {
                Some(name) => name.to_owned(),
                None => self.current().profile.clone().ok_or(
                    "say which profile to connect (\"profile\": NAME); `profiles` lists them",
                )?,
            };
        let file = self.store.load(&name)?;
        let same_running = {
            let c = self.current();
            c.profile.as_deref() == Some(&name)
                && c.tunnel.as_ref().is_some_and(|t| t.ended().is_none())
        };
        // Already up or on its way: skip any reconnect delay.
        if same_running && let Some(tunnel) = self.current().tunnel.clone() {
            tunnel.command(SpokeCommand::Connect);
            return Ok(Map::new());
        }
        // Resolving the hub's name can take seconds: before the lock, not under it.
        let resolved = Resolved::new(&file, Origin::Profile(&name));
        let _changes = self.changes();
        if self.stopping.load(Ordering::Relaxed) {
            return Err("the spoke service is stopping".into());
        }
        let previous = self.current().tunnel.clone();
        if let Some(tunnel) = previous {
            tunnel.stop();
            let _ = tunnel.wait();
        }
        info!(profile = %name, "connecting");
        let started =
            resolved.and_then(|resolved| Tunnel::start(&file, resolved, self.events.clone()));
        let mut current = self.current();
        current.profile = Some(name);
        match started {
            Ok(tunnel) => {
                current.tunnel = Some(Arc::new(tunnel));
                current.error = None;
                Ok(Map::new())
            }
            Err(sentence) => {
                warn!("cannot connect: {sentence}");
                current.tunnel = None;
                current.error = Some(sentence.clone());
                drop(current);
                self.events
                    .publish(json!({ "event": "stopped", "error": sentence }).to_string());
                Err(sentence)
            }
        }
    }

    /// Ends the tunnel, if any. `unlock`: a disconnect asked for, which also removes a
    /// kill switch kept by lockdown (the service's own shutdown keeps it).
    fn disconnect(&self, unlock: bool) {
        let _changes = self.changes();
        let tunnel = self.current().tunnel.clone();
        if let Some(tunnel) = tunnel {
            info!("disconnecting");
            tunnel.stop();
            let _ = tunnel.wait();
        }
        let mut current = self.current();
        current.tunnel = None;
        current.error = None;
        let profile = current.profile.clone();
        drop(current);
        if unlock {
            self.unlock(profile.as_deref());
        }
        self.events
            .publish(json!({ "event": "disconnected_tunnel" }).to_string());
    }

    /// Removes the kill switch of `profile`'s device, kept by lockdown or left by a tunnel
    /// that died, and puts back a resolver file a tunnel that died left.
    fn unlock(&self, profile: Option<&str>) {
        let tun = profile
            .and_then(|name| self.store.load(name).ok())
            .map_or_else(|| "slopn0".to_owned(), |file| file.tun_name);
        match crate::kill_switch::unlock(&tun) {
            Ok(done) => info!(%tun, "{done}"),
            Err(e) => warn!(%tun, "{e}"),
        }
    }

    fn import(&self, name: &str, toml: &str) -> Answer {
        let summary = {
            let _changes = self.changes();
            let summary = self.store.import(name, toml)?;
            self.profiles_changed();
            summary
        };
        info!(profile = %name, hub = %summary.hub, "profile imported");
        let mut fields = answer("profile", &summary)?;
        // Saved either way: the name may resolve later (offline now, VPN-only DNS...).
        let mut warnings = Vec::new();
        if let Ok(file) = self.store.load(name) {
            if let Err(e) = file.hub_address(&format!("profile {name:?}")) {
                warnings.push(e.to_string());
            }
            if file.control_socket.is_some() {
                warnings.push(
                    "`control_socket` in this file is ignored: the service has its own socket."
                        .to_owned(),
                );
            }
        }
        if !warnings.is_empty() {
            fields.insert("warning".into(), json!(warnings.join(" ")));
        }
        Ok(fields)
    }

    fn remove(&self, name: &str) -> Answer {
        let _changes = self.changes();
        let in_use = {
            let current = self.current();
            current.profile.as_deref() == Some(name)
                && current.tunnel.as_ref().is_some_and(|t| t.ended().is_none())
        };
        if in_use {
            return Err(format!(
                "profile {name:?} is connected: disconnect before removing it"
            ));
        }
        self.store.remove(name)?;
        {
            let mut current = self.current();
            if current.profile.as_deref() == Some(name) {
                *current = Current::default();
            }
        }
        info!(profile = %name, "profile removed");
        self.profiles_changed();
        Ok(Map::new())
    }

    /// Saves the kill switch of profile `name` and, if its tunnel runs, applies it now.
    fn set_kill_switch(&self, name: &str, on: bool) -> Answer {
        let _changes = self.changes();
        let (file, summary) = self.store.set_kill_switch(name, on)?;
        let running = {
            let current = self.current();
            match &current.tunnel {
                Some(t) if current.profile.as_deref() == Some(name) && t.ended().is_none() => {
                    Some(t.clone())
                }
                _ => None,
            }
        };
        if let Some(tunnel) = running {
            if let Err(e) = tunnel.set_kill_switch(&file) {
                // Not in force, so not saved either: the profile keeps what it had.
                if let Err(undo) = self.store.set_kill_switch(name, !on) {
                    warn!(profile = %name, "the kill switch could not be set back: {undo}");
                }
                return Err(e);
            }
        } else if !on {
            // Not running: a table lockdown kept goes too, as the user turned it off.
            self.unlock(Some(name));
        }
        info!(profile = %name, on, "kill switch set");
        self.profiles_changed();
        answer("profile", &summary)
    }

    /// Tells subscribers the new list (called with `changes` held, so lists arrive in order).
    fn profiles_changed(&self) {
        self.events.publish(
            json!({ "event": "profiles_changed", "profiles": self.store.list() }).to_string(),
        );
    }
}

impl Handler for SpokeService {
    fn role(&self) -> Role {
        Role::SpokeService
    }

    fn handle(&self, request: &Request) -> Answer {
        match request {
            Request::Status => answer("status", self.status()),
            Request::Profiles => answer("profiles", self.store.list()),
            Request::Import { name, toml } => self.import(name, toml),
            Request::Remove { name } => self.remove(name),
            Request::Connect { profile } => self.connect(profile.as_deref()),
            Request::SetKillSwitch { profile, on } => self.set_kill_switch(profile, *on),
            Request::Disconnect { session: None } => {
                self.disconnect(true);
                Ok(Map::new())
            }
            other => Err(format!(
                "the spoke service does not take the command {:?}",
                other.name()
            )),
        }
    }
}
