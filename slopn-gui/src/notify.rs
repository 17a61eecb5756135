//! When to tell the user, with a desktop notification, that an established tunnel was lost
//! and that it is back: only after it has been down for a while, and not again and again
//! while the hub flaps.

use std::time::{Duration, Instant};

use crate::view::Phase;

/// A tunnel down for less than this is not worth a notification.
pub const LOST_AFTER: Duration = Duration::from_secs(3);

/// After a "lost" notification, further losses within this time stay quiet.
pub const QUIET_FOR: Duration = Duration::from_secs(60);

/// A notification to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Its title.
    pub title: String,
    /// Its text.
    pub body: String,
}

/// Decides on notifications from the phases the window goes through.
#[derive(Debug, Default)]
pub struct Notifier {
    /// Whether the tunnel has been established since the user last connected.
    established: bool,
    /// Since when an established tunnel has been down (not by the user's choice).
    down_since: Option<Instant>,
    /// Whether the user was told it is down (so they will be told it is back).
    announced: bool,
    /// When the last "lost" notification went out.
    last_announcement: Option<Instant>,
    /// The sentence of a tunnel that stopped for good, if that is how it went down.
    stopped: Option<String>,
}

impl Notifier {
    /// Feeds the current phase (and, when stopped, why); returns what to show, if anything.
    pub fn update(&mut self, now: Instant, phase: Phase, detail: Option<&str>) -> Option<Notice> {
        match phase {
            Phase::Connected => {
                self.established = true;
                self.down_since = None;
                self.stopped = None;
                if std::mem::take(&mut self.announced) {
                    return Some(Notice {
                        title: "SloPN: connected again".into(),
                        body: "The tunnel is back.".into(),
                    });
                }
                None
            }
            Phase::Reconnecting | Phase::Stopped | Phase::Unavailable if self.established => {
                let since = *self.down_since.get_or_insert(now);
                if phase == Phase::Stopped {
                    self.stopped = detail.map(str::to_owned);
                }
                let quiet = self
                    .last_announcement
                    .is_some_and(|t| now.duration_since(t) < QUIET_FOR);
                if self.announced || quiet || now.duration_since(since) < LOST_AFTER {
                    return None;
                }
                self.announced = true;
                self.last_announcement = Some(now);
                Some(Notice {
                    title: "SloPN: tunnel lost".into(),
                    body: match &self.stopped {
                        Some(why) => why.clone(),
                        None => "The connection to the hub was lost; reconnecting.".into(),
                    },
                })
            }
            // The user disconnected: nothing was lost.
            Phase::Disconnected | Phase::Disconnecting => {
                *self = Self {
                    last_announcement: self.last_announcement,
                    ..Self::default()
                };
                None
            }
            // Being set up, or failing before it ever worked: the window shows that.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(start: Instant, s: f64) -> Instant {
        start + Duration::from_secs_f64(s)
    }

    #[test]
    fn a_loss_is_told_once_after_a_while_and_the_return_too() {
        let t0 = Instant::now();
        let mut n = Notifier::default();
        assert_eq!(n.update(t0, Phase::Connected, None), None);
        assert_eq!(n.update(secs(t0, 1.0), Phase::Reconnecting, None), None);
        assert_eq!(n.update(secs(t0, 3.0), Phase::Reconnecting, None), None);
        let lost = n.update(secs(t0, 4.1), Phase::Reconnecting, None).unwrap();
        assert_eq!(lost.title, "SloPN: tunnel lost");
        assert_eq!(n.update(secs(t0, 9.0), Phase::Reconnecting, None), None);
        let back = n.update(secs(t0, 10.0), Phase::Connected, None).unwrap();
        assert_eq!(back.title, "SloPN: connected again");
        assert_eq!(n.update(secs(t0, 11.0), Phase::Connected, None), None);
    }

    #[test]
    fn a_flapping_hub_makes_no_storm() {
        let t0 = Instant::now();
        let mut n = Notifier::default();
        let mut shown = 0;
        // Down 2 s, up 1 s, for ten minutes: never down long enough.
        for i in 0..200 {
            let at = secs(t0, f64::from(i) * 3.0);
            shown += n.update(at, Phase::Connected, None).is_some() as u32;
            shown += n.update(secs(at, 1.0), Phase::Reconnecting, None).is_some() as u32;
            shown += n.update(secs(at, 2.9), Phase::Reconnecting, None).is_some() as u32;
        }
        assert_eq!(shown, 0);
        // Down 5 s, up 1 s: one lost and one back per minute at most.
        let t1 = secs(t0, 1000.0);
        let mut shown = Vec::new();
        for i in 0..60 {
            let at = secs(t1, f64::from(i) * 6.0);
            shown.extend(n.update(at, Phase::Connected, None));
            for s in 1..=5 {
                shown.extend(n.update(secs(at, f64::from(s)), Phase::Reconnecting, None));
            }
        }
        assert!(
            shown.len() <= 12,
            "{} notifications in 6 minutes",
            shown.len()
        );
        assert!(shown.len() >= 6);
    }

    #[test]
    fn the_users_own_disconnect_is_not_news_but_a_refusal_is() {
        let t0 = Instant::now();
        let mut n = Notifier::default();
        n.update(t0, Phase::Connected, None);
        assert_eq!(n.update(secs(t0, 1.0), Phase::Disconnecting, None), None);
        assert_eq!(n.update(secs(t0, 9.0), Phase::Disconnected, None), None);
        // A first attempt that fails was never an established tunnel.
        n.update(secs(t0, 9.5), Phase::Connecting, None);
        assert_eq!(
            n.update(secs(t0, 9.6), Phase::Stopped, Some("wrong token")),
            None
        );
        assert_eq!(
            n.update(secs(t0, 19.6), Phase::Stopped, Some("wrong token")),
            None
        );
        n.update(secs(t0, 20.0), Phase::Connected, None);
        let why = "the hub operator revoked this spoke's access.";
        n.update(secs(t0, 21.0), Phase::Stopped, Some(why));
        let told = n.update(secs(t0, 24.5), Phase::Stopped, Some(why)).unwrap();
        assert_eq!(told.body, why);
    }
}
