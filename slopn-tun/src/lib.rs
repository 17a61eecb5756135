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
//! - [`Routes`]: routes through the device, installed through netlink in one batch per
//!   change and removed on drop, and the host route that keeps the hub reachable outside a
//!   full tunnel.
//! - [`Dns`]: the resolver servers for the device, through systemd-resolved, or written
//!   into `/etc/resolv.conf` where there is none (put back on drop).
//! - [`KillSwitch`]: the spoke's kill switch — an nftables table that lets out only the
//!   tunnel, the hub and what the user allows.
//! - [`Gateway`]: the hub's gateway mode — forwarding and NAT in an nftables table of its own.
//! - [`netns`]: network namespaces and veth pairs, for SloPN's tests, demo and benchmarks.
//!
//! Errors say what is wrong and what to do ([`TunError`]). Every command run is killed
//! after [`COMMAND_TIMEOUT`]. macOS (`utun`) goes through the same
//! tun-rs API but is untested; routes there use `route(8)`.

mod device;
mod dns;
#[cfg(unix)]
mod gateway;
#[cfg(unix)]
mod kill_switch;
#[cfg(target_os = "linux")]
mod netlink;
#[cfg(unix)]
pub mod netns;
mod offload;
mod resolv_conf;
mod routes;
#[cfg(windows)]
mod wintun_reader;

pub use device::{Tun, TunConfig, TunControl};
pub use dns::{Dns, DnsMethod, restore_resolv_conf};
#[cfg(unix)]
pub use gateway::{Gateway, default_uplink};
#[cfg(unix)]
pub use kill_switch::KillSwitch;
pub use routes::Routes;
#[cfg(windows)]
pub use wintun_reader::WakeFn;

use std::io;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Why a TUN device or a route could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    /// Creating TUN devices needs privileges.
    #[cfg_attr(
        unix,
        error(
            "permission denied: creating a TUN device needs root or the CAP_NET_ADMIN \
             capability (run as root, or grant it: setcap cap_net_admin+ep <binary>)"
        )
    )]
    #[cfg_attr(
        windows,
        error(
            "permission denied: creating a Wintun adapter needs an administrator (run the \
             SloPN service, or an elevated prompt)"
        )
    )]
    PermissionDenied,
    /// The system offers no TUN driver here.
    #[cfg_attr(
        unix,
        error(
            "/dev/net/tun is missing: load the kernel module (modprobe tun) or, in a \
             container, pass the device in (docker run --device /dev/net/tun --cap-add \
             NET_ADMIN)"
        )
    )]
    #[cfg_attr(
        windows,
        error(
            "wintun.dll could not be loaded: put it beside spoke.exe (download it from \
             https://www.wintun.net and take the amd64 DLL)"
        )
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
    /// A configuration command did not end within its time, and was killed.
    #[error("`{command}` gave no answer within {timeout:?} and was stopped")]
    TimedOut {
        /// The command line.
        command: String,
        /// How long it was given.
        timeout: Duration,
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

/// How long a configuration command (`ip`, `nft`, `resolvectl`) may take before it is
/// killed: a stuck netlink or D-Bus peer must not hold up the tunnel.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a command, failing with its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, TunError> {
    run_with_input(program, args, "")
}

/// Runs a command with `input` on its stdin, failing with its stderr; kills it after
/// [`COMMAND_TIMEOUT`].
pub(crate) fn run_with_input(
    program: &str,
    args: &[&str],
    input: &str,
) -> Result<String, TunError> {
    run_within(program, args, input, COMMAND_TIMEOUT)
}

fn run_within(
    program: &str,
    args: &[&str],
    input: &str,
    timeout: Duration,
) -> Result<String, TunError> {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let deadline = Instant::now() + timeout;
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
    // Both pipes are read on threads of their own, so that a full pipe cannot stall the
    // command while this thread keeps the time.
    let (tx, rx) = mpsc::channel();
    let pipes: [(bool, Option<Box<dyn Read + Send>>); 2] = [
        (true, child.stdout.take().map(|p| Box::new(p) as _)),
        (false, child.stderr.take().map(|p| Box::new(p) as _)),
    ];
    for (is_stdout, pipe) in pipes {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            let _ = tx.send((is_stdout, bytes));
        });
    }
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let mut status = None;
    for _ in 0..2 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((true, bytes)) => stdout = bytes,
            Ok((false, bytes)) => stderr = bytes,
            Err(_) => break,
        }
    }
    // Its pipes closed, the command has ended or is about to.
    while status.is_none() && Instant::now() < deadline {
        status = child
            .try_wait()
            .map_err(|e| TunError::io(format!("running `{command}`"), e))?;
        if status.is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(TunError::TimedOut { command, timeout });
    };
    if !status.success() {
        return Err(TunError::Command {
            command,
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_command_that_hangs_is_killed_after_the_timeout() {
        let start = Instant::now();
        let e = run_within("sleep", &["10"], "", Duration::from_millis(200)).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(
            e.to_string(),
            "`sleep 10` gave no answer within 200ms and was stopped"
        );
    }

    #[cfg(windows)]
    #[test]
    fn a_windows_command_answers_with_its_output_or_its_error() {
        assert_eq!(run("cmd", &["/c", "echo hello"]).unwrap().trim(), "hello");
        let e = run("cmd", &["/c", "exit 1"]).unwrap_err();
        assert!(matches!(e, TunError::Command { .. }), "{e}");
        let e = run("no-such-program-slopn", &[]).unwrap_err();
        assert!(matches!(e, TunError::Io { .. }), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_command_answers_with_its_output_or_its_error() {
        assert_eq!(run("echo", &["hello"]).unwrap(), "hello\n");
        let e = run_with_input("sh", &["-c", "cat >&2; exit 1"], "refused").unwrap_err();
        assert_eq!(e.to_string(), "`sh -c cat >&2; exit 1` failed: refused");
    }
}
