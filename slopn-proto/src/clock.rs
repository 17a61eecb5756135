//! Wall-clock time derived from the driver's `now`, for the two libraries that need a
//! calendar: rustls (certificate validity) and quinn-proto (retry-token expiry).
//!
//! The state machines never read a clock. The driver says once which wall-clock time
//! matches its first `now`; every later input moves this clock forward by the monotonic
//! difference, so simulations in virtual time see virtual calendar time too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::UnixTime;

/// A shared wall clock advanced by the state machine's inputs.
#[derive(Debug)]
pub(crate) struct WallClock {
    start: Instant,
    unix_at_start: Duration,
    /// Nanoseconds since the Unix epoch at the latest input.
    unix_nanos: AtomicU64,
}

impl WallClock {
    /// A clock reading `wall` at monotonic instant `now`.
    pub(crate) fn new(wall: SystemTime, now: Instant) -> Self {
        let unix_at_start = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            start: now,
            unix_at_start,
            unix_nanos: AtomicU64::new(unix_at_start.as_nanos() as u64),
        }
    }

    /// Moves the clock to monotonic instant `now` (never backwards).
    pub(crate) fn advance(&self, now: Instant) {
        let unix = self.unix_at_start + now.saturating_duration_since(self.start);
        self.unix_nanos
            .fetch_max(unix.as_nanos() as u64, Ordering::Relaxed);
    }

    fn unix(&self) -> Duration {
        Duration::from_nanos(self.unix_nanos.load(Ordering::Relaxed))
    }
}

impl rustls::time_provider::TimeProvider for WallClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(self.unix()))
    }
}

impl quinn_proto::TimeSource for WallClock {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + self.unix()
    }
}
