//! What the event loop drives: the [`Machine`] trait, implemented for the hub and the spoke.

use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use ipnet::IpNet;
use slopn_proto::control::{CloseCode, IpPrefix};
use slopn_proto::{
    Credential, Datagram, DisconnectReason, DropReason, Hub, HubEvent, HubStats, SessionId, Spoke,
    SpokeEvent, SpokeSnapshot, SpokeState, SpokeStats, Transmit,
};
use slopn_tun::{Routes, Tun, TunError};
use tracing::{info, warn};

/// The operating-system side the loop owns: the TUN device and the routes through it.
#[derive(Debug)]
pub struct Os {
    /// Routes through the device, removed when the loop ends (declared first: fields drop
    /// in order, and the routes must go before the device).
    pub routes: Routes,
    /// The TUN device.
    pub tun: Tun,
    /// Which advertised routes a spoke installs.
    pub policy: RoutePolicy,
}

/// Which of the routes a hub advertises a spoke sends into the tunnel.
#[derive(Clone, Debug, Default)]
pub struct RoutePolicy {
    /// Whether an advertised default route makes this a full tunnel. The default route is
    /// then installed as two halves (0.0.0.0/1 and 128.0.0.0/1, ::/1 and 8000::/1) that
    /// outrank the host's own without touching it, and `hub` keeps a host route through the
    /// underlay so the tunnel's own packets do not loop into it.
    pub accept_default_route: bool,
    /// If not empty, only these networks (as far as the hub advertises them) go into the
    /// tunnel besides the tunnel networks themselves: a split tunnel.
    pub only: Vec<IpNet>,
    /// The hub's underlay address.
    pub hub: Option<IpAddr>,
}

impl RoutePolicy {
    /// The networks to route into the tunnel, and whether that makes a full tunnel.
    fn select(&self, spoke: &Spoke) -> (Vec<IpNet>, bool) {
        let mut nets = spoke.tunnel_networks();
        let advertised: Vec<IpNet> = spoke.routes().iter().flat_map(|r| r.to_nets()).collect();
        let wanted: Vec<IpNet> = if self.only.is_empty() {
            advertised
        } else {
            self.only
                .iter()
                .copied()
                .filter(|o| advertised.iter().any(|a| a.contains(o)))
                .collect()
        };
        let mut full = false;
        for net in wanted {
            if net.prefix_len() > 0 {
                nets.push(net);
            } else if self.accept_default_route {
                full = true;
                let halves: [&str; 2] = if net.addr().is_ipv4() {
                    ["0.0.0.0/1", "128.0.0.0/1"]
                } else {
                    ["::/1", "8000::/1"]
                };
                nets.extend(halves.iter().map(|h| h.parse::<IpNet>().expect("valid")));
            }
        }
        (nets, full)
    }

    fn apply(&self, spoke: &Spoke, os_routes: &mut Routes) -> Result<(), TunError> {
        let (nets, full) = self.select(spoke);
        // The hub stays reachable outside the tunnel before a default route points into it.
        os_routes.set_bypass(if full { self.hub } else { None })?;
        os_routes.set(&nets)
    }
}

/// Whether the loop goes on after an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep running.
    Continue,
    /// The machine gave up for good (a spoke refused by the hub): end the loop with this
    /// reason.
    Stop(DisconnectReason),
}

/// A sans-IO state machine the loop can drive: [`Hub`] or [`Spoke`]. The methods mirror
/// theirs (see `slopn_proto`), plus what the loop needs to configure the OS and to serve
/// commands and statistics.
pub trait Machine: Send + 'static {
    /// Events it reports.
    type Event: Clone + fmt::Debug + Send + 'static;
    /// Its statistics snapshot.
    type Stats: fmt::Debug + Send + 'static;
    /// Commands it accepts from other threads.
    type Command: fmt::Debug + Send + 'static;

    /// See [`Hub::handle_udp`].
    fn handle_udp(&mut self, now: Instant, datagram: Datagram<'_>);
    /// See [`Hub::handle_tun_packet`].
    fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), DropReason>;
    /// See [`Hub::handle_timeout`].
    fn handle_timeout(&mut self, now: Instant);
    /// See [`Hub::poll_transmit`].
    fn poll_transmit(
        &mut self,
        now: Instant,
        max_datagrams: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit>;
    /// See [`Hub::poll_tun_packet`].
    fn poll_tun_packet(&mut self) -> Option<Bytes>;
    /// See [`Hub::poll_event`].
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// See [`Hub::poll_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
    /// Carries out a command.
    fn command(&mut self, now: Instant, command: Self::Command);
    /// Starts an orderly shutdown (goodbyes).
    fn shut_down(&mut self, now: Instant);
    /// Whether the shutdown has finished.
    fn is_shut_down(&self) -> bool;
    /// A statistics snapshot, with the loop's own I/O counters.
    fn stats(&mut self, io: IoCounters) -> Self::Stats;
    /// Applies an event to the OS side (addresses, MTU, routes).
    fn apply(&mut self, event: &Self::Event, os: &mut Os) -> Result<Flow, TunError>;
}

