//! The event log: each event on a line of its own, up to a budget per second; past it, one
//! summary line a second. A storm of 10,000 spokes reconnecting wrote 30,000 lines; the
//! status and the metrics count every event anyway.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use tracing::info;

/// Events logged one by one in a second before the rest are only counted.
const LINES_PER_SECOND: u32 = 20;
const WINDOW: Duration = Duration::from_secs(1);

/// Rate-limited logging of a machine's events.
#[derive(Default)]
pub(crate) struct EventLog {
    window_start: Option<Instant>,
    logged: u32,
    /// Events not logged in this window, by kind (the variant's name), in arrival order.
    suppressed: Vec<(String, u64)>,
}

impl EventLog {
    /// Logs `event`, or counts it if this second's budget is spent.
    pub(crate) fn log(&mut self, now: Instant, event: &impl Debug) {
        self.roll(now);
        if self.logged < LINES_PER_SECOND {
            self.logged += 1;
            info!(?event, "event");
            return;
        }
        let text = format!("{event:?}");
        let kind = text
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .next()
            .unwrap_or_default();
        match self.suppressed.iter_mut().find(|(k, _)| k == kind) {
            Some((_, n)) => *n += 1,
            None => self.suppressed.push((kind.to_owned(), 1)),
        }
    }

    /// Starts a new window once a second has passed, summing up what the last one did not
    /// log. Call it on every wakeup so the summary does not wait for the next event.
    pub(crate) fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) < WINDOW {
            return;
        }
        if !self.suppressed.is_empty() {
            let total: u64 = self.suppressed.iter().map(|(_, n)| n).sum();
            let counts: Vec<String> = self
                .suppressed
                .drain(..)
                .map(|(kind, n)| format!("{n} {kind}"))
                .collect();
            info!(
                "{total} more events in {:.1} s, not logged one by one: {}",
                now.duration_since(start).as_secs_f64(),
                counts.join(", ")
            );
        }
        self.window_start = Some(now);
        self.logged = 0;
    }

    /// Events not yet summed up, for tests.
    #[cfg(test)]
    fn pending(&self) -> u64 {
        self.suppressed.iter().map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    #[allow(dead_code)]
    enum Event {
        Assigned { id: u32 },
        Disconnected(u32),
    }

    #[test]
    fn past_the_budget_events_are_counted_by_kind_and_summed_up_once_a_second() {
        let start = Instant::now();
        let mut log = EventLog::default();
        for id in 0..LINES_PER_SECOND + 5 {
            log.log(start, &Event::Assigned { id });
        }
        log.log(start, &Event::Disconnected(1));
        assert_eq!(log.pending(), 6);
        assert_eq!(
            log.suppressed,
            vec![("Assigned".to_owned(), 5), ("Disconnected".to_owned(), 1)]
        );
        log.roll(start + Duration::from_millis(999));
        assert_eq!(log.pending(), 6, "still the same second");
        log.roll(start + WINDOW);
        assert_eq!(log.pending(), 0);
        assert_eq!(log.logged, 0, "a fresh budget");
    }
}
