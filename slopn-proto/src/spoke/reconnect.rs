//! When a spoke tries again after a session ended: at once after a working session or a
//! hub shutting down, with growing jittered delays after failures, never after a refusal.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::config::ReconnectPolicy;
use crate::control::CloseCode;
use crate::derive_key;
use crate::session::DisconnectReason;

/// Random extra delay before reconnecting right away, so spokes do not all arrive at once.
const IMMEDIATE_JITTER: Duration = Duration::from_millis(50);

/// The reconnection schedule.
pub(super) struct Reconnect {
    pub(super) policy: ReconnectPolicy,
    /// When the next attempt starts, if one is scheduled.
    pub(super) retry_at: Option<Instant>,
    /// Failed attempts in a row.
    pub(super) failures: u32,
    rng: StdRng,
}

impl Reconnect {
    pub(super) fn new(policy: ReconnectPolicy, seed: &[u8; 32]) -> Self {
        Self {
            policy,
            retry_at: None,
            failures: 0,
            rng: StdRng::from_seed(derive_key(seed, b"slopn spoke rng")),
        }
    }

    /// Schedules the next attempt after a session ended for `reason`; `None` means never
    /// (retrying would not help).
    pub(super) fn after(
        &mut self,
        now: Instant,
        reason: &DisconnectReason,
        was_established: bool,
    ) -> Option<Duration> {
        let retry_in = match reason {
            DisconnectReason::Remote { code, .. } => match *code {
                CloseCode::AUTH_FAILED
                | CloseCode::UNSUPPORTED_VERSION
                | CloseCode::REPLACED
                | CloseCode::REVOKED
                | CloseCode::PROTOCOL_ERROR => None,
                CloseCode::POOL_EXHAUSTED => Some(self.policy.pool_exhausted_delay),
                CloseCode::SHUTTING_DOWN => Some(self.jitter(IMMEDIATE_JITTER)),
                _ => Some(self.backoff(was_established)),
            },
            DisconnectReason::Transport { tls: true, .. } => None,
            _ => Some(self.backoff(was_established)),
        };
        if was_established {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        if let Some(delay) = retry_in {
            self.retry_at = Some(now + delay);
        }
        retry_in
    }

    /// Delay before the next attempt: immediate after a working session, then doubling.
    fn backoff(&mut self, was_established: bool) -> Duration {
        if was_established || self.failures == 0 {
            return self.jitter(IMMEDIATE_JITTER);
        }
        let exp = self.failures.saturating_sub(1).min(16);
        let base = self
            .policy
            .min_delay
            .saturating_mul(1 << exp)
            .min(self.policy.max_delay);
        // ±25 % so that spokes spread out.
        let quarter = base / 4;
        base - quarter + self.jitter(quarter * 2)
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos() as u64;
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.random_range(0..nanos))
    }
}
