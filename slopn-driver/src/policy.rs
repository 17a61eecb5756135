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
        let wanted: Vec<IpNet> = if self.only.is_empty() {
            advertised
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
                let halves: [&str; 2] = if net.addr().is_ipv4() {
                    ["0.0.0.0/1", "128.0.0.0/1"]
                } else {
                    ["::/1", "8000::/1"]
                };
                other.extend(halves.iter().map(|h| h.parse::<IpNet>().expect("valid")));
            }
        }
        OsAction::SetRoutes {
            tunnel: spoke.tunnel_networks(),
            other,
            bypass: if full { self.hub } else { None },
        }
    }
}
