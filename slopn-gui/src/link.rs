//! The GUI's link to the spoke service: the only thing it talks to, through the control
//! socket.
//!
//! Three threads keep the window current without busy polling: one asks for the status once
//! a second (the rates change that often) and whenever woken; one follows the service's
//! events and wakes it, so state changes show at once; one follows the log lines. Each
//! reconnects by itself when the service goes away. Every result becomes a [`View`] handed
//! to a [`Sink`] (the window and tray, or a test).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use slopn_control::{
    Client, ClientError, Closer, LogLine, ProfileSummary, Request, SpokeStatus, Subscription,
    VersionInfo,
};

use crate::notify::{Notice, Notifier};
use crate::view::{HISTORY_SECS, ServiceAccess, View};

/// Log lines the GUI keeps (as many as the service).
pub const KEEP_LOG_LINES: usize = 1000;

/// How long a request may take. A disconnect waits for the goodbye (at most 2 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// How long to wait before trying a lost service again.
const RETRY: Duration = Duration::from_secs(1);

/// Where views, log lines and notifications go.
pub trait Sink: Send + Sync + 'static {
    /// The window's new content (sent when it changed).
    fn view(&self, view: &View);
    /// New log lines; with `reset`, the lines so far are to be forgotten first (the
    /// service's backlog follows).
    fn logs(&self, lines: &[LogLine], reset: bool);
    /// A desktop notification to show.
    fn notify(&self, notice: &Notice);
}

enum Wake {
    /// Ask for the status now; with `profiles`, the profile list too.
    Refresh { profiles: bool },
    /// Log lines are waiting.
    Logs,
}

struct Shared {
    socket: PathBuf,
    sink: Arc<dyn Sink>,
    wake: Mutex<Sender<Wake>>,
    view: Mutex<View>,
    logs: Mutex<Logs>,
    stop: AtomicBool,
    /// The open subscriptions (events, logs), closed when the link is dropped so that their
    /// threads end.
    closers: Mutex<[Option<Closer>; 2]>,
}

#[derive(Default)]
struct Logs {
    kept: VecDeque<LogLine>,
    pending: Vec<LogLine>,
    reset: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn wake(&self, wake: Wake) {
        let _ = lock(&self.wake).send(wake);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Subscribes with `request`, registered so that dropping the link ends it; `None` if
    /// the service cannot be reached or the link is stopping.
    fn subscribe(&self, request: &Request) -> Option<Subscription> {
        let subscription = Client::connect(&self.socket)
            .and_then(|c| c.subscribe(request))
            .ok()?;
        let closer = subscription.closer().ok()?;
        let mut closers = lock(&self.closers);
        if self.stopped() {
            return None;
        }
        closers[usize::from(*request == Request::Logs)] = Some(closer);
        Some(subscription)
    }

    /// Sleeps `d` unless the link stops meanwhile (checked every 100 ms).
    fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopped() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
        }
    }
}

/// A running link; dropping it stops its threads.
pub struct Link {
    shared: Arc<Shared>,
}

