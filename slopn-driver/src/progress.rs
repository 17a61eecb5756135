//! How far the OS helper has got with the actions queued for it.

use std::time::{Duration, Instant};

use crate::os::OsReport;

/// What the loop knows of the helper's work: reports and failures counted, and whether the
/// addresses and routes of the latest assignment are in place. The helper carries out
/// actions in the order queued, so a report on one action says that every earlier one is
/// done too.
#[derive(Debug, Default)]
pub(crate) struct OsProgress {
    /// Reports received.
    pub(crate) reports: u64,
    /// Reports of failures.
    pub(crate) failures: u64,
    /// The number of the routes queued for the latest assignment.
    routing: Option<u64>,
    /// The number of the latest action reported on.
    done: Option<u64>,
    /// When the latest assignment's routes were queued, until they are reported on.
    routing_since: Option<Instant>,
}

impl OsProgress {
    /// Action `id` was queued at `now`; `routes_assignment` if it routes the latest
    /// assignment.
    pub(crate) fn queued(&mut self, id: u64, routes_assignment: bool, now: Instant) {
        if routes_assignment {
            self.routing = Some(id);
            self.routing_since = Some(now);
        }
    }

    /// The helper reported on an action, seen at `now`. Returns how long the latest
    /// assignment took to be routed, when this report completes it.
    pub(crate) fn reported(&mut self, report: &OsReport, now: Instant) -> Option<Duration> {
        self.reports += 1;
        self.failures += u64::from(report.result.is_err());
        self.done = Some(report.id);
        if self.routed() {
            return self
                .routing_since
                .take()
                .map(|since| now.saturating_duration_since(since));
        }
        None
    }

    /// Whether the latest assignment's addresses and routes are in place: its routes have
    /// been reported on (a refused optional route is counted, not waited for). Actions
    /// queued later (DNS, MTU, new routes) do not take it back.
    pub(crate) fn routed(&self) -> bool {
        matches!((self.routing, self.done), (Some(routing), Some(done)) if done >= routing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(id: u64) -> OsReport {
        OsReport { id, result: Ok(()) }
    }

    #[test]
    fn routed_once_the_assignments_routes_are_in_and_not_unrouted_by_later_actions() {
        let mut progress = OsProgress::default();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert!(!progress.routed());
        // Assigned: MTU, addresses, routes, DNS.
        for (id, routes) in [(0, false), (1, false), (2, true), (3, false)] {
            progress.queued(id, routes, at(0));
        }
        assert_eq!(progress.reported(&ok(0), at(1)), None);
        assert_eq!(progress.reported(&ok(1), at(2)), None);
        assert!(!progress.routed(), "the routes are not in yet");
        assert_eq!(
            progress.reported(&ok(2), at(3)),
            Some(Duration::from_millis(3)),
            "routed 3 ms after the assignment"
        );
        assert!(progress.routed(), "DNS still running does not matter");
        // A route update, then an MTU change: the tunnel stays routed while they run.
        progress.queued(4, false, at(10));
        progress.queued(5, false, at(10));
        assert!(progress.routed());
        assert_eq!(progress.reported(&ok(3), at(11)), None, "told once");
        // A new session's assignment: routed again once its routes are in.
        progress.queued(6, true, at(20));
        assert!(!progress.routed());
        for id in 4..=6 {
            progress.reported(&ok(id), at(21));
        }
        assert!(progress.routed());
        assert_eq!((progress.reports, progress.failures), (7, 0));
    }
}
