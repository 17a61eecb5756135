//! Status and event documents for the control socket, and the rate sampler behind the
//! "bytes per second each way" figures.

use slopn_proto::key_exchange::group_name;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Value, json};
use slopn_control::{SpokeStatus as StatusDocument, TunnelState};
use slopn_driver::{HubSnapshot, IoCounters, SpokeStatus};
use slopn_proto::{DisconnectReason, DropCounters, DropReason, HubEvent, SpokeEvent, SpokeState};

/// Receive and send rates from the last two samples of a byte counter pair.
#[derive(Debug, Default)]
pub struct Rates {
    last: Mutex<Option<(Instant, u64, u64)>>,
    rates: Mutex<(f64, f64)>,
}

impl Rates {
    /// Records counters seen at `now`.
    pub fn sample(&self, now: Instant, rx_bytes: u64, tx_bytes: u64) {
        let (Ok(mut last), Ok(mut rates)) = (self.last.lock(), self.rates.lock()) else {
            return;
        };
        if let Some((then, rx, tx)) = *last {
            let secs = now.duration_since(then).as_secs_f64();
            if secs > 0.0 {
                *rates = (
                    rx_bytes.saturating_sub(rx) as f64 / secs,
                    tx_bytes.saturating_sub(tx) as f64 / secs,
                );
            }
        }
        *last = Some((now, rx_bytes, tx_bytes));
    }

    /// Bytes per second received and sent, over the last sampling interval.
    pub fn get(&self) -> (f64, f64) {
        self.rates.lock().map(|r| *r).unwrap_or_default()
    }
}

fn drops(d: &DropCounters) -> BTreeMap<String, u64> {
    d.iter()
        .map(|(reason, n)| (reason.name().to_owned(), n))
        .collect()
}

/// The machine's drops and the loop's own I/O losses (those only when there are any).
pub(crate) fn all_drops(d: &DropCounters, io: &IoCounters) -> BTreeMap<String, u64> {
    let mut all = drops(d);
    let [tun_write, tun_read, udp_send] = IO_DROP_REASONS;
    for (name, n) in [
        (tun_write, io.tun_write_drops),
        (tun_read, io.tun_read_drops),
        (udp_send, io.udp_send_errors),
    ] {
        if n > 0 {
            all.insert(name.to_owned(), n);
        }
    }
    all
}

/// The names of the event loop's own losses, as in [`all_drops`].
const IO_DROP_REASONS: [&str; 3] = ["tun_write_refused", "tun_read_unsplit", "udp_send_failed"];

/// Every drop reason a total can name, the core's and the event loop's.
pub(crate) fn drop_reasons() -> impl Iterator<Item = &'static str> {
    DropReason::ALL
        .iter()
        .map(|r| r.name())
        .chain(IO_DROP_REASONS)
}

/// The control protocol's name for a spoke state.
fn tunnel_state(state: SpokeState) -> TunnelState {
    match state {
        SpokeState::Connecting => TunnelState::Connecting,
        SpokeState::Authenticating => TunnelState::Authenticating,
        SpokeState::Established => TunnelState::Established,
        SpokeState::Reconnecting => TunnelState::Reconnecting,
        SpokeState::Closing => TunnelState::Closing,
        SpokeState::Stopped => TunnelState::Stopped,
    }
}

/// The spoke's status document (what the loop knows; the caller adds what only the event
/// stream tells, such as `connected_secs`).
pub fn spoke_status(status: &SpokeStatus, hub: &str, rates: &Rates) -> StatusDocument {
    let s = &status.stats;
    let (rx_rate, tx_rate) = rates.get();
    // Established means packets flow: not before the OS helper has set the addresses and
    // routes the assignment called for.
    let state = match tunnel_state(status.state) {
        TunnelState::Established if !status.io.routed => TunnelState::Authenticating,
        state => state,
    };
    StatusDocument {
        state,
        hub: hub.to_owned(),
        identity: s.identity.clone(),
        addresses: s.addresses.clone(),
        hub_addresses: status.hub_addresses.clone(),
        routes: status.routes.iter().map(ToString::to_string).collect(),
        dns_servers: status.dns_servers.clone(),
        rtt_ms: s.rtt.map(|r| r.as_secs_f64() * 1e3),
        tun_mtu: s.tun_mtu,
        black_holes: s.black_holes,
        key_exchange: s.key_exchange.map(group_name),
        rx_packets: s.traffic.rx_packets,
        rx_bytes: s.traffic.rx_bytes,
        tx_packets: s.traffic.tx_packets,
        tx_bytes: s.traffic.tx_bytes,
        rx_bytes_per_sec: rx_rate,
        tx_bytes_per_sec: tx_rate,
        drops: all_drops(&s.drops, &status.io),
        connect_attempts: s.connect_attempts,
        sessions: s.sessions,
        reconnects: s
            .reconnects
            .by_reason()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(reason, n)| (reason.to_owned(), n))
            .collect(),
        ..StatusDocument::default()
    }
}

