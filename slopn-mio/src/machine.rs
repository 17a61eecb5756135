//! What the event loop drives: the [`Machine`] trait, implemented for the hub and the spoke.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use ipnet::IpNet;
use slopn_proto::control::{CloseCode, IpPrefix};
use slopn_proto::{
    DisconnectReason, DropReason, EcnCodepoint, Hub, HubEvent, HubStats, SessionId, Spoke,
    SpokeEvent, SpokeSnapshot, SpokeState, SpokeStats, Transmit,
};
use slopn_tun::{Routes, Tun, TunError};

/// The operating-system side the loop owns: the TUN device and the routes through it.
#[derive(Debug)]
pub struct Os {
    /// Routes through the device, removed when the loop ends (declared first: fields drop
    /// in order, and the routes must go before the device).
    pub routes: Routes,
    /// The TUN device.
    pub tun: Tun,
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
    fn handle_udp(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        payload: &[u8],
    );
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
    /// A statistics snapshot.
    fn stats(&mut self) -> Self::Stats;
    /// Applies an event to the OS side (addresses, MTU, routes).
    fn apply(&mut self, event: &Self::Event, os: &mut Os) -> Result<Flow, TunError>;
}

/// Implements the input and output methods [`Hub`] and [`Spoke`] share by name and signature.
macro_rules! forward_io {
    ($ty:ident, $event:ty) => {
        fn handle_udp(
            &mut self,
            now: Instant,
            remote: SocketAddr,
            local_ip: Option<IpAddr>,
            ecn: Option<EcnCodepoint>,
            payload: &[u8],
        ) {
            $ty::handle_udp(self, now, remote, local_ip, ecn, payload)
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
}

/// A hub's statistics: the totals and every session.
#[derive(Clone, Debug)]
pub struct HubSnapshot {
    /// Totals.
    pub hub: HubStats,
    /// One entry per session.
    pub spokes: Vec<SpokeStats>,
}

impl Machine for Hub {
    type Event = HubEvent;
    type Stats = HubSnapshot;
    type Command = HubCommand;

    forward_io!(Hub, HubEvent);

    fn command(&mut self, now: Instant, command: HubCommand) {
        match command {
            HubCommand::Disconnect { id, code, reason } => {
                self.disconnect(now, id, code, &reason);
            }
        }
    }
    fn shut_down(&mut self, now: Instant) {
        self.close(now, "hub shutting down");
    }
    fn is_shut_down(&self) -> bool {
        self.is_closed()
    }
    fn stats(&mut self) -> HubSnapshot {
        HubSnapshot {
            hub: Hub::stats(self),
            spokes: self.spokes(),
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
    fn stats(&mut self) -> SpokeStatus {
        SpokeStatus {
            state: self.state(),
            stats: Spoke::stats(self),
            hub_addresses: self.hub_addresses().to_vec(),
            routes: self.routes().iter().flat_map(|r| r.to_nets()).collect(),
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
                // Routes need the addresses in place; re-apply the current list.
                let nets: Vec<IpNet> = self.routes().iter().flat_map(|r| r.to_nets()).collect();
                os.routes.set(&nets)?;
            }
            // Before the first assignment the routes wait for the addresses (see above).
            SpokeEvent::RoutesChanged { routes } if !os.tun.addresses().is_empty() => {
                let nets: Vec<IpNet> = routes.iter().flat_map(|r| r.to_nets()).collect();
                os.routes.set(&nets)?;
            }
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
