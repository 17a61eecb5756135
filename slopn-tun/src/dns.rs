//! DNS servers for the tunnel device: through systemd-resolved (on Windows `netsh`), or
//! written into `/etc/resolv.conf` where there is no systemd-resolved.

#[cfg(not(windows))]
use std::io;
use std::net::IpAddr;
use std::path::Path;

use tracing::{info, warn};

use crate::resolv_conf::{self, RESOLV_CONF};
use crate::{TunError, run};

/// How the servers a hub pushes reach the system's resolver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DnsMethod {
    /// Per device, through systemd-resolved (`resolvectl dns`); on Windows `netsh`. The
    /// servers go with the device.
    #[default]
    System,
    /// Written into `/etc/resolv.conf` while the tunnel is up, the file's own text kept in
    /// it and put back when the tunnel ends (or, after a crash, by
    /// [`restore_resolv_conf`]). For systems without systemd-resolved.
    ResolvConf,
    /// Pushed servers are ignored.
    Off,
}

/// The DNS servers of one tunnel device, set by the method chosen. Dropping it puts back
/// `/etc/resolv.conf` if it wrote that file.
#[derive(Debug)]
pub struct Dns {
    device: String,
    method: DnsMethod,
    /// Whether `/etc/resolv.conf` holds this tunnel's servers.
    wrote_resolv_conf: bool,
}

impl Dns {
    /// The DNS servers of `device`, none set yet.
    pub fn new(device: &str, method: DnsMethod) -> Self {
        Self {
            device: device.to_owned(),
            method,
            wrote_resolv_conf: false,
        }
    }

    /// Points the resolver at `servers` (none: the resolver as it was, where that can be
    /// told).
    pub fn set(&mut self, servers: &[IpAddr]) -> Result<(), TunError> {
        match self.method {
            DnsMethod::Off => Ok(()),
            DnsMethod::System => set_dns(&self.device, servers),
            DnsMethod::ResolvConf => {
                resolv_conf::set(Path::new(RESOLV_CONF), &self.device, servers)?;
                self.wrote_resolv_conf = !servers.is_empty();
                if !servers.is_empty() {
                    info!(?servers, file = RESOLV_CONF, "DNS servers set");
                }
                Ok(())
            }
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        if self.wrote_resolv_conf {
            match restore_resolv_conf() {
                Ok(_) => info!(file = RESOLV_CONF, "DNS servers put back"),
                Err(e) => warn!("{e}"),
            }
        }
    }
}

/// Puts back `/etc/resolv.conf` as it was before a spoke wrote its servers into it (one
/// that crashed, or ended without putting it back). Whether there was anything to put back.
pub fn restore_resolv_conf() -> Result<bool, TunError> {
    resolv_conf::restore(Path::new(RESOLV_CONF))
}

/// Points Windows' resolver at `servers` for the adapter `device` (`netsh interface ipv4|ipv6
/// set|add dnsservers`, not registered in DNS, not validated by a probe).
#[cfg(windows)]
fn set_dns(device: &str, servers: &[IpAddr]) -> Result<(), TunError> {
    for args in windows_commands(device, servers) {
        run(
            "netsh",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )?;
    }
    if !servers.is_empty() {
        info!(?servers, "DNS servers set");
    }
    Ok(())
}

/// Points the system resolver at `servers` for `device` (`resolvectl dns`). Nothing to do
/// for an empty list. Like every command here, it is killed after
/// [`COMMAND_TIMEOUT`](crate::COMMAND_TIMEOUT) (a stuck D-Bus).
#[cfg(not(windows))]
fn set_dns(device: &str, servers: &[IpAddr]) -> Result<(), TunError> {
    if servers.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
    let mut args = vec!["dns", device];
    args.extend(list.iter().map(String::as_str));
    match run("resolvectl", &args) {
        Ok(_) => {
            info!(servers = ?list, "DNS servers set");
            Ok(())
        }
        Err(TunError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Err(TunError::Io {
                what: "running resolvectl (systemd-resolved is not available: set dns_method \
                       = \"resolv.conf\" in the spoke file to have the pushed servers written \
                       into /etc/resolv.conf)"
                    .into(),
                source,
            })
        }
        Err(e) => Err(e),
    }
}

/// The `netsh` argument lists that set `servers` on `device`, per family: the first with
/// `set` (replacing what was there), the next with `add`.
#[cfg_attr(not(windows), allow(dead_code))]
fn windows_commands(device: &str, servers: &[IpAddr]) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for v4 in [true, false] {
        let family = if v4 { "ipv4" } else { "ipv6" };
        let of_family = servers.iter().filter(|s| s.is_ipv4() == v4);
        for (i, server) in of_family.enumerate() {
            let mut args: Vec<String> = ["interface", family]
                .into_iter()
                .map(str::to_owned)
                .collect();
            if i == 0 {
                args.extend([
                    "set".into(),
                    "dnsservers".into(),
                    format!("name={device}"),
                    "source=static".into(),
                    format!("address={server}"),
                    "register=none".into(),
                ]);
            } else {
                args.extend([
                    "add".into(),
                    "dnsservers".into(),
                    format!("name={device}"),
                    format!("address={server}"),
                    format!("index={}", i + 1),
                ]);
            }
            args.push("validate=no".into());
            commands.push(args);
        }
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_dns_commands() {
        let servers: Vec<IpAddr> = ["10.0.0.53", "fd00::53", "10.0.0.54"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let lines: Vec<String> = windows_commands("slopn0", &servers)
            .iter()
            .map(|a| a.join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                "interface ipv4 set dnsservers name=slopn0 source=static address=10.0.0.53 \
                 register=none validate=no",
                "interface ipv4 add dnsservers name=slopn0 address=10.0.0.54 index=2 validate=no",
                "interface ipv6 set dnsservers name=slopn0 source=static address=fd00::53 \
                 register=none validate=no",
            ]
        );
        assert!(windows_commands("slopn0", &[]).is_empty());
    }
}
