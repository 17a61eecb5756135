//! A broadcast of JSON lines to subscribers, with an optional backlog of the last lines, that
//! never waits for a subscriber: one that falls too far behind is cut off.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Lines a subscriber may fall behind before it is cut off.
pub const SUBSCRIBER_QUEUE: usize = 1024;

/// A stream of lines (events or log lines) that clients subscribe to.
///
/// [`publish`](Self::publish) takes a lock only briefly and never blocks on a subscriber,
/// so it is safe on any thread, including inside a logging layer. (It must not log itself:
/// a logging layer that publishes here would call back into it.)
#[derive(Debug)]
pub struct Topic {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    backlog: VecDeque<Arc<str>>,
    keep: usize,
    subscribers: Vec<(u64, SyncSender<Arc<str>>)>,
    next_id: u64,
    cut_off: u64,
}

/// What a new subscriber gets: the backlog, then each new line through `lines`. Dropping it
/// unsubscribes at once (a queue of [`SUBSCRIBER_QUEUE`] lines is not kept for a subscriber
/// that left until the next line is published).
#[derive(Debug)]
pub struct Subscription {
    /// The lines kept before the subscription, oldest first.
    pub backlog: Vec<Arc<str>>,
    /// Every line published after `backlog`, until the subscriber is cut off (the channel
    /// then ends).
    pub lines: Receiver<Arc<str>>,
    topic: Weak<Topic>,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(topic) = self.topic.upgrade() {
            topic.lock().subscribers.retain(|(id, _)| *id != self.id);
        }
    }
}

impl Topic {
    /// A topic that keeps its last `keep` lines for new subscribers (0: none).
    pub fn new(keep: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                backlog: VecDeque::with_capacity(keep.min(4096)),
                keep,
                subscribers: Vec::new(),
                next_id: 0,
                cut_off: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent data: keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `line` (one JSON document, no `\n`) to every subscriber and keeps it in the
    /// backlog. Subscribers whose queue is full or who went away are dropped.
    pub fn publish(&self, line: impl Into<Arc<str>>) {
        let line = line.into();
        let mut inner = self.lock();
        if inner.keep > 0 {
            if inner.backlog.len() == inner.keep {
                inner.backlog.pop_front();
            }
            inner.backlog.push_back(line.clone());
        }
        let mut full = 0;
        inner
            .subscribers
            .retain(|(_, s)| match s.try_send(line.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    full += 1;
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
        inner.cut_off += full;
    }

    /// Subscribes: the backlog and every later line, in order, none twice.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let (tx, lines) = mpsc::sync_channel(SUBSCRIBER_QUEUE);
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.subscribers.push((id, tx));
        Subscription {
            backlog: inner.backlog.iter().cloned().collect(),
            lines,
            topic: Arc::downgrade(self),
            id,
        }
    }

    /// Current subscribers.
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// Subscribers cut off so far because they fell [`SUBSCRIBER_QUEUE`] lines behind.
    pub fn cut_off(&self) -> u64 {
        self.lock().cut_off
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_then_new_lines_and_a_slow_subscriber_is_cut_off_alone() {
        let topic = Arc::new(Topic::new(3));
        for i in 0..5 {
            topic.publish(i.to_string());
        }
        let fast = topic.subscribe();
        let slow = topic.subscribe();
        let backlog: Vec<&str> = fast.backlog.iter().map(|l| &**l).collect();
        assert_eq!(backlog, ["2", "3", "4"]);
        for i in 0..SUBSCRIBER_QUEUE + 10 {
            topic.publish(format!("n{i}"));
            // The fast one keeps up.
            assert_eq!(&*fast.lines.try_recv().unwrap(), format!("n{i}"));
        }
        assert_eq!(topic.subscribers(), 1);
        assert_eq!(topic.cut_off(), 1);
        // The slow one gets what was queued, then the end.
        assert_eq!(slow.lines.iter().count(), SUBSCRIBER_QUEUE);
    }

    #[test]
    fn a_subscriber_that_went_away_is_forgotten_at_once() {
        let topic = Arc::new(Topic::new(0));
        let stays = topic.subscribe();
        drop(topic.subscribe());
        // Before any line is published: a queue is not kept for it meanwhile
        assert_eq!(topic.subscribers(), 1);
        drop(stays);
        assert_eq!(topic.subscribers(), 0);
        topic.publish("x");
        assert_eq!(topic.cut_off(), 0);
        assert!(topic.subscribe().backlog.is_empty());
    }
}
