//! Routes through a device, removed again when dropped.

use ipnet::IpNet;
use tracing::{debug, warn};

use crate::{TunError, run};

/// The set of routes SloPN installed through one device.
///
/// [`set`](Self::set) makes the installed routes exactly the given list; dropping the value
/// removes them all. (If the process dies instead, the kernel removes them with the device.)
#[derive(Debug)]
pub struct Routes {
    device: String,
    installed: Vec<IpNet>,
}

impl Routes {
    /// No routes yet, through `device`.
    pub fn new(device: impl Into<String>) -> Self {
        Self {
            device: device.into(),
            installed: Vec::new(),
        }
    }

    /// The routes installed now.
    pub fn installed(&self) -> &[IpNet] {
        &self.installed
    }

    /// Installs every route in `nets` not yet installed, and removes installed ones no longer
    /// listed.
    pub fn set(&mut self, nets: &[IpNet]) -> Result<(), TunError> {
        for net in nets.iter().map(IpNet::trunc) {
            if !self.installed.contains(&net) {
                add(&self.device, net)?;
                debug!(%net, device = %self.device, "route added");
                self.installed.push(net);
            }
        }
        let stale: Vec<IpNet> = self
            .installed
            .iter()
            .copied()
            .filter(|n| !nets.iter().any(|m| m.trunc() == *n))
            .collect();
        for net in stale {
            delete(&self.device, net)?;
            self.installed.retain(|n| *n != net);
        }
        Ok(())
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        for net in self.installed.drain(..) {
            if let Err(e) = delete(&self.device, net) {
                // The device may be gone already, taking its routes with it.
                warn!(%net, error = %e, "could not remove route");
            }
        }
    }
}

fn add(device: &str, net: IpNet) -> Result<(), TunError> {
    route(RouteAction::Add, device, net)
}

fn delete(device: &str, net: IpNet) -> Result<(), TunError> {
    route(RouteAction::Delete, device, net)
}

#[derive(Clone, Copy)]
enum RouteAction {
    Add,
    Delete,
}

#[cfg(not(target_os = "macos"))]
fn route(action: RouteAction, device: &str, net: IpNet) -> Result<(), TunError> {
    let family = if net.addr().is_ipv4() { "-4" } else { "-6" };
    let verb = match action {
        RouteAction::Add => "replace",
        RouteAction::Delete => "del",
    };
    run(
        "ip",
        &[family, "route", verb, &net.to_string(), "dev", device],
    )
    .map(drop)
}

// Untested: macOS routes through utun devices.
#[cfg(target_os = "macos")]
fn route(action: RouteAction, device: &str, net: IpNet) -> Result<(), TunError> {
    let family = if net.addr().is_ipv4() {
        "-inet"
    } else {
        "-inet6"
    };
    let verb = match action {
        RouteAction::Add => "add",
        RouteAction::Delete => "delete",
    };
    run(
        "route",
        &["-n", verb, family, &net.to_string(), "-interface", device],
    )
    .map(drop)
}
