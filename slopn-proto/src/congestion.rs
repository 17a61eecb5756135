//! Congestion control of the outer QUIC connection, and the controller made for tunnels.
//!
//! A tunnel carries other transports' packets: inner TCP flows run their own congestion
//! control and answer every loss themselves. An outer controller that halves its window on
//! the same losses backs off twice, and on a path with random loss (radio, a lossy peering)
//! it collapses: at 5 % loss, Cubic and NewReno hold the tunnel to a few packets per round
//! trip while the inner TCP alone would fill the link, and the datagrams waiting for window
//! push the inner round-trip time up. RFC 9484 (section 10, "Performance Considerations")
//! lets the outer connection disable congestion control for datagrams altogether;
//! [`Congestion::Tunnel`] keeps just enough of it to protect the path: it backs off when
//! losses come with a standing queue (real congestion), never for losses on an empty path
//! (noise), and grows only one packet per round trip while a queue stands.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::RttEstimator;
use quinn_proto::congestion::{
    BbrConfig, Controller, ControllerFactory, ControllerMetrics, CubicConfig, NewRenoConfig,
};

/// Which congestion controller the QUIC connection uses for what it sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Congestion {
    /// [`TunnelController`]: ignores random loss, backs off on loss with queueing delay.
    #[default]
    Tunnel,
    /// quinn's CUBIC (RFC 9438), the usual choice for a QUIC transport carrying streams.
    Cubic,
    /// quinn's NewReno (RFC 9002).
    NewReno,
    /// quinn's experimental BBR (version 1).
    Bbr,
}

impl Congestion {
    /// Every controller, in the order of [`Congestion::name`]'s documentation.
    pub const ALL: [Congestion; 4] = [Self::Tunnel, Self::Cubic, Self::NewReno, Self::Bbr];

    /// The controller's name in configuration files: `tunnel`, `cubic`, `newreno` or `bbr`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tunnel => "tunnel",
            Self::Cubic => "cubic",
            Self::NewReno => "newreno",
            Self::Bbr => "bbr",
        }
    }

    /// The controller named `name` (see [`Congestion::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    pub(crate) fn factory(self) -> Arc<dyn ControllerFactory + Send + Sync> {
        match self {
            Self::Tunnel => Arc::new(TunnelConfig),
            Self::Cubic => Arc::new(CubicConfig::default()),
            Self::NewReno => Arc::new(NewRenoConfig::default()),
            Self::Bbr => Arc::new(BbrConfig::default()),
        }
    }
}

/// Builds [`TunnelController`]s.
#[derive(Debug, Clone, Copy, Default)]
struct TunnelConfig;

impl ControllerFactory for TunnelConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(TunnelController::new(now, current_mtu))
    }
}

/// RFC 9002's initial window: ten packets, at most 14,720 bytes.
const INITIAL_WINDOW_PACKETS: u64 = 10;
const INITIAL_WINDOW_CAP: u64 = 14_720;
/// Queueing delay (smoothed RTT above the minimum) that counts as a standing queue: the larger
/// of this and half the minimum RTT. Host scheduling alone adds a millisecond or so.
const MIN_QUEUE_DELAY: Duration = Duration::from_millis(2);
/// Window kept after a congestion loss (CUBIC's beta).
const BACKOFF: f64 = 0.7;
/// Largest window: 10 Gbit/s over a 200 ms round trip. Only a path that never shows a queue
/// gets there; the bound keeps quinn's pacing meaningful.
const MAX_WINDOW: u64 = 256 << 20;

/// A loss-tolerant, delay-aware congestion controller for tunnels (after TCP Veno).
///
/// - Growth: the window doubles per round trip while the path shows no standing queue
///   (smoothed RTT less than the larger of 2 ms and half the minimum RTT above the minimum),
///   and grows by one packet per round trip while it does (as NewReno's congestion
///   avoidance, so that it holds its share against loss-based flows). Nothing grows while
///   the sender has nothing to send.
/// - Loss on a path without a standing queue is noise: the window stays.
/// - Loss with a standing queue, or an ECN congestion mark, is congestion: the window drops
///   to 70 % once per round trip (as CUBIC's).
/// - Persistent congestion (every packet lost for several PTOs) resets to the minimum window,
///   as RFC 9002 requires.
#[derive(Debug, Clone)]
pub struct TunnelController {
    mtu: u64,
    window: u64,
    /// Losses of packets sent before this are part of the loss event already answered.
    recovery_start: Instant,
    /// Whether the last RTT sample showed a standing queue.
    queueing: bool,
    /// Bytes acknowledged towards the next one-packet increase while queueing.
    acked_in_avoidance: u64,
}

impl TunnelController {
    /// A controller for a path whose packets are `current_mtu` bytes.
    pub fn new(now: Instant, current_mtu: u16) -> Self {
        let mtu = u64::from(current_mtu);
        Self {
            mtu,
            window: initial_window(mtu),
            recovery_start: now,
            queueing: false,
            acked_in_avoidance: 0,
        }
    }

    fn minimum_window(&self) -> u64 {
        2 * self.mtu
    }
}

