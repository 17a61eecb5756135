//! The control socket against well-behaved and hostile clients, over a real Unix socket
//! (on Windows, a real named pipe: these tests run under Wine in `scripts/test`).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use slopn_control::{
    Access, Answer, Client, ClientError, Handler, MAX_CLIENTS, MAX_SUBSCRIBERS, Request, Role,
    SUBSCRIBER_QUEUE, Server, SpokeStatus, Topic, TunnelState,
};

/// A client's raw connection, for writing what a well-behaved client never would.
#[cfg(unix)]
type Raw = std::os::unix::net::UnixStream;

#[cfg(unix)]
fn connect_raw(path: &std::path::Path) -> (Raw, Raw) {
    let stream = Raw::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = stream.try_clone().unwrap();
    (stream, reader)
}

/// A blocking pipe connection; reads and writes may run on two threads at once (the pipe
/// is opened for overlapped I/O).
#[cfg(windows)]
struct Raw(
    Arc<
        interprocess::os::windows::named_pipe::DuplexPipeStream<
            interprocess::os::windows::named_pipe::pipe_mode::Bytes,
        >,
    >,
);

#[cfg(windows)]
impl Read for Raw {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        (&*self.0).read(buf)
    }
}

#[cfg(windows)]
impl Write for Raw {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(windows)]
fn connect_raw(path: &std::path::Path) -> (Raw, Raw) {
    let pipe = Arc::new(
        interprocess::os::windows::named_pipe::DuplexPipeStream::connect_by_path(path).unwrap(),
    );
    (Raw(pipe.clone()), Raw(pipe))
}

/// Where a test's server listens.
fn socket_path(dir: &std::path::Path, name: &str) -> PathBuf {
    if cfg!(windows) {
        PathBuf::from(format!(
            r"\\.\pipe\slopn-control-{}-{name}",
            std::process::id()
        ))
    } else {
        dir.join(format!("run/{name}.sock"))
    }
}

struct Fake;

impl Handler for Fake {
    fn role(&self) -> Role {
        Role::SpokeService
    }
    fn handle(&self, request: &Request) -> Answer {
        match request {
            Request::Status => {
                let mut fields = Map::new();
                fields.insert("status".into(), json!({ "state": "established" }));
                Ok(fields)
            }
            Request::Connect { profile: None } => Err("say which profile".into()),
            _ => Ok(Map::new()),
        }
    }
}

struct Setup {
    dir: PathBuf,
    server: Server,
    events: Arc<Topic>,
    logs: Arc<Topic>,
}

impl Setup {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("slopn-control-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (events, logs) = (Arc::new(Topic::new(0)), Arc::new(Topic::new(100)));
        let server = Server::start(
            &socket_path(&dir, name),
            Access::OWNER,
            Arc::new(Fake),
            events.clone(),
            logs.clone(),
        )
        .unwrap();
        Self {
            dir,
            server,
            events,
            logs,
        }
    }

    fn client(&self) -> Client {
        let client = Client::connect(self.server.path()).unwrap();
        client.set_timeout(Some(Duration::from_secs(10))).unwrap();
        client
    }

    fn raw(&self) -> (Raw, BufReader<Raw>) {
        let (writer, reader) = connect_raw(self.server.path());
        (writer, BufReader::new(reader))
    }

    fn status(&self) -> SpokeStatus {
        self.client()
            .request_field(&Request::Status, "status")
            .unwrap()
    }

