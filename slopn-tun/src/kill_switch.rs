//! The spoke's kill switch: an nftables table of its own (`inet slopn_ks_<device>`) whose
//! output chain lets out only the tunnel device, the hub's endpoint, loopback, DHCP and
//! IPv6 neighbour discovery on the link, and networks the user allows (the LAN); every
//! other packet this host sends is dropped, IPv4 and IPv6. Nothing else of the host's
//! ruleset is touched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use tracing::{debug, warn};

use crate::{TunError, run, run_with_input};

/// An installed kill switch. Dropping it deletes the table, unless it was
/// [locked](Self::lock): then the table outlives the process (lockdown) until
/// [`KillSwitch::remove`] (`spoke unlock`, a disconnect through the service).
#[derive(Debug)]
pub struct KillSwitch {
    table: String,
    /// Marks the table as this install's (its comment), so that dropping a replaced
    /// kill switch leaves the table that replaced it alone.
    owner: String,
    locked: bool,
}

impl KillSwitch {
    /// Installs the table for TUN device `tun`, letting out only what goes into `tun`,
    /// to `hub` (UDP), to loopback, DHCP and neighbour discovery, and to `allow`. A table
    /// left by an earlier run is replaced in the same transaction: there is no moment
    /// without one.
    pub fn install(tun: &str, hub: SocketAddr, allow: &[IpNet]) -> Result<Self, TunError> {
        static INSTALLS: AtomicU64 = AtomicU64::new(0);
        let table = table_name(tun);
        let owner = format!(
            "slopn {} {}",
            std::process::id(),
            INSTALLS.fetch_add(1, Ordering::Relaxed)
        );
        let ruleset = ruleset(&table, &owner, tun, hub, allow);
        run_with_input("nft", &["-f", "-"], &ruleset)?;
        debug!(%table, %hub, "kill switch on");
        Ok(Self {
            table,
            owner,
            locked: false,
        })
    }

    /// Keeps the table when this value is dropped or the process dies (lockdown).
    pub fn lock(&mut self) {
        self.locked = true;
    }

    /// The nftables table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Deletes the kill switch of device `tun`, locked or left by a dead process: whether
    /// there was one.
    pub fn remove(tun: &str) -> Result<bool, TunError> {
        let table = table_name(tun);
        if run("nft", &["list", "table", "inet", &table]).is_err() {
            return Ok(false);
        }
        run("nft", &["delete", "table", "inet", &table])?;
        Ok(true)
    }
}

impl Drop for KillSwitch {
    fn drop(&mut self) {
        if self.locked {
            debug!(table = %self.table, "kill switch kept (lockdown)");
            return;
        }
        // Replaced by a later install (the next profile's tunnel): not ours to remove.
        let ours = run("nft", &["list", "table", "inet", &self.table])
            .is_ok_and(|t| t.contains(&format!("comment \"{}\"", self.owner)));
        if ours && let Err(e) = run("nft", &["delete", "table", "inet", &self.table]) {
            warn!(table = %self.table, error = %e, "could not remove the kill switch");
        }
    }
}

/// `slopn_ks_` and the device name with anything but letters and digits replaced.
fn table_name(tun: &str) -> String {
    crate::gateway::nft_table_name("slopn_ks_", tun)
}

/// The nft script: create-delete-create, so that a stale table is replaced atomically.
fn ruleset(table: &str, owner: &str, tun: &str, hub: SocketAddr, allow: &[IpNet]) -> String {
    let hub_family = if hub.is_ipv4() { "ip" } else { "ip6" };
    let mut allowed = String::new();
    for net in allow {
        let family = if net.addr().is_ipv4() { "ip" } else { "ip6" };
        allowed += &format!("        {family} daddr {} accept\n", net.trunc());
    }
    format!(
        "add table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \x20   comment \"{owner}\"\n\
         \x20   counter blocked {{}}\n\
         \x20   chain output {{\n\
         \x20       type filter hook output priority filter; policy drop;\n\
         \x20       oifname \"lo\" accept\n\
         \x20       oifname \"{tun}\" accept\n\
         \x20       {hub_family} daddr {} udp dport {} accept\n\
         \x20       udp sport 68 udp dport 67 accept\n\
         \x20       udp sport 546 udp dport 547 accept\n\
         \x20       icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld2-listener-report }} accept\n\
         {allowed}\
         \x20       counter name \"blocked\" drop\n\
         \x20   }}\n\
         }}\n",
        hub.ip(),
        hub.port()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lets_out_the_tunnel_the_hub_and_the_allowed_only() {
        let rules = ruleset(
            "slopn_ks_slopn0",
            "slopn 7 0",
            "slopn0",
            "[2001:db8::7]:4433".parse().unwrap(),
            &["192.168.1.0/24".parse().unwrap()],
        );
        assert!(
            rules
                .starts_with("add table inet slopn_ks_slopn0\ndelete table inet slopn_ks_slopn0\n")
        );
        for line in [
            "comment \"slopn 7 0\"",
            "policy drop;",
            "oifname \"slopn0\" accept",
            "ip6 daddr 2001:db8::7 udp dport 4433 accept",
            "ip daddr 192.168.1.0/24 accept",
            "counter name \"blocked\" drop",
        ] {
            assert!(rules.contains(line), "{line}: {rules}");
        }
        assert_eq!(table_name("slopn-0"), "slopn_ks_slopn_0");
    }
}
