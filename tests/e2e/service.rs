//! The spoke service (`spoke service`): profiles imported over its socket, tunnels created and
//! removed on request without a restart, and bad input of every kind refused with a sentence
//! while the service and its other clients carry on.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use slopn::control::{self, Client, ClientError, LogLine, ProfileSummary, Request, SpokeStatus};

use crate::lab::Lab;
use crate::metrics::{scrape, value};

fn ask(socket: &Path, request: Request) -> Result<Map<String, Value>, String> {
    control::request(socket, &request).map_err(|e| match e {
        ClientError::Refused(sentence) => sentence,
        other => panic!("{request:?}: {other}"),
    })
}

fn status(socket: &Path) -> SpokeStatus {
    Client::connect(socket)
        .unwrap()
        .request_field(&Request::Status, "status")
        .unwrap()
}

fn profiles(socket: &Path) -> Vec<String> {
    let list: Vec<ProfileSummary> = Client::connect(socket)
        .unwrap()
        .request_field(&Request::Profiles, "profiles")
        .unwrap();
    list.into_iter().map(|p| p.name).collect()
}

fn tun_exists(lab: &Lab) -> bool {
    lab.spoke_ns[0]
        .ip(&["link", "show", "dev", "slopn0"])
        .is_ok()
}

fn import(socket: &Path, name: &str, toml: &str) -> Result<Map<String, Value>, String> {
    ask(
        socket,
        Request::Import {
            name: name.into(),
            toml: toml.into(),
        },
    )
}

fn connect(socket: &Path, profile: Option<&str>) -> Result<Map<String, Value>, String> {
    ask(
        socket,
        Request::Connect {
            profile: profile.map(str::to_owned),
        },
    )
}

/// Spoke `i`'s file as `hub init` wrote it (the lab adds a `control_socket` for `spoke run`).
fn spoke_file(lab: &Lab, i: usize) -> String {
    let text = std::fs::read_to_string(lab.spoke_toml(i)).unwrap();
    let mut file: toml::Table = toml::from_str(&text).unwrap();
    file.remove("control_socket");
    toml::to_string(&file).unwrap()
}

fn wait_state(lab: &Lab, socket: &Path, state: &str, timeout: Duration) -> Duration {
    lab.wait_for(&format!("state {state}"), timeout, |_| {
        status(socket).state.name() == state
    })
}

