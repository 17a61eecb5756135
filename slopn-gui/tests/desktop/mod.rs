//! A whole desktop for the GUI's end-to-end tests and budget figures, made of real parts:
//!
//! - a network: a hub in one network namespace, the spoke service in another, joined by a
//!   veth pair (slopn-tun's test namespaces: a unique prefix, removed on drop);
//! - a screen: Xvfb, an XEmbed tray (trayer), a D-Bus session bus whose notification calls
//!   are recorded (dbus-monitor);
//! - the GUI, run as an unprivileged user (nobody, with the group the service's socket
//!   belongs to), started through tauri-driver and Debian's WebKitWebDriver so a WebDriver
//!   client can click it.
//!
//! Every process runs in a process group of its own and is killed on drop.

#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use slopn_tun::netns::{self, Namespace};

/// The unprivileged user the GUI runs as.
pub const GUI_UID: u32 = 65534;
/// The group that may use the service's socket (Debian's "users").
pub const SOCKET_GROUP: (&str, u32) = ("users", 100);
/// The hub's underlay address; the spoke's is .3.
pub const HUB_IP: &str = "10.0.0.2";
/// The hub's tunnel address.
pub const HUB_TUNNEL_IP: &str = "10.100.0.1";

/// Whether everything the desktop needs is here: root, namespaces, and the programs.
pub fn available() -> Result<(), String> {
    netns::available()?;
    for program in [
        "Xvfb",
        "WebKitWebDriver",
        "dbus-daemon",
        "dbus-monitor",
        "trayer",
        "xdotool",
        "import",
        "convert",
        "setpriv",
        "stdbuf",
        "ping",
    ] {
        if which(program).is_none() {
            return Err(format!("{program} is missing (scripts/setup installs it)"));
        }
    }
    if tauri_driver().is_none() {
        return Err("tauri-driver is missing (scripts/setup installs it)".into());
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn tauri_driver() -> Option<PathBuf> {
    which("tauri-driver").or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = PathBuf::from(home).join(".cargo/bin/tauri-driver");
        p.is_file().then_some(p)
    })
}

/// Skips (prints why) or, under CI, fails when the desktop cannot be built here.
pub fn runnable(test: &str) -> bool {
    netns::skip_unless(test, available())
}

/// A child process in a process group of its own, stopped with its group when dropped.
pub struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        kill_group(&mut self.0, "-TERM");
    }
}

fn spawn(command: &mut Command, log: &Path) -> Process {
    let log = std::fs::File::create(log).unwrap();
    Process(
        command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?}: {e}")),
    )
}

/// Kills a child's whole process group and reaps it.
fn kill_group(child: &mut Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{}", child.id())])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` every 20 ms until it holds; panics after `timeout`. Returns the time taken.
pub fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    assert!(
        poll_until(timeout, f),
        "timed out after {timeout:?} waiting for {what}"
    );
    start.elapsed()
}

/// Polls `f` every 20 ms until it holds (true) or `timeout` has passed (false).
fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where the binaries are: the GUI from cargo, the hub and spoke examples beside it (built
/// with `cargo build --examples` if `cargo test -p slopn-gui` ran alone).
fn binaries() -> (PathBuf, PathBuf, PathBuf) {
    let gui = PathBuf::from(env!("CARGO_BIN_EXE_slopn-gui"));
    let examples = gui.parent().unwrap().join("examples");
    if !examples.join("spoke").exists() || !examples.join("hub").exists() {
        let profile = if gui.parent().unwrap().ends_with("release") {
            vec!["--release"]
        } else {
            vec![]
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "slopn", "--examples"])
            .args(profile)
            .status()
            .unwrap();
        assert!(status.success(), "building the hub and spoke binaries");
    }
    (gui, examples.join("hub"), examples.join("spoke"))
}

/// The hub and the spoke service in their namespaces.
pub struct Network {
    pub dir: PathBuf,
    pub hub_ns: Namespace,
    pub spoke_ns: Namespace,
    pub hub_bin: PathBuf,
    pub spoke_bin: PathBuf,
    pub gui_bin: PathBuf,
    hub: Option<Process>,
    service: Option<Process>,
}

