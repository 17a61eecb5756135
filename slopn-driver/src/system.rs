//! The OS side of the helper thread: the TUN device's MTU and addresses, the routes, and
//! DNS, changed as [`OsAction`]s say.

use ipnet::IpNet;
use slopn_tun::{Routes, TunControl, TunError, set_dns};

use crate::os::{OsAction, OsFailure};
use crate::worker::OsSide;

/// The real OS: one TUN device and the routes through it. Dropping it removes the routes
/// (fields drop in order: the routes before the device's control handle).
pub(crate) struct System {
    routes: Routes,
    control: TunControl,
}

impl System {
    pub(crate) fn new(control: TunControl) -> Self {
        Self {
            routes: Routes::new(control.name()),
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
                let all: Vec<IpNet> = essential.iter().chain(other).copied().collect();
                // Only routes to add can be essential: a stale one that could not be
                // removed is no longer listed (and is tried again later).
                let failed = routes.set(&all);
                let fatal = failed
                    .iter()
                    .any(|(net, _)| essential.iter().any(|t| t.trunc() == *net));
                errors.extend(failed.into_iter().map(|(_, e)| e));
                if errors.is_empty() {
                    Ok(())
                } else {
                    Err(failure(errors, fatal))
                }
            }
            OsAction::SetDns(servers) => {
                set_dns(control.name(), servers).map_err(|e| failure(vec![e], false))
            }
        }
    }
}
