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
    /// A host route keeping one destination (the hub) outside the tunnel.
    bypass: Option<IpNet>,
}

impl Routes {
    /// No routes yet, through `device`.
    pub fn new(device: impl Into<String>) -> Self {
        Self {
            device: device.into(),
            installed: Vec::new(),
            bypass: None,
        }
    }

    /// Keeps `dest` (the hub's underlay address) routed as it is now, outside the tunnel,
    /// with a host route through the current gateway. Install it before a default route
    /// points into the tunnel, or packets to the hub would loop into it. `None` removes it.
    /// A bypass that could not be removed is kept, to be removed by a later call or on drop.
    pub fn set_bypass(&mut self, dest: Option<std::net::IpAddr>) -> Result<(), TunError> {
        let wanted = dest.map(IpNet::from);
        if wanted == self.bypass {
            return Ok(());
        }
        if let Some(old) = self.bypass {
            delete_host(old)?;
            self.bypass = None;
        }
        if let (Some(net), Some(dest)) = (wanted, dest) {
            let via = current_route(dest)?;
            if via.iter().any(|w| w == &self.device) {
                return Err(TunError::Command {
                    command: format!("ip route get {dest}"),
                    stderr: format!("the hub {dest} is already routed into {}", self.device),
                });
            }
            let mut args = vec!["route".to_owned(), "replace".to_owned(), net.to_string()];
            args.extend(via);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run("ip", &args)?;
            debug!(%net, "bypass route added");
            self.bypass = Some(net);
        }
        Ok(())
    }

    /// Installs every route in `nets` not yet installed, and removes installed ones no longer
    /// listed. One route the kernel refuses does not stop the others: returns those that
    /// could not be added or removed, with why (empty when all went well).
    pub fn set(&mut self, nets: &[IpNet]) -> Vec<(IpNet, TunError)> {
        let mut failed = Vec::new();
        for net in nets.iter().map(IpNet::trunc) {
            if self.installed.contains(&net) {
                continue;
            }
            match add(&self.device, net) {
                Ok(()) => {
                    debug!(%net, device = %self.device, "route added");
                    self.installed.push(net);
                }
                Err(e) => failed.push((net, e)),
            }
        }
        let stale: Vec<IpNet> = self
            .installed
            .iter()
            .copied()
            .filter(|n| !nets.iter().any(|m| m.trunc() == *n))
            .collect();
        for net in stale {
            match delete(&self.device, net) {
                Ok(()) => self.installed.retain(|n| *n != net),
                Err(e) => failed.push((net, e)),
            }
        }
        failed
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        if let Some(net) = self.bypass.take()
            && let Err(e) = delete_host(net)
        {
            warn!(%net, error = %e, "could not remove the bypass route");
        }
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

/// `via GATEWAY dev DEVICE` (or `dev DEVICE` on-link) of the kernel's route to `dest` now.
fn current_route(dest: std::net::IpAddr) -> Result<Vec<String>, TunError> {
    let out = run("ip", &["route", "get", &dest.to_string()])?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let mut via = Vec::new();
    for key in ["via", "dev"] {
        if let Some(pos) = words.iter().position(|w| *w == key)
            && let Some(value) = words.get(pos + 1)
        {
            via.push(key.to_owned());
            via.push((*value).to_owned());
        }
    }
    if !via.iter().any(|w| w == "dev") {
        return Err(TunError::Command {
            command: format!("ip route get {dest}"),
            stderr: format!("no route to {dest}"),
        });
    }
    Ok(via)
}

fn delete_host(net: IpNet) -> Result<(), TunError> {
    run("ip", &["route", "del", &net.to_string()]).map(drop)
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