    fn wait_for(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn answer(reader: &mut BufReader<Raw>) -> Value {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or(Value::Null)
}

#[test]
fn requests_version_and_status_with_the_sockets_own_counters() {
    let setup = Setup::new("basic");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(setup.server.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let mut client = setup.client();
    let version = client.version().unwrap();
    assert_eq!(version.protocol, slopn_control::PROTOCOL_VERSION);
    assert_eq!(version.role, Role::SpokeService);
    let status: SpokeStatus = client.request_field(&Request::Status, "status").unwrap();
    assert_eq!(status.state, TunnelState::Established);
    assert_eq!(status.control.requests, 2);
    assert_eq!(status.control.clients, 1);
    match client.request(&Request::Connect { profile: None }) {
        Err(ClientError::Refused(sentence)) => assert_eq!(sentence, "say which profile"),
        other => panic!("{other:?}"),
    }
    // The same connection carries on after a refusal.
    assert!(client.request(&Request::Profiles).is_ok());
}

#[test]
fn garbage_and_huge_lines_are_refused_and_counted_while_others_carry_on() {
    let setup = Setup::new("garbage");
    let (mut raw, mut reader) = setup.raw();
    for garbage in [
        "not json",
        "{\"command\":\"explode\"}",
        "[1,2]",
        "\u{0}\u{1}",
    ] {
        writeln!(raw, "{garbage}").unwrap();
        let reply = answer(&mut reader);
        assert_eq!(reply["ok"], false, "{garbage}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().starts_with("bad request"),
            "{reply}"
        );
    }
    raw.write_all(&[0xff, 0xfe, b'\n']).unwrap();
    assert_eq!(answer(&mut reader)["ok"], false);
    // The connection still works after garbage.
    writeln!(raw, "{}", Request::Status.to_line()).unwrap();
    assert_eq!(answer(&mut reader)["ok"], true);

    // 10 MB without a newline: refused, that connection closed, nothing else disturbed.
    let (mut huge, mut huge_reader) = setup.raw();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            if huge.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let reply = answer(&mut huge_reader);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("longer than 256 KiB"),
        "{reply}"
    );
    let mut rest = Vec::new();
    let _ = huge_reader.read_to_end(&mut rest);
    writer.join().unwrap();
    let status = setup.status();
    assert_eq!(status.control.refused, 5);
    assert_eq!(status.control.oversized, 1);
}

#[test]
fn a_subscriber_that_never_reads_is_cut_off_and_publishing_never_waits() {
    let setup = Setup::new("slow");
    // One subscriber reads nothing at all; another reads everything.
    let (mut stalled, _stalled_reader) = setup.raw();
    writeln!(stalled, "{}", Request::Events.to_line()).unwrap();
    let mut reader = setup.client().subscribe(&Request::Events).unwrap();
    setup.wait_for("both subscribed", || setup.events.subscribers() == 2);
    let line = format!("{{\"event\":\"x\",\"pad\":\"{}\"}}", "p".repeat(1000));
    const EVENTS: usize = 5_000;
    let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let consumer = std::thread::spawn({
        let read = read.clone();
        move || {
            while let Ok(Some(event)) = reader.next_line() {
                assert_eq!(event["event"], "x");
                if read.fetch_add(1, Ordering::Relaxed) + 1 == EVENTS {
                    break;
                }
            }
        }
    });
    // 5 MB of events, paced so that a reading subscriber keeps up.
    let start = Instant::now();
    for i in 0..EVENTS {
        setup.wait_for("the reader to keep up", || {
            i < read.load(Ordering::Relaxed) + SUBSCRIBER_QUEUE / 2
        });
        setup.events.publish(line.as_str());
    }
    let publishing = start.elapsed();
    consumer.join().unwrap();
    assert_eq!(read.load(Ordering::Relaxed), EVENTS);
    setup.wait_for("the stalled subscriber cut off", || {
        setup.events.cut_off() == 1
    });
    assert!(
        publishing < Duration::from_secs(5),
        "publishing waited for a subscriber: {publishing:?}"
    );
    assert_eq!(setup.status().control.cut_off, 1);
    println!(
        "{EVENTS} events of 1 KB published in {publishing:?} with a stalled subscriber \
         (queue {SUBSCRIBER_QUEUE})"
    );
}

#[test]
fn logs_come_with_their_backlog_and_then_as_they_happen() {
    let setup = Setup::new("logs");
    for i in 0..150 {
        setup
            .logs
            .publish(json!({ "message": format!("old {i}") }).to_string());
    }
    let mut logs = setup.client().subscribe(&Request::Logs).unwrap();
    let first = logs.next_line().unwrap().unwrap();
    assert_eq!(first["message"], "old 50", "the backlog keeps the last 100");
    for _ in 51..150 {
        logs.next_line().unwrap().unwrap();
    }
    setup.logs.publish(json!({ "message": "new" }).to_string());
    assert_eq!(logs.next_line().unwrap().unwrap()["message"], "new");
}

#[test]
fn hung_up_subscribers_are_noticed_without_traffic() {
    let setup = Setup::new("hangup");
    let client = setup.client().subscribe(&Request::Events).unwrap();
    setup.wait_for("subscribed", || setup.events.subscribers() == 1);
    drop(client);
    setup.wait_for("the client gone", || setup.status().control.clients == 1);
}

#[test]
fn too_many_clients_are_told_so() {
    let setup = Setup::new("busy");
    let held: Vec<_> = (0..MAX_CLIENTS).map(|_| setup.raw()).collect();
    // Each held client is served by a thread once accepted; wait until all are counted by
    // asking through one of them.
    let (mut first, mut first_reader) = setup.raw();
    writeln!(first, "{}", Request::Status.to_line()).unwrap();
    let reply = answer(&mut first_reader);
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("clients are connected"),
        "{reply}"
    );
    // The high-level client reports the server's sentence, not the broken pipe of writing
    // its request to a connection the server closed at once.
    for _ in 0..10 {
        match Client::connect(setup.server.path()).and_then(|mut c| c.request(&Request::Status)) {
            Err(ClientError::Refused(sentence)) => {
                assert!(sentence.contains("clients are connected"), "{sentence}")
            }
            other => panic!("expected the busy sentence, got {other:?}"),
        }
    }
    drop(held);
    setup.wait_for("a free slot", || {
        Client::connect(setup.server.path())
            .and_then(|mut c| c.request(&Request::Status))
            .is_ok()
    });
    assert!(setup.status().control.busy >= 1);
}

#[test]
fn subscribers_that_hang_up_are_forgotten_at_once_and_requests_keep_a_place() {
    let setup = Setup::new("subscribers");
    // Clients that subscribe to the logs and hang up at once, with nothing logged meanwhile:
    // each one's queue is freed when its connection ends, not at the next line.
    for _ in 0..20 {
        let (mut writer, mut reader) = setup.raw();
        writeln!(writer, "{}", Request::Logs.to_line()).unwrap();
        assert_eq!(answer(&mut reader)["ok"], true);
    }
    setup.wait_for("the subscribers forgotten", || {
        setup.logs.subscribers() == 0
    });

    // Subscribers take at most MAX_SUBSCRIBERS places; requests still find one.
    let held: Vec<_> = (0..MAX_SUBSCRIBERS)
        .map(|_| setup.client().subscribe(&Request::Events).unwrap())
        .collect();
    match setup.client().subscribe(&Request::Events) {
        Err(ClientError::Refused(sentence)) => {
            assert!(sentence.contains("follow events or logs"), "{sentence}")
        }
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a subscription"),
    }
    let control = setup.status().control;
    assert_eq!(control.busy, 1);
    assert_eq!(setup.events.subscribers(), MAX_SUBSCRIBERS);
    drop(held);
}

#[test]
fn a_request_must_be_complete_in_time_however_slowly_it_trickles() {
    let setup = Setup::new("trickle");
    setup.server.set_idle_timeout(Duration::from_millis(1500));
    let (mut writer, mut reader) = setup.raw();
    // A byte every 100 ms, so that no read waits long, and never the end of the line.
    let start = Instant::now();
    let trickle = std::thread::spawn(move || {
        for byte in b"{\"command\":\"status\"".iter().cycle() {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    let closed = start.elapsed();
    assert!(rest.is_empty(), "no answer to a request never completed");
    assert!(
        closed >= Duration::from_millis(1400) && closed < Duration::from_secs(10),
        "closed after {closed:?}"
    );
    assert_eq!(setup.status().control.timed_out, 1);
    drop(reader);
    trickle.join().unwrap();
}

#[test]
fn a_client_refuses_another_programs_socket() {
    let setup = Setup::new("role");
    match Client::connect_as(setup.server.path(), &[Role::Hub]) {
        Err(e @ ClientError::WrongRole { .. }) => {
            let sentence = e.to_string();
            assert!(
                sentence.contains("belongs to the spoke service, not to a hub"),
                "{sentence}"
            );
        }
        Err(e) => panic!("expected the wrong role, got {e}"),
        Ok(_) => panic!("a hub's request was let through to the spoke service"),
    }
    Client::connect_as(setup.server.path(), &[Role::Spoke, Role::SpokeService]).unwrap();
}

#[test]
fn a_second_server_on_the_same_socket_is_refused_and_a_stale_one_replaced() {
    let setup = Setup::new("inuse");
    let again = Server::start(
        setup.server.path(),
        Access::OWNER,
        Arc::new(Fake),
        setup.events.clone(),
        setup.logs.clone(),
    );
    assert!(matches!(again, Err(slopn_control::ServerError::InUse(_))));
    // A pipe ends with its server; only a socket file can be left behind.
    #[cfg(unix)]
    stale_socket_files_are_replaced(&setup);
}

#[cfg(unix)]
fn stale_socket_files_are_replaced(setup: &Setup) {
    let path = setup.dir.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let server = Server::start(
        &path,
        Access::OWNER,
        Arc::new(Fake),
        setup.events.clone(),
        setup.logs.clone(),
    )
    .unwrap();
    drop(server);
    assert!(!path.exists(), "the socket file is removed with the server");
    assert!(matches!(
        Client::connect(&path),
        Err(ClientError::NotRunning(_))
    ));
}
