//! What a spoke asks for once connected: to be authenticated (HELLO), then addresses.

use rustls::pki_types::CertificateDer;
use tracing::{debug, info, warn};

use super::HubEvent;
use super::session::{HubSession, Phase, Session};
use crate::control::{
    AssignedAddress, Capsule, CloseCode, IpPrefix, PROTOCOL_VERSION, RequestedAddress,
};
use crate::tls;
use crate::transport::Peers;

impl Session<'_> {
    /// Checks the spoke's version and credential; on success, takes over any older session
    /// of the same identity and welcomes the spoke.
    pub(super) fn on_hello(
        &mut self,
        version: u64,
        credential: &[u8],
        peers: &mut Peers<'_, HubSession>,
    ) {
        let entry = &*self.slot.entry;
        let (id, remote) = (entry.state.id, entry.link.conn.remote_address());
        if version != PROTOCOL_VERSION {
            self.hub.stats.auth_failures += 1;
            self.events.push_back(HubEvent::AuthFailed {
                id,
                remote,
                reason: format!("unsupported protocol version {version}"),
            });
            let reason = format!("this hub speaks protocol version {PROTOCOL_VERSION}");
            self.begin_close(CloseCode::UNSUPPORTED_VERSION, &reason, true);
            return;
        }
        let cert_identity = entry
            .link
            .conn
            .crypto_session()
            .peer_identity()
            .and_then(|certs| certs.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|certs| certs.first().and_then(tls::certificate_identity));
        let (identity, auth) = match self
            .hub
            .authenticator
            .authenticate(cert_identity.as_deref(), credential)
        {
            Ok(found) => found,
            Err(why) => {
                // The spoke learns only that it failed; the operator learns why.
                self.hub.stats.auth_failures += 1;
                self.hub.failures.record(remote.ip(), self.now);
                debug!(%id, %remote, "authentication failed: {why}");
                self.events.push_back(HubEvent::AuthFailed {
                    id,
                    remote,
                    reason: why,
                });
                self.begin_close(CloseCode::AUTH_FAILED, "authentication failed", true);
                return;
            }
        };
        // A spoke that restarted reconnects before its old session timed out: the new
        // session replaces the old one and inherits its address (freed here, before the
        // address request that usually follows in the same read).
        let idx = self.slot.entry.idx();
        if let Some(&old) = self.hub.by_identity.get(&identity)
            && old != idx
        {
            info!(%identity, "new session replaces the previous one");
            let entry = peers.get_mut(old);
            debug_assert!(entry.is_some(), "by_identity names only live sessions");
            if let Some(entry) = entry {
                let mut other = Session {
                    slot: self.slot.with(entry),
                    hub: &mut *self.hub,
                    events: &mut *self.events,
                    now: self.now,
                    replaced: None,
                };
                other.begin_close(
                    CloseCode::REPLACED,
                    "replaced by a newer session of the same identity",
                    false,
                );
                self.replaced = Some(old);
            }
        }
        self.hub.by_identity.insert(identity.clone(), idx);
        let session = self.state();
        session.identity = Some(identity.clone());
        session.auth = Some(auth);
        self.set_phase(Phase::Authenticated);
        self.send_capsule(&Capsule::Welcome {
            version: PROTOCOL_VERSION,
            identity: identity.to_string(),
            hub_addresses: self.hub.hub_networks.clone(),
        });
        self.send_capsule(&Capsule::RouteAdvertisement(
            self.hub.routes.advertised().to_vec(),
        ));
        if !self.hub.dns_servers.is_empty() {
            self.send_capsule(&Capsule::DnsServers(self.hub.dns_servers.clone()));
        }
    }

    pub(super) fn on_address_request(&mut self, requests: &[RequestedAddress]) {
        let idx = self.slot.entry.idx();
        let session = &mut self.slot.entry.state;
        let Some(identity) = session.identity.clone() else {
            return;
        };
        let mut answers: Vec<AssignedAddress> = Vec::with_capacity(requests.len());
        let mut exhausted = None;
        for req in requests {
            let v4 = req.prefix.addr().is_ipv4();
            let request_id = req.request_id;
            if let Some(have) = session.addresses.iter().find(|a| a.is_ipv4() == v4) {
                let prefix = IpPrefix::host(*have);
                answers.push(AssignedAddress { request_id, prefix });
                continue;
            }
            let Some(pool) = self
                .hub
                .pools
                .iter_mut()
                .find(|p| p.net().addr().is_ipv4() == v4)
            else {
                let prefix = IpPrefix::rejection(!v4);
                answers.push(AssignedAddress { request_id, prefix });
                continue;
            };
            let wanted = (!req.prefix.is_unspecified()).then(|| req.prefix.addr());
            match pool.allocate(&identity, wanted) {
                Ok(addr) => {
                    session.addresses.push(addr);
                    self.hub.routes.insert(addr, idx);
                    let prefix = IpPrefix::host(addr);
                    answers.push(AssignedAddress { request_id, prefix });
                }
                Err(e) => {
                    exhausted = Some(e.to_string());
                    let prefix = IpPrefix::rejection(!v4);
                    answers.push(AssignedAddress { request_id, prefix });
                }
            }
        }
        // The full current list: every address held, tagged with the request it answers.
        for addr in &session.addresses {
            if !answers.iter().any(|a| a.prefix.addr() == *addr) {
                let prefix = IpPrefix::host(*addr);
                answers.push(AssignedAddress {
                    request_id: 0,
                    prefix,
                });
            }
        }
        let newly_active = session.phase == Phase::Authenticated && !session.addresses.is_empty();
        let (id, addresses) = (session.id, session.addresses.clone());
        self.send_capsule(&Capsule::AddressAssign(answers));
        if addresses.is_empty() {
            if let Some(why) = exhausted {
                warn!(%identity, "{why}");
                self.begin_close(
                    CloseCode::POOL_EXHAUSTED,
                    "pool exhausted: the hub has no free address; try again later",
                    true,
                );
            }
            return;
        }
        if newly_active {
            self.slot.entry.deadline = None;
            self.set_phase(Phase::Active);
            self.slot.entry.state.assigned_at = Some(self.now);
            self.hub.stats.sessions_assigned_total += 1;
            debug!(%id, %identity, ?addresses, "spoke assigned");
            self.events.push_back(HubEvent::Assigned {
                id,
                identity: identity.to_string(),
                addresses,
            });
        }
    }
}