#[test]
fn the_service_imports_connects_disconnects_and_reconnects_without_restarting() {
    let Some(mut lab) = Lab::new("service", 1) else {
        return;
    };
    lab.start_hub();
    const METRICS: &str = "127.0.0.1:9466";
    lab.start_service_with(0, "root", &["--metrics-listen", METRICS]);
    let socket = lab.service_socket(0);
    let state = |lab: &Lab, name: &str| {
        let series = format!("slopn_spoke_state{{state=\"{name}\"}}");
        value(&scrape(&lab.spoke_ns[0], METRICS), &series)
    };

    // The socket belongs to the group given (root's here, which always exists), mode 0660.
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 0);
    let version = Client::connect(&socket).unwrap().version().unwrap();
    assert_eq!(version.role, control::Role::SpokeService);

    // It starts with nothing: no profile, no tunnel.
    assert_eq!(status(&socket).state.name(), "disconnected");
    assert_eq!(
        state(&lab, "disconnected"),
        Some(1.0),
        "the service's metrics"
    );
    assert!(profiles(&socket).is_empty());
    assert!(!tun_exists(&lab), "no TUN device before a connect");

    let answer = import(&socket, "work", &spoke_file(&lab, 0)).unwrap();
    assert!(answer.get("warning").is_none(), "{answer:?}");
    // A file made for `spoke run` works too; its control socket means nothing here.
    let for_run = std::fs::read_to_string(lab.spoke_toml(0)).unwrap();
    let answer = import(&socket, "for-run", &for_run).unwrap();
    assert!(
        answer["warning"]
            .as_str()
            .unwrap()
            .contains("`control_socket`")
    );
    ask(
        &socket,
        Request::Remove {
            name: "for-run".into(),
        },
    )
    .unwrap();
    assert_eq!(answer["profile"]["hub"], "10.0.0.2:4433");
    assert_eq!(profiles(&socket), ["work"]);
    let dir = lab.service_profiles(0);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("work.toml")), 0o600);

    let start = Instant::now();
    connect(&socket, Some("work")).unwrap();
    wait_state(&lab, &socket, "established", Duration::from_secs(10));
    println!("connect to established: {:?}", start.elapsed());
    assert_eq!(state(&lab, "established"), Some(1.0));
    assert_eq!(state(&lab, "disconnected"), Some(0.0));
    let address = status(&socket).addresses[0].to_string();
    lab.ping(&lab.spoke_ns[0], "10.100.0.1", 3)
        .expect("ping through the tunnel");
    let up = status(&socket);
    assert_eq!(up.profile.as_deref(), Some("work"));
    assert!(up.rx_packets >= 3 && up.tx_packets >= 3, "{up:?}");
    assert!(up.connected_secs.unwrap() > 0.0);
    assert_eq!(up.hub, "10.0.0.2:4433");

    // Disconnect answers once the TUN device and routes are gone.
    ask(&socket, Request::Disconnect { session: None }).unwrap();
    assert!(!tun_exists(&lab), "the TUN device is removed by disconnect");
    let routes = lab.spoke_ns[0].ip(&["route", "show"]).unwrap();
    assert!(!routes.contains("10.100.0."), "route left: {routes}");
    let down = status(&socket);
    assert_eq!(down.state.name(), "disconnected");
    assert_eq!(
        down.profile.as_deref(),
        Some("work"),
        "remembers the profile"
    );
    lab.wait_for("the hub to see the goodbye", Duration::from_secs(3), |l| {
        l.hub_status().is_some_and(|h| h["spokes_assigned"] == 0)
    });

    // Connect again without naming the profile: the last one, the same address.
    connect(&socket, None).unwrap();
    wait_state(&lab, &socket, "established", Duration::from_secs(10));
    assert_eq!(status(&socket).addresses[0].to_string(), address);

    // The hub goes away and comes back: reconnecting, then established, by itself.
    lab.signal_hub("KILL");
    let bound = lab.dead_hub_noticed_within(0) + Duration::from_secs(2);
    lab.wait_for("the spoke to notice", bound, |_| {
        status(&socket).state.name() != "established"
    });
    let waiting = status(&socket);
    assert!(
        waiting.sessions == 1 && waiting.connect_attempts >= 1,
        "{waiting:?}"
    );
    lab.start_hub();
    wait_state(&lab, &socket, "established", Duration::from_secs(10));

    // The log lines of all that are there for a client to read.
    let mut logs = Client::connect(&socket)
        .unwrap()
        .subscribe(&Request::Logs)
        .unwrap();
    logs.set_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut messages = Vec::new();
    while let Ok(Some(line)) = logs.next_line() {
        let line: LogLine = serde_json::from_value(Value::Object(line)).unwrap();
        messages.push(line.message);
        if messages.last().unwrap().starts_with("connected to the hub") && messages.len() > 3 {
            break;
        }
    }
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("spoke service ready")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("profile imported")),
        "{messages:?}"
    );

    // Stopping the service takes the tunnel and the socket with it.
    assert!(lab.signal_spoke(0, "TERM").success());
    assert!(!tun_exists(&lab));
    assert!(!socket.exists(), "socket removed");
}

