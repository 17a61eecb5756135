//! OS actions as values: what a machine asks of the operating system after an event, the
//! plan that collects them, and the report that comes back for each once the helper
//! thread (`worker`) has carried it out.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use slopn_tun::TunError;

use crate::policy::RoutePolicy;

/// One change to the OS side of a tunnel. Actions are carried out one after another, in
/// the order they were queued, on a helper thread: a later action sees the earlier ones
/// done (routes after the addresses they need).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OsAction {
    /// Sets the TUN device's MTU. The tunnel cannot work without it: a failure ends it.
    SetMtu(u16),
    /// Makes the TUN device's addresses exactly these (address, prefix length). A failure
    /// ends the tunnel.
    SetAddresses(Vec<(IpAddr, u8)>),
    /// Makes the routes through the TUN device exactly `essential` and `other`, the
    /// unreachable routes exactly `unreachable`, and keeps `bypass` (the hub) routed
    /// outside the tunnel with a host route, installed first. A failed bypass, essential
    /// or unreachable route ends the tunnel; a refused `other` route is counted and
    /// logged, and the rest are installed regardless.
    SetRoutes {
        /// Routes the tunnel cannot work without: its own networks (the pools), without
        /// which nothing reaches the hub, and in a full tunnel the default-route halves,
        /// without which traffic would leave outside it.
        essential: Vec<IpNet>,
        /// Further networks routed into the tunnel (advertised routes).
        other: Vec<IpNet>,
        /// In a full tunnel, the default-route halves of a family the tunnel holds no
        /// address in (IPv6 of an IPv4-only hub): they cannot go through the device, and
        /// are made unreachable so that such packets do not leave around the tunnel.
        unreachable: Vec<IpNet>,
        /// The hub's underlay address, kept outside a full tunnel.
        bypass: Option<IpAddr>,
    },
    /// Points the system resolver at these servers for the TUN device (systemd-resolved).
    /// A failure is counted and logged: names still resolve as before.
    SetDns(Vec<IpAddr>),
}

impl fmt::Display for OsAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OsAction::SetMtu(mtu) => write!(f, "setting the TUN MTU to {mtu}"),
            OsAction::SetAddresses(addresses) => {
                write!(f, "setting the TUN addresses to ")?;
                list(f, addresses.iter().map(|(a, p)| format!("{a}/{p}")))
            }
            OsAction::SetRoutes {
                essential,
                other,
                unreachable,
                ..
            } => {
                write!(f, "routing ")?;
                list(f, essential.iter().chain(other).map(ToString::to_string))?;
                write!(f, " into the tunnel")?;
                if !unreachable.is_empty() {
                    write!(f, " and making ")?;
                    list(f, unreachable.iter().map(ToString::to_string))?;
                    write!(f, " unreachable")?;
                }
                Ok(())
            }
            OsAction::SetDns(servers) => {
                write!(f, "setting the DNS servers to ")?;
                list(f, servers.iter().map(ToString::to_string))
            }
        }
    }
}

fn list(f: &mut fmt::Formatter<'_>, items: impl Iterator<Item = String>) -> fmt::Result {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        write!(f, "none")
    } else {
        write!(f, "{}", items.join(", "))
    }
}

/// What went wrong with one action.
#[derive(Debug)]
pub struct OsFailure {
    /// The action, as a sentence fragment ("routing 10.100.0.0/24 into the tunnel").
    pub action: String,
    /// Every error (one per refused route).
    pub errors: Vec<TunError>,
    /// Whether the tunnel cannot work after it (see [`OsAction`]).
    pub fatal: bool,
}

impl fmt::Display for OsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.action)?;
        list(f, self.errors.iter().map(ToString::to_string))
    }
}

impl std::error::Error for OsFailure {}

/// The outcome of one action, reported back to the loop.
#[derive(Debug)]
pub(crate) struct OsReport {
    /// The action's number, counting from 0 in the order queued.
    pub(crate) id: u64,
    /// `Ok` when it was carried out in full.
    pub(crate) result: Result<(), OsFailure>,
}