impl Network {
    /// Namespaces, `hub init` with one spoke ("laptop"); nothing running yet.
    pub fn new() -> Self {
        let (gui_bin, hub_bin, spoke_bin) = binaries();
        let prefix = netns::unique_prefix();
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // The GUI's user must reach the socket and the files it is given.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let hub_ns = Namespace::create(format!("{prefix}-hub")).unwrap();
        let spoke_ns = Namespace::create(format!("{prefix}-spk")).unwrap();
        hub_ns
            .veth("wan0", "10.0.0.2/24", &spoke_ns, "wan0", "10.0.0.3/24")
            .unwrap();
        let net = Self {
            dir,
            hub_ns,
            spoke_ns,
            hub_bin,
            spoke_bin,
            gui_bin,
            hub: None,
            service: None,
        };
        let out = Command::new(&net.hub_bin)
            .args(["init", "--dir"])
            .arg(&net.dir)
            .args(["--name", HUB_IP, "--spoke", "laptop"])
            .output()
            .unwrap();
        assert!(out.status.success(), "hub init: {out:?}");
        // The hub's control socket goes into the work directory, not /run.
        let path = net.dir.join("hub.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let socket = net.dir.join("hub.sock");
        std::fs::write(
            &path,
            format!(
                "control_socket = {:?}\n{text}",
                socket.display().to_string()
            ),
        )
        .unwrap();
        net
    }

    /// The service's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("spoke.sock")
    }

    /// The spoke file `hub init` wrote, copied where the GUI's user may read it.
    pub fn spoke_file_for_user(&self) -> PathBuf {
        let home = self.user_dir("files");
        let to = home.join("laptop.toml");
        std::fs::copy(self.dir.join("spokes/laptop.toml"), &to).unwrap();
        std::os::unix::fs::chown(&to, Some(GUI_UID), None).unwrap();
        to
    }

    /// A directory owned by the GUI's user (its home, files, runtime directory).
    pub fn user_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(GUI_UID), Some(GUI_UID)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    pub fn start_hub(&mut self) {
        assert!(self.hub.is_none());
        let mut c = self.hub_ns.command(self.hub_bin.to_str().unwrap());
        c.arg("run").arg("--config").arg(self.dir.join("hub.toml"));
        self.hub = Some(spawn(&mut c, &self.dir.join("hub.log")));
        let socket = self.dir.join("hub.sock");
        wait_until("the hub", Duration::from_secs(10), || {
            slopn_control::request(&socket, &slopn_control::Request::Status).is_ok()
        });
    }

    pub fn kill_hub(&mut self) {
        let mut hub = self.hub.take().expect("hub running");
        kill_group(&mut hub.0, "-KILL");
        let _ = std::fs::remove_file(self.dir.join("hub.sock"));
    }

    pub fn start_service(&mut self) {
        assert!(self.service.is_none());
        let mut c = self.spoke_ns.command(self.spoke_bin.to_str().unwrap());
        c.arg("service")
            .arg("--socket")
            .arg(self.socket())
            .arg("--profiles")
            .arg(self.dir.join("profiles"))
            .args(["--group", SOCKET_GROUP.0]);
        self.service = Some(spawn(&mut c, &self.dir.join("service.log")));
        let socket = self.socket();
        wait_until("the service", Duration::from_secs(10), || {
            slopn_control::request(&socket, &slopn_control::Request::Status).is_ok()
        });
    }

    pub fn stop_service(&mut self) {
        drop(self.service.take().expect("service running"));
    }

    /// The service's status document.
    pub fn status(&self) -> slopn_control::SpokeStatus {
        slopn_control::Client::connect(&self.socket())
            .and_then(|mut c| c.request_field(&slopn_control::Request::Status, "status"))
            .unwrap()
    }

    /// Whether the spoke's namespace has the TUN device.
    pub fn tun_exists(&self) -> bool {
        self.spoke_ns.ip(&["link", "show", "dev", "slopn0"]).is_ok()
    }

