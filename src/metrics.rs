//! Prometheus metrics over HTTP, for `metrics_listen` in `hub.toml` and `spoke.toml`.
//!
//! Each scrape of `GET /metrics` takes a fresh snapshot from the event loop (the one the
//! control socket's `status` shows) and encodes it with the `prometheus` crate in
//! Prometheus's text format. Nothing is kept between scrapes, so a spoke that left has no
//! series any more: the cardinality follows the live sessions.
//!
//! Names follow Prometheus's conventions: `slopn_` and the role, base units in the name
//! (`_bytes`, `_seconds`), `_total` on counters.

use slopn_proto::key_exchange::group_name;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};
use slopn_control::{SpokeStatus, TunnelState};
use slopn_driver::HubSnapshot;
use slopn_proto::ReconnectCounters;
use tracing::{info, warn};

use crate::status;

/// One scrape's metrics.
type Scrape = prometheus::Result<()>;

/// The HTTP endpoint: one thread answering scrapes until dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `GET /metrics` on `listen`; `collect` fills a fresh registry per scrape, or
    /// returns `None` when there is nothing to report (the loop has ended).
    pub fn start(
        listen: SocketAddr,
        collect: impl Fn(&Registry) -> Option<Scrape> + Send + 'static,
    ) -> io::Result<Self> {
        let server = tiny_http::Server::http(listen).map_err(io::Error::other)?;
        let server = Arc::new(server);
        let serving = server.clone();
        let thread = std::thread::Builder::new()
            .name("slopn-metrics".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    answer(request, &collect);
                }
            })?;
        info!(%listen, "serving Prometheus metrics on /metrics");
        Ok(Self {
            server,
            thread: Some(thread),
        })
    }
}

/// Starts a [`MetricsServer`] if `listen` is set (`metrics_listen`); the error is a
/// sentence for the operator.
pub fn serve(
    listen: Option<SocketAddr>,
    collect: impl Fn(&Registry) -> Option<Scrape> + Send + 'static,
) -> Result<Option<MetricsServer>, String> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    MetricsServer::start(listen, collect)
        .map(Some)
        .map_err(|e| {
            format!(
                "cannot serve metrics on {listen} (metrics_listen): {e}; choose a free address \
             and port, or remove metrics_listen"
            )
        })
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(request: tiny_http::Request, collect: &impl Fn(&Registry) -> Option<Scrape>) {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let encoder = TextEncoder::new();
    let (status, body, content_type) = match (request.method(), request.url()) {
        (tiny_http::Method::Get, "/metrics") => {
            let registry = Registry::new();
            let mut text = Vec::new();
            match collect(&registry) {
                None => (503, b"the tunnel has stopped\n".to_vec(), PLAIN),
                Some(result) => {
                    match result.and_then(|()| encoder.encode(&registry.gather(), &mut text)) {
                        Ok(()) => (200, text, encoder.format_type()),
                        Err(e) => {
                            warn!("metrics: {e}");
                            (
                                500,
                                format!("metrics could not be encoded: {e}\n").into_bytes(),
                                PLAIN,
                            )
                        }
                    }
                }
            }
        }
        (tiny_http::Method::Get, _) => (404, b"metrics are at /metrics\n".to_vec(), PLAIN),
        _ => (405, b"only GET is served\n".to_vec(), PLAIN),
    };
    let header = tiny_http::Header::from_bytes("Content-Type", content_type)
        .expect("a constant header is valid");
    let response = tiny_http::Response::from_data(body)
        .with_status_code(status)
        .with_header(header);
    if let Err(e) = request.respond(response) {
        warn!("metrics: could not answer a scrape: {e}");
    }
}

/// The key exchange groups the hub reports sessions of, even with none.
const KEY_EXCHANGE_GROUPS: [&str; 2] = ["X25519MLKEM768", "X25519"];

/// A counter with `value`.
fn counter(registry: &Registry, name: &str, help: &str, value: u64) -> Scrape {
    let metric = IntCounter::with_opts(Opts::new(name, help))?;
    metric.inc_by(value);
    registry.register(Box::new(metric))
}

/// A gauge with `value`.
fn gauge(registry: &Registry, name: &str, help: &str, value: f64) -> Scrape {
    let metric = Gauge::with_opts(Opts::new(name, help))?;
    metric.set(value);
    registry.register(Box::new(metric))
}

