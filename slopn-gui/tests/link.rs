//! The GUI backend against an in-process fake spoke service that speaks the real socket
//! protocol (slopn-control's server): no root, no tunnel, no window.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, json};
use slopn_control::{
    Access, Answer, Handler, LogLine, ProfileSummary, Request, Role, Server, SpokeStatus, Topic,
    TunnelState,
};
use slopn_gui::link::{Link, Sink};
use slopn_gui::notify::Notice;
use slopn_gui::view::{Phase, ServiceAccess, View};

/// A spoke service in miniature: profiles in memory, a tunnel that is up as soon as asked.
struct FakeService {
    role: Role,
    status: Mutex<SpokeStatus>,
    profiles: Mutex<Vec<ProfileSummary>>,
    events: Arc<Topic>,
}

impl FakeService {
    fn set(&self, f: impl FnOnce(&mut SpokeStatus)) {
        f(&mut self.status.lock().unwrap());
        self.events
            .publish(json!({ "event": "changed" }).to_string());
    }
}

impl Handler for FakeService {
    fn role(&self) -> Role {
        self.role
    }

    fn handle(&self, request: &Request) -> Answer {
        let mut fields = Map::new();
        match request {
            Request::Status => {
                fields.insert("status".into(), json!(*self.status.lock().unwrap()));
            }
            Request::Profiles => {
                fields.insert("profiles".into(), json!(*self.profiles.lock().unwrap()));
            }
            Request::Import { name, toml } => {
                if name.contains('/') {
                    return Err(format!("the profile name {name:?} is not allowed"));
                }
                let hub = toml
                    .lines()
                    .find_map(|l| l.strip_prefix("hub = "))
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_owned();
                self.profiles.lock().unwrap().push(ProfileSummary {
                    name: name.clone(),
                    hub,
                    server_name: "hub".into(),
                    auth: "token".into(),
                    full_tunnel: true,
                    ..ProfileSummary::default()
                });
                self.events
                    .publish(json!({ "event": "profiles_changed" }).to_string());
                if hub_is_unknown(toml) {
                    fields.insert("warning".into(), json!("cannot resolve the hub address"));
                }
            }
            Request::Connect { profile } => {
                let profile = profile.clone();
                self.set(|s| {
                    *s = SpokeStatus {
                        state: TunnelState::Established,
                        profile,
                        hub: "10.0.0.2:4433".into(),
                        addresses: vec!["10.100.0.2".parse().unwrap()],
                        rtt_ms: Some(0.4),
                        tun_mtu: Some(1414),
                        connected_secs: Some(1.0),
                        sessions: 1,
                        connect_attempts: 1,
                        ..SpokeStatus::default()
                    }
                });
            }
            Request::Disconnect { .. } => {
                self.set(|s| {
                    *s = SpokeStatus {
                        profile: s.profile.clone(),
                        ..SpokeStatus::default()
                    }
                });
            }
            Request::SetKillSwitch { profile, on } => {
                let mut profiles = self.profiles.lock().unwrap();
                let Some(p) = profiles.iter_mut().find(|p| &p.name == profile) else {
                    return Err(format!("there is no profile named {profile:?}"));
                };
                p.kill_switch = *on;
                drop(profiles);
                self.set(|s| s.kill_switch = *on && s.state == TunnelState::Established);
                self.events
                    .publish(json!({ "event": "profiles_changed" }).to_string());
            }
            Request::Remove { name } => {
                self.profiles.lock().unwrap().retain(|p| &p.name != name);
                self.events
                    .publish(json!({ "event": "profiles_changed" }).to_string());
            }
            other => return Err(format!("not in the fake: {other:?}")),
        }
        Ok(fields)
    }
}

fn hub_is_unknown(toml: &str) -> bool {
    toml.contains(".invalid")
}

struct Fake {
    service: Arc<FakeService>,
    logs: Arc<Topic>,
    _server: Server,
}

/// A directory of the test's own, removed when it ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("slopn-gui-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("spoke.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn serve(socket: &Path, role: Role) -> Fake {
    let events = Arc::new(Topic::new(0));
    let logs = Arc::new(Topic::new(100));
    let service = Arc::new(FakeService {
        role,
        status: Mutex::new(SpokeStatus::default()),
        profiles: Mutex::new(Vec::new()),
        events: events.clone(),
    });
    let server =
        Server::start(socket, Access::OWNER, service.clone(), events, logs.clone()).unwrap();
    Fake {
        service,
        logs,
        _server: server,
    }
}