    /// Whether the kill switch's nftables table is in the spoke's namespace.
    pub fn kill_switch_table(&self) -> bool {
        self.spoke_ns
            .run("nft", &["list", "tables"])
            .unwrap()
            .contains("slopn_ks_")
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.hub.take();
        self.service.take();
        if std::thread::panicking() {
            for log in ["hub.log", "service.log", "gui.log", "driver.log"] {
                eprintln!("===== {log} =====\n{}", self.log(log));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The namespaces go as their fields drop.
    }
}

/// The screen, the session bus and a tray, for GUIs that the network's tests drive.
pub struct Desktop {
    pub display: String,
    pub bus: String,
    pub notifications: PathBuf,
    /// Xvfb first; stopped last.
    others: Vec<Process>,
    dir: PathBuf,
}

impl Desktop {
    pub fn start(net: &Network) -> Self {
        let mut xvfb = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1280x800x24",
                "-nolisten",
                "tcp",
            ])
            .arg("-ac")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("Xvfb");
        let mut line = String::new();
        BufReader::new(xvfb.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let bus_path = net.user_dir("bus").join("session");
        // From here on, whatever starts is stopped on drop, even if a later step fails.
        let mut desktop = Self {
            display: format!(":{}", line.trim()),
            bus: format!("unix:path={}", bus_path.display()),
            notifications: net.dir.join("notifications.log"),
            others: vec![Process(xvfb)],
            dir: net.dir.clone(),
        };
        let mut daemon = Command::new("setpriv");
        daemon
            .args(user_ids(true))
            .args(["dbus-daemon", "--session", "--nofork", "--nopidfile"])
            .arg(format!("--address={}", desktop.bus));
        desktop
            .others
            .push(spawn(&mut daemon, &desktop.dir.join("dbus.log")));
        wait_until("the session bus", Duration::from_secs(10), || {
            bus_path.exists()
        });
        // As the bus's user (a session bus admits only its own), line-buffered so that each
        // call is in the file as soon as it is seen.
        let mut monitor = Command::new("setpriv");
        monitor
            .args(user_ids(true))
            .args(["stdbuf", "-oL", "dbus-monitor", "--address", &desktop.bus])
            .arg("type='method_call',interface='org.freedesktop.Notifications',member='Notify'");
        desktop
            .others
            .push(spawn(&mut monitor, &desktop.notifications));
        // It says NameLost once it has become a monitor; calls before that would be missed.
        wait_until("dbus-monitor", Duration::from_secs(10), || {
            desktop.notifications().contains("NameLost")
        });
        let mut tray = Command::new("trayer");
        tray.env("DISPLAY", &desktop.display).args([
            "--edge",
            "top",
            "--align",
            "right",
            "--widthtype",
            "request",
            "--height",
            "40",
            "--tint",
            "0xffffff",
            "--transparent",
            "false",
            "--SetDockType",
            "false",
        ]);
        desktop
            .others
            .push(spawn(&mut tray, &desktop.dir.join("trayer.log")));
        desktop
    }

    /// The notifications the desktop was asked to show, as dbus-monitor printed them.
    pub fn notifications(&self) -> String {
        std::fs::read_to_string(&self.notifications).unwrap_or_default()
    }

    /// A screenshot of the whole screen (window and tray), as a PNG at `to`.
    pub fn screenshot(&self, to: &Path) {
        let status = Command::new("import")
            .args(["-display", &self.display, "-window", "root"])
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success(), "import -window root");
    }

    /// The pixels of a region (`WxH+X+Y`) of the screen.
    fn pixels(&self, region: &str) -> Vec<[u8; 3]> {
        let shot = self.dir.join("region.png");
        self.screenshot(&shot);
        let out = Command::new("convert")
            .arg(&shot)
            .args(["-crop", region, "-depth", "8", "txt:-"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                // "12,3: (34,168,90)  #22A85A  srgb(...)"
                let hex = l.split_whitespace().nth(2)?.strip_prefix('#')?;
                let v = u32::from_str_radix(hex.get(..6)?, 16).ok()?;
                Some([(v >> 16) as u8, (v >> 8) as u8, v as u8])
            })
            .collect()
    }

