//! Routes through a device, removed again when dropped.

use ipnet::IpNet;
use tracing::{debug, warn};

use crate::TunError;
#[cfg(not(target_os = "linux"))]
use crate::run;

/// The set of routes SloPN installed through one device.
///
/// [`set`](Self::set) makes the installed routes exactly the given list; dropping the value
/// removes them all. (If the process dies instead, the kernel removes them with the device.)
#[derive(Debug)]
pub struct Routes {
    device: String,
    installed: Vec<IpNet>,
    /// Networks made unreachable (see [`set_unreachable`](Self::set_unreachable)).
    unreachable: Vec<IpNet>,
    /// A host route keeping one destination (the hub) outside the tunnel, and where it
    /// goes (the words naming the gateway and interface, as the route was added).
    bypass: Option<(IpNet, Vec<String>)>,
}

impl Routes {
    /// No routes yet, through `device`.
    pub fn new(device: impl Into<String>) -> Self {
        Self {
            device: device.into(),
            installed: Vec::new(),
            unreachable: Vec::new(),
            bypass: None,
        }
    }

    /// Keeps `dest` (the hub's underlay address) routed as it is now, outside the tunnel,
    /// with a host route through the current gateway. Install it before a default route
    /// points into the tunnel, or packets to the hub would loop into it. `None` removes it.
    /// A bypass that could not be removed is kept, to be removed by a later call or on drop.
    pub fn set_bypass(&mut self, dest: Option<std::net::IpAddr>) -> Result<(), TunError> {
        let wanted = dest.map(IpNet::from);
        if wanted == self.bypass.as_ref().map(|(net, _)| *net) {
            return Ok(());
        }
        if let Some((old, via)) = &self.bypass {
            delete_host(*old, via)?;
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
            add_host(net, &via)?;
            debug!(%net, "bypass route added");
            self.bypass = Some((net, via));
        }
        Ok(())
    }

    /// Installs every route in `nets` not yet installed, and removes installed ones no longer
    /// listed. One route the kernel refuses does not stop the others: returns those that
    /// could not be added or removed, with why (empty when all went well).
    pub fn set(&mut self, nets: &[IpNet]) -> Vec<(IpNet, TunError)> {
        update(&self.device, &mut self.installed, nets, false)
    }

    /// Makes `nets` unreachable (packets to them are refused at once, "network
    /// unreachable") and no longer the ones made so before, as [`set`](Self::set) does for
    /// routes through the device. A full tunnel does this to the default-route halves of a
    /// family it cannot carry (IPv6 of an IPv4-only hub), so that they do not leave around
    /// it. Such routes do not go with the device: dropping this value removes them, and a
    /// spoke killed before that leaves them until it runs again. (On other systems than
    /// Linux they go through the device, where the spoke drops what it cannot carry.)
    pub fn set_unreachable(&mut self, nets: &[IpNet]) -> Vec<(IpNet, TunError)> {
        update(&self.device, &mut self.unreachable, nets, true)
    }
}

/// Makes `installed` (routes through `device`, or unreachable ones) exactly `nets`.
fn update(
    device: &str,
    installed: &mut Vec<IpNet>,
    nets: &[IpNet],
    unreachable: bool,
) -> Vec<(IpNet, TunError)> {
    let mut add: Vec<IpNet> = Vec::new();
    for net in nets.iter().map(IpNet::trunc) {
        if !installed.contains(&net) && !add.contains(&net) {
            add.push(net);
        }
    }
    let stale: Vec<IpNet> = installed
        .iter()
        .copied()
        .filter(|n| !nets.iter().any(|m| m.trunc() == *n))
        .collect();
    let mut failed = Vec::new();
    for (net, added, result) in change(device, &add, &stale, unreachable) {
        match (added, result) {
            (true, Ok(())) => {
                debug!(%net, device, unreachable, "route added");
                installed.push(net);
            }
            (false, Ok(())) => installed.retain(|n| *n != net),
            (_, Err(e)) => failed.push((net, e)),
        }
    }
    failed
}

impl Drop for Routes {
    fn drop(&mut self) {
        if let Some((net, via)) = self.bypass.take()
            && let Err(e) = delete_host(net, &via)
        {
            warn!(%net, error = %e, "could not remove the bypass route");
        }
        for (list, unreachable) in [(&mut self.installed, false), (&mut self.unreachable, true)] {
            let stale = std::mem::take(list);
            for (net, _, result) in change(&self.device, &[], &stale, unreachable) {
                if let Err(e) = result {
                    // The device may be gone already, taking its routes with it.
                    warn!(%net, error = %e, "could not remove route");
                }
            }
        }
    }
}

/// Adds `add` and removes `delete` through `device`: (network, whether it was an addition,
/// the outcome) for each. One route the kernel refuses does not stop the others.
#[cfg(not(target_os = "linux"))]
fn change(
    device: &str,
    add: &[IpNet],
    delete: &[IpNet],
    _unreachable: bool,
) -> Vec<(IpNet, bool, Result<(), TunError>)> {
    let adds = add
        .iter()
        .map(|&net| (net, true, route(RouteAction::Add, device, net)));
    let deletes = delete
        .iter()
        .map(|&net| (net, false, route(RouteAction::Delete, device, net)));
    adds.chain(deletes).collect()
}