/// Records what the window would have been given.
#[derive(Default)]
struct Recorder {
    views: Mutex<Vec<View>>,
    logs: Mutex<Vec<LogLine>>,
    notices: Mutex<Vec<Notice>>,
}

impl Sink for Recorder {
    fn view(&self, view: &View) {
        self.views.lock().unwrap().push(view.clone());
    }
    fn logs(&self, lines: &[LogLine], reset: bool) {
        let mut logs = self.logs.lock().unwrap();
        if reset {
            logs.clear();
        }
        logs.extend_from_slice(lines);
    }
    fn notify(&self, notice: &Notice) {
        self.notices.lock().unwrap().push(notice.clone());
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start(socket: &Path, tick: Duration) -> (Link, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    (Link::start(socket, recorder.clone(), tick), recorder)
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_missing_service_is_explained_and_followed_once_it_starts() {
    let dir = TempDir::new("missing");
    let socket = dir.socket();
    let (link, recorder) = start(&socket, SECOND);
    wait_for("the problem", 5 * SECOND, || {
        matches!(link.view().service, ServiceAccess::Problem(_))
    });
    let view = link.view();
    assert_eq!(view.phase, Phase::Unavailable);
    let ServiceAccess::Problem(sentence) = view.service else {
        unreachable!()
    };
    assert!(
        sentence.contains("sudo systemctl start slopn-spoke"),
        "{sentence}"
    );
    assert_eq!(
        link.connect("work").unwrap_err(),
        sentence,
        "commands say the same"
    );

    let _fake = serve(&socket, Role::SpokeService);
    wait_for("the service", 5 * SECOND, || {
        link.view().phase == Phase::Disconnected
    });
    assert_eq!(link.view().service, ServiceAccess::Ok);
    assert!(recorder.views.lock().unwrap().len() >= 2);
}

#[test]
fn commands_reach_the_service_and_the_view_follows() {
    let dir = TempDir::new("commands");
    let socket = dir.socket();
    let fake = serve(&socket, Role::SpokeService);
    let (link, _recorder) = start(&socket, SECOND);
    wait_for("the service", 5 * SECOND, || {
        link.view().service == ServiceAccess::Ok
    });

    assert_eq!(
        link.import("work", "hub = \"10.0.0.2:4433\"\n").unwrap(),
        None
    );
    let warning = link
        .import("far", "hub = \"hub.invalid:4433\"\n")
        .unwrap()
        .unwrap();
    assert!(warning.contains("cannot resolve"));
    let refused = link.import("a/b", "").unwrap_err();
    assert!(refused.contains("not allowed"), "{refused}");
    wait_for("the profiles", 5 * SECOND, || {
        link.view().profiles.len() == 2
    });

    link.connect("work").unwrap();
    wait_for("connected", 5 * SECOND, || {
        link.view().phase == Phase::Connected
    });
    let view = link.view();
    assert_eq!(view.address.as_deref(), Some("10.100.0.2"));
    assert_eq!(view.profile.as_deref(), Some("work"));
    assert_eq!((view.mtu, view.rtt_ms), (Some(1414), Some(0.4)));
    assert_eq!(view.tone, "green");

    // The kill switch toggle: saved in the profile, on in the status of its tunnel.
    assert!(!view.kill_switch);
    link.set_kill_switch("work", true).unwrap();
    wait_for("the kill switch", 5 * SECOND, || {
        let view = link.view();
        view.kill_switch
            && view
                .profiles
                .iter()
                .any(|p| p.name == "work" && p.kill_switch)
    });
    let refused = link.set_kill_switch("nobody", true).unwrap_err();
    assert!(refused.contains("no profile named"), "{refused}");

    link.disconnect().unwrap();
    wait_for("disconnected", 5 * SECOND, || {
        link.view().phase == Phase::Disconnected
    });
    link.remove("far").unwrap();
    wait_for("one profile", 5 * SECOND, || {
        link.view().profiles.len() == 1
    });
    drop(fake);
}

#[test]
fn events_refresh_the_window_at_once_without_waiting_for_the_tick() {
    let dir = TempDir::new("events");
    let socket = dir.socket();
    let fake = serve(&socket, Role::SpokeService);
    // A tick of an hour: only events can bring the change.
    let (link, _recorder) = start(&socket, Duration::from_secs(3600));
    wait_for("the service", 5 * SECOND, || {
        link.view().service == ServiceAccess::Ok
    });
    fake.service.set(|s| {
        s.state = TunnelState::Reconnecting;
        s.sessions = 1;
        s.retry_in_ms = Some(300);
    });
    wait_for("reconnecting", 5 * SECOND, || {
        link.view().phase == Phase::Reconnecting
    });
    assert!(
        link.view()
            .detail
            .unwrap()
            .contains("Next attempt in 0.3 s")
    );
}

#[test]
fn a_service_of_another_kind_or_age_is_named() {
    let dir = TempDir::new("old");
    let socket = dir.socket();
    let _fake = serve(&socket, Role::Spoke);
    let (link, _recorder) = start(&socket, SECOND);
    wait_for("the problem", 5 * SECOND, || {
        matches!(link.view().service, ServiceAccess::Problem(_))
    });
    let ServiceAccess::Problem(sentence) = link.view().service else {
        unreachable!()
    };
    assert!(sentence.contains("`spoke run`"), "{sentence}");
}

#[test]
fn log_lines_stream_to_the_window_backlog_first() {
    let dir = TempDir::new("logs");
    let socket = dir.socket();
    let fake = serve(&socket, Role::SpokeService);
    let line = |m: &str| {
        serde_json::to_string(&LogLine {
            time: "2026-11-30T03:15:57.123Z".into(),
            level: "INFO".into(),
            target: "slopn::service".into(),
            message: m.into(),
        })
        .unwrap()
    };
    fake.logs.publish(line("before the window"));
    let (link, recorder) = start(&socket, SECOND);
    wait_for("the backlog", 5 * SECOND, || {
        recorder.logs.lock().unwrap().len() == 1
    });
    fake.logs.publish(line("while it is open"));
    wait_for("the new line", 5 * SECOND, || {
        recorder.logs.lock().unwrap().len() == 2
    });
    let messages: Vec<String> = link.logs().into_iter().map(|l| l.message).collect();
    assert_eq!(messages, ["before the window", "while it is open"]);
}

#[test]
fn two_windows_show_the_same_state() {
    let dir = TempDir::new("two");
    let socket = dir.socket();
    let fake = serve(&socket, Role::SpokeService);
    let (a, _) = start(&socket, SECOND);
    let (b, _) = start(&socket, SECOND);
    a.import("work", "hub = \"10.0.0.2:4433\"\n").unwrap();
    a.connect("work").unwrap();
    wait_for("both connected", 5 * SECOND, || {
        a.view().phase == Phase::Connected && b.view().phase == Phase::Connected
    });
    let same = |v: View| View {
        history: Vec::new(),
        ..v
    };
    assert_eq!(same(a.view()), same(b.view()));
    b.disconnect().unwrap();
    wait_for("both disconnected", 5 * SECOND, || {
        a.view().phase == Phase::Disconnected && b.view().phase == Phase::Disconnected
    });
    drop(fake);
}

#[test]
fn a_lost_tunnel_is_notified_once_and_its_return_too() {
    let dir = TempDir::new("notify");
    let socket = dir.socket();
    let fake = serve(&socket, Role::SpokeService);
    let (link, recorder) = start(&socket, Duration::from_millis(200));
    link.import("work", "hub = \"10.0.0.2:4433\"\n").unwrap();
    link.connect("work").unwrap();
    wait_for("connected", 5 * SECOND, || {
        link.view().phase == Phase::Connected
    });
    fake.service.set(|s| s.state = TunnelState::Reconnecting);
    wait_for("the lost notice", 10 * SECOND, || {
        !recorder.notices.lock().unwrap().is_empty()
    });
    fake.service.set(|s| s.state = TunnelState::Established);
    wait_for("the back notice", 5 * SECOND, || {
        recorder.notices.lock().unwrap().len() == 2
    });
    let titles: Vec<String> = recorder
        .notices
        .lock()
        .unwrap()
        .iter()
        .map(|n| n.title.clone())
        .collect();
    assert_eq!(titles, ["SloPN: tunnel lost", "SloPN: connected again"]);
}
