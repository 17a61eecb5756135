//! The helper thread that carries out OS actions, so that the datapath never waits for
//! `ip`, netlink or D-Bus. One per loop; it owns the routes, and removes them when the loop
//! finishes, before the TUN device goes.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use tracing::{debug, warn};

use crate::os::{OsAction, OsFailure, OsReport};
use crate::remote::Wake;

/// What the helper thread changes: the OS ([`System`](crate::system::System)), or a
/// test's fake. Dropping it undoes what must not outlive the loop (the routes).
pub(crate) trait OsSide: Send + 'static {
    /// Carries out one action.
    fn carry_out(&mut self, action: &OsAction) -> Result<(), OsFailure>;
}

/// The helper thread is gone before the loop asked it to end: it panicked, and actions
/// queued for it would be lost.
#[derive(Debug)]
pub(crate) struct HelperGone;

/// The loop's side of the helper thread.
pub(crate) struct Worker {
    actions: Option<Sender<(u64, OsAction)>>,
    reports: Receiver<OsReport>,
    thread: Option<JoinHandle<()>>,
    /// Set by [`finish`](Worker::finish): actions still queued are skipped.
    cancelled: Arc<AtomicBool>,
    next_id: u64,
}

impl Worker {
    /// Starts the thread. It runs in the network namespace of the calling thread (new
    /// threads inherit it), which is where the device and its routes live. `wake` is called
    /// after each report.
    pub(crate) fn spawn(os: impl OsSide, wake: Arc<dyn Wake>) -> io::Result<Self> {
        let (actions, queue) = mpsc::channel();
        let (reporter, reports) = mpsc::channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        let helper = Helper {
            queue,
            reporter,
            wake,
            cancelled: cancelled.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("slopn-os".into())
            .spawn(move || helper.run(os))?;
        Ok(Self {
            actions: Some(actions),
            reports,
            thread: Some(thread),
            cancelled,
            next_id: 0,
        })
    }

    /// Queues an action; returns its number (its report carries it), or [`HelperGone`] if
    /// the thread has died.
    pub(crate) fn submit(&mut self, action: OsAction) -> Result<u64, HelperGone> {
        let id = self.next_id;
        let actions = self.actions.as_ref().ok_or(HelperGone)?;
        actions.send((id, action)).map_err(|_| HelperGone)?;
        self.next_id += 1;
        Ok(id)
    }

    /// A report that came in, if any.
    pub(crate) fn try_report(&self) -> Option<OsReport> {
        self.reports.try_recv().ok()
    }

    /// Ends the thread: it finishes the action it is carrying out, skips the rest of the
    /// queue (a tunnel that ends needs no more routes or DNS), removes the routes and ends.
    /// Waits for it.
    pub(crate) fn finish(&mut self) {
        self.cancelled.store(true, Ordering::Release);
        self.actions = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the OS helper thread panicked; routes may be left behind");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The thread's side.
struct Helper {
    queue: Receiver<(u64, OsAction)>,
    reporter: Sender<OsReport>,
    wake: Arc<dyn Wake>,
    cancelled: Arc<AtomicBool>,
}

impl Helper {
    fn run(self, mut os: impl OsSide) {
        for (id, action) in self.queue {
            if self.cancelled.load(Ordering::Acquire) {
                debug!(id, %action, "OS action skipped: the loop has ended");
                continue;
            }
            let result = os.carry_out(&action);
            debug!(id, %action, ok = result.is_ok(), "OS action done");
            if self.reporter.send(OsReport { id, result }).is_ok() {
                self.wake.wake();
            }
        }
        // Dropping `os` removes the routes, before the loop closes the device.
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::*;

    struct NoWake;

    impl Wake for NoWake {
        fn wake(&self) {}
    }

    /// Records what it is asked to do; panics on an MTU of 0. On an MTU of 1 it says it
    /// has started and waits for the test's word.
    struct Fake {
        log: Arc<Mutex<Vec<String>>>,
        gate: Option<(Sender<()>, Receiver<()>)>,
    }

    impl OsSide for Fake {
        fn carry_out(&mut self, action: &OsAction) -> Result<(), OsFailure> {
            assert_ne!(*action, OsAction::SetMtu(0), "the fake OS breaks");
            self.log.lock().unwrap().push(action.to_string());
            if *action == OsAction::SetMtu(1)
                && let Some((started, proceed)) = &self.gate
            {
                started.send(()).unwrap();
                proceed.recv().unwrap();
            }
            Ok(())
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.log.lock().unwrap().push("routes removed".into());
        }
    }

    fn fake_with(gate: Option<(Sender<()>, Receiver<()>)>) -> (Worker, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake {
            log: log.clone(),
            gate,
        };
        (Worker::spawn(fake, Arc::new(NoWake)).unwrap(), log)
    }

    fn fake() -> (Worker, Arc<Mutex<Vec<String>>>) {
        fake_with(None)
    }

    #[test]
    fn actions_are_carried_out_in_order_and_the_routes_removed_at_the_end() {
        let (mut worker, log) = fake();
        assert_eq!(worker.submit(OsAction::SetMtu(1400)).unwrap(), 0);
        assert_eq!(worker.submit(OsAction::SetDns(vec![])).unwrap(), 1);
        let reports = wait_reports(&worker, 2);
        assert_eq!(reports, [0, 1]);
        worker.finish();
        assert_eq!(
            *log.lock().unwrap(),
            [
                "setting the TUN MTU to 1400",
                "setting the DNS servers to none",
                "routes removed"
            ]
        );
    }

    /// The numbers of the first `n` reports, waiting for them.
    fn wait_reports(worker: &Worker, n: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        while ids.len() < n {
            match worker.reports.recv_timeout(Duration::from_secs(5)) {
                Ok(report) => ids.push(report.id),
                Err(e) => panic!("only {ids:?} reported: {e}"),
            }
        }
        ids
    }

    #[test]
    fn finishing_skips_the_queue_and_only_removes_the_routes() {
        let (started, has_started) = mpsc::channel();
        let (proceed, gate) = mpsc::channel();
        let (mut worker, log) = fake_with(Some((started, gate)));
        // A slow action (resolvectl waiting on D-Bus), then a full tunnel queued behind it
        // by a spoke that gives up.
        worker.submit(OsAction::SetMtu(1)).unwrap();
        worker
            .submit(OsAction::SetRoutes {
                essential: vec!["10.100.0.0/24".parse().unwrap()],
                other: vec!["0.0.0.0/1".parse().unwrap()],
                unreachable: Vec::new(),
                bypass: None,
            })
            .unwrap();
        worker.submit(OsAction::SetDns(vec![])).unwrap();
        has_started.recv().unwrap();
        // Done once finish (below) has flagged the end.
        let cancelled = worker.cancelled.clone();
        let opener = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !cancelled.load(Ordering::Acquire) {
                assert!(Instant::now() < deadline, "finish never flagged the end");
                std::thread::yield_now();
            }
            proceed.send(()).unwrap();
        });
        worker.finish();
        opener.join().unwrap();
        assert_eq!(
            *log.lock().unwrap(),
            ["setting the TUN MTU to 1", "routes removed"]
        );
    }

    #[test]
    fn actions_for_a_helper_that_died_are_refused_not_lost() {
        let (mut worker, _log) = fake();
        worker.submit(OsAction::SetMtu(0)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while worker.submit(OsAction::SetMtu(1400)).is_ok() {
            assert!(Instant::now() < deadline, "submit never failed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
