//! Gateway mode on the hub: IP forwarding, and NAT in an nftables table of SloPN's own.

use std::path::PathBuf;

use ipnet::IpNet;
use tracing::{debug, warn};

use crate::{TunError, run, run_with_input};

/// IP forwarding switched on and an nftables table (`inet slopn_<device>`) that
/// masquerades the pools' traffic leaving the uplink and lets only replies back in towards
/// the spokes. Nothing else of the host's ruleset is touched. Dropping it deletes the table
/// and restores the forwarding settings; a table left by a crashed run is replaced when the
/// next run installs its own.
#[derive(Debug)]
pub struct Gateway {
    table: String,
    restore: Vec<(PathBuf, String)>,
}

impl Gateway {
    /// Installs NAT for `pools` from TUN device `tun` out of `uplink`.
    pub fn install(tun: &str, uplink: &str, pools: &[IpNet]) -> Result<Self, TunError> {
        let table = table_name(tun);
        let mut nat = String::new();
        for pool in pools {
            let family = if pool.addr().is_ipv4() { "ip" } else { "ip6" };
            nat += &format!(
                "        oifname \"{uplink}\" {family} saddr {} masquerade\n",
                pool.trunc()
            );
        }
        let ruleset = format!(
            "table inet {table} {{\n\
             \x20   chain postrouting {{\n\
             \x20       type nat hook postrouting priority srcnat; policy accept;\n\
             {nat}\
             \x20   }}\n\
             \x20   chain forward {{\n\
             \x20       type filter hook forward priority filter; policy accept;\n\
             \x20       iifname \"{tun}\" oifname \"{uplink}\" accept\n\
             \x20       iifname \"{uplink}\" oifname \"{tun}\" ct state established,related accept\n\
             \x20       iifname \"{uplink}\" oifname \"{tun}\" drop\n\
             \x20   }}\n\
             }}\n"
        );
        // A stale table of a crashed run goes first.
        let _ = run("nft", &["delete", "table", "inet", &table]);
        run_with_input("nft", &["-f", "-"], &ruleset)?;
        let mut gateway = Self {
            table,
            restore: Vec::new(),
        };
        gateway.set_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        if pools.iter().any(|p| p.addr().is_ipv6()) {
            gateway.set_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")?;
        }
        debug!(table = %gateway.table, %uplink, "gateway installed");
        Ok(gateway)
    }

    /// The nftables table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn set_sysctl(&mut self, path: &str, value: &str) -> Result<(), TunError> {
        let old = std::fs::read_to_string(path)
            .map_err(|e| TunError::io(format!("reading {path}"), e))?
            .trim()
            .to_owned();
        if old != value {
            std::fs::write(path, value).map_err(|e| TunError::io(format!("writing {path}"), e))?;
            self.restore.push((path.into(), old));
        }
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Err(e) = run("nft", &["delete", "table", "inet", &self.table]) {
            warn!(table = %self.table, error = %e, "could not remove the nftables table");
        }
        for (path, value) in self.restore.drain(..) {
            if let Err(e) = std::fs::write(&path, &value) {
                warn!(path = %path.display(), error = %e, "could not restore");
            }
        }
    }
}

/// `slopn_` and the device name with anything but letters and digits replaced.
fn table_name(tun: &str) -> String {
    nft_table_name("slopn_", tun)
}

/// `prefix` and the device name with anything but letters and digits replaced: a name
/// nftables takes.
pub(crate) fn nft_table_name(prefix: &str, tun: &str) -> String {
    let clean: String = tun
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}{clean}")
}

/// The interface of the IPv4 default route: the uplink when none is configured.
pub fn default_uplink() -> Result<String, TunError> {
    let routes = run("ip", &["-o", "-4", "route", "show", "default"])?;
    routes
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| TunError::Command {
            command: "ip -4 route show default".into(),
            stderr: "no default route: set `uplink` in the hub configuration".into(),
        })
}
