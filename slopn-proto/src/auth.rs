//! Who may connect: token and certificate credentials, and the limit on failed attempts
//! per source address.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::config::{Auth, Credential};
use crate::control::MAX_IDENTITY_LEN;

/// The hub's credentials, ready for checking.
#[derive(Debug, Default)]
pub(crate) struct Authenticator {
    /// Identities by the SHA-256 of their token. Looked up, not compared one by one: a
    /// constant-time comparison with every digest took 39 % of the hub's CPU while 10,000
    /// spokes joined. A lookup's timing says nothing useful about a stored token: finding
    /// one still takes a preimage of its digest. (Fx hashing is fine: an attacker only
    /// looks up, never inserts.)
    tokens: FxHashMap<[u8; 32], Arc<str>>,
    by_identity: FxHashMap<Arc<str>, Auth>,
}

impl Authenticator {
    /// Checks the credentials for duplicates and bad names.
    pub(crate) fn new(credentials: &[Credential]) -> Result<Self, String> {
        let mut auth = Self::default();
        for cred in credentials {
            if cred.identity.is_empty() || cred.identity.len() > MAX_IDENTITY_LEN {
                return Err(format!(
                    "identity {:?} must be 1 to {MAX_IDENTITY_LEN} bytes long",
                    cred.identity
                ));
            }
            let identity: Arc<str> = cred.identity.as_str().into();
            if auth
                .by_identity
                .insert(identity.clone(), cred.auth.clone())
                .is_some()
            {
                return Err(format!("identity {:?} is listed twice", cred.identity));
            }
            if let Auth::Token { sha256 } = cred.auth
                && auth.tokens.insert(sha256, identity).is_some()
            {
                return Err(format!(
                    "the token of {:?} is also used by another spoke",
                    cred.identity
                ));
            }
        }
        Ok(auth)
    }

    /// Whether every credential is a certificate (so the TLS handshake can demand one).
    pub(crate) fn certificates_only(&self) -> bool {
        !self.by_identity.is_empty() && self.tokens.is_empty()
    }

    /// Whether any credential is a certificate.
    pub(crate) fn uses_certificates(&self) -> bool {
        self.by_identity.len() > self.tokens.len()
    }

    /// The identity behind a verified client certificate naming `cert_identity`, or behind
    /// `token`; with how it authenticated. The error says why, for the operator's log.
    pub(crate) fn authenticate(
        &self,
        cert_identity: Option<&str>,
        token: &[u8],
    ) -> Result<(Arc<str>, Auth), String> {
        if let Some(name) = cert_identity {
            return match self.by_identity.get_key_value(name) {
                Some((identity, Auth::Certificate)) => Ok((identity.clone(), Auth::Certificate)),
                Some(_) => Err(format!(
                    "certificate for {name:?}, which must authenticate with a token"
                )),
                None => Err(format!("certificate for unknown identity {name:?}")),
            };
        }
        let digest = Credential::digest(token);
        match self.tokens.get(&digest) {
            Some(identity) => Ok((identity.clone(), Auth::Token { sha256: digest })),
            None if token.is_empty() => Err("no token and no client certificate".into()),
            None => Err("unknown token".into()),
        }
    }

    /// Whether a session that authenticated as `identity` by `auth` is still allowed.
    pub(crate) fn still_allowed(&self, identity: &str, auth: &Auth) -> bool {
        self.by_identity.get(identity) == Some(auth)
    }
}

/// Tracks authentication failures per source address and refuses addresses that fail too
/// often, so that a flood of bad attempts costs the hub little and good spokes get through.
#[derive(Debug)]
pub(crate) struct FailureLimiter {
    per_minute: u32,
    entries: FxHashMap<IpAddr, Failures>,
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    window_start: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

/// Sources tracked at once; the stalest is forgotten to make room.
const MAX_TRACKED: usize = 4096;
const WINDOW: Duration = Duration::from_secs(60);

impl FailureLimiter {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            entries: FxHashMap::default(),
        }
    }

    /// Counts a failure from `source`.
    pub(crate) fn record(&mut self, source: IpAddr, now: Instant) {
        if !self.entries.contains_key(&source) && self.entries.len() >= MAX_TRACKED {
            let stalest = self
                .entries
                .iter()
                .min_by_key(|(_, f)| f.window_start)
                .map(|(ip, _)| *ip);
            if let Some(ip) = stalest {
                self.entries.remove(&ip);
            }
        }
        let f = self.entries.entry(source).or_insert(Failures {
            window_start: now,
            count: 0,
            blocked_until: None,
        });
        if now.saturating_duration_since(f.window_start) > WINDOW {
            f.window_start = now;
            f.count = 0;
        }
        f.count += 1;
        if f.count >= self.per_minute {
            f.blocked_until = Some(now + WINDOW);
        }
    }

    /// Whether `source` is refused now.
    pub(crate) fn is_blocked(&mut self, source: IpAddr, now: Instant) -> bool {
        match self.entries.get(&source).and_then(|f| f.blocked_until) {
            Some(until) if now < until => true,
            Some(_) => {
                self.entries.remove(&source);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_certificates() {
        let auth = Authenticator::new(&[
            Credential::token("alice", "secret-a"),
            Credential::certificate("bob"),
        ])
        .unwrap();
        assert_eq!(&*auth.authenticate(None, b"secret-a").unwrap().0, "alice");
        assert!(auth.authenticate(None, b"secret-b").is_err());
        assert_eq!(&*auth.authenticate(Some("bob"), b"").unwrap().0, "bob");
        assert!(auth.authenticate(Some("alice"), b"").is_err());
        assert!(auth.authenticate(Some("carol"), b"").is_err());
        let (_, used) = auth.authenticate(None, b"secret-a").unwrap();
        assert!(auth.still_allowed("alice", &used));
        let reloaded = Authenticator::new(&[Credential::token("alice", "new")]).unwrap();
        assert!(!reloaded.still_allowed("alice", &used));
        assert!(
            Authenticator::new(&[Credential::token("a", "x"), Credential::token("b", "x")])
                .is_err()
        );
    }

    #[test]
    fn repeated_failures_block_the_source_for_a_while() {
        let mut limiter = FailureLimiter::new(3);
        let (ip, now) = (IpAddr::from([192, 0, 2, 9]), Instant::now());
        for _ in 0..2 {
            limiter.record(ip, now);
        }
        assert!(!limiter.is_blocked(ip, now));
        limiter.record(ip, now);
        assert!(limiter.is_blocked(ip, now));
        assert!(!limiter.is_blocked(IpAddr::from([192, 0, 2, 10]), now));
        assert!(!limiter.is_blocked(ip, now + WINDOW + Duration::from_secs(1)));
    }
}
