//! The hub as a [`Machine`]: its commands and statistics. It asks nothing of the OS after
//! start: its TUN device is configured when opened.

use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use ipnet::IpNet;
use slopn_proto::control::CloseCode;
use slopn_proto::{
    Credential, Datagram, DropReason, Hub, HubEvent, HubStats, SessionId, SpokeStats, Transmit,
};
use tracing::{info, warn};

use crate::machine::{Flow, IoCounters, Machine, forward_io};
use crate::os::OsPlan;

/// Commands for a hub.
#[derive(Clone, Debug)]
pub enum HubCommand {
    /// Ends one spoke's session.
    Disconnect {
        /// The session.
        id: SessionId,
        /// The close code sent.
        code: CloseCode,
        /// The reason sent.
        reason: String,
    },
    /// Replaces the credentials (a reload): withdrawn or changed ones are revoked at once.
    SetCredentials(Vec<Credential>),
    /// Replaces the advertised routes besides the pools, and tells every spoke.
    SetRoutes(Vec<IpNet>),
    /// Replaces the DNS servers pushed to spokes, and tells every spoke.
    SetDnsServers(Vec<IpAddr>),
}

/// A hub's statistics: the totals and every session.
#[derive(Clone, Debug)]
pub struct HubSnapshot {
    /// Totals.
    pub hub: HubStats,
    /// One entry per session.
    pub spokes: Vec<SpokeStats>,
    /// The runtime's own I/O losses.
    pub io: IoCounters,
}

impl Machine for Hub {
    type Event = HubEvent;
    type Stats = HubSnapshot;
    type Command = HubCommand;

    forward_io!(Hub, HubEvent);

    fn command(&mut self, now: Instant, command: HubCommand) {
        match command {
            HubCommand::Disconnect { id, code, reason } => {
                match self.disconnect(now, id, code, &reason) {
                    Ok(true) => info!("session {id} disconnected: {reason}"),
                    Ok(false) => warn!("session {id} not disconnected: there is no such session"),
                    Err(e) => warn!("session {id} not disconnected: {e}"),
                }
            }
            HubCommand::SetCredentials(credentials) => {
                match self.set_credentials(now, &credentials) {
                    Ok(revoked) => {
                        info!(spokes = credentials.len(), revoked, "credentials reloaded")
                    }
                    Err(e) => warn!("credentials not reloaded: {e}"),
                }
            }
            HubCommand::SetRoutes(routes) => {
                if let Err(e) = self.set_routes(now, routes) {
                    warn!("routes not changed: {e}");
                }
            }
            HubCommand::SetDnsServers(servers) => {
                if let Err(e) = self.set_dns_servers(now, servers) {
                    warn!("DNS servers not changed: {e}");
                }
            }
        }
    }
    fn shut_down(&mut self, now: Instant) {
        self.close(now, "hub shutting down")
            .expect("a short constant reason fits the protocol");
    }
    fn is_shut_down(&self) -> bool {
        self.is_closed()
    }
    fn stats(&mut self, io: IoCounters) -> HubSnapshot {
        HubSnapshot {
            hub: Hub::stats(self),
            spokes: self.spokes(),
            io,
        }
    }
    fn apply(&mut self, _event: &HubEvent, _os: &mut OsPlan) -> Flow {
        Flow::Continue
    }
}