/// Adds `add` and removes `delete` through `device` (or, `unreachable`, as unreachable
/// routes) in one netlink batch: (network, whether it was an addition, the outcome) for
/// each. One route the kernel refuses does not stop the others.
#[cfg(target_os = "linux")]
fn change(
    device: &str,
    add: &[IpNet],
    delete: &[IpNet],
    unreachable: bool,
) -> Vec<(IpNet, bool, Result<(), TunError>)> {
    use crate::netlink::{Change, Netlink, Target, Via, interface_index};
    let fail_all = |what: &str, e: std::io::Error| {
        add.iter()
            .map(|&n| (n, true))
            .chain(delete.iter().map(|&n| (n, false)))
            .map(|(net, added)| {
                let e = std::io::Error::new(e.kind(), e.to_string());
                (net, added, Err(TunError::io(format!("{what} {device}"), e)))
            })
            .collect()
    };
    if add.is_empty() && delete.is_empty() {
        return Vec::new();
    }
    let target = if unreachable {
        Target::Unreachable
    } else {
        match interface_index(device) {
            Ok(interface) => Target::Via(Via {
                interface,
                gateway: None,
            }),
            Err(e) => return fail_all("finding the interface", e),
        }
    };
    let mut netlink = match Netlink::open() {
        Ok(netlink) => netlink,
        Err(e) => return fail_all("opening netlink to route through", e),
    };
    let changes: Vec<Change> = add
        .iter()
        .map(|&net| Change::Replace(net, target.clone()))
        .chain(
            delete
                .iter()
                .map(|&net| Change::Delete(net, target.clone())),
        )
        .collect();
    let results = netlink.apply(&changes);
    add.iter()
        .map(|&n| (n, true))
        .chain(delete.iter().map(|&n| (n, false)))
        .zip(results)
        .map(|((net, added), result)| {
            let verb = if added { "adding" } else { "removing" };
            let result = result
                .map_err(|e| TunError::io(format!("{verb} the route {net} through {device}"), e));
            (net, added, result)
        })
        .collect()
}

/// `via GATEWAY dev DEVICE` (or `dev DEVICE` on-link) of the kernel's route to `dest` now.
#[cfg(target_os = "linux")]
fn current_route(dest: std::net::IpAddr) -> Result<Vec<String>, TunError> {
    let fail = |e| TunError::io(format!("finding the route to {dest}"), e);
    let via = crate::netlink::Netlink::open()
        .and_then(|mut netlink| netlink.route_to(dest))
        .map_err(fail)?;
    let name = nix::net::if_::if_indextoname(via.interface)
        .map_err(|e| fail(e.into()))?
        .to_string_lossy()
        .into_owned();
    let mut words = Vec::new();
    if let Some(gateway) = via.gateway {
        words.extend(["via".to_owned(), gateway.to_string()]);
    }
    words.extend(["dev".to_owned(), name]);
    Ok(words)
}

/// The host route `net` through what [`current_route`] found.
#[cfg(target_os = "linux")]
fn host_change(net: IpNet, via: &[String], add: bool) -> Result<(), TunError> {
    use crate::netlink::{Change, Netlink, Target, Via, interface_index};
    let word = |key: &str| {
        via.iter()
            .position(|w| w == key)
            .and_then(|i| via.get(i + 1))
    };
    let fail = |e| TunError::io(format!("routing {net} outside the tunnel"), e);
    let device = word("dev").ok_or_else(|| fail(std::io::ErrorKind::NotFound.into()))?;
    let via = Via {
        interface: interface_index(device).map_err(fail)?,
        gateway: word("via").and_then(|g| g.parse().ok()),
    };
    let change = if add {
        Change::Replace(net, Target::Via(via))
    } else {
        Change::Delete(net, Target::Via(via))
    };
    let mut netlink = Netlink::open().map_err(fail)?;
    netlink
        .apply(&[change])
        .pop()
        .unwrap_or(Ok(()))
        .map_err(fail)
}

#[cfg(target_os = "linux")]
fn add_host(net: IpNet, via: &[String]) -> Result<(), TunError> {
    host_change(net, via, true)
}

#[cfg(target_os = "linux")]
fn delete_host(net: IpNet, via: &[String]) -> Result<(), TunError> {
    host_change(net, via, false)
}

/// `via GATEWAY dev DEVICE` (or `dev DEVICE` on-link) of the kernel's route to `dest` now.
#[cfg(not(any(windows, target_os = "linux")))]
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

#[cfg(not(any(windows, target_os = "linux")))]
fn add_host(net: IpNet, via: &[String]) -> Result<(), TunError> {
    let mut args = vec!["route", "replace"];
    let net = net.to_string();
    args.push(&net);
    args.extend(via.iter().map(String::as_str));
    run("ip", &args).map(drop)
}

#[cfg(not(any(windows, target_os = "linux")))]
fn delete_host(net: IpNet, _via: &[String]) -> Result<(), TunError> {
    run("ip", &["route", "del", &net.to_string()]).map(drop)
}

