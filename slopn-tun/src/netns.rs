//! Network namespaces and veth pairs for SloPN's tests, demo and benchmarks.
//!
//! Everything here creates its own namespaces (named with a prefix unique to the process,
//! so parallel runs and leftovers never collide) and removes them when dropped; nothing
//! touches the namespace the process started in.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{TunError, run};

/// A network namespace created by this process and deleted when dropped (which also
/// removes its interfaces and kills nothing: stop processes you started in it first).
#[derive(Debug)]
pub struct Namespace {
    name: String,
}

/// A prefix for namespace names unique to this process and call: `slopn-<pid>-<n>`.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "slopn-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Namespace {
    /// Creates the namespace `name` and brings its loopback up.
    pub fn create(name: impl Into<String>) -> Result<Self, TunError> {
        let name = name.into();
        run("ip", &["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `program args...` in the namespace and returns its output; fails on a non-zero exit.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, TunError> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `ip args...` in the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String, TunError> {
        self.run("ip", args)
    }

    /// Moves the calling thread into the namespace (Linux `setns`). Sockets and TUN devices
    /// the thread creates afterwards belong to it.
    #[cfg(target_os = "linux")]
    pub fn enter(&self) -> Result<(), TunError> {
        enter(&self.name)
    }

    /// Connects this namespace to `other` with a veth pair: `here_if` with `here_addr` (an
    /// address with prefix, like `10.0.0.1/24`) on this side, `there_if` with `there_addr` on
    /// the other; both ends up.
    pub fn veth(
        &self,
        here_if: &str,
        here_addr: &str,
        other: &Namespace,
        there_if: &str,
        there_addr: &str,
    ) -> Result<(), TunError> {
        run(
            "ip",
            &[
                "link",
                "add",
                here_if,
                "netns",
                &self.name,
                "type",
                "veth",
                "peer",
                "name",
                there_if,
                "netns",
                &other.name,
            ],
        )?;
        self.ip(&["addr", "add", here_addr, "dev", here_if])?;
        self.ip(&["link", "set", here_if, "up"])?;
        other.ip(&["addr", "add", there_addr, "dev", there_if])?;
        other.ip(&["link", "set", there_if, "up"])?;
        Ok(())
    }
}

/// Moves the calling thread into the namespace named `name` (see [`Namespace::enter`]).
#[cfg(target_os = "linux")]
pub fn enter(name: &str) -> Result<(), TunError> {
    let path = PathBuf::from("/run/netns").join(name);
    let file = std::fs::File::open(&path)
        .map_err(|e| TunError::io(format!("opening {}", path.display()), e))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| TunError::io(format!("entering network namespace {name}"), e.into()))
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Whether a test that needs namespaces and TUN devices can run here; see [`available`].
/// Where it cannot, it prints `SKIPPED test: why` and returns false, except under CI
/// (`CI=true`) or `scripts/test` (`SLOPN_NO_SKIP=1`), where a test that cannot run must
/// fail: it panics with the reason.
pub fn runnable(test: &str) -> bool {
    skip_unless(test, available())
}

/// Like [`runnable`] for any precondition: `Err(why)` skips (or fails under CI).
pub fn skip_unless(test: &str, precondition: Result<(), String>) -> bool {
    match precondition {
        Ok(()) => true,
        Err(why) if skips_forbidden() => panic!(
            "{test} cannot run here ({why}), and under CI=true or SLOPN_NO_SKIP=1 no test may \
             be skipped: run as root on Linux with /dev/net/tun"
        ),
        Err(why) => {
            // Straight to stderr: the test harness captures `eprintln!` of passing tests,
            // and a skip must show (`scripts/test` counts these lines).
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
            false
        }
    }
}

/// Whether a test that cannot run must fail rather than skip: under CI (`CI=true`) and in
/// `scripts/test` (`SLOPN_NO_SKIP=1`).
pub fn skips_forbidden() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("SLOPN_NO_SKIP").is_ok_and(|v| v == "1")
}

/// Whether this process may create namespaces and TUN devices (root on Linux with
/// `/dev/net/tun` and `ip`).
pub fn available() -> Result<(), String> {
    if !cfg!(target_os = "linux") {
        return Err("network namespaces need Linux".into());
    }
    // The effective user ID is the third field of the `Uid:` line.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    if !root {
        return Err("not running as root".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun is missing".into());
    }
    if run("ip", &["-V"]).is_err() {
        return Err("the ip command (iproute2) is missing".into());
    }
    Ok(())
}
