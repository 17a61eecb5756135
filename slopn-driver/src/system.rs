//! The OS side of the helper thread: the TUN device's MTU and addresses, the routes, and
//! DNS, changed as [`OsAction`]s say.

use ipnet::IpNet;
use slopn_tun::{Dns, DnsMethod, Routes, TunControl, TunError};

use crate::os::{OsAction, OsFailure};
use crate::worker::OsSide;

/// The real OS: one TUN device and the routes and DNS servers through it. Dropping it
/// removes the routes and puts back a resolver file it wrote (fields drop in order: both
/// before the device's control handle).
pub(crate) struct System {
    routes: Routes,
    dns: Dns,
    control: TunControl,
}

impl System {
    pub(crate) fn new(control: TunControl, dns: DnsMethod) -> Self {
        Self {
            routes: Routes::new(control.name()),
            dns: Dns::new(control.name(), dns),
            control,
        }
    }
}

impl OsSide for System {
    fn carry_out(&mut self, action: &OsAction) -> Result<(), OsFailure> {
        let failure = |errors: Vec<TunError>, fatal| OsFailure {
            action: action.to_string(),
            errors,
            fatal,
        };
        let (control, routes) = (&mut self.control, &mut self.routes);
        match action {
            OsAction::SetMtu(mtu) => control.set_mtu(*mtu).map_err(|e| failure(vec![e], true)),
            OsAction::SetAddresses(addresses) => control
                .set_addresses(addresses)
                .map_err(|e| failure(vec![e], true)),
            OsAction::SetRoutes {
                essential,
                other,
                unreachable,
                bypass,
            } => {
                // The hub stays reachable outside the tunnel before a default route points
                // into it. Removing it is not essential: one that fails stays, counted.
                let mut errors = Vec::new();
                match routes.set_bypass(*bypass) {
                    Err(e) if bypass.is_some() => return Err(failure(vec![e], true)),
                    Err(e) => errors.push(e),
                    Ok(()) => {}
                }
                let mut failed = routes.set_unreachable(unreachable);
                let all: Vec<IpNet> = essential.iter().chain(other).copied().collect();
                // Only routes to add can be essential: a stale one that could not be
                // removed is no longer listed (and is tried again later).
                failed.extend(routes.set(&all));
                // A host without IPv6 refuses IPv6 routes, and has no IPv6 to leak either.
                let fatal = failed.iter().any(|(net, e)| {
                    essential
                        .iter()
                        .chain(unreachable)
                        .any(|t| t.trunc() == *net)
                        && !(net.addr().is_ipv6() && no_ipv6(e))
                });
                errors.extend(failed.into_iter().map(|(_, e)| e));
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(failure(errors, fatal))
                }
            }
            OsAction::SetDns(servers) => self.dns.set(servers).map_err(|e| failure(vec![e], false)),
        }
    }
}

/// Whether `e` says the host has no IPv6 at all (`EAFNOSUPPORT`).
fn no_ipv6(e: &TunError) -> bool {
    use std::error::Error;
    e.source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
        == Some(EAFNOSUPPORT)
}

#[cfg(unix)]
const EAFNOSUPPORT: i32 = libc::EAFNOSUPPORT;
#[cfg(windows)]
const EAFNOSUPPORT: i32 = 10047; // WSAEAFNOSUPPORT