#[cfg(not(target_os = "linux"))]
#[derive(Clone, Copy)]
enum RouteAction {
    Add,
    Delete,
}

// Untested: macOS routes through utun devices.
#[cfg(not(any(windows, target_os = "linux")))]
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

/// The interface index and next hop of Windows' route to `dest` now (`Find-NetRoute`).
#[cfg(windows)]
fn current_route(dest: std::net::IpAddr) -> Result<Vec<String>, TunError> {
    let script = windows::find_route_script(dest);
    let out = run(
        "powershell",
        &["-NoProfile", "-NonInteractive", "-Command", &script],
    )?;
    windows::parse_found_route(&out).ok_or_else(|| TunError::Command {
        command: format!("Find-NetRoute -RemoteIPAddress {dest}"),
        stderr: format!("no route to {dest}"),
    })
}

#[cfg(windows)]
fn add_host(net: IpNet, via: &[String]) -> Result<(), TunError> {
    let args = windows::route_args("add", net, via);
    run(
        "netsh",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .map(drop)
}

#[cfg(windows)]
fn delete_host(net: IpNet, via: &[String]) -> Result<(), TunError> {
    let args = windows::route_args("delete", net, via);
    run(
        "netsh",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .map(drop)
}

#[cfg(windows)]
fn route(action: RouteAction, device: &str, net: IpNet) -> Result<(), TunError> {
    let verb = match action {
        RouteAction::Add => "add",
        RouteAction::Delete => "delete",
    };
    let args = windows::route_args(verb, net, &[format!("interface={device}")]);
    match run(
        "netsh",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ) {
        // `add` of a route that exists: what `ip route replace` would leave.
        Err(TunError::Command { stderr, .. })
            if matches!(action, RouteAction::Add) && stderr.contains("already exists") =>
        {
            Ok(())
        }
        other => other.map(drop),
    }
}

/// Windows' route commands, built apart from running them so that tests check them.
#[cfg_attr(not(windows), allow(dead_code))]
pub(crate) mod windows {
    use ipnet::IpNet;

    /// `netsh interface ipv4|ipv6 VERB route prefix=NET` and the words after (the
    /// interface, the next hop), only for this boot (`store=active`).
    pub(crate) fn route_args(verb: &str, net: IpNet, via: &[String]) -> Vec<String> {
        let family = if net.addr().is_ipv4() { "ipv4" } else { "ipv6" };
        let mut args = vec![
            "interface".to_owned(),
            family.to_owned(),
            verb.to_owned(),
            "route".to_owned(),
            format!("prefix={}", net.trunc()),
        ];
        args.extend(via.iter().cloned());
        args.push("store=active".to_owned());
        args
    }

    /// A PowerShell line printing `INTERFACE_INDEX NEXT_HOP` of the route to `dest`.
    pub(crate) fn find_route_script(dest: std::net::IpAddr) -> String {
        format!(
            "$r = Find-NetRoute -RemoteIPAddress '{dest}' | Where-Object NextHop | \
             Select-Object -First 1; if ($r) {{ \"$($r.InterfaceIndex) $($r.NextHop)\" }}"
        )
    }

    /// `interface=INDEX nexthop=GATEWAY` from [`find_route_script`]'s output (an on-link
    /// route, next hop `0.0.0.0` or `::`, has no `nexthop`).
    pub(crate) fn parse_found_route(out: &str) -> Option<Vec<String>> {
        let mut words = out.split_whitespace();
        let index: u32 = words.next()?.parse().ok()?;
        let hop: std::net::IpAddr = words.next()?.parse().ok()?;
        let mut via = vec![format!("interface={index}")];
        if !hop.is_unspecified() {
            via.push(format!("nexthop={hop}"));
        }
        Some(via)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn route_commands() {
            let net: IpNet = "10.1.2.3/8".parse().unwrap();
            assert_eq!(
                route_args("add", net, &["interface=slopn0".into()]).join(" "),
                "interface ipv4 add route prefix=10.0.0.0/8 interface=slopn0 store=active"
            );
            let net: IpNet = "::/1".parse().unwrap();
            assert_eq!(
                route_args(
                    "delete",
                    net,
                    &["interface=12".into(), "nexthop=fe80::1".into()]
                )
                .join(" "),
                "interface ipv6 delete route prefix=::/1 interface=12 nexthop=fe80::1 \
                 store=active"
            );
        }

        #[test]
        fn found_routes() {
            assert_eq!(
                parse_found_route("12 192.168.1.1\r\n").unwrap(),
                ["interface=12", "nexthop=192.168.1.1"]
            );
            assert_eq!(parse_found_route("7 0.0.0.0").unwrap(), ["interface=7"]);
            for bad in ["", "x 1.2.3.4", "12", "12 nowhere"] {
                assert_eq!(parse_found_route(bad), None, "{bad}");
            }
            assert!(
                find_route_script("203.0.113.9".parse().unwrap())
                    .contains("Find-NetRoute -RemoteIPAddress '203.0.113.9'")
            );
        }
    }
}
