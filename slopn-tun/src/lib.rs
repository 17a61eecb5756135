//! SloPN's TUN devices and operating-system network configuration.
//!
//! - [`Tun`]: a Linux TUN device opened through [`tun-rs`](https://docs.rs/tun-rs), set
//!   non-blocking, with its addresses, MTU and link state configured through ioctls and
//!   netlink rather than by shelling out. tun-rs also offers multi-queue devices and the
//!   kernel's GSO/GRO offload (`IFF_VNET_HDR`), which SloPN's performance work builds on.
//!   The device disappears when the [`Tun`] is dropped or the process exits, whatever the
//!   reason, and the kernel removes every route through it. A [`TunControl`] changes its
//!   MTU and addresses from another thread, so that the thread moving packets never waits
//!   on netlink.
//! - [`Routes`]: routes through the device, installed with `ip route` and removed on drop,
//!   and the host route that keeps the hub reachable outside a full tunnel.
//! - [`Gateway`]: the hub's gateway mode — forwarding and NAT in an nftables table of its own.
//! - [`netns`]: network namespaces and veth pairs, for SloPN's tests, demo and benchmarks.
//!
//! Errors say what is wrong and what to do ([`TunError`]). macOS (`utun`) goes through the same
//! tun-rs API but is untested; routes there use `route(8)`.

mod device;
mod gateway;
pub mod netns;
mod offload;
mod routes;

pub use device::{Tun, TunConfig, TunControl};
pub use gateway::{Gateway, default_uplink};
pub use routes::Routes;

use std::io;

/// Why a TUN device or a route could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// Creating TUN devices needs privileges.
    #[error(
        "permission denied: creating a TUN device needs root or the CAP_NET_ADMIN capability \
         (run as root, or grant it: setcap cap_net_admin+ep <binary>)"
    )]
    PermissionDenied,
    /// The kernel offers no TUN driver here.
    #[error(
        "/dev/net/tun is missing: load the kernel module (modprobe tun) or, in a container, \
         pass the device in (docker run --device /dev/net/tun --cap-add NET_ADMIN)"
    )]
    NoTunDevice,
    /// Another interface has the name.
    #[error("the interface name {0:?} is already in use: pick another name or stop its owner")]
    NameInUse(String),
    /// The name is not a valid interface name.
    #[error("invalid interface name {0:?}: use 1 to 15 characters without '/', ':' or spaces")]
    BadName(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A configuration command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

impl TunError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Runs a command, failing with its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, TunError> {
    run_with_input(program, args, "")
}

/// Runs a command with `input` on its stdin, failing with its stderr.
pub(crate) fn run_with_input(
    program: &str,
    args: &[&str],
    input: &str,
) -> Result<String, TunError> {
    use std::io::Write;
    use std::process::Stdio;
    let command = format!("{program} {}", args.join(" "));
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| TunError::io(format!("running `{command}`"), e))?;
    if let Some(mut stdin) = child.stdin.take()
        && !input.is_empty()
    {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| TunError::io(format!("writing to `{command}`"), e))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| TunError::io(format!("running `{command}`"), e))?;
    if !output.status.success() {
        return Err(TunError::Command {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
