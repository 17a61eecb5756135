//! What the hub turns away, in its log: every few seconds in which connection attempts were
//! refused, asked to prove their address (Retry) or were no QUIC at all, one line says how
//! many, so that an operator sees a flood or a locked-out office without reading metrics.

use std::sync::Arc;
use std::time::Duration;

use slopn_driver::HubSnapshot;
use slopn_proto::HubStats;
use tracing::warn;

use crate::runtime::Loop;

/// How often the counters are compared.
const PERIOD: Duration = Duration::from_secs(10);

/// Datagrams that were no QUIC per period below which they are not worth a line (a stray
/// scanner's few).
const IGNORED_WORTH_A_LINE: u64 = 100;

/// The counters the report compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Turned {
    refused: u64,
    retries: u64,
    ignored: u64,
    auth_failures: u64,
}

impl Turned {
    fn of(stats: &HubStats) -> Self {
        Self {
            refused: stats.refused,
            retries: stats.retries,
            ignored: stats.ignored_datagrams,
            auth_failures: stats.auth_failures,
        }
    }
}

/// The line for what changed from `before` to `now` over `period`, if anything was turned
/// away.
fn report(before: Turned, now: Turned, period: Duration) -> Option<String> {
    let refused = now.refused.saturating_sub(before.refused);
    let retries = now.retries.saturating_sub(before.retries);
    let ignored = now.ignored.saturating_sub(before.ignored);
    let failures = now.auth_failures.saturating_sub(before.auth_failures);
    if refused == 0 && retries == 0 && ignored < IGNORED_WORTH_A_LINE {
        return None;
    }
    let mut parts = Vec::new();
    if refused > 0 {
        parts.push(format!(
            "{refused} connection packets refused (an address locked out after failed logins, \
             too many handshakes from one address, or the hub full)"
        ));
    }
    if retries > 0 {
        parts.push(format!(
            "{retries} asked to prove their address first (Retry: many handshakes at once)"
        ));
    }
    if ignored > 0 {
        parts.push(format!("{ignored} datagrams that were no QUIC ignored"));
    }
    if failures > 0 {
        parts.push(format!("{failures} failed logins"));
    }
    Some(format!(
        "in the last {} s: {}",
        period.as_secs(),
        parts.join("; ")
    ))
}

/// Logs a line every 10 s in which the hub turned something away (refused, sent a Retry,
/// ignored junk), until the loop ends.
pub fn watch(handle: &Arc<Loop<slopn_proto::Hub>>) {
    let handle = handle.clone();
    let _ = std::thread::Builder::new()
        .name("slopn-load".into())
        .spawn(move || {
            let turned = |s: &HubSnapshot| Turned::of(&s.hub);
            let mut before = handle.stats().map(|s| turned(&s)).unwrap_or_default();
            while !handle.is_finished() {
                std::thread::sleep(PERIOD);
                let Some(now) = handle.stats().map(|s| turned(&s)) else {
                    continue;
                };
                if let Some(line) = report(before, now, PERIOD) {
                    warn!("{line}");
                }
                before = now;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_hub_says_nothing_and_a_flood_one_line() {
        let quiet = Turned {
            ignored: 99,
            ..Turned::default()
        };
        assert_eq!(report(Turned::default(), quiet, PERIOD), None);
        let flood = Turned {
            refused: 5000,
            retries: 20,
            ignored: 80_000,
            auth_failures: 10,
        };
        let line = report(quiet, flood, PERIOD).unwrap();
        assert!(
            line.starts_with("in the last 10 s: 5000 connection packets refused"),
            "{line}"
        );
        assert!(
            line.contains("20 asked to prove their address first"),
            "{line}"
        );
        assert!(
            line.contains("79901 datagrams that were no QUIC ignored"),
            "{line}"
        );
        assert!(line.contains("10 failed logins"), "{line}");
        // Counters that went backwards (a restart) are no negative counts.
        assert_eq!(report(flood, Turned::default(), PERIOD), None);
    }
}
