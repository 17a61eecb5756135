//! The local control socket: a Unix stream socket (owner-only by default) over which
//! `hub status`, `spoke status`, `spoke connect` / `disconnect` and, later, the desktop client
//! talk to a running hub or spoke. The protocol is JSON, one object per line; see
//! docs/PROTOCOL.md §8.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, warn};

/// A request from a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// The current status and counters.
    Status,
    /// Subscribe: the server streams every event as it happens until the client hangs up.
    Events,
    /// Spoke: connect (again) now.
    Connect,
    /// Spoke: say goodbye and stay disconnected. Hub: end session `session`.
    Disconnect {
        /// Hub only: the session to end.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
    },
}

/// What the server answers to [`Request::Status`] and the commands.
pub trait Service: Send + Sync + 'static {
    /// The status document.
    fn status(&self) -> Value;
    /// Carries out a command; `Err` is a sentence for the user.
    fn command(&self, request: &Request) -> Result<(), String>;
}

/// A running control socket server; removes its socket file when dropped.
pub struct ControlServer {
    path: PathBuf,
    subscribers: Arc<Mutex<Vec<UnixStream>>>,
}

impl ControlServer {
    /// Listens on `path` (creating its directory; replacing a stale socket), readable and
    /// writable by the owner only.
    pub fn start(path: &Path, service: Arc<dyn Service>) -> Result<Self, String> {
        let fail = |e: std::io::Error| format!("control socket {}: {e}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "control socket {} is in use: another hub or spoke is running with it. Stop it \
                 or set `control_socket` to another path.",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(fail)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        let subscribers = Arc::new(Mutex::new(Vec::new()));
        let subs = subscribers.clone();
        std::thread::Builder::new()
            .name("slopn-control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let (service, subs) = (service.clone(), subs.clone());
                    let _ = std::thread::Builder::new()
                        .name("slopn-control-client".into())
                        .spawn(move || serve(stream, &*service, &subs));
                }
            })
            .map_err(fail)?;
        Ok(Self {
            path: path.to_owned(),
            subscribers,
        })
    }

    /// Sends an event to every subscriber, dropping those that hung up.
    pub fn publish(&self, event: &Value) {
        let Ok(mut subs) = self.subscribers.lock() else {
            return;
        };
        let line = format!("{event}\n");
        subs.retain_mut(|s| s.write_all(line.as_bytes()).is_ok());
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(stream: UnixStream, service: &dyn Service, subs: &Mutex<Vec<UnixStream>>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Events) => {
                let _ = writer.write_all(b"{\"ok\":true}\n");
                if let (Ok(mut subs), Ok(clone)) = (subs.lock(), writer.try_clone()) {
                    // Writes to a slow subscriber must not stall the others for long.
                    let _ = clone.set_write_timeout(Some(Duration::from_secs(1)));
                    subs.push(clone);
                }
                continue;
            }
            Ok(Request::Status) => serde_json::json!({ "ok": true, "status": service.status() }),
            Ok(request) => match service.command(&request) {
                Ok(()) => serde_json::json!({ "ok": true }),
                Err(e) => serde_json::json!({ "ok": false, "error": e }),
            },
            Err(e) => serde_json::json!({ "ok": false, "error": format!("bad request: {e}") }),
        };
        debug!(%line, "control request");
        if writeln!(writer, "{reply}").is_err() {
            return;
        }
    }
}

/// Sends one request to the server at `path` and returns its answer.
pub fn request(path: &Path, request: &Request) -> Result<Value, String> {
    let mut stream = connect(path)?;
    writeln!(
        stream,
        "{}",
        serde_json::to_string(request).expect("serializable")
    )
    .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    let value: Value = serde_json::from_str(&line)
        .map_err(|e| format!("control socket {}: unreadable answer: {e}", path.display()))?;
    if value["ok"] == Value::Bool(true) {
        Ok(value)
    } else {
        Err(value["error"].as_str().unwrap_or("refused").to_owned())
    }
}

/// Subscribes to events: calls `f` with each until it returns false or the server goes.
pub fn watch(path: &Path, mut f: impl FnMut(Value) -> bool) -> Result<(), String> {
    let mut stream = connect(path)?;
    writeln!(
        stream,
        "{}",
        serde_json::to_string(&Request::Events).expect("serializable")
    )
    .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            warn!(%line, "unreadable event");
            continue;
        };
        if value.get("ok").is_some() {
            continue;
        }
        if !f(value) {
            break;
        }
    }
    Ok(())
}

fn connect(path: &Path) -> Result<UnixStream, String> {
    UnixStream::connect(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                " Is it running? Use --socket if it was configured with another control_socket."
            }
            std::io::ErrorKind::PermissionDenied => {
                " Run as the same user as the daemon, or as root."
            }
            _ => "",
        };
        format!(
            "cannot reach the control socket {}: {e}.{hint}",
            path.display()
        )
    })
}