fn initial_window(mtu: u64) -> u64 {
    (INITIAL_WINDOW_PACKETS * mtu).min(INITIAL_WINDOW_CAP.max(2 * mtu))
}

/// Whether a smoothed RTT stands far enough above the minimum to mean a queue.
fn queueing(smoothed: Duration, min: Duration) -> bool {
    smoothed.saturating_sub(min) > MIN_QUEUE_DELAY.max(min / 2)
}

impl TunnelController {
    /// [`Controller::on_ack`] with the RTT estimator's smoothed and minimum RTT.
    fn acked(
        &mut self,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        smoothed: Duration,
        min: Duration,
    ) {
        self.queueing = queueing(smoothed, min);
        if app_limited || sent <= self.recovery_start {
            return;
        }
        if !self.queueing {
            // No queue: slow start, whatever happened before.
            self.window = self.window.saturating_add(bytes).min(MAX_WINDOW);
            self.acked_in_avoidance = 0;
            return;
        }
        self.acked_in_avoidance += bytes;
        if self.acked_in_avoidance >= self.window {
            self.acked_in_avoidance -= self.window;
            self.window = self.window.saturating_add(self.mtu).min(MAX_WINDOW);
        }
    }
}

impl Controller for TunnelController {
    fn on_ack(
        &mut self,
        _now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.acked(sent, bytes, app_limited, rtt.get(), rtt.min());
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        if is_persistent_congestion {
            self.recovery_start = now;
            self.window = self.minimum_window();
            return;
        }
        if sent <= self.recovery_start {
            return;
        }
        // `lost_bytes == 0` is an ECN mark: the network says congestion outright.
        if self.queueing || lost_bytes == 0 {
            self.recovery_start = now;
            self.window = ((self.window as f64 * BACKOFF) as u64).max(self.minimum_window());
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu);
        self.window = self.window.max(self.minimum_window());
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.window;
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        initial_window(self.mtu)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1400;
    const MS: Duration = Duration::from_millis(1);

    /// A controller past its initial window, and the time after its creation.
    fn grown(start: Instant) -> TunnelController {
        let mut c = TunnelController::new(start, MTU);
        let later = start + MS;
        for _ in 0..100 {
            c.acked(later, 1400, false, MS, MS);
        }
        c
    }

    #[test]
    fn slow_start_without_queue_and_no_growth_when_idle() {
        let start = Instant::now();
        let mut c = TunnelController::new(start, MTU);
        assert_eq!(c.window(), 14_000);
        c.acked(start + MS, 1400, false, MS, MS);
        assert_eq!(c.window(), 15_400);
        c.acked(start + MS, 1400, true, MS, MS);
        assert_eq!(c.window(), 15_400, "an app-limited sender does not grow");
    }

    #[test]
    fn queue_turns_slow_start_into_one_packet_per_window() {
        let start = Instant::now();
        let mut c = grown(start);
        let window = c.window();
        // 10 ms smoothed over a 1 ms minimum: a standing queue.
        let mut acked = 0;
        while acked < window {
            c.acked(start + MS, 1400, false, 10 * MS, MS);
            acked += 1400;
        }
        assert_eq!(c.window(), window + 1400);
    }

    #[test]
    fn growth_stops_at_the_largest_window() {
        let start = Instant::now();
        let mut c = TunnelController::new(start, MTU);
        for _ in 0..300 {
            c.acked(start + MS, 1 << 20, false, MS, MS);
        }
        assert_eq!(c.window(), MAX_WINDOW);
    }

    #[test]
    fn random_loss_keeps_the_window() {
        let start = Instant::now();
        let mut c = grown(start);
        let window = c.window();
        for i in 1..50 {
            c.on_congestion_event(start + i * MS, start + (i - 1) * MS, false, 1400);
        }
        assert_eq!(c.window(), window);
    }

    #[test]
    fn loss_with_queue_backs_off_once_per_event() {
        let start = Instant::now();
        let mut c = grown(start);
        let window = c.window();
        c.acked(start + 2 * MS, 1400, false, 10 * MS, MS);
        c.on_congestion_event(start + 3 * MS, start + 2 * MS, false, 1400);
        assert_eq!(c.window(), (window as f64 * BACKOFF) as u64);
        // A packet sent before the reduction belongs to the same loss event.
        c.on_congestion_event(start + 4 * MS, start + 2 * MS, false, 1400);
        assert_eq!(c.window(), (window as f64 * BACKOFF) as u64);
    }

    #[test]
    fn ecn_marks_back_off_even_without_queue() {
        let start = Instant::now();
        let mut c = grown(start);
        let window = c.window();
        c.on_congestion_event(start + 3 * MS, start + 2 * MS, false, 0);
        assert!(c.window() < window);
    }

    #[test]
    fn persistent_congestion_resets_to_the_minimum() {
        let start = Instant::now();
        let mut c = grown(start);
        c.on_congestion_event(start + 3 * MS, start + 2 * MS, true, 50_000);
        assert_eq!(c.window(), 2 * u64::from(MTU));
    }

    #[test]
    fn names_round_trip() {
        for c in Congestion::ALL {
            assert_eq!(Congestion::from_name(c.name()), Some(c));
        }
        assert_eq!(Congestion::from_name("vegas"), None);
    }
}
