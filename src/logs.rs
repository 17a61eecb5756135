//! Logging: to stderr as usual, and into a [`Topic`] that keeps the last lines for the
//! control socket's `logs` request (the desktop client's log pane).

use std::fmt::{self, Write as _};
use std::sync::Arc;

use slopn_control::{LogLine, Topic};
use time::OffsetDateTime;
use time::macros::format_description;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log lines kept for clients that ask for `logs`.
pub const KEEP_LINES: usize = 1000;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), and returns the topic that
/// keeps the same lines for the control socket.
pub fn init() -> Arc<Topic> {
    let topic = Arc::new(Topic::new(KEEP_LINES));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(TopicLayer {
            topic: topic.clone(),
        })
        .try_init();
    topic
}

/// A tracing layer that publishes each event as a [`LogLine`].
pub struct TopicLayer {
    /// Where the lines go.
    pub topic: Arc<Topic>,
}

impl<S: Subscriber> Layer<S> for TopicLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut message = Message::default();
        event.record(&mut message);
        let line = LogLine {
            time: timestamp(OffsetDateTime::now_utc()),
            level: meta.level().to_string(),
            target: meta.target().to_owned(),
            message: message.finish(),
        };
        if let Ok(json) = serde_json::to_string(&line) {
            self.topic.publish(json);
        }
    }
}

/// RFC 3339 in UTC with milliseconds.
fn timestamp(t: OffsetDateTime) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.format(&format).unwrap_or_default()
}

/// The `message` field followed by the others as `key=value`, like the stderr format.
#[derive(Default)]
struct Message {
    message: String,
    fields: String,
}

impl Message {
    fn finish(mut self) -> String {
        if !self.fields.is_empty() {
            if !self.message.is_empty() {
                self.message.push(' ');
            }
            self.message.push_str(&self.fields);
        }
        self.message
    }

    fn field(&mut self, field: &Field) -> &mut String {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{}=", field.name());
        &mut self.fields
    }
}

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.field(field).push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let out = self.field(field);
            let _ = write!(out, "{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_lines_with_their_fields() {
        let topic = Arc::new(Topic::new(10));
        let subscriber = tracing_subscriber::registry().with(TopicLayer {
            topic: topic.clone(),
        });
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(attempt = 3, hub = "h:1", "giving up");
            tracing::info!("plain");
        });
        let lines: Vec<LogLine> = topic
            .subscribe()
            .backlog
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0].level, "WARN");
        assert_eq!(lines[0].message, "giving up attempt=3 hub=h:1");
        assert_eq!(lines[1].message, "plain");
        assert!(lines[0].target.ends_with("logs::tests"));
        let t = &lines[0].time;
        assert!(
            t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{t}"
        );
    }
}
