//! The server side: a Unix stream socket or a Windows named pipe, one thread per client, requests answered by a
//! [`Handler`], `events` and `logs` streamed from [`Topic`]s.
//!
//! Nothing a client sends can stop the server or stall the others: lines longer than
//! [`MAX_REQUEST_BYTES`] end that connection, unparsable ones are answered with a sentence,
//! at most [`MAX_CLIENTS`] are served at once (at most [`MAX_SUBSCRIBERS`] of them
//! subscribers, so that requests always find a place), a request must be complete within
//! [`IDLE_TIMEOUT`], and a subscriber that stops reading is cut off rather than waited for.
//! Every refusal is counted ([`ControlStats`]).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::protocol::{ControlStats, MAX_REQUEST_BYTES, PROTOCOL_VERSION, Request, Role};
use crate::topic::{Subscription, Topic};
use crate::transport::{Access, Listener, Stream};

/// Clients served at once; further ones are told so and turned away.
pub const MAX_CLIENTS: usize = 64;

/// Of those, clients subscribed to `events` or `logs`; the rest are kept for requests.
pub const MAX_SUBSCRIBERS: usize = 48;

/// How long a write to a client may block before the client is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a subscription with nothing to send checks whether its client hung up.
const HANGUP_CHECK: Duration = Duration::from_secs(1);

/// A request connection that does not complete a request within this long (of connecting,
/// or of its last answer) is closed, so that idle or trickling clients cannot hold the
/// [`MAX_CLIENTS`] places (a client that polls once a second never comes near it).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A successful answer's fields besides `"ok": true`, or a sentence for the user.
pub type Answer = Result<Map<String, Value>, String>;

/// What answers the requests (all but `version`, `events` and `logs`, which the server
/// answers itself).
pub trait Handler: Send + Sync + 'static {
    /// What this server is, for `version`.
    fn role(&self) -> Role;
    /// Answers one request. `Err` is a sentence saying what is wrong and what to do.
    fn handle(&self, request: &Request) -> Answer;
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process answers on the socket.
    #[error(
        "control socket {0} is in use: another hub or spoke is running with it. Stop it or use \
         another socket path."
    )]
    InUse(PathBuf),
    /// Creating, binding or securing the socket failed.
    #[error("control socket {path}: {what}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    refused: AtomicU64,
    oversized: AtomicU64,
    busy: AtomicU64,
    /// Subscribers whose writes blocked for [`WRITE_TIMEOUT`] (the topics count those that
    /// fell behind while the write still went on)
    cut_off: AtomicU64,
    timed_out: AtomicU64,
}

struct Shared {
    handler: Arc<dyn Handler>,
    events: Arc<Topic>,
    logs: Arc<Topic>,
    counters: Counters,
    clients: AtomicUsize,
    subscribers: AtomicUsize,
    /// [`IDLE_TIMEOUT`] unless [`Server::set_idle_timeout`] changed it, in milliseconds
    idle_timeout_ms: AtomicU64,
    stopping: AtomicBool,
}

impl Shared {
    fn stats(&self) -> ControlStats {
        let c = &self.counters;
        ControlStats {
            requests: c.requests.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            oversized: c.oversized.load(Ordering::Relaxed),
            busy: c.busy.load(Ordering::Relaxed),
            cut_off: self.events.cut_off()
                + self.logs.cut_off()
                + c.cut_off.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            clients: self.clients.load(Ordering::Relaxed) as u64,
        }
    }
}

/// A running control socket. Dropping it stops accepting and removes the socket file.
pub struct Server {
    path: PathBuf,
    shared: Arc<Shared>,
}