/// The hub's status document.
pub fn hub_status(snapshot: &HubSnapshot, rates: &Rates) -> Value {
    let h = &snapshot.hub;
    let (rx_rate, tx_rate) = rates.get();
    json!({
        "spokes_assigned": h.spokes_assigned,
        "connections": h.connections,
        "rx_packets": h.traffic.rx_packets,
        "rx_bytes": h.traffic.rx_bytes,
        "tx_packets": h.traffic.tx_packets,
        "tx_bytes": h.traffic.tx_bytes,
        "rx_bytes_per_sec": rx_rate,
        "tx_bytes_per_sec": tx_rate,
        "tun_in_packets": h.tun_in_packets,
        "tun_out_packets": h.tun_out_packets,
        "auth_failures": h.auth_failures,
        "ignored_datagrams": h.ignored_datagrams,
        "drops": all_drops(&h.drops, &snapshot.io),
        "sessions": snapshot.spokes.iter().map(|s| json!({
            "session": s.id.0,
            "identity": s.identity,
            "addresses": s.addresses,
            "remote": s.remote.to_string(),
            "rtt_ms": s.rtt.as_secs_f64() * 1e3,
            "max_packet": s.max_packet,
            "black_holes": s.black_holes,
            "key_exchange": s.key_exchange.map(group_name),
            "rx_packets": s.traffic.rx_packets,
            "rx_bytes": s.traffic.rx_bytes,
            "tx_packets": s.traffic.tx_packets,
            "tx_bytes": s.traffic.tx_bytes,
            "drops": drops(&s.drops),
        })).collect::<Vec<_>>(),
    })
}

fn reason(r: &DisconnectReason) -> Value {
    match r {
        DisconnectReason::Local { code, reason } => {
            json!({ "by": "local", "code": code.0, "name": code.name(), "reason": reason })
        }
        DisconnectReason::Remote { code, reason } => {
            json!({ "by": "peer", "code": code.0, "name": code.name(), "reason": reason })
        }
        DisconnectReason::TimedOut => json!({ "by": "timeout" }),
        DisconnectReason::Reset => json!({ "by": "reset" }),
        DisconnectReason::Transport {
            error,
            tls,
            by_peer,
        } => json!({ "by": "transport", "error": error, "tls": tls, "by_peer": by_peer }),
    }
}

/// A spoke event as a document.
pub fn spoke_event(event: &SpokeEvent) -> Value {
    match event {
        SpokeEvent::Connecting { attempt } => json!({ "event": "connecting", "attempt": attempt }),
        SpokeEvent::Connected { remote } => {
            json!({ "event": "connected", "remote": remote.to_string() })
        }
        SpokeEvent::Assigned {
            identity,
            addresses,
            hub_addresses,
            tun_mtu,
        } => json!({
            "event": "assigned", "identity": identity, "addresses": addresses,
            "hub_addresses": hub_addresses, "tun_mtu": tun_mtu,
        }),
        SpokeEvent::RoutesChanged { routes } => json!({
            "event": "routes_changed",
            "routes": routes.iter().flat_map(|r| r.to_nets()).map(|n| n.to_string()).collect::<Vec<_>>(),
        }),
        SpokeEvent::MtuChanged { tun_mtu } => json!({ "event": "mtu_changed", "tun_mtu": tun_mtu }),
        SpokeEvent::DnsChanged { servers } => json!({ "event": "dns_changed", "servers": servers }),
        SpokeEvent::Disconnected {
            reason: r,
            retry_in,
        } => json!({
            "event": "disconnected", "reason": reason(r),
            "retry_in_ms": retry_in.map(|d| d.as_millis() as u64),
        }),
    }
}

/// A hub event as a document.
pub fn hub_event(event: &HubEvent) -> Value {
    match event {
        HubEvent::Connected { id, remote } => {
            json!({ "event": "connected", "session": id.0, "remote": remote.to_string() })
        }
        HubEvent::Assigned {
            id,
            identity,
            addresses,
        } => json!({
            "event": "assigned", "session": id.0, "identity": identity, "addresses": addresses,
        }),
        HubEvent::Disconnected {
            id,
            identity,
            reason: r,
        } => json!({
            "event": "disconnected", "session": id.0, "identity": identity, "reason": reason(r),
        }),
        HubEvent::AuthFailed { id, remote, reason } => json!({
            "event": "auth_failed", "session": id.0, "remote": remote.to_string(), "reason": reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slopn_proto::DropReason;

    #[test]
    fn loop_losses_join_the_drops_only_when_there_are_any() {
        let mut machine = DropCounters::default();
        machine.add(DropReason::Congested);
        let io = IoCounters {
            tun_write_drops: 3,
            ..IoCounters::default()
        };
        let all = all_drops(&machine, &io);
        assert_eq!(all["congested"], 1);
        assert_eq!(all["tun_write_refused"], 3);
        assert!(!all.contains_key("udp_send_failed"), "{all:?}");
        assert!(!all.contains_key("tun_read_unsplit"), "{all:?}");
    }

    #[test]
    fn established_only_once_the_assignment_is_routed() {
        let mut status = SpokeStatus {
            state: SpokeState::Established,
            stats: Default::default(),
            hub_addresses: Vec::new(),
            routes: Vec::new(),
            dns_servers: Vec::new(),
            io: IoCounters::default(),
        };
        let state = |s: &SpokeStatus| spoke_status(s, "hub:4433", &Rates::default()).state;
        assert_eq!(state(&status), TunnelState::Authenticating);
        status.io.routed = true;
        assert_eq!(state(&status), TunnelState::Established);
        status.state = SpokeState::Reconnecting;
        assert_eq!(state(&status), TunnelState::Reconnecting);
    }
}
