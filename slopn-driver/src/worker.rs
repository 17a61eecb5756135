//! The helper thread that carries out OS actions, so that the datapath never waits for
//! `ip`, netlink or D-Bus. One per loop; it owns the routes, and removes them when the loop
//! finishes, before the TUN device goes.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use ipnet::IpNet;
use slopn_tun::{Routes, TunControl, TunError};
use tracing::{debug, info, warn};

use crate::os::{OsAction, OsFailure, OsReport};
use crate::remote::Wake;

/// The loop's side of the helper thread.
pub(crate) struct Worker {
    actions: Option<Sender<(u64, OsAction)>>,
    reports: Receiver<OsReport>,
    thread: Option<JoinHandle<()>>,
    next_id: u64,
}

impl Worker {
    /// Starts the thread. It runs in the network namespace of the calling thread (new
    /// threads inherit it), which is where the device and its routes live. `wake` is called
    /// after each report.
    pub(crate) fn spawn(control: TunControl, wake: Arc<dyn Wake>) -> io::Result<Self> {
        let (actions, queue) = mpsc::channel();
        let (reporter, reports) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("slopn-os".into())
            .spawn(move || run(control, queue, reporter, wake))?;
        Ok(Self {
            actions: Some(actions),
            reports,
            thread: Some(thread),
            next_id: 0,
        })
    }

    /// Queues an action; returns its number (its report carries it).
    pub(crate) fn submit(&mut self, action: OsAction) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(actions) = &self.actions {
            // A thread that is gone has nothing left to configure; its end is reported by
            // `finish`.
            let _ = actions.send((id, action));
        }
        id
    }

    /// How many actions were queued so far.
    pub(crate) fn queued(&self) -> u64 {
        self.next_id
    }

    /// A report that came in, if any.
    pub(crate) fn try_report(&self) -> Option<OsReport> {
        self.reports.try_recv().ok()
    }

    /// Lets the thread carry out what is queued, remove the routes and end; waits for it.
    pub(crate) fn finish(&mut self) {
        self.actions = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the OS helper thread panicked; routes may be left behind");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.finish();
    }
}

fn run(
    mut control: TunControl,
    queue: Receiver<(u64, OsAction)>,
    reporter: Sender<OsReport>,
    wake: Arc<dyn Wake>,
) {
    let mut routes = Routes::new(control.name());
    for (id, action) in queue {
        let result = carry_out(&action, &mut control, &mut routes);
        debug!(id, %action, ok = result.is_ok(), "OS action done");
        if reporter.send(OsReport { id, result }).is_ok() {
            wake.wake();
        }
    }
    // The routes go before the device: dropping them deletes them.
    drop(routes);
}

fn carry_out(
    action: &OsAction,
    control: &mut TunControl,
    routes: &mut Routes,
) -> Result<(), OsFailure> {
    let failure = |errors: Vec<TunError>, fatal| OsFailure {
        action: action.to_string(),
        errors,
        fatal,
    };
    match action {
        OsAction::SetMtu(mtu) => control.set_mtu(*mtu).map_err(|e| failure(vec![e], true)),
        OsAction::SetAddresses(addresses) => control
            .set_addresses(addresses)
            .map_err(|e| failure(vec![e], true)),
        OsAction::SetRoutes {
            tunnel,
            other,
            bypass,
        } => {
            // The hub stays reachable outside the tunnel before a default route points into it.
            routes
                .set_bypass(*bypass)
                .map_err(|e| failure(vec![e], true))?;
            let all: Vec<IpNet> = tunnel.iter().chain(other).copied().collect();
            let failed = routes.set(&all);
            if failed.is_empty() {
                return Ok(());
            }
            let fatal = failed
                .iter()
                .any(|(net, _)| tunnel.iter().any(|t| t.trunc() == *net));
            Err(failure(failed.into_iter().map(|(_, e)| e).collect(), fatal))
        }
        OsAction::SetDns(servers) => {
            set_dns(control.name(), servers).map_err(|e| failure(vec![e], false))
        }
    }
}

/// Points the system resolver at `servers` for the tunnel device through systemd-resolved.
fn set_dns(device: &str, servers: &[IpAddr]) -> Result<(), TunError> {
    if servers.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
    let output = std::process::Command::new("resolvectl")
        .arg("dns")
        .arg(device)
        .args(&list)
        .output();
    match output {
        Ok(out) if out.status.success() => {
            info!(servers = ?list, "DNS servers set");
            Ok(())
        }
        Ok(out) => Err(TunError::Command {
            command: format!("resolvectl dns {device} {}", list.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }),
        Err(e) => Err(TunError::Io {
            what: "running resolvectl (systemd-resolved is not available: configure the \
                   pushed DNS servers in /etc/resolv.conf if wanted)"
                .into(),
            source: e,
        }),
    }
}