/// Counters under one name, one per value of the labels `labels`.
fn counters(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    series: impl IntoIterator<Item = (Vec<String>, u64)>,
) -> Scrape {
    let family = IntCounterVec::new(Opts::new(name, help), labels)?;
    for (values, value) in series {
        family.get_metric_with_label_values(&values)?.inc_by(value);
    }
    registry.register(Box::new(family))
}

/// Gauges under one name, one per value of the labels `labels`.
fn gauges(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    series: impl IntoIterator<Item = (Vec<String>, f64)>,
) -> Scrape {
    let family = GaugeVec::new(Opts::new(name, help), labels)?;
    for (values, value) in series {
        family.get_metric_with_label_values(&values)?.set(value);
    }
    registry.register(Box::new(family))
}

/// A series for every drop reason, zero where nothing was dropped, so that the family is
/// there from the first scrape and `rate()` has a start.
fn every_reason(
    counts: &std::collections::BTreeMap<String, u64>,
) -> impl Iterator<Item = (Vec<String>, u64)> + '_ {
    status::drop_reasons().map(|reason| {
        let n = counts.get(reason).copied().unwrap_or(0);
        (vec![reason.to_owned()], n)
    })
}

/// Traffic counters each way, under `prefix` (`slopn_hub`, `slopn_spoke`).
fn traffic(registry: &Registry, prefix: &str, what: &str, t: [u64; 4]) -> Scrape {
    let [rx_packets, rx_bytes, tx_packets, tx_bytes] = t;
    for (name, help, value) in [
        (
            "received_packets",
            "Packets {} received from the tunnel",
            rx_packets,
        ),
        (
            "received_bytes",
            "Bytes {} received from the tunnel",
            rx_bytes,
        ),
        (
            "sent_packets",
            "Packets {} sent into the tunnel",
            tx_packets,
        ),
        ("sent_bytes", "Bytes {} sent into the tunnel", tx_bytes),
    ] {
        let help = help.replace("{}", what);
        counter(registry, &format!("{prefix}_{name}_total"), &help, value)?;
    }
    Ok(())
}

