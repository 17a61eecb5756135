//! How far the OS helper has got with the actions queued for it.

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
}

impl OsProgress {
    /// Action `id` was queued; `routes_assignment` if it routes the latest assignment.
    pub(crate) fn queued(&mut self, id: u64, routes_assignment: bool) {
        if routes_assignment {
            self.routing = Some(id);
        }
    }

    /// The helper reported on an action.
    pub(crate) fn reported(&mut self, report: &OsReport) {
        self.reports += 1;
        self.failures += u64::from(report.result.is_err());
        self.done = Some(report.id);
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
        assert!(!progress.routed());
        // Assigned: MTU, addresses, routes, DNS.
        for (id, routes) in [(0, false), (1, false), (2, true), (3, false)] {
            progress.queued(id, routes);
        }
        progress.reported(&ok(0));
        progress.reported(&ok(1));
        assert!(!progress.routed(), "the routes are not in yet");
        progress.reported(&ok(2));
        assert!(progress.routed(), "DNS still running does not matter");
        // A route update, then an MTU change: the tunnel stays routed while they run.
        progress.queued(4, false);
        progress.queued(5, false);
        assert!(progress.routed());
        progress.reported(&ok(3));
        // A new session's assignment: routed again once its routes are in.
        progress.queued(6, true);
        assert!(!progress.routed());
        for id in 4..=6 {
            progress.reported(&ok(id));
        }
        assert!(progress.routed());
        assert_eq!((progress.reports, progress.failures), (7, 0));
    }
}
