//! The OS side of the helper thread: the TUN device's MTU and addresses, the routes, and
//! DNS, changed as [`OsAction`]s say.

use std::net::IpAddr;

use ipnet::IpNet;
use slopn_tun::{Routes, TunControl, TunError};
use tracing::info;

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
                tunnel,
                other,
                bypass,
            } => {
                // The hub stays reachable outside the tunnel before a default route points
                // into it.
                routes
                    .set_bypass(*bypass)
                    .map_err(|e| failure(vec![e], true))?;
                let all: Vec<IpNet> = tunnel.iter().chain(other).copied().collect();
                let failed = routes.set(&all);
                if failed.is_empty() {
                    return Ok(());
                }
                let fatal = failed
                    .iter()
                    .any(|(net, _)| tunnel.iter().any(|t| t.trunc() == *net));
                Err(failure(failed.into_iter().map(|(_, e)| e).collect(), fatal))
            }
            OsAction::SetDns(servers) => {
                set_dns(control.name(), servers).map_err(|e| failure(vec![e], false))
            }
        }
    }
}

/// Points the system resolver at `servers` for the tunnel device through systemd-resolved.
fn set_dns(device: &str, servers: &[IpAddr]) -> Result<(), TunError> {
    if servers.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
    let output = std::process::Command::new("resolvectl")
        .arg("dns")
        .arg(device)
        .args(&list)
        .output();
    match output {
        Ok(out) if out.status.success() => {
            info!(servers = ?list, "DNS servers set");
            Ok(())
        }
        Ok(out) => Err(TunError::Command {
            command: format!("resolvectl dns {device} {}", list.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }),
        Err(e) => Err(TunError::Io {
            what: "running resolvectl (systemd-resolved is not available: configure the \
                   pushed DNS servers in /etc/resolv.conf if wanted)"
                .into(),
            source: e,
        }),
    }
}
