//! Requests from other threads to a running loop: stop, commands, statistics. Every
//! runtime's handle wraps a [`Remote`]; the runtime supplies the wake-up ([`Wake`]).

use std::sync::{Arc, Mutex};

use crate::machine::Machine;

/// Wakes a runtime's loop so that it looks at its requests and OS reports: a
/// `mio::Waker`, a `tokio::sync::Notify`, ...
pub trait Wake: Send + Sync + 'static {
    /// Wakes the loop (a wake-up while it is busy must not be lost).
    fn wake(&self);
}

pub(crate) enum Request<M: Machine> {
    Stop,
    Stats(Box<dyn FnOnce(M::Stats) + Send>),
    Command(M::Command),
}

struct Queue<M: Machine> {
    requests: Vec<Request<M>>,
    /// The loop has ended: requests are refused (and waiting replies dropped).
    closed: bool,
}

struct Shared<M: Machine> {
    wake: Arc<dyn Wake>,
    queue: Mutex<Queue<M>>,
}

/// Sends requests to a running loop from any thread. Cheap to clone.
pub struct Remote<M: Machine> {
    shared: Arc<Shared<M>>,
}

impl<M: Machine> Clone for Remote<M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<M: Machine> Remote<M> {
    /// Asks the loop to shut down in an orderly way (goodbyes first). Returns whether the
    /// loop was still there to ask.
    pub fn stop(&self) -> bool {
        self.send(Request::Stop)
    }

    /// Sends the machine a command; returns whether the loop was still there to take it.
    pub fn command(&self, command: M::Command) -> bool {
        self.send(Request::Command(command))
    }

    /// Asks for a statistics snapshot, handed to `reply` on the loop's thread (keep it
    /// short: send it on). If the loop ends first, `reply` is dropped uncalled; returns
    /// whether the loop was still there to ask.
    pub fn stats(&self, reply: impl FnOnce(M::Stats) + Send + 'static) -> bool {
        self.send(Request::Stats(Box::new(reply)))
    }

    fn send(&self, request: Request<M>) -> bool {
        {
            let Ok(mut queue) = self.shared.queue.lock() else {
                return false;
            };
            if queue.closed {
                return false;
            }
            queue.requests.push(request);
        }
        self.shared.wake.wake();
        true
    }
}

/// The loop's side: takes the requests.
pub(crate) struct Inbox<M: Machine> {
    shared: Arc<Shared<M>>,
}

impl<M: Machine> Inbox<M> {
    pub(crate) fn new(wake: Arc<dyn Wake>) -> (Self, Remote<M>) {
        let shared = Arc::new(Shared {
            wake,
            queue: Mutex::new(Queue {
                requests: Vec::new(),
                closed: false,
            }),
        });
        (
            Self {
                shared: shared.clone(),
            },
            Remote { shared },
        )
    }

    /// The requests waiting, oldest first. `None` if a requester panicked holding the lock.
    pub(crate) fn take(&self) -> Option<Vec<Request<M>>> {
        let mut queue = self.shared.queue.lock().ok()?;
        Some(std::mem::take(&mut queue.requests))
    }

    /// Refuses further requests and drops waiting ones, so that nobody waits for a reply.
    pub(crate) fn close(&self) {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.closed = true;
        queue.requests.clear();
    }
}

/// However the loop ends (returned, panicked, or its task dropped by a runtime shutting
/// down), requests left are dropped uncalled and later ones refused: nobody waits for a
/// reply that cannot come.
impl<M: Machine> Drop for Inbox<M> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use slopn_proto::Spoke;

    use super::*;

    struct NoWake;

    impl Wake for NoWake {
        fn wake(&self) {}
    }

    #[test]
    fn a_dropped_inbox_answers_waiting_requests_by_dropping_them_and_refuses_new_ones() {
        let (inbox, remote) = Inbox::<Spoke>::new(Arc::new(NoWake));
        let (tx, rx) = mpsc::channel::<()>();
        assert!(remote.stats(move |_| drop(tx)));
        // The loop ends without closing its inbox (a panic, a cancelled task).
        drop(inbox);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(mpsc::RecvTimeoutError::Disconnected),
            "the reply was dropped uncalled"
        );
        assert!(!remote.stats(|_| {}), "later requests are refused");
        assert!(!remote.stop());
    }
}
