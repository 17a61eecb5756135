//! The lab: a hub and spokes running the real binaries in network namespaces of the test's
//! own, joined through a "wan" namespace that routes between them. Dropping the lab kills
//! every process it started and deletes every namespace.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use slopn::config::{self, HubFile, SpokeFile};
use slopn::control::{self, Request};
use slopn_tun::netns::{self, Namespace};

/// The hub's underlay address.
pub const HUB_IP: &str = "10.0.0.2";

/// One lab at a time: the timing figures mean something only on an otherwise idle machine.
static SERIAL: Mutex<()> = Mutex::new(());

pub struct Lab {
    pub dir: PathBuf,
    pub wan: Namespace,
    pub hub_ns: Namespace,
    /// With [`Lab::with_internet`]: a namespace behind the hub's uplink `up0`
    /// (203.0.113.1 on the hub, 203.0.113.2 there), reachable only through the hub.
    pub internet: Option<Namespace>,
    pub spoke_ns: Vec<Namespace>,
    hub: Option<Child>,
    spokes: Vec<Option<Child>>,
    bin: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

/// The directory holding the example binaries next to this test binary.
pub(crate) fn examples_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("examples")
}

impl Lab {
    /// A lab with `spokes` spokes, or `None` (after saying why) where namespaces and TUN
    /// devices are not available (under CI that fails the test instead).
    pub fn new(test: &str, spokes: usize) -> Option<Self> {
        Self::build(test, spokes, false)
    }

    /// A lab whose hub also has an uplink to an "internet" namespace.
    pub fn with_internet(test: &str, spokes: usize) -> Option<Self> {
        Self::build(test, spokes, true)
    }

    /// A lab whose hub is a gateway: NAT out of its uplink `up0` into the "internet".
    pub fn with_gateway(test: &str, spokes: usize) -> Option<Self> {
        let lab = Self::build(test, spokes, true)?;
        lab.edit_hub(|h| {
            h.gateway = true;
            h.uplink = Some("up0".into());
        });
        Some(lab)
    }

    /// A way to `internet` around the tunnel: the wan routes it to the hub's host, which
    /// forwards it unmasqueraded, and the internet routes back. What leaves around the
    /// tunnel is answered "you are 10.0.N.2" (the spoke's own underlay address).
    pub fn route_around_the_tunnel(&self, internet: &Namespace) {
        self.wan
            .ip(&["route", "add", "203.0.113.0/24", "via", HUB_IP])
            .unwrap();
        self.hub_ns
            .run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
            .unwrap();
        internet
            .ip(&["route", "add", "10.0.0.0/16", "via", "203.0.113.1"])
            .unwrap();
    }