impl Link {
    /// Starts following the service at `socket`, refreshing every `tick` (one second in the
    /// app) and on every event.
    pub fn start(socket: &Path, sink: Arc<dyn Sink>, tick: Duration) -> Self {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            socket: socket.to_owned(),
            sink,
            wake: Mutex::new(tx),
            view: Mutex::new(View::unavailable(ServiceAccess::Unknown)),
            logs: Mutex::new(Logs::default()),
            stop: AtomicBool::new(false),
            closers: Mutex::new([None, None]),
        });
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            let _ = std::thread::Builder::new().name(name.into()).spawn(f);
        };
        let s = shared.clone();
        spawn("slopn-gui-status", Box::new(move || poll(&s, &rx, tick)));
        let s = shared.clone();
        spawn("slopn-gui-events", Box::new(move || follow_events(&s)));
        let s = shared.clone();
        spawn("slopn-gui-logs", Box::new(move || follow_logs(&s)));
        Self { shared }
    }

    /// What the window shows now.
    pub fn view(&self) -> View {
        lock(&self.shared.view).clone()
    }

    /// The log lines kept.
    pub fn logs(&self) -> Vec<LogLine> {
        lock(&self.shared.logs).kept.iter().cloned().collect()
    }

    /// Sends a request on a connection of its own; errors as sentences for the window.
    fn request(&self, request: &Request) -> Result<Map<String, Value>, String> {
        let answer = Client::connect(&self.shared.socket)
            .and_then(|mut client| {
                client.set_timeout(Some(REQUEST_TIMEOUT))?;
                client.request(request)
            })
            .map_err(|e| match e {
                ClientError::Refused(sentence) => sentence,
                other => match ServiceAccess::from_error(&other) {
                    ServiceAccess::Problem(sentence) => sentence,
                    _ => other.to_string(),
                },
            });
        self.shared.wake(Wake::Refresh { profiles: true });
        answer
    }

    /// Connects `profile`.
    pub fn connect(&self, profile: &str) -> Result<(), String> {
        self.request(&Request::Connect {
            profile: Some(profile.to_owned()),
        })
        .map(drop)
    }

    /// Disconnects; returns once the tunnel is gone.
    pub fn disconnect(&self) -> Result<(), String> {
        self.request(&Request::Disconnect { session: None })
            .map(drop)
    }

    /// Imports a spoke file's text as profile `name`; a warning sentence if the service has
    /// one (the hub's name does not resolve now).
    pub fn import(&self, name: &str, toml: &str) -> Result<Option<String>, String> {
        let answer = self.request(&Request::Import {
            name: name.to_owned(),
            toml: toml.to_owned(),
        })?;
        Ok(answer
            .get("warning")
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    /// Turns the kill switch of profile `name` on or off (at once if it is connected).
    pub fn set_kill_switch(&self, name: &str, on: bool) -> Result<(), String> {
        self.request(&Request::SetKillSwitch {
            profile: name.to_owned(),
            on,
        })
        .map(drop)
    }

    /// Removes profile `name`.
    pub fn remove(&self, name: &str) -> Result<(), String> {
        self.request(&Request::Remove {
            name: name.to_owned(),
        })
        .map(drop)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for closer in lock(&self.shared.closers)
            .iter_mut()
            .filter_map(Option::take)
        {
            closer.close();
        }
    }
}

/// The status thread's connection and what it remembers between refreshes.
struct Poller {
    client: Option<Client>,
    profiles: Option<Vec<ProfileSummary>>,
    history: VecDeque<(f64, f64)>,
    last_sample: Option<Instant>,
    notifier: Notifier,
}

fn poll(shared: &Shared, wakes: &Receiver<Wake>, tick: Duration) {
    let mut poller = Poller {
        client: None,
        profiles: None,
        history: VecDeque::with_capacity(HISTORY_SECS),
        last_sample: None,
        notifier: Notifier::default(),
    };
    let mut next_tick = Instant::now();
    while !shared.stopped() {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match wakes.recv_timeout(wait) {
            Ok(Wake::Logs) => {
                flush_logs(shared);
                continue;
            }
            Ok(Wake::Refresh { profiles }) => {
                if profiles {
                    poller.profiles = None;
                }
            }
            Err(RecvTimeoutError::Timeout) => next_tick = Instant::now() + tick,
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let view = poller.refresh(&shared.socket);
        let changed = {
            let mut current = lock(&shared.view);
            let changed = *current != view;
            *current = view.clone();
            changed
        };
        if changed {
            shared.sink.view(&view);
        }
        let detail = view.detail.as_deref();
        if let Some(notice) = poller.notifier.update(Instant::now(), view.phase, detail) {
            shared.sink.notify(&notice);
        }
    }
}

impl Poller {
    /// Asks the service; on any failure the connection is dropped and made again next time.
    /// A connection that breaks is tried again at once on a new one, so that a service that
    /// stopped is reported as stopped, not as a broken connection.
    fn refresh(&mut self, socket: &Path) -> View {
        let mut answer = self.ask(socket);
        if answer.is_err() && self.client.take().is_some() {
            answer = self.ask(socket);
        }
        match answer {
            Ok(mut view) => {
                self.sample(view.rx_rate, view.tx_rate);
                view.history = self.history.iter().copied().collect();
                view
            }
            Err(problem) => {
                self.profiles = None;
                View::unavailable(problem)
            }
        }
    }

    fn ask(&mut self, socket: &Path) -> Result<View, ServiceAccess> {
        let client = match &mut self.client {
            Some(client) => client,
            None => {
                let mut client = Client::connect(socket)
                    .and_then(|c| c.set_timeout(Some(REQUEST_TIMEOUT)).map(|()| c))
                    .map_err(|e| ServiceAccess::from_error(&e))?;
                let version: VersionInfo = client
                    .version()
                    .map_err(|e| ServiceAccess::from_error(&e))?;
                match ServiceAccess::from_version(&version) {
                    ServiceAccess::Ok => self.client.insert(client),
                    problem => return Err(problem),
                }
            }
        };
        let status: SpokeStatus = client
            .request_field(&Request::Status, "status")
            .map_err(|e| ServiceAccess::from_error(&e))?;
        let profiles = match self.profiles.take() {
            Some(profiles) => profiles,
            None => client
                .request_field(&Request::Profiles, "profiles")
                .map_err(|e| ServiceAccess::from_error(&e))?,
        };
        let view = View::from_status(&status, profiles.clone());
        self.profiles = Some(profiles);
        Ok(view)
    }

    /// Keeps one rate sample a second for the chart.
    fn sample(&mut self, rx: f64, tx: f64) {
        let now = Instant::now();
        if self
            .last_sample
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(950))
        {
            return;
        }
        self.last_sample = Some(now);
        if self.history.len() == HISTORY_SECS {
            self.history.pop_front();
        }
        self.history.push_back((rx, tx));
    }
}

/// Wakes the status thread on every event (and the profile list on `profiles_changed`).
fn follow_events(shared: &Shared) {
    while !shared.stopped() {
        if let Some(mut events) = shared.subscribe(&Request::Events) {
            shared.wake(Wake::Refresh { profiles: true });
            while let Ok(Some(event)) = events.next_line() {
                if shared.stopped() {
                    return;
                }
                let profiles =
                    event.get("event").and_then(Value::as_str) == Some("profiles_changed");
                shared.wake(Wake::Refresh { profiles });
            }
        }
        shared.pause(RETRY);
    }
}

/// Keeps the service's log lines and hands new ones to the status thread to pass on.
fn follow_logs(shared: &Shared) {
    while !shared.stopped() {
        if let Some(mut lines) = shared.subscribe(&Request::Logs) {
            {
                let mut logs = lock(&shared.logs);
                logs.kept.clear();
                logs.pending.clear();
                logs.reset = true;
            }
            while let Ok(Some(line)) = lines.next_line() {
                if shared.stopped() {
                    return;
                }
                let line: LogLine = serde_json::from_value(Value::Object(line)).unwrap_or_default();
                {
                    let mut logs = lock(&shared.logs);
                    if logs.kept.len() == KEEP_LOG_LINES {
                        logs.kept.pop_front();
                    }
                    logs.kept.push_back(line.clone());
                    logs.pending.push(line);
                }
                shared.wake(Wake::Logs);
            }
        }
        shared.pause(RETRY);
    }
}

fn flush_logs(shared: &Shared) {
    let (lines, reset) = {
        let mut logs = lock(&shared.logs);
        if logs.pending.is_empty() && !logs.reset {
            return;
        }
        (
            std::mem::take(&mut logs.pending),
            std::mem::take(&mut logs.reset),
        )
    };
    shared.sink.logs(&lines, reset);
}
