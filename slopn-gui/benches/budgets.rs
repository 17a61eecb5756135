//! The desktop client's budgets, measured on the release build in the same desktop as the
//! end-to-end test (Xvfb, the GUI as an unprivileged user, a real hub and spoke service in
//! namespaces). Prints figures; asserts nothing about time. Run by `scripts/gui-budgets`.
//!
//! - window ready: from launch to the page having run, five launches;
//! - Connect to "connected": clicks on a local hub, ten times;
//! - idle, connected, window open: CPU over 60 s and resident memory (RSS and PSS) of the
//!   GUI and its WebKit processes.

#[path = "../tests/desktop/mod.rs"]
mod desktop;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use desktop::{Desktop, Gui, Network};

/// Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// The processes of user `uid` whose command starts with one of `names`.
fn processes(uid: u32, names: &[&str]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let owner = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok());
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            owner == Some(uid) && names.iter().any(|n| comm.starts_with(n))
        })
        .collect()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; after the ')' the state is field 3.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

fn kib(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

const GUI_PROCESSES: [&str; 3] = ["slopn-gui", "WebKitWebProces", "WebKitNetworkPr"];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks what benchmarks exist
    }
    if !desktop::runnable("gui budgets") {
        return;
    }
    let mut net = Network::new();
    net.start_hub();
    net.start_service();
    let desktop = Desktop::start(&net);
    let spoke_file = net.spoke_file_for_user();
    let answer = Command::new(&net.spoke_bin)
        .args(["import", "laptop"])
        .arg(&spoke_file)
        .arg("--socket")
        .arg(net.socket())
        .status()
        .unwrap();
    assert!(answer.success());

    // Window ready: five launches through WebDriver.
    let mut ready = Vec::new();
    for i in 0..5 {
        let gui = Gui::start(&net, &desktop, &format!("ready{i}"), true).await;
        ready.push(gui.started.elapsed());
        gui.close().await;
    }
    let in_app: Vec<String> = net
        .log("gui.log")
        .lines()
        .filter_map(|l| l.strip_prefix("slopn-gui: window ready "))
        .map(|l| l.split(' ').next().unwrap_or("").to_owned())
        .collect();

    // Connect to "connected", ten clicks.
    let gui = Gui::start(&net, &desktop, "clicks", true).await;
    gui.wait_phase("disconnected", Duration::from_secs(10))
        .await;
    let mut clicks = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        gui.click("#toggle").await;
        gui.wait_phase("connected", Duration::from_secs(10)).await;
        clicks.push(start.elapsed());
        gui.click("#toggle").await;
        gui.wait_phase("disconnected", Duration::from_secs(10))
            .await;
    }
    gui.close().await;

    // Idle, connected, with the window open: launched directly, as a user would (with the
    // GUI's own rendering settings, unlike under WebDriver).
    let launcher = desktop::launcher(&net, &desktop, "idle", true, false);
    let mut app = Command::new(&launcher)
        .env("DISPLAY", &desktop.display)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let connected = Command::new(&net.spoke_bin)
        .args(["connect", "laptop", "--socket"])
        .arg(net.socket())
        .status()
        .unwrap();
    assert!(connected.success());
    desktop::wait_until("the window's processes", Duration::from_secs(20), || {
        processes(desktop::GUI_UID, &GUI_PROCESSES).len() >= 3
    });
    std::thread::sleep(Duration::from_secs(10)); // let start-up work settle
    let pids = processes(desktop::GUI_UID, &GUI_PROCESSES);
    let before: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    let window = Duration::from_secs(60);
    std::thread::sleep(window);
    let after: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
    let cpu = after.saturating_sub(before) as f64 / TICKS / window.as_secs_f64() * 100.0;
    let mut rss = 0;
    let mut pss = 0;
    for &pid in &pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let (r, p) = (
            kib(pid, "status", "VmRSS:"),
            kib(pid, "smaps_rollup", "Pss:"),
        );
        println!(
            "  {:<16} RSS {:>7.1} MiB  PSS {:>7.1} MiB",
            comm.trim(),
            r as f64 / 1024.0,
            p as f64 / 1024.0
        );
        rss += r;
        pss += p;
    }
    let _ = app.kill();
    let _ = app.wait();
    for pid in &pids {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }

    println!(
        "SloPN desktop client budgets (release build, {} processes)",
        pids.len()
    );
    println!(
        "  window ready (WebDriver session to page run): median {:?}, all {:?}",
        median(ready.clone()),
        ready
    );
    println!("  window ready (in the app, from main to page run): {in_app:?} ms");
    println!(
        "  Connect click to \"connected\" on a local hub: median {:?}, max {:?}",
        median(clicks.clone()),
        clicks.iter().max().unwrap()
    );
    println!(
        "  idle, connected, window open, 60 s: {cpu:.2} % of one core (GUI and WebKit processes)"
    );
    println!(
        "  resident memory: RSS {:.1} MiB, PSS {:.1} MiB (shared libraries counted once)",
        rss as f64 / 1024.0,
        pss as f64 / 1024.0
    );
}