/// The hub's metrics from one snapshot.
pub fn hub(registry: &Registry, s: &HubSnapshot) -> Scrape {
    let h = &s.hub;
    gauge(
        registry,
        "slopn_hub_sessions",
        "QUIC connections of spokes, established or not",
        h.connections as f64,
    )?;
    gauge(
        registry,
        "slopn_hub_spokes_assigned",
        "Spokes holding tunnel addresses",
        h.spokes_assigned as f64,
    )?;
    counter(
        registry,
        "slopn_hub_sessions_assigned_total",
        "Sessions that were assigned addresses",
        h.sessions_assigned_total,
    )?;
    counter(
        registry,
        "slopn_hub_auth_failures_total",
        "Spokes refused for a bad token, certificate or revocation",
        h.auth_failures,
    )?;
    counter(
        registry,
        "slopn_hub_connections_refused_total",
        "First-flight packets of connection attempts refused before a session began (a two-packet ClientHello counts twice)",
        h.refused,
    )?;
    counter(
        registry,
        "slopn_hub_retries_sent_total",
        "QUIC Retry packets sent to check a client's address",
        h.retries,
    )?;
    counter(
        registry,
        "slopn_hub_ignored_datagrams_total",
        "UDP datagrams that were no QUIC packet for the hub (undecodable, or for no connection it has)",
        h.ignored_datagrams,
    )?;
    counter(
        registry,
        "slopn_hub_handshakes_started_total",
        "QUIC handshakes taken on (not refused, not sent a Retry)",
        h.handshakes.started,
    )?;
    counter(
        registry,
        "slopn_hub_handshakes_completed_total",
        "QUIC handshakes completed",
        h.handshakes.completed,
    )?;
    counters(
        registry,
        "slopn_hub_handshakes_failed_total",
        "QUIC handshakes that failed, by reason (tls, timeout, other)",
        &["reason"],
        h.handshakes
            .failures()
            .into_iter()
            .map(|(reason, n)| (vec![reason.to_owned()], n)),
    )?;
    let pool = |p: &slopn_proto::PoolUsage| vec![p.network.to_string()];
    gauges(
        registry,
        "slopn_hub_pool_addresses_in_use",
        "Addresses of the pool handed out",
        &["pool"],
        h.pools.iter().map(|p| (pool(p), p.in_use as f64)),
    )?;
    gauges(
        registry,
        "slopn_hub_pool_addresses_free",
        "Addresses of the pool still free",
        &["pool"],
        h.pools
            .iter()
            .map(|p| (pool(p), p.capacity.saturating_sub(p.in_use as u128) as f64)),
    )?;
    let t = &h.traffic;
    traffic(
        registry,
        "slopn_hub",
        "of all spokes",
        [t.rx_packets, t.rx_bytes, t.tx_packets, t.tx_bytes],
    )?;
    counters(
        registry,
        "slopn_hub_dropped_packets_total",
        "Packets dropped, by reason (the event loop's own losses included)",
        &["reason"],
        every_reason(&status::all_drops(&h.drops, &s.io)),
    )?;

    let id = |x: &slopn_proto::SpokeStats| x.identity.clone().unwrap_or_default();
    let per_spoke =
        |f: fn(&slopn_proto::SpokeStats) -> u64| s.spokes.iter().map(move |x| (vec![id(x)], f(x)));
    let identity = &["identity"];
    counters(
        registry,
        "slopn_hub_spoke_received_packets_total",
        "Packets received from the spoke",
        identity,
        per_spoke(|x| x.traffic.rx_packets),
    )?;
    counters(
        registry,
        "slopn_hub_spoke_received_bytes_total",
        "Bytes received from the spoke",
        identity,
        per_spoke(|x| x.traffic.rx_bytes),
    )?;
    counters(
        registry,
        "slopn_hub_spoke_sent_packets_total",
        "Packets sent to the spoke",
        identity,
        per_spoke(|x| x.traffic.tx_packets),
    )?;
    counters(
        registry,
        "slopn_hub_spoke_sent_bytes_total",
        "Bytes sent to the spoke",
        identity,
        per_spoke(|x| x.traffic.tx_bytes),
    )?;
    gauges(
        registry,
        "slopn_hub_sessions_by_key_exchange",
        "Sessions by the TLS key exchange group they negotiated (X25519MLKEM768: post-quantum hybrid)",
        &["group"],
        KEY_EXCHANGE_GROUPS.iter().map(|group| {
            let n = s
                .spokes
                .iter()
                .filter(|x| x.key_exchange.map(group_name).as_deref() == Some(*group))
                .count();
            (vec![(*group).to_owned()], n as f64)
        }),
    )?;
    gauges(
        registry,
        "slopn_hub_spoke_key_exchange_info",
        "1 for the TLS key exchange group the spoke's session negotiated",
        &["identity", "group"],
        s.spokes.iter().filter_map(|x| {
            let group = group_name(x.key_exchange?);
            Some((vec![id(x), group], 1.0))
        }),
    )?;
    counters(
        registry,
        "slopn_hub_spoke_black_holes_total",
        "MTU black holes the connection to the spoke took",
        identity,
        per_spoke(|x| x.black_holes),
    )?;
    counters(
        registry,
        "slopn_hub_spoke_dropped_packets_total",
        "Packets of the spoke dropped, by reason",
        &["identity", "reason"],
        s.spokes.iter().flat_map(|x| {
            x.drops
                .iter()
                .map(move |(reason, n)| (vec![id(x), reason.name().to_owned()], n))
        }),
    )?;
    gauges(
        registry,
        "slopn_hub_spoke_rtt_seconds",
        "Round-trip time to the spoke",
        identity,
        s.spokes.iter().map(|x| (vec![id(x)], x.rtt.as_secs_f64())),
    )?;
    gauges(
        registry,
        "slopn_hub_spoke_max_packet_bytes",
        "Largest IP packet the path to the spoke carries now (its path MTU less QUIC's overhead)",
        identity,
        s.spokes
            .iter()
            .filter_map(|x| Some((vec![id(x)], x.max_packet? as f64))),
    )?;
    let now = std::time::Instant::now();
    gauges(
        registry,
        "slopn_hub_spoke_session_age_seconds",
        "Time since the spoke's session got its addresses",
        identity,
        s.spokes.iter().filter_map(|x| {
            Some((
                vec![id(x)],
                now.saturating_duration_since(x.assigned_at?).as_secs_f64(),
            ))
        }),
    )
}

/// Every state a spoke reports, for a state gauge whose one series at 1 is the current state.
const STATES: [(TunnelState, &str); 7] = [
    (TunnelState::Disconnected, "disconnected"),
    (TunnelState::Connecting, "connecting"),
    (TunnelState::Authenticating, "authenticating"),
    (TunnelState::Established, "established"),
    (TunnelState::Reconnecting, "reconnecting"),
    (TunnelState::Closing, "closing"),
    (TunnelState::Stopped, "stopped"),
];

