//! The spoke service (`spoke service`): the privileged half of the desktop client.
//!
//! It starts with no profile and no TUN device and serves the control socket, by default to
//! root and the group `slopn`. On request it imports and removes profiles (spoke files, kept
//! in a directory only root reads), connects one (TUN device, routes, DNS), disconnects
//! (all of that removed again) and connects again, without restarting. Requests that change
//! something run one at a time; status requests never wait for them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, json};
use slopn_control::{
    Access, Answer, Handler, Request, Role, Server, SpokeStatus as StatusDocument, Topic,
    TunnelState,
};
use slopn_mio::SpokeCommand;
use tracing::{info, warn};

use crate::daemon::{answer, handle_signals};
use crate::profiles::ProfileStore;
use crate::tunnel::{Origin, Tunnel};

/// The spoke's control socket, for `spoke run` and the service.
pub const SOCKET: &str = "/run/slopn/spoke.sock";
/// Where the service keeps profiles.
pub const PROFILES: &str = "/var/lib/slopn/profiles";
/// The group whose members may use the service's socket (if the group exists).
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
    pub group: String,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            socket: SOCKET.into(),
            profiles: PROFILES.into(),
            group: GROUP.into(),
        }
    }
}

/// Runs the service until SIGINT or SIGTERM, then disconnects in an orderly way; `logs` is
/// the log topic from [`crate::logs::init`].
pub fn run_service(options: &ServiceOptions, logs: Arc<Topic>) -> Result<(), String> {
    let store = ProfileStore::open(&options.profiles)?;
    let access = match nix::unistd::Group::from_name(&options.group) {
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
    };
    let events = Arc::new(Topic::new(0));
    let service = Arc::new(SpokeService {
        store,
        events: events.clone(),
        changes: Mutex::new(()),
        current: Mutex::new(Current::default()),
    });
    let server = Server::start(&options.socket, access, service.clone(), events, logs)
        .map_err(|e| e.to_string())?;
    info!(
        socket = %options.socket.display(),
        mode = format!("{:o}", access.mode),
        profiles = %options.profiles.display(),
        "spoke service ready"
    );
    let (stop, stopped) = std::sync::mpsc::channel();
    handle_signals(
        move || {
            let _ = stop.send(());
        },
        || info!("SIGHUP ignored by the spoke service"),
    )?;
    let _ = stopped.recv();
    service.disconnect();
    drop(server);
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
        let _changes = self.changes();
        let name =
            match profile {
                Some(name) => name.to_owned(),
                None => self.current().profile.clone().ok_or(
                    "say which profile to connect (\"profile\": NAME); `profiles` lists them",
                )?,
            };
        let file = self.store.load(&name)?;
        let running = self.current().tunnel.clone();
        if let Some(tunnel) = running {
            let same = self.current().profile.as_deref() == Some(&name);
            if same && tunnel.ended().is_none() {
                // Already up or on its way: skip any reconnect delay.
                tunnel.command(SpokeCommand::Connect);
                return Ok(Map::new());
            }
            tunnel.stop();
            let _ = tunnel.wait();
        }
        info!(profile = %name, "connecting");
        let started = Tunnel::start(&file, Origin::Profile(&name), self.events.clone());
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

    /// Ends the tunnel, if any; returns once its TUN device and routes are gone.
    fn disconnect(&self) {
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
        drop(current);
        self.events
            .publish(json!({ "event": "disconnected_tunnel" }).to_string());
    }

    fn import(&self, name: &str, toml: &str) -> Answer {
        let summary = {
            let _changes = self.changes();
            self.store.import(name, toml)?
        };
        info!(profile = %name, hub = %summary.hub, "profile imported");
        self.profiles_changed();
        let mut fields = answer("profile", &summary)?;
        // Saved either way: the name may resolve later (offline now, VPN-only DNS...).
        if let Ok(file) = self.store.load(name)
            && let Err(e) = file.hub_address(&format!("profile {name:?}"))
        {
            fields.insert("warning".into(), json!(e.to_string()));
        }
        Ok(fields)
    }

    fn remove(&self, name: &str) -> Answer {
        let _changes = self.changes();
        {
            let mut current = self.current();
            if current.profile.as_deref() == Some(name) {
                let in_use = current.tunnel.as_ref().is_some_and(|t| t.ended().is_none());
                if in_use {
                    return Err(format!(
                        "profile {name:?} is connected: disconnect before removing it"
                    ));
                }
                *current = Current::default();
            }
        }
        self.store.remove(name)?;
        info!(profile = %name, "profile removed");
        self.profiles_changed();
        Ok(Map::new())
    }

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
            Request::Disconnect { session: None } => {
                self.disconnect();
                Ok(Map::new())
            }
            other => Err(format!(
                "the spoke service does not take the command {}",
                other.to_line()
            )),
        }
    }
}