    /// How many pixels of the tray area (top right, 80 by 40) have about this colour.
    pub fn tray_pixels(&self, rgb: [u8; 3]) -> usize {
        self.pixels("80x40+1200+0")
            .into_iter()
            .filter(|p| p.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) <= 12))
            .count()
    }

    /// Whether a menu is painted below the tray (the screen there is black otherwise).
    pub fn menu_shown(&self) -> bool {
        let painted = self
            .pixels("120x60+1150+45")
            .into_iter()
            .filter(|p| p.iter().any(|&c| c > 40))
            .count();
        painted > 2000
    }

    fn xdotool(&self, args: &[&str]) -> Output {
        Command::new("xdotool")
            .env("DISPLAY", &self.display)
            .args(args)
            .output()
            .unwrap()
    }

    /// Opens the tray icon's menu (a click on the icon, top right) and waits until it is
    /// painted. A click that lands while the tray redraws the icon (its colour follows the
    /// state) can be lost: the click is repeated, never on an open menu, until `timeout`.
    pub fn open_tray_menu(&self, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            assert!(
                self.xdotool(&["mousemove", "1262", "20", "click", "1"])
                    .status
                    .success()
            );
            if poll_until(Duration::from_secs(2), || self.menu_shown()) {
                return;
            }
        }
        panic!("the tray menu did not open within {timeout:?}");
    }

    /// Picks the `n`th enabled item (1 = the first) of the open menu with the keyboard.
    pub fn pick_menu_item(&self, n: usize) {
        for _ in 0..n {
            assert!(self.xdotool(&["key", "Down"]).status.success());
        }
        assert!(self.xdotool(&["key", "Return"]).status.success());
    }

    /// Waits for a window titled `title` (a native dialog), gives it the keyboard, types
    /// `text` and presses Return.
    pub fn type_into(&self, title: &str, text: &str) {
        let mut window = String::new();
        wait_until(
            &format!("the window {title:?}"),
            Duration::from_secs(10),
            || {
                let out = self.xdotool(&["search", "--onlyvisible", "--name", title]);
                window = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                !window.is_empty()
            },
        );
        // No window manager: give it the focus ourselves.
        assert!(
            self.xdotool(&["windowfocus", "--sync", &window])
                .status
                .success()
        );
        assert!(
            self.xdotool(&["key", "--clearmodifiers", "ctrl+a"])
                .status
                .success()
        );
        assert!(
            self.xdotool(&["type", "--delay", "15", text])
                .status
                .success()
        );
        assert!(self.xdotool(&["key", "Return"]).status.success());
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        while self.others.pop().is_some() {}
    }
}

/// How many GUI processes the unprivileged user runs.
pub fn gui_processes() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let dir = e.path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
            comm.trim() == "slopn-gui"
                && status
                    .lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("65534"))
        })
        .count()
}

/// setpriv's arguments for the GUI's user, with or without the socket's group.
fn user_ids(with_group: bool) -> Vec<String> {
    let groups = if with_group {
        format!("--groups={}", SOCKET_GROUP.1)
    } else {
        "--clear-groups".into()
    };
    vec![
        format!("--reuid={GUI_UID}"),
        format!("--regid={GUI_UID}"),
        groups,
        "--inh-caps=-all".into(),
    ]
}

/// One GUI, started as the unprivileged user by its own tauri-driver, and the WebDriver
/// session that drives it.
pub struct Gui {
    pub client: Client,
    driver: Process,
    pub started: Instant,
}

/// A script that starts the GUI as the unprivileged user (in the socket's group when
/// `with_group`), with its own home and runtime directory, on the desktop's session bus.
/// `automation`: for a WebDriver session, which never starts while WebKit's compositing
/// is off (the GUI turns it off by default), so it is turned back on there.
pub fn launcher(
    net: &Network,
    desktop: &Desktop,
    name: &str,
    with_group: bool,
    automation: bool,
) -> PathBuf {
    // The GUI's user cannot read cargo's target directory: it gets a copy.
    let binary = net.dir.join("slopn-gui");
    if !binary.exists() {
        std::fs::copy(&net.gui_bin, &binary).unwrap();
    }
    let home = net.user_dir(&format!("home-{name}"));
    let runtime = net.user_dir(&format!("run-{name}"));
    let launcher = net.dir.join(format!("launch-{name}"));
    let compositing = if automation {
        "WEBKIT_DISABLE_COMPOSITING_MODE=0 "
    } else {
        ""
    };
    let script = format!(
        "#!/bin/sh\nexec setpriv {} env {compositing}HOME={} XDG_RUNTIME_DIR={} \
         DBUS_SESSION_BUS_ADDRESS={} SLOPN_SOCKET={} {} \"$@\" 2>>{}\n",
        user_ids(with_group).join(" "),
        home.display(),
        runtime.display(),
        desktop.bus,
        net.socket().display(),
        binary.display(),
        net.dir.join("gui.log").display(),
    );
    std::fs::write(&launcher, script).unwrap();
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    launcher
}