impl Server {
    /// Serves `path` (creating its directory, replacing a stale socket) with `handler`;
    /// `events` and `logs` are what `events` and `logs` subscribers receive.
    pub fn start(
        path: &Path,
        access: Access,
        handler: Arc<dyn Handler>,
        events: Arc<Topic>,
        logs: Arc<Topic>,
    ) -> Result<Self, ServerError> {
        let listener = Listener::bind(path, &access)?;
        let shared = Arc::new(Shared {
            handler,
            events,
            logs,
            counters: Counters::default(),
            clients: AtomicUsize::new(0),
            subscribers: AtomicUsize::new(0),
            idle_timeout_ms: AtomicU64::new(IDLE_TIMEOUT.as_millis() as u64),
            stopping: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("slopn-control".into())
            .spawn(move || accept(listener, weak))
            .map_err(|source| ServerError::Io {
                path: path.to_owned(),
                what: "starting its thread",
                source,
            })?;
        Ok(Self {
            path: path.to_owned(),
            shared,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket's counters.
    pub fn stats(&self) -> ControlStats {
        self.shared.stats()
    }

    /// Changes how long a request connection has to complete a request ([`IDLE_TIMEOUT`]
    /// by default), for the requests waited for after this.
    pub fn set_idle_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.shared.idle_timeout_ms.store(ms, Ordering::Relaxed);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        // Wake the accepting thread so that it sees the flag and ends.
        Listener::close(&self.path);
    }
}

fn accept(listener: Listener, shared: Weak<Shared>) {
    loop {
        let stream = listener.accept();
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut stream) = stream else {
            // Out of descriptors, or (Windows) no new pipe instance: let it pass rather
            // than spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if shared.clients.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
            shared.clients.fetch_sub(1, Ordering::Relaxed);
            shared.counters.busy.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            let _ = write_line(
                &mut stream,
                &refusal(&format!(
                    "{MAX_CLIENTS} clients are connected to the control socket already; close \
                     some and try again"
                )),
            );
            continue;
        }
        let spawned = std::thread::Builder::new()
            .name("slopn-control-client".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    serve(&shared, stream);
                    shared.clients.fetch_sub(1, Ordering::Relaxed);
                }
            });
        if spawned.is_err() {
            shared.clients.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn refusal(sentence: &str) -> String {
    json!({ "ok": false, "error": sentence }).to_string()
}

fn write_line(stream: &mut Stream, line: &str) -> io::Result<()> {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    stream.write_all(&buf)
}

/// The outcome of reading one request line.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line is in the buffer (without its `\n`).
    Complete,
    /// The client hung up.
    End,
    /// The line exceeds the limit (what was read is discarded).
    TooLong,
}

/// Reads up to the next `\n`, never buffering more than `max` bytes; `before_read` runs
/// before each read (to set its timeout).
fn read_line<R: BufRead>(
    reader: &mut R,
    max: usize,
    line: &mut Vec<u8>,
    mut before_read: impl FnMut(&mut R) -> io::Result<()>,
) -> io::Result<Line> {
    line.clear();
    loop {
        before_read(reader)?;
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(if line.is_empty() {
                Line::End
            } else {
                Line::Complete
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], true),
            None => (available, false),
        };
        if line.len() + chunk.len() > max {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(chunk);
        let used = chunk.len() + usize::from(done);
        reader.consume(used);
        if done {
            return Ok(Line::Complete);
        }
    }
}

fn parse(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| {
        format!(
            "bad request: {e}. A request is one JSON object per line, such as \
             {{\"command\":\"status\"}} (docs/PROTOCOL.md section 8)"
        )
    })
}

fn serve(shared: &Shared, stream: Stream) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let counters = &shared.counters;
    loop {
        // The whole request within IDLE_TIMEOUT, however it trickles in.
        let idle_timeout = Duration::from_millis(shared.idle_timeout_ms.load(Ordering::Relaxed));
        let deadline = Instant::now() + idle_timeout;
        let until_deadline = |reader: &mut BufReader<Stream>| {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            reader.get_ref().set_read_timeout(Some(left))
        };
        match read_line(&mut reader, MAX_REQUEST_BYTES, &mut line, until_deadline) {
            Ok(Line::Complete) => {}
            Ok(Line::End) => return,
            Err(e) => {
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    counters.timed_out.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            Ok(Line::TooLong) => {
                counters.oversized.fetch_add(1, Ordering::Relaxed);
                let _ = write_line(
                    &mut writer,
                    &refusal(&format!(
                        "request longer than {} KiB: refused, and the connection closed",
                        MAX_REQUEST_BYTES / 1024
                    )),
                );
                return;
            }
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let answer = match parse(&line) {
            Ok(Request::Events) => return subscribe(shared, &shared.events, writer, reader),
            Ok(Request::Logs) => return subscribe(shared, &shared.logs, writer, reader),
            Ok(Request::Version) => Ok(version(shared.handler.role())),
            Ok(request) => {
                let mut answer = shared.handler.handle(&request);
                if let (Request::Status, Ok(fields)) = (&request, &mut answer) {
                    add_control_stats(fields, shared.stats());
                }
                answer
            }
            Err(e) => Err(e),
        };
        let reply = match answer {
            Ok(mut fields) => {
                fields.insert("ok".into(), Value::Bool(true));
                Value::Object(fields).to_string()
            }
            Err(sentence) => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                refusal(&sentence)
            }
        };
        if write_line(&mut writer, &reply).is_err() {
            return;
        }
    }
}

fn version(role: Role) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("protocol".into(), json!(PROTOCOL_VERSION));
    fields.insert("role".into(), json!(role));
    fields.insert("software".into(), json!(env!("CARGO_PKG_VERSION")));
    fields
}

fn add_control_stats(fields: &mut Map<String, Value>, stats: ControlStats) {
    if let Some(Value::Object(status)) = fields.get_mut("status") {
        status.insert("control".into(), json!(stats));
    }
}

/// Streams `topic` to the client until it hangs up, stops reading, or is cut off. Anything
/// the client sends meanwhile is read and ignored.
fn subscribe(shared: &Shared, topic: &Arc<Topic>, mut writer: Stream, reader: BufReader<Stream>) {
    if shared.subscribers.fetch_add(1, Ordering::Relaxed) >= MAX_SUBSCRIBERS {
        shared.subscribers.fetch_sub(1, Ordering::Relaxed);
        shared.counters.busy.fetch_add(1, Ordering::Relaxed);
        let _ = write_line(
            &mut writer,
            &refusal(&format!(
                "{MAX_SUBSCRIBERS} clients follow events or logs already; close some and try \
                 again"
            )),
        );
        return;
    }
    let mut subscription = topic.subscribe();
    if let Err(e) = stream(&mut subscription, &mut writer, reader) {
        let blocked = matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        );
        // A subscriber the topic cut off already (its queue overflowed while the write
        // blocked) is counted there.
        let counted = loop {
            match subscription.lines.try_recv() {
                Ok(_) => {}
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if blocked && !counted {
            shared.counters.cut_off.fetch_add(1, Ordering::Relaxed);
        }
    }
    drop(subscription);
    shared.subscribers.fetch_sub(1, Ordering::Relaxed);
}

/// [`subscribe`]'s stream; ends with the write error that ended it, if one did.
fn stream(
    subscription: &mut Subscription,
    writer: &mut Stream,
    mut reader: BufReader<Stream>,
) -> io::Result<()> {
    write_line(writer, r#"{"ok":true}"#)?;
    for line in std::mem::take(&mut subscription.backlog) {
        write_line(writer, &line)?;
    }
    let _ = reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(1)));
    loop {
        match subscription.lines.recv_timeout(HANGUP_CHECK) {
            Ok(line) => write_line(writer, &line)?,
            Err(RecvTimeoutError::Timeout) if !hung_up(&mut reader) => {}
            Err(_) => return Ok(()),
        }
    }
}

/// Whether a subscribed client closed its side (anything it sends is ignored).
fn hung_up(reader: &mut BufReader<Stream>) -> bool {
    let mut scratch = [0; 512];
    match reader.get_mut().read(&mut scratch) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_and_split() {
        let input = b"{\"a\":1}\n\nabcdefghij\nlast".as_slice();
        let mut reader = BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        assert_eq!(
            read_line(&mut reader, 8, &mut line, |_| Ok(())).unwrap(),
            Line::Complete
        );
        assert_eq!(line, b"{\"a\":1}");
        assert_eq!(
            read_line(&mut reader, 8, &mut line, |_| Ok(())).unwrap(),
            Line::Complete
        );
        assert!(line.is_empty());
        assert_eq!(
            read_line(&mut reader, 8, &mut line, |_| Ok(())).unwrap(),
            Line::TooLong
        );
        let mut reader = BufReader::new(b"last".as_slice());
        assert_eq!(
            read_line(&mut reader, 8, &mut line, |_| Ok(())).unwrap(),
            Line::Complete
        );
        assert_eq!(line, b"last");
        assert_eq!(
            read_line(&mut reader, 8, &mut line, |_| Ok(())).unwrap(),
            Line::End
        );
    }

    #[test]
    fn bad_requests_get_a_sentence() {
        for bad in [&b"garbage"[..], b"{\"command\":\"explode\"}", b"\xff\xfe"] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with("bad request: "), "{e}");
            assert!(e.contains("{\"command\":\"status\"}"), "{e}");
        }
    }
}
