//! DNS servers for the tunnel device, through systemd-resolved.

use std::io;
use std::net::IpAddr;

use tracing::info;

use crate::{TunError, run};

/// Points the system resolver at `servers` for `device` (`resolvectl dns`). Nothing to do
/// for an empty list. Like every command here, it is killed after
/// [`COMMAND_TIMEOUT`](crate::COMMAND_TIMEOUT) (a stuck D-Bus).
pub fn set_dns(device: &str, servers: &[IpAddr]) -> Result<(), TunError> {
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
                what: "running resolvectl (systemd-resolved is not available: configure the \
                       pushed DNS servers in /etc/resolv.conf if wanted)"
                    .into(),
                source,
            })
        }
        Err(e) => Err(e),
    }
}