    fn build(test: &str, spokes: usize, internet: bool) -> Option<Self> {
        if !netns::runnable(test) {
            return None;
        }
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let prefix = netns::unique_prefix();
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        let wan = Namespace::create(format!("{prefix}-wan")).unwrap();
        wan.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])
            .unwrap();
        let hub_ns = Namespace::create(format!("{prefix}-hub")).unwrap();
        wan.veth("hub", "10.0.0.1/24", &hub_ns, "wan0", "10.0.0.2/24")
            .unwrap();
        let internet = internet.then(|| {
            let net = Namespace::create(format!("{prefix}-inet")).unwrap();
            hub_ns
                .veth("up0", "203.0.113.1/24", &net, "eth0", "203.0.113.2/24")
                .unwrap();
            net
        });
        if internet.is_some() {
            // The hub's default route leads to the internet; the spokes stay behind the wan.
            hub_ns
                .ip(&["route", "add", "default", "via", "203.0.113.2"])
                .unwrap();
            hub_ns
                .ip(&["route", "add", "10.0.0.0/16", "via", "10.0.0.1"])
                .unwrap();
        } else {
            hub_ns
                .ip(&["route", "add", "default", "via", "10.0.0.1"])
                .unwrap();
        }
        let spoke_ns: Vec<Namespace> = (0..spokes)
            .map(|i| {
                let ns = Namespace::create(format!("{prefix}-s{i}")).unwrap();
                let net = i + 1;
                wan.veth(
                    &format!("s{i}"),
                    &format!("10.0.{net}.1/24"),
                    &ns,
                    "wan0",
                    &format!("10.0.{net}.2/24"),
                )
                .unwrap();
                ns.ip(&["route", "add", "default", "via", &format!("10.0.{net}.1")])
                    .unwrap();
                ns
            })
            .collect();

        let bin = examples_dir();
        let names: Vec<String> = (0..spokes).map(|i| format!("spoke-{i}")).collect();
        let mut init = Command::new(bin.join("hub"));
        init.args(["init", "--dir"])
            .arg(&dir)
            .args(["--name", "hub.slopn.test"]);
        for n in &names {
            init.args(["--spoke", n]);
        }
        let out = init.output().expect("hub binary built by cargo test");
        assert!(
            out.status.success(),
            "hub init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lab = Self {
            dir,
            wan,
            hub_ns,
            internet,
            spoke_ns,
            hub: None,
            spokes: (0..spokes).map(|_| None).collect(),
            bin,
            _serial: serial,
        };
        lab.edit_hub(|h| h.control_socket = Some(lab.dir.join("hub.sock")));
        for i in 0..spokes {
            let sock = lab.dir.join(format!("spoke-{i}.sock"));
            lab.edit_spoke(i, |s| {
                s.hub = format!("{HUB_IP}:4433");
                s.control_socket = Some(sock.clone());
            });
        }
        Some(lab)
    }

    pub fn hub_toml(&self) -> PathBuf {
        self.dir.join("hub.toml")
    }

    pub fn spoke_toml(&self, i: usize) -> PathBuf {
        self.dir.join("spokes").join(format!("spoke-{i}.toml"))
    }

    pub fn edit_hub(&self, f: impl FnOnce(&mut HubFile)) {
        let path = self.hub_toml();
        let mut hub: HubFile = config::load(&path, "hub").unwrap();
        f(&mut hub);
        config::save(&path, &hub, "").unwrap();
    }

    /// How long spoke `i` may take to notice a dead hub, from its configuration: one
    /// keep-alive interval plus the idle timeout (a keep-alive restarts the timer).
    pub fn dead_hub_noticed_within(&self, i: usize) -> Duration {
        let spoke = self.spoke_file(i);
        Duration::from_secs(spoke.keep_alive_secs + spoke.idle_timeout_secs)
    }

    pub fn spoke_file(&self, i: usize) -> SpokeFile {
        config::load(&self.spoke_toml(i), "spoke").unwrap()
    }

    pub fn edit_spoke(&self, i: usize, f: impl FnOnce(&mut SpokeFile)) {
        let path = self.spoke_toml(i);
        let mut spoke: SpokeFile = config::load(&path, "spoke").unwrap();
        f(&mut spoke);
        config::save(&path, &spoke, "").unwrap();
    }

    fn spawn(&self, ns: &Namespace, program: &str, config: &Path, log: &str) -> Child {
        self.spawn_args(
            ns,
            program,
            &["run".as_ref(), "--config".as_ref(), config.as_os_str()],
            log,
        )
    }

    fn spawn_args(&self, ns: &Namespace, program: &str, args: &[&OsStr], log: &str) -> Child {
        let log = std::fs::File::create(self.dir.join(log)).unwrap();
        ns.command(self.bin.join(program).to_str().unwrap())
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Starts the hub and waits until it answers on its control socket (it serves the socket
    /// once its UDP socket and TUN device are up).
    pub fn start_hub(&mut self) {
        assert!(self.hub.is_none());
        let child = self.spawn(&self.hub_ns, "hub", &self.hub_toml(), "hub.log");
        self.hub = Some(child);
        self.wait_for("the hub to answer", Duration::from_secs(10), |l| {
            l.hub_status().is_some()
        });
    }

    pub fn start_spoke(&mut self, i: usize) {
        assert!(self.spokes[i].is_none());
        let child = self.spawn(
            &self.spoke_ns[i],
            "spoke",
            &self.spoke_toml(i),
            &format!("spoke-{i}.log"),
        );
        self.spokes[i] = Some(child);
    }

    /// The control socket of spoke `i`'s service (see [`Lab::start_service`]).
    pub fn service_socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("service-{i}.sock"))
    }

    /// The profile directory of spoke `i`'s service.
    pub fn service_profiles(&self, i: usize) -> PathBuf {
        self.dir.join(format!("profiles-{i}"))
    }

    /// Starts `spoke service` in spoke `i`'s namespace, its socket given to `group`, and
    /// waits until it answers.
    pub fn start_service(&mut self, i: usize, group: &str) {
        self.start_service_with(i, group, &[]);
    }

    /// [`start_service`](Self::start_service) with more arguments.
    pub fn start_service_with(&mut self, i: usize, group: &str, extra: &[&str]) {
        assert!(self.spokes[i].is_none());
        let (socket, profiles) = (self.service_socket(i), self.service_profiles(i));
        let mut args: Vec<&OsStr> = vec![
            "service".as_ref(),
            "--socket".as_ref(),
            socket.as_os_str(),
            "--profiles".as_ref(),
            profiles.as_os_str(),
            "--group".as_ref(),
            group.as_ref(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let child = self.spawn_args(
            &self.spoke_ns[i],
            "spoke",
            &args,
            &format!("service-{i}.log"),
        );
        self.spokes[i] = Some(child);
        self.wait_for("the service to answer", Duration::from_secs(10), |lab| {
            control::request(&lab.service_socket(i), &Request::Status).is_ok()
        });
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to the hub and waits for it to exit.
    pub fn signal_hub(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.hub.take().expect("hub running");
        signal_and_wait(&mut child, signal)
    }

    /// Sends SIGHUP to the hub (reload) without waiting.
    pub fn reload_hub(&self) {
        let pid = self.hub.as_ref().expect("hub running").id();
        let _ = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
    }

    pub fn signal_spoke(&mut self, i: usize, signal: &str) -> ExitStatus {
        let mut child = self.spokes[i].take().expect("spoke running");
        signal_and_wait(&mut child, signal)
    }

    /// Waits for spoke `i` to exit on its own.
    pub fn wait_spoke_exit(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.spokes[i].as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.spokes[i] = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    pub fn spoke_status(&self, i: usize) -> Option<Value> {
        let sock = self.dir.join(format!("spoke-{i}.sock"));
        control::request(&sock, &Request::Status)
            .ok()
            .map(|v| v["status"].clone())
    }

    pub fn hub_status(&self) -> Option<Value> {
        control::request(&self.dir.join("hub.sock"), &Request::Status)
            .ok()
            .map(|v| v["status"].clone())
    }

    pub fn spoke_state(&self, i: usize) -> String {
        self.spoke_status(i)
            .and_then(|s| s["state"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// Waits until `f` holds, polling every 10 ms; returns how long it took.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Self) -> bool,
    ) -> Duration {
        let start = Instant::now();
        while !f(self) {
            if start.elapsed() > timeout {
                self.dump_logs();
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    }

    pub fn wait_established(&self, spokes: &[usize], timeout: Duration) -> Duration {
        self.wait_for("spokes established", timeout, |lab| {
            spokes.iter().all(|i| lab.spoke_state(*i) == "established")
        })
    }

    pub fn address(&self, i: usize) -> String {
        self.spoke_status(i).unwrap()["addresses"][0]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn dump_logs(&self) {
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                eprintln!(
                    "===== {} =====\n{}",
                    path.display(),
                    std::fs::read_to_string(&path).unwrap_or_default()
                );
            }
        }
    }

    /// `ping` from a namespace; the average round-trip time if every reply came back.
    pub fn ping(&self, ns: &Namespace, to: &str, count: u32) -> Option<f64> {
        let out = ns
            .command("ping")
            .args(["-c", &count.to_string(), "-i", "0.2", "-W", "2", "-q", to])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        // rtt min/avg/max/mdev = 0.031/0.045/0.061/0.011 ms
        let stats = text.lines().find(|l| l.contains("min/avg/max"))?;
        stats
            .split('=')
            .nth(1)?
            .trim()
            .split('/')
            .nth(1)?
            .parse()
            .ok()
    }

    /// The path of an example binary.
    pub fn binary(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    pub fn hub_addr(&self) -> SocketAddr {
        format!("{HUB_IP}:4433").parse().unwrap()
    }
}

fn signal_and_wait(child: &mut Child, signal: &str) -> ExitStatus {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let children = self.hub.iter_mut().chain(self.spokes.iter_mut().flatten());
        for child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The namespaces are deleted as their fields drop.
    }
}