#[test]
fn the_service_refuses_bad_input_with_a_sentence_saves_nothing_half_way_and_carries_on() {
    let Some(mut lab) = Lab::new("service_bad_input", 1) else {
        return;
    };
    lab.start_hub();
    lab.start_service(0, "slopn-test-no-such-group");
    let socket = lab.service_socket(0);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "no group: root only"
    );

    // A client that subscribes and never reads must not hold anyone up.
    let mut stalled = UnixStream::connect(&socket).unwrap();
    writeln!(stalled, "{}", Request::Events.to_line()).unwrap();
    let mut stalled_logs = UnixStream::connect(&socket).unwrap();
    writeln!(stalled_logs, "{}", Request::Logs.to_line()).unwrap();

    let good = spoke_file(&lab, 0);
    let file: toml::Table = toml::from_str(&good).unwrap();
    let without = |key: &str| {
        let mut f = file.clone();
        f.remove(key);
        toml::to_string(&f).unwrap()
    };
    let with = |key: &str, value: toml::Value| {
        let mut f = file.clone();
        f.insert(key.into(), value);
        toml::to_string(&f).unwrap()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad",
            "hub = \"x\" = 1\n[[[".into(),
            "not a valid spoke file",
        ),
        ("bad", format!("{good}colour = \"red\"\n"), "unknown field"),
        (
            "bad",
            format!("# {}\n{good}", "x".repeat(100_000)),
            "spoke files are a few KiB",
        ),
        (
            "bad",
            with("token", "t".repeat(5000).into()),
            "at most 4096",
        ),
        (
            "bad",
            with("ca_pem", "this is not a certificate".into()),
            "the CA certificate is unusable",
        ),
        (
            "bad",
            {
                let mut f = file.clone();
                f.remove("ca_pem");
                f.insert("ca".into(), "/etc/shadow".into());
                toml::to_string(&f).unwrap()
            },
            "must be inline",
        ),
        ("bad", with("hub", "no-port-here".into()), "not host:port"),
        ("bad", without("token"), "no credential"),
        ("a/b", good.clone(), "is not allowed"),
        ("..", good.clone(), "is not allowed"),
        ("../../etc/cron.d/x", good.clone(), "is not allowed"),
    ];
    for (name, toml, expected) in &cases {
        let e = import(&socket, name, toml).unwrap_err();
        assert!(
            e.contains(expected),
            "{name}: expected {expected:?} in {e:?}"
        );
    }
    // Nothing was saved, not even in part.
    assert!(profiles(&socket).is_empty());
    let dir = lab.service_profiles(0);
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert!(
        left.is_empty(),
        "files left in the profile directory: {left:?}"
    );

    // A name that does not resolve is saved (it may resolve later) with a warning, and a
    // connect says why it cannot work.
    let answer = import(&socket, "nowhere", &with("hub", "hub.invalid:4433".into())).unwrap();
    assert!(
        answer["warning"]
            .as_str()
            .unwrap()
            .contains("cannot resolve"),
        "{answer:?}"
    );
    let e = connect(&socket, Some("nowhere")).unwrap_err();
    assert!(e.contains("cannot resolve the hub address"), "{e}");
    let stopped = status(&socket);
    assert_eq!(stopped.state.name(), "stopped");
    assert!(stopped.error.unwrap().contains("cannot resolve"));

    let e = connect(&socket, Some("missing")).unwrap_err();
    assert!(e.contains("there is no profile named \"missing\""), "{e}");
    assert!(
        import(&socket, "nowhere", &good)
            .unwrap_err()
            .contains("exists already")
    );

    // Garbage and a 10 MB line on the socket: refused, counted, the service unharmed.
    let mut raw = UnixStream::connect(&socket).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(raw.try_clone().unwrap());
    writeln!(raw, "{{\"command\":").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("bad request"), "{line}");
    let mut huge = UnixStream::connect(&socket).unwrap();
    let _ = huge.write_all(&vec![b'{'; 10 << 20]);
    drop(huge);

    // A wrong token: the hub refuses, the service says so in a sentence.
    import(&socket, "wrong", &with("token", "not-the-token".into())).unwrap();
    connect(&socket, Some("wrong")).unwrap();
    wait_state(&lab, &socket, "stopped", Duration::from_secs(10));
    let refused = status(&socket);
    assert!(
        refused
            .error
            .as_deref()
            .unwrap()
            .contains("authentication failed"),
        "{refused:?}"
    );
    assert!(!tun_exists(&lab), "a refused tunnel leaves no TUN device");

    // Through all of it the service kept answering; the good profile still works.
    import(&socket, "good", &good).unwrap();
    connect(&socket, Some("good")).unwrap();
    wait_state(&lab, &socket, "established", Duration::from_secs(10));
    let counters = status(&socket).control;
    assert!(counters.refused >= cases.len() as u64 + 4, "{counters:?}");
    assert_eq!(counters.oversized, 1, "{counters:?}");
    assert!(
        import(&socket, "good-2", &good).is_ok()
            && ask(
                &socket,
                Request::Remove {
                    name: "good-2".into()
                }
            )
            .is_ok()
    );
    let e = ask(
        &socket,
        Request::Remove {
            name: "good".into(),
        },
    )
    .unwrap_err();
    assert!(e.contains("disconnect before removing"), "{e}");
    drop((stalled, stalled_logs));
}