/// The actions a machine queues while applying events, and what it needs to decide them.
#[derive(Debug)]
pub struct OsPlan {
    policy: RoutePolicy,
    addressed: bool,
    /// DNS servers pushed before there were addresses, set after the routes.
    held_dns: Option<Vec<IpAddr>>,
    /// Each action, and whether it routes the latest assignment.
    queued: Vec<(OsAction, bool)>,
}

impl OsPlan {
    /// An empty plan for a tunnel routed by `policy`.
    pub fn new(policy: RoutePolicy) -> Self {
        Self {
            policy,
            addressed: false,
            held_dns: None,
            queued: Vec::new(),
        }
    }

    /// Which advertised routes a spoke installs.
    pub fn policy(&self) -> &RoutePolicy {
        &self.policy
    }

    /// Whether addresses have been queued for the device (routes need them first).
    pub fn has_addresses(&self) -> bool {
        self.addressed
    }

    /// Keeps DNS servers that came before the addresses (replacing any kept before), for
    /// [`take_held_dns`](Self::take_held_dns) once the addresses and routes are queued.
    pub fn hold_dns(&mut self, servers: Vec<IpAddr>) {
        self.held_dns = Some(servers);
    }

    /// The DNS servers kept by [`hold_dns`](Self::hold_dns), if any.
    pub fn take_held_dns(&mut self) -> Option<Vec<IpAddr>> {
        self.held_dns.take()
    }

    /// Queues an action.
    pub fn push(&mut self, action: OsAction) {
        if let OsAction::SetAddresses(addresses) = &action {
            self.addressed = !addresses.is_empty();
        }
        self.queued.push((action, false));
    }

    /// Marks the action queued last as the end of an assignment (its addresses, routes and
    /// DNS): once the helper has reported on it, the tunnel is routed (see
    /// [`IoCounters::routed`](crate::IoCounters::routed)).
    pub fn end_assignment(&mut self) {
        if let Some((_, last)) = self.queued.last_mut() {
            *last = true;
        }
    }

    /// Whether an action queued (and not yet taken) ends an assignment.
    pub(crate) fn ends_assignment(&self) -> bool {
        self.queued.iter().any(|(_, ends)| *ends)
    }

    /// Takes the queued actions, oldest first, each with whether it routes the latest
    /// assignment.
    pub(crate) fn drain(&mut self) -> std::vec::Drain<'_, (OsAction, bool)> {
        self.queued.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_keep_their_order_and_routes_wait_for_addresses() {
        let mut plan = OsPlan::new(RoutePolicy::default());
        assert!(!plan.has_addresses());
        plan.push(OsAction::SetMtu(1400));
        plan.push(OsAction::SetAddresses(vec![(
            "10.100.0.2".parse().unwrap(),
            32,
        )]));
        assert!(plan.has_addresses());
        plan.push(OsAction::SetDns(vec![]));
        let kinds: Vec<String> = plan.drain().map(|(a, _)| a.to_string()).collect();
        assert_eq!(
            kinds,
            [
                "setting the TUN MTU to 1400",
                "setting the TUN addresses to 10.100.0.2/32",
                "setting the DNS servers to none",
            ]
        );
        plan.push(OsAction::SetAddresses(vec![]));
        assert!(!plan.has_addresses());
    }

    #[test]
    fn a_failure_names_the_action_and_every_error() {
        let action = OsAction::SetRoutes {
            essential: vec!["10.100.0.0/24".parse().unwrap()],
            other: vec!["2001:db8::/32".parse().unwrap()],
            unreachable: Vec::new(),
            bypass: None,
        };
        let failure = OsFailure {
            action: action.to_string(),
            errors: vec![TunError::Command {
                command: "ip -6 route replace 2001:db8::/32 dev slopn0".into(),
                stderr: "Error: IPv6 is disabled on nexthop device.".into(),
            }],
            fatal: false,
        };
        assert_eq!(
            failure.to_string(),
            "routing 10.100.0.0/24, 2001:db8::/32 into the tunnel: `ip -6 route replace \
             2001:db8::/32 dev slopn0` failed: Error: IPv6 is disabled on nexthop device."
        );
    }
}
