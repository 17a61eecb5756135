//! Which of the routes a hub advertises a spoke sends into the tunnel.

use std::net::IpAddr;

use ipnet::IpNet;
use slopn_proto::Spoke;

use crate::os::OsAction;

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
    /// The routes `spoke` needs now, as an action.
    pub(crate) fn routes(&self, spoke: &Spoke) -> OsAction {
        let advertised: Vec<IpNet> = spoke.routes().iter().flat_map(|r| r.to_nets()).collect();
        self.routes_for(&advertised, spoke.tunnel_networks(), &spoke.addresses())
    }

    /// The routes for `advertised` networks and the tunnel's own, for a spoke holding
    /// `addresses`. A full tunnel (an advertised default route, of either family) takes
    /// the default-route halves of both families, as essential as the tunnel networks: a
    /// missing half would leave part of the traffic outside the tunnel while it looks up,
    /// and a family the hub does not serve (IPv6 from an IPv4-only hub) would otherwise
    /// leave outside it altogether. The halves of a family the spoke holds no address in
    /// cannot go through the device (no IPv6 on a TUN device without an IPv6 address):
    /// they are made unreachable instead. The tunnel networks of a family without an
    /// address (a hub's IPv6 pool exhausted) are only tried, and counted if refused.
    fn routes_for(
        &self,
        advertised: &[IpNet],
        tunnel: Vec<IpNet>,
        addresses: &[IpAddr],
    ) -> OsAction {
        let wanted: Vec<IpNet> = if self.only.is_empty() {
            advertised.to_vec()
        } else {
            self.only
                .iter()
                .copied()
                .filter(|o| advertised.iter().any(|a| a.contains(o)))
                .collect()
        };
        let mut other = Vec::new();
        let mut full = false;
        for net in wanted {
            if net.prefix_len() > 0 {
                other.push(net);
            } else if self.accept_default_route {
                full = true;
            }
        }
        let held = |net: &IpNet| {
            addresses
                .iter()
                .any(|a| a.is_ipv4() == net.addr().is_ipv4())
        };
        let (mut essential, unheld): (Vec<IpNet>, Vec<IpNet>) = tunnel.into_iter().partition(held);
        other.extend(unheld);
        let mut unreachable = Vec::new();
        if full {
            let halves = ["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"]
                .iter()
                .map(|h| h.parse::<IpNet>().expect("valid"));
            for half in halves {
                if held(&half) {
                    essential.push(half);
                } else {
                    unreachable.push(half);
                }
            }
        }
        OsAction::SetRoutes {
            essential,
            other,
            unreachable,
            bypass: if full { self.hub } else { None },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn dual_stack() -> Vec<IpAddr> {
        vec![
            "10.100.0.2".parse().unwrap(),
            "fd00:100::2".parse().unwrap(),
        ]
    }

    #[test]
    fn a_family_without_an_address_has_its_halves_made_unreachable() {
        let policy = RoutePolicy {
            accept_default_route: true,
            only: Vec::new(),
            hub: None,
        };
        // A dual-stack hub whose IPv6 pool is exhausted: an IPv4 address only.
        let action = policy.routes_for(
            &nets(&["0.0.0.0/0", "::/0"]),
            nets(&["10.100.0.0/24", "fd00:100::/64"]),
            &["10.100.0.2".parse().unwrap()],
        );
        assert_eq!(
            action,
            OsAction::SetRoutes {
                essential: nets(&["10.100.0.0/24", "0.0.0.0/1", "128.0.0.0/1"]),
                other: nets(&["fd00:100::/64"]),
                unreachable: nets(&["::/1", "8000::/1"]),
                bypass: None,
            }
        );
    }

    #[test]
    fn a_full_tunnel_of_one_family_takes_the_other_family_in_too() {
        let policy = RoutePolicy {
            accept_default_route: true,
            only: Vec::new(),
            hub: None,
        };
        // An IPv4-only hub: IPv6 must not leave around the tunnel.
        let action = policy.routes_for(
            &nets(&["0.0.0.0/0"]),
            nets(&["10.100.0.0/24"]),
            &["10.100.0.2".parse().unwrap()],
        );
        assert_eq!(
            action,
            OsAction::SetRoutes {
                essential: nets(&["10.100.0.0/24", "0.0.0.0/1", "128.0.0.0/1"]),
                other: Vec::new(),
                unreachable: nets(&["::/1", "8000::/1"]),
                bypass: None,
            }
        );
    }

    #[test]
    fn a_full_tunnel_needs_its_default_route_halves_and_the_bypass() {
        let hub = "192.0.2.1".parse().unwrap();
        let policy = RoutePolicy {
            accept_default_route: true,
            only: Vec::new(),
            hub: Some(hub),
        };
        let action = policy.routes_for(
            &nets(&["0.0.0.0/0", "::/0", "192.168.50.0/24"]),
            nets(&["10.100.0.0/24", "fd00:100::/64"]),
            &dual_stack(),
        );
        assert_eq!(
            action,
            OsAction::SetRoutes {
                essential: nets(&[
                    "10.100.0.0/24",
                    "fd00:100::/64",
                    "0.0.0.0/1",
                    "128.0.0.0/1",
                    "::/1",
                    "8000::/1"
                ]),
                other: nets(&["192.168.50.0/24"]),
                unreachable: Vec::new(),
                bypass: Some(hub),
            }
        );
    }

    #[test]
    fn a_split_tunnel_needs_only_the_tunnel_networks() {
        let policy = RoutePolicy {
            accept_default_route: false,
            only: Vec::new(),
            hub: Some("192.0.2.1".parse().unwrap()),
        };
        let action = policy.routes_for(
            &nets(&["0.0.0.0/0", "192.168.50.0/24"]),
            nets(&["10.100.0.0/24"]),
            &dual_stack(),
        );
        assert_eq!(
            action,
            OsAction::SetRoutes {
                essential: nets(&["10.100.0.0/24"]),
                other: nets(&["192.168.50.0/24"]),
                unreachable: Vec::new(),
                bypass: None,
            }
        );
    }
}
