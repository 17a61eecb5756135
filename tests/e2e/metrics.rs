//! Prometheus metrics: the hub and a spoke serve `/metrics`, the counters follow traffic, a
//! spoke that leaves takes its series with it, and `promtool check metrics` accepts the
//! output.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use slopn_tun::netns::{self, Namespace};

use crate::lab::Lab;

const HUB_METRICS: &str = "127.0.0.1:9464";
const SPOKE_METRICS: &str = "127.0.0.1:9465";

/// `GET path` on `addr` from inside `ns`: the status code and the body.
fn get(ns: &Namespace, addr: &str, path: &str) -> (u16, String) {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter().unwrap();
            let mut stream = TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            let (head, body) = response.split_once("\r\n\r\n").unwrap();
            let code = head.split(' ').nth(1).unwrap().parse().unwrap();
            (code, body.to_owned())
        })
        .join()
        .unwrap()
    })
}

pub(crate) fn scrape(ns: &Namespace, addr: &str) -> String {
    let (code, body) = get(ns, addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// The value of the series written exactly as `series` (name and labels), if present.
pub(crate) fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split(' ').next()?.parse().ok()
    })
}

/// promtool from the PATH or `SLOPN_PROMTOOL`.
fn promtool() -> Result<PathBuf, String> {
    let path = std::env::var_os("SLOPN_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("promtool"));
    match Command::new(&path).arg("--version").output() {
        Ok(out) if out.status.success() => Ok(path),
        _ => Err(format!(
            "no promtool ({}): install Debian's prometheus package or set SLOPN_PROMTOOL",
            path.display()
        )),
    }
}

fn promtool_accepts(promtool: &PathBuf, metrics: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Grafana dashboard in docs/: every query parses (`promtool check rules`) and names
/// only metrics the hub or the spoke serves.
fn dashboard_queries_are_valid(promtool: &PathBuf, served: &[&str]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-dashboard.json");
    let text = std::fs::read_to_string(path).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut rules = String::from("groups:\n- name: dashboard\n  rules:\n");
    let panels = dashboard["panels"].as_array().expect("panels");
    for (i, target) in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .enumerate()
    {
        let expr = target["expr"].as_str().expect("expr");
        rules += &format!(
            "  - record: dashboard:q{i}\n    expr: '{}'\n",
            expr.replace('\'', "''")
        );
        let mut rest = expr;
        while let Some(at) = rest.find("slopn_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let help = format!("# HELP {name} ");
            assert!(
                served.iter().any(|m| m.contains(&help)),
                "the dashboard queries {name}, which nothing serves"
            );
            rest = &rest[at + name.len()..];
        }
    }
    let file = std::env::temp_dir().join(format!("slopn-dashboard-{}.yml", std::process::id()));
    std::fs::write(&file, rules).unwrap();
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "promtool check rules on the dashboard's queries: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hub_and_spoke_serve_metrics_that_follow_traffic() {
    let test = "hub_and_spoke_serve_metrics";
    let Some(mut lab) = Lab::new(test, 1) else {
        return;
    };
    let promtool = promtool();
    if !netns::skip_unless(test, promtool.as_ref().map(|_| ()).map_err(Clone::clone)) {
        return;
    }
    let promtool = promtool.unwrap();
    lab.edit_hub(|h| h.metrics_listen = Some(HUB_METRICS.parse().unwrap()));
    lab.edit_spoke(0, |s| {
        s.metrics_listen = Some(SPOKE_METRICS.parse().unwrap())
    });
    lab.start_hub();
    lab.start_spoke(0);
    lab.wait_established(&[0], Duration::from_secs(10));

    // Junk from the spoke's side of the network: counted, and nothing else.
    let (ns, hub_addr) = (lab.spoke_ns[0].name().to_owned(), lab.hub_addr());
    std::thread::spawn(move || {
        slopn_tun::netns::enter(&ns).unwrap();
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..20u8 {
            socket.send_to(&[0x40 | (i & 0x3f); 40], hub_addr).unwrap();
        }
    })
    .join()
    .unwrap();
    lab.wait_for("the junk counted", Duration::from_secs(5), |lab| {
        lab.hub_status().unwrap()["ignored_datagrams"].as_u64() >= Some(20)
    });

    let spoke_series = r#"slopn_hub_spoke_received_bytes_total{identity="spoke-0"}"#;
    let hub = scrape(&lab.hub_ns, HUB_METRICS);
    assert!(
        value(&hub, "slopn_hub_ignored_datagrams_total") >= Some(20.0),
        "{hub}"
    );
    assert_eq!(value(&hub, "slopn_hub_spokes_assigned"), Some(1.0), "{hub}");
    assert_eq!(value(&hub, "slopn_hub_handshakes_started_total"), Some(1.0));
    assert_eq!(
        value(&hub, "slopn_hub_handshakes_completed_total"),
        Some(1.0)
    );
    let failed_tls = r#"slopn_hub_handshakes_failed_total{reason="tls"}"#;
    assert_eq!(value(&hub, failed_tls), Some(0.0), "{hub}");

    // A hub that dies and comes back: the spoke counts the reconnect by its reason (the
    // new hub answers the old session with a stateless reset).
    lab.signal_hub("KILL");
    lab.start_hub();
    lab.wait_for("the spoke to reconnect", Duration::from_secs(15), |lab| {
        let spoke = scrape(&lab.spoke_ns[0], SPOKE_METRICS);
        value(&spoke, "slopn_spoke_sessions_total") == Some(2.0)
    });
    let spoke = scrape(&lab.spoke_ns[0], SPOKE_METRICS);
    let reset = r#"slopn_spoke_reconnects_total{reason="reset"}"#;
    assert_eq!(value(&spoke, reset), Some(1.0), "{spoke}");
    promtool_accepts(&promtool, &spoke);
    let hub = scrape(&lab.hub_ns, HUB_METRICS);
    let before = value(&hub, spoke_series).expect("a series for the spoke");
    let spoke = scrape(&lab.spoke_ns[0], SPOKE_METRICS);
    assert_eq!(
        value(&spoke, r#"slopn_spoke_state{state="established"}"#),
        Some(1.0),
        "{spoke}"
    );
    let sent_before = value(&spoke, "slopn_spoke_sent_bytes_total").unwrap();

    lab.ping(&lab.spoke_ns[0], "10.100.0.1", 5)
        .expect("spoke pings the hub");
    let hub = scrape(&lab.hub_ns, HUB_METRICS);
    let spoke = scrape(&lab.spoke_ns[0], SPOKE_METRICS);
    assert!(
        value(&hub, spoke_series).unwrap() >= before + 5.0 * 84.0,
        "{hub}"
    );
    assert!(value(&spoke, "slopn_spoke_sent_bytes_total").unwrap() >= sent_before + 5.0 * 84.0);
    assert!(value(&hub, r#"slopn_hub_spoke_rtt_seconds{identity="spoke-0"}"#).unwrap() > 0.0);
    promtool_accepts(&promtool, &hub);
    promtool_accepts(&promtool, &spoke);
    dashboard_queries_are_valid(&promtool, &[&hub, &spoke]);

    // Anything but GET /metrics is refused.
    assert_eq!(get(&lab.hub_ns, HUB_METRICS, "/").0, 404);

    // A spoke that leaves takes its series with it.
    lab.signal_spoke(0, "TERM");
    lab.wait_for(
        "the hub to forget the spoke",
        Duration::from_secs(10),
        |lab| !scrape(&lab.hub_ns, HUB_METRICS).contains(r#"identity="spoke-0""#),
    );
    let hub = scrape(&lab.hub_ns, HUB_METRICS);
    assert_eq!(value(&hub, "slopn_hub_spokes_assigned"), Some(0.0), "{hub}");
    assert!(value(&hub, "slopn_hub_received_bytes_total").unwrap() >= 5.0 * 84.0);
}
