//! The client side: requests and subscriptions, with errors that tell "not running" from
//! "not allowed" so that each program can say what to do about it.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::protocol::{Request, Role, VersionInfo};
use crate::transport::Stream;

/// Why a request did not get an answer, or got a refusal.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: the server is not running (or uses another path).
    #[error("nothing answers on the control socket {0}: the service is not running")]
    NotRunning(PathBuf),
    /// The socket exists but this user may not open it.
    #[error("no permission to use the control socket {0}")]
    Forbidden(PathBuf),
    /// Another failure talking to the socket.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server hung up before answering.
    #[error("the server on {0} closed the connection")]
    Closed(PathBuf),
    /// The answer is not what the protocol says.
    #[error("control socket {path}: unreadable answer: {detail}")]
    BadAnswer {
        /// The socket.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The server refused the request; this is its sentence.
    #[error("{0}")]
    Refused(String),
    /// The socket is another program's than the one the request is for.
    #[error(
        "the control socket {path} belongs to {found}, not to {wanted}: pass the right \
         socket with --socket"
    )]
    WrongRole {
        /// The socket.
        path: PathBuf,
        /// What the request is for.
        wanted: String,
        /// What answers on the socket.
        found: String,
    },
}

/// A connection to a control socket.
pub struct Client {
    path: PathBuf,
    reader: BufReader<Stream>,
    writer: Stream,
}

impl Client {
    /// Connects to the server at `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = Stream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.to_owned())
            }
            io::ErrorKind::PermissionDenied => ClientError::Forbidden(path.to_owned()),
            _ => ClientError::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
        let writer = stream.try_clone().map_err(|source| ClientError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Connects to the server at `path` and checks that it is one of `roles` (a version-1
    /// server, which cannot say, is taken on trust): a request meant for a hub must not end
    /// a spoke's tunnel because the wrong socket was given.
    pub fn connect_as(path: &Path, roles: &[Role]) -> Result<Self, ClientError> {
        let mut client = Self::connect(path)?;
        let found = client.version()?.role;
        if found == Role::Unknown || roles.contains(&found) {
            return Ok(client);
        }
        let wanted: Vec<&str> = roles.iter().map(|r| r.describe()).collect();
        Err(ClientError::WrongRole {
            path: path.to_owned(),
            wanted: wanted.join(" or "),
            found: found.describe().to_owned(),
        })
    }

    /// Limits how long a request waits for its answer (`None`: forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .and_then(|()| self.writer.set_write_timeout(timeout))
            .map_err(|e| self.io(e))
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let mut line = request.to_line();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| self.io(e))
    }

    /// The next line from the server as a JSON object; `None` when it hung up.
    fn read(&mut self) -> Result<Option<Map<String, Value>>, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(|e| self.io(e))? == 0 {
            return Ok(None);
        }
        match serde_json::from_str(&line) {
            Ok(Value::Object(map)) => Ok(Some(map)),
            Ok(_) => Err(self.bad("not a JSON object")),
            Err(e) => Err(self.bad(&e.to_string())),
        }
    }

    fn bad(&self, detail: &str) -> ClientError {
        ClientError::BadAnswer {
            path: self.path.clone(),
            detail: detail.to_owned(),
        }
    }

    /// Sends `request` and returns the answer's fields (with `ok`), or the server's
    /// refusal as [`ClientError::Refused`].
    pub fn request(&mut self, request: &Request) -> Result<Map<String, Value>, ClientError> {
        if let Err(sent) = self.send(request) {
            // A server that turns clients away writes why and closes before reading the
            // request: its sentence says more than the broken pipe.
            return match self.read() {
                Ok(Some(answer)) if answer.get("ok") == Some(&Value::Bool(false)) => {
                    Err(Self::refusal(&answer))
                }
                _ => Err(sent),
            };
        }
        let answer = self.read()?.ok_or(ClientError::Closed(self.path.clone()))?;
        match answer.get("ok") {
            Some(Value::Bool(true)) => Ok(answer),
            Some(Value::Bool(false)) => Err(Self::refusal(&answer)),
            _ => Err(self.bad("no \"ok\" field")),
        }
    }

    fn refusal(answer: &Map<String, Value>) -> ClientError {
        ClientError::Refused(
            answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("refused without a reason")
                .to_owned(),
        )
    }

    /// Sends `request` and reads field `field` of the answer as a `T`.
    pub fn request_field<T: DeserializeOwned>(
        &mut self,
        request: &Request,
        field: &str,
    ) -> Result<T, ClientError> {
        let mut answer = self.request(request)?;
        let value = answer.remove(field).unwrap_or(Value::Null);
        serde_json::from_value(value).map_err(|e| self.bad(&format!("{field}: {e}")))
    }

    /// The server's protocol version and role. A version-1 server, which does not know the
    /// request, is reported as protocol 1 of an unknown role.
    pub fn version(&mut self) -> Result<VersionInfo, ClientError> {
        match self.request(&Request::Version) {
            Ok(answer) => {
                serde_json::from_value(Value::Object(answer)).map_err(|e| self.bad(&e.to_string()))
            }
            Err(ClientError::Refused(sentence)) if sentence.contains("unknown variant") => {
                Ok(VersionInfo {
                    protocol: 1,
                    ..VersionInfo::default()
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Subscribes with `request` ([`Request::Events`] or [`Request::Logs`]); the connection
    /// then carries only that stream.
    pub fn subscribe(mut self, request: &Request) -> Result<Subscription, ClientError> {
        self.request(request)?;
        Ok(Subscription { client: self })
    }
}

/// A stream of events or log lines.
pub struct Subscription {
    client: Client,
}

/// Ends a [`Subscription`] from another thread: whoever waits in
/// [`next_line`](Subscription::next_line) gets `None`.
pub struct Closer(Stream);

impl Closer {
    /// Closes the connection (both directions).
    pub fn close(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

impl Subscription {
    /// A handle that ends this subscription from elsewhere.
    pub fn closer(&self) -> Result<Closer, ClientError> {
        self.client
            .writer
            .try_clone()
            .map(Closer)
            .map_err(|e| self.client.io(e))
    }

    /// The next line as a JSON object, waiting for it; `None` when the server hung up (it
    /// ended, or cut this subscriber off for not reading).
    pub fn next_line(&mut self) -> Result<Option<Map<String, Value>>, ClientError> {
        self.client.read()
    }

    /// Limits how long [`next_line`](Self::next_line) waits (`None`: forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.client.set_timeout(timeout)
    }
}

/// Connects, sends one request, and returns its answer.
pub fn request(path: &Path, request: &Request) -> Result<Map<String, Value>, ClientError> {
    Client::connect(path)?.request(request)
}