/// The spoke's metrics from its status document.
pub fn spoke(registry: &Registry, s: &SpokeStatus) -> Scrape {
    gauges(
        registry,
        "slopn_spoke_state",
        "1 for the tunnel's current state, 0 for the others",
        &["state"],
        STATES.iter().map(|(state, name)| {
            (
                vec![(*name).to_owned()],
                f64::from(u8::from(s.state == *state)),
            )
        }),
    )?;
    traffic(
        registry,
        "slopn_spoke",
        "of this tunnel",
        [s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes],
    )?;
    counters(
        registry,
        "slopn_spoke_dropped_packets_total",
        "Packets dropped, by reason (the event loop's own losses included)",
        &["reason"],
        every_reason(&s.drops),
    )?;
    if let Some(rtt) = s.rtt_ms {
        gauge(
            registry,
            "slopn_spoke_rtt_seconds",
            "Round-trip time to the hub",
            rtt / 1000.0,
        )?;
    }
    if let Some(mtu) = s.tun_mtu {
        gauge(
            registry,
            "slopn_spoke_tun_mtu_bytes",
            "The TUN device's MTU",
            f64::from(mtu),
        )?;
    }
    if let Some(secs) = s.connected_secs {
        gauge(
            registry,
            "slopn_spoke_session_age_seconds",
            "Time since the session was established",
            secs,
        )?;
        gauge(
            registry,
            "slopn_spoke_hub_silent_seconds",
            "Time nothing has arrived from the hub, once longer than a keep-alive round (else 0)",
            s.hub_silent_secs.unwrap_or(0.0),
        )?;
    }
    gauges(
        registry,
        "slopn_spoke_key_exchange_info",
        "1 for the TLS key exchange group of the current connection (X25519MLKEM768: post-quantum hybrid)",
        &["group"],
        s.key_exchange
            .iter()
            .map(|group| (vec![group.clone()], 1.0)),
    )?;
    counter(
        registry,
        "slopn_spoke_black_holes_total",
        "MTU black holes the current connection took",
        s.black_holes,
    )?;
    counter(
        registry,
        "slopn_spoke_connect_attempts_total",
        "Connection attempts to the hub",
        s.connect_attempts,
    )?;
    counter(
        registry,
        "slopn_spoke_sessions_total",
        "Sessions established with the hub",
        s.sessions,
    )?;
    counters(
        registry,
        "slopn_spoke_reconnects_total",
        "New attempts scheduled, by why the previous one ended",
        &["reason"],
        ReconnectCounters::default()
            .by_reason()
            .into_iter()
            .map(|(reason, _)| {
                let n = s.reconnects.get(reason).copied().unwrap_or(0);
                (vec![reason.to_owned()], n)
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_address_is_refused_with_a_sentence() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = serve(Some(addr), |_| None).err().expect("refused");
        assert!(
            e.contains(&addr.to_string()) && e.contains("metrics_listen"),
            "{e}"
        );
        assert!(serve(None, |_| None).unwrap().is_none());
    }

    /// The text a scrape of a spoke with `status` answers.
    fn spoke_scrape(status: &SpokeStatus) -> String {
        let registry = Registry::new();
        spoke(&registry, status).unwrap();
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn a_spoke_reports_its_state_as_one_series_at_one() {
        let text = spoke_scrape(&SpokeStatus {
            state: TunnelState::Reconnecting,
            ..SpokeStatus::default()
        });
        assert!(
            text.contains("slopn_spoke_state{state=\"reconnecting\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("slopn_spoke_state{state=\"established\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("slopn_spoke_sent_bytes_total 0\n"), "{text}");
        assert!(!text.contains("slopn_spoke_hub_silent_seconds"), "{text}");
    }

    #[test]
    fn a_silent_hub_shows_in_a_gauge_while_connected() {
        let scrape = |hub_silent_secs| {
            spoke_scrape(&SpokeStatus {
                state: TunnelState::Established,
                connected_secs: Some(60.0),
                hub_silent_secs,
                ..SpokeStatus::default()
            })
        };
        let text = scrape(None);
        assert!(
            text.contains("slopn_spoke_hub_silent_seconds 0\n"),
            "{text}"
        );
        let text = scrape(Some(4.5));
        assert!(
            text.contains("slopn_spoke_hub_silent_seconds 4.5\n"),
            "{text}"
        );
    }
}