impl Gui {
    /// Starts the GUI (as nobody; in the socket's group when `with_group`) under tauri-driver
    /// and waits until its page has run.
    pub async fn start(net: &Network, desktop: &Desktop, name: &str, with_group: bool) -> Self {
        let launcher = launcher(net, desktop, name, with_group, true);
        let (port, native) = (free_port(), free_port());
        let mut driver = Command::new(tauri_driver().unwrap());
        driver
            .env("DISPLAY", &desktop.display)
            .args(["--port", &port.to_string()])
            .args(["--native-port", &native.to_string()]);
        let driver = spawn(&mut driver, &net.dir.join("driver.log"));
        // Both listening: tauri-driver, and the WebKitWebDriver it starts and forwards to.
        wait_until("tauri-driver", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                && TcpStream::connect(("127.0.0.1", native)).is_ok()
        });
        let mut caps = serde_json::Map::new();
        caps.insert(
            "tauri:options".into(),
            serde_json::json!({ "application": launcher }),
        );
        let started = Instant::now();
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session with the GUI");
        let gui = Self {
            client,
            driver,
            started,
        };
        gui.wait_css("body[data-ready='true']", Duration::from_secs(20))
            .await;
        gui
    }

    /// Waits until an element matching `css` exists.
    pub async fn wait_css(&self, css: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        self.client
            .wait()
            .at_most(timeout)
            .every(Duration::from_millis(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("waiting for {css}: {e}"));
        start.elapsed()
    }

    /// Waits until the window shows `phase`.
    pub async fn wait_phase(&self, phase: &str, timeout: Duration) -> Duration {
        self.wait_css(&format!("body[data-phase='{phase}']"), timeout)
            .await
    }

    /// Waits until the JavaScript expression `js` is true in the window.
    pub async fn wait_true(&self, js: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let value = self
                .client
                .execute(&format!("return !!({js});"), vec![])
                .await
                .unwrap();
            if value == serde_json::Value::Bool(true) {
                return;
            }
            assert!(start.elapsed() < timeout, "timed out waiting for {js}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types into a field (clearing it first).
    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Gives a file to a (hidden) file input, as choosing it in the dialog would.
    pub async fn choose_file(&self, css: &str, path: &Path) {
        self.client
            .execute(
                "document.querySelector(arguments[0]).hidden = false;",
                vec![serde_json::json!(css)],
            )
            .await
            .unwrap();
        let input = self.client.find(Locator::Css(css)).await.unwrap();
        input
            .send_keys(&path.display().to_string())
            .await
            .unwrap_or_else(|e| panic!("choosing {} in {css}: {e}", path.display()));
        self.client
            .execute(
                "document.querySelector(arguments[0]).hidden = true;",
                vec![serde_json::json!(css)],
            )
            .await
            .unwrap();
    }

    /// The window's outer size in pixels.
    pub async fn size(&self) -> (u64, u64) {
        self.client.get_window_size().await.unwrap()
    }

    /// Resizes the window (as a user dragging its corner would).
    pub async fn resize(&self, (width, height): (u64, u64)) {
        let px = |n: u64| u32::try_from(n).unwrap();
        self.client
            .set_window_size(px(width), px(height))
            .await
            .unwrap();
    }

    /// Saves the top of the window as a PNG (after the latest state has been painted).
    pub async fn screenshot(&self, to: &Path) {
        self.screenshot_at(to, "window.scrollTo(0, 0);").await;
    }

    /// Saves the window as it is scrolled, as a PNG.
    pub async fn screenshot_here(&self, to: &Path) {
        self.screenshot_at(to, "").await;
    }

    async fn screenshot_at(&self, to: &Path, scroll: &str) {
        self.client
            .execute_async(
                &format!(
                    "{scroll}
                     const done = arguments[arguments.length - 1];
                     requestAnimationFrame(() => requestAnimationFrame(() => done(true)));"
                ),
                vec![],
            )
            .await
            .unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(to, png).unwrap();
    }

    /// Ends the session (the GUI exits) and the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
        drop(self.driver);
    }
}

/// Where screenshots go: `SLOPN_SCREENSHOTS`, else `gui-screenshots` in cargo's target
/// directory.
pub fn screenshot_dir() -> PathBuf {
    let dir = match std::env::var_os("SLOPN_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_BIN_EXE_slopn-gui"))
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("gui-screenshots"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