/// Implements the input and output methods [`Hub`] and [`Spoke`] share by name and signature.
macro_rules! forward_io {
    ($ty:ident, $event:ty) => {
        fn handle_udp(&mut self, now: Instant, datagram: Datagram<'_>) {
            $ty::handle_udp(self, now, datagram)
        }
        fn handle_tun_packet(&mut self, now: Instant, packet: &[u8]) -> Result<(), DropReason> {
            $ty::handle_tun_packet(self, now, packet)
        }
        fn handle_timeout(&mut self, now: Instant) {
            $ty::handle_timeout(self, now)
        }
        fn poll_transmit(
            &mut self,
            now: Instant,
            max_datagrams: usize,
            buf: &mut Vec<u8>,
        ) -> Option<Transmit> {
            $ty::poll_transmit(self, now, max_datagrams, buf)
        }
        fn poll_tun_packet(&mut self) -> Option<Bytes> {
            $ty::poll_tun_packet(self)
        }
        fn poll_event(&mut self) -> Option<$event> {
            $ty::poll_event(self)
        }
        fn poll_timeout(&self) -> Option<Instant> {
            $ty::poll_timeout(self).map(|(t, _)| t)
        }
    };
}

/// Points the system resolver at `servers` for the tunnel device through systemd-resolved,
/// where it runs; elsewhere says what to configure.
fn apply_dns(device: &str, servers: &[IpAddr]) {
    if servers.is_empty() {
        return;
    }
    let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
    let mut args = vec!["dns".to_owned(), device.to_owned()];
    args.extend(list.iter().cloned());
    match std::process::Command::new("resolvectl")
        .args(&args)
        .output()
    {
        Ok(out) if out.status.success() => info!(servers = ?list, "DNS servers set"),
        _ => warn!(
            servers = ?list,
            "the hub pushed DNS servers; systemd-resolved is not available to apply them: \
             configure them in /etc/resolv.conf if wanted"
        ),
    }
}

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

/// Packets the event loop itself lost on the way to or from the OS, beside the machine's
/// drops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoCounters {
    /// Packets the TUN device refused on write: its queue full, a packet the kernel found
    /// malformed, or the device down.
    pub tun_write_drops: u64,
    /// Super-packets read from the TUN device that could not be split into packets.
    pub tun_read_drops: u64,
    /// UDP sends that failed (other than for a full socket buffer, which waits).
    pub udp_send_errors: u64,
}

/// A hub's statistics: the totals and every session.
#[derive(Clone, Debug)]
pub struct HubSnapshot {
    /// Totals.
    pub hub: HubStats,
    /// One entry per session.
    pub spokes: Vec<SpokeStats>,
    /// The loop's own I/O losses.
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
                if let Err(e) = self.disconnect(now, id, code, &reason) {
                    warn!("session {id} not disconnected: {e}");
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
    fn apply(&mut self, _event: &HubEvent, _os: &mut Os) -> Result<Flow, TunError> {
        Ok(Flow::Continue)
    }
}

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
    /// The loop's own I/O losses.
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
    fn apply(&mut self, event: &SpokeEvent, os: &mut Os) -> Result<Flow, TunError> {
        match event {
            SpokeEvent::Assigned {
                addresses, tun_mtu, ..
            } => {
                let host: Vec<(IpAddr, u8)> = addresses
                    .iter()
                    .map(|a| (*a, IpPrefix::host(*a).prefix_len()))
                    .collect();
                if let Some(mtu) = tun_mtu {
                    os.tun.set_mtu(*mtu)?;
                }
                os.tun.set_addresses(&host)?;
                // Routes need the addresses in place; apply the current list.
                os.policy.apply(self, &mut os.routes)?;
            }
            // Before the first assignment the routes wait for the addresses (see above).
            SpokeEvent::RoutesChanged { .. } if !os.tun.addresses().is_empty() => {
                os.policy.apply(self, &mut os.routes)?;
            }
            SpokeEvent::DnsChanged { servers } => apply_dns(os.tun.name(), servers),
            SpokeEvent::MtuChanged { tun_mtu } => os.tun.set_mtu(*tun_mtu)?,
            SpokeEvent::Disconnected {
                reason,
                retry_in: None,
            } if !matches!(reason, DisconnectReason::Local { .. }) => {
                return Ok(Flow::Stop(reason.clone()));
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }
}
