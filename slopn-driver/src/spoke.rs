//! The spoke as a [`Machine`]: its commands, its status, and the OS actions its events call
//! for.

use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use ipnet::IpNet;
use slopn_proto::control::IpPrefix;
use slopn_proto::{
    Datagram, DisconnectReason, DropReason, Spoke, SpokeEvent, SpokeSnapshot, SpokeState, Transmit,
};

use crate::machine::{Flow, IoCounters, Machine, forward_io};
use crate::os::{OsAction, OsPlan};

/// Commands for a spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpokeCommand {
    /// Connect (again) now.
    Connect,
    /// Say goodbye and stay disconnected until [`SpokeCommand::Connect`].
    Disconnect,
}

/// A spoke's statistics and state.
#[derive(Clone, Debug)]
pub struct SpokeStatus {
    /// Where it stands.
    pub state: SpokeState,
    /// Counters and the current session's figures.
    pub stats: SpokeSnapshot,
    /// The hub's tunnel addresses.
    pub hub_addresses: Vec<IpAddr>,
    /// The routes the hub advertised.
    pub routes: Vec<IpNet>,
    /// The DNS servers the hub pushed.
    pub dns_servers: Vec<IpAddr>,
    /// The runtime's own I/O losses and OS actions.
    pub io: IoCounters,
}

impl Machine for Spoke {
    type Event = SpokeEvent;
    type Stats = SpokeStatus;
    type Command = SpokeCommand;

    forward_io!(Spoke, SpokeEvent);

    fn command(&mut self, now: Instant, command: SpokeCommand) {
        match command {
            SpokeCommand::Connect => self.connect(now),
            SpokeCommand::Disconnect => self.disconnect(now),
        }
    }
    fn shut_down(&mut self, now: Instant) {
        self.disconnect(now);
    }
    fn is_shut_down(&self) -> bool {
        self.is_closed()
    }
    fn stats(&mut self, io: IoCounters) -> SpokeStatus {
        SpokeStatus {
            state: self.state(),
            stats: Spoke::stats(self),
            hub_addresses: self.hub_addresses(),
            routes: self.routes().iter().flat_map(|r| r.to_nets()).collect(),
            dns_servers: self.dns_servers().to_vec(),
            io,
        }
    }
    fn apply(&mut self, event: &SpokeEvent, os: &mut OsPlan) -> Flow {
        match event {
            SpokeEvent::Assigned {
                addresses, tun_mtu, ..
            } => {
                if let Some(mtu) = tun_mtu {
                    os.push(OsAction::SetMtu(*mtu));
                }
                let host = addresses
                    .iter()
                    .map(|a| (*a, IpPrefix::host(*a).prefix_len()))
                    .collect();
                os.push(OsAction::SetAddresses(host));
                // Routes need the addresses in place: queued after them, the current list.
                os.push(os.policy().routes(self));
                // DNS last; "established" waits for it too, so no query goes to the
                // resolver the host had before.
                if let Some(servers) = os.take_held_dns() {
                    os.push(OsAction::SetDns(servers));
                }
                os.end_assignment();
            }
            // Before the first assignment routes and DNS wait for the addresses (see above):
            // the hub sends them first.
            SpokeEvent::RoutesChanged { .. } if os.has_addresses() => {
                os.push(os.policy().routes(self));
            }
            SpokeEvent::DnsChanged { servers } if os.has_addresses() => {
                os.push(OsAction::SetDns(servers.clone()));
            }
            SpokeEvent::DnsChanged { servers } => os.hold_dns(servers.clone()),
            SpokeEvent::MtuChanged { tun_mtu } => os.push(OsAction::SetMtu(*tun_mtu)),
            SpokeEvent::Disconnected {
                reason,
                retry_in: None,
            } if !matches!(reason, DisconnectReason::Local { .. }) => {
                return Flow::Stop(reason.clone());
            }
            _ => {}
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use slopn_proto::SpokeConfig;
    use slopn_proto::pki::{CertificateAuthority, Validity};

    use super::*;
    use crate::policy::RoutePolicy;

    fn spoke() -> Spoke {
        let validity = Validity::days_from(SystemTime::now(), 2);
        let ca = CertificateAuthority::generate("test CA", [1; 32], validity).unwrap();
        let trust = slopn_proto::tls::parse_certificates(ca.cert_pem().as_bytes()).unwrap();
        let config = SpokeConfig::new(
            "192.0.2.1:4433".parse().unwrap(),
            "hub.slopn.test",
            trust,
            "token",
            [2; 32],
        );
        Spoke::new(config, Instant::now(), SystemTime::now()).unwrap()
    }

    #[test]
    fn on_first_connect_dns_comes_after_the_addresses_and_routes() {
        let mut spoke = spoke();
        let mut os = OsPlan::new(RoutePolicy::default());
        let dns: IpAddr = "10.100.0.53".parse().unwrap();
        // What the hub sends, in its order: routes and DNS, then the addresses.
        for event in [
            SpokeEvent::RoutesChanged { routes: Vec::new() },
            SpokeEvent::DnsChanged { servers: vec![dns] },
            SpokeEvent::Assigned {
                identity: "spoke".into(),
                addresses: vec!["10.100.0.2".parse().unwrap()],
                hub_addresses: vec!["10.100.0.1".parse().unwrap()],
                tun_mtu: Some(1400),
            },
        ] {
            assert_eq!(spoke.apply(&event, &mut os), Flow::Continue);
        }
        // The DNS servers, last, mark the tunnel routed once reported on.
        let queued: Vec<(OsAction, bool)> = os.drain().collect();
        assert!(
            matches!(
                queued.as_slice(),
                [
                    (OsAction::SetMtu(1400), false),
                    (OsAction::SetAddresses(_), false),
                    (OsAction::SetRoutes { .. }, false),
                    (OsAction::SetDns(servers), true),
                ] if *servers == [dns]
            ),
            "{queued:?}"
        );

        // Later changes go straight to the helper.
        spoke.apply(&SpokeEvent::DnsChanged { servers: vec![] }, &mut os);
        assert_eq!(
            os.drain().collect::<Vec<_>>(),
            [(OsAction::SetDns(vec![]), false)]
        );
    }
}
