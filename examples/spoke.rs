//! The SloPN spoke.
//!
//! ```text
//! spoke run --config /etc/slopn/spoke.toml      # one configuration, until stopped
//! spoke service                                  # the desktop client's privileged half
//! spoke import work spoke.toml; spoke connect work
//! spoke status; spoke logs --follow; spoke disconnect
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slopn::cli::explain;
use slopn::control::{
    Client, ClientError, LogLine, ProfileSummary, Request, Role, SpokeStatus, TunnelState,
};
use slopn::say;
use slopn::service::{self, ServiceOptions};

/// SloPN spoke: connects to a hub, gets a tunnel address and carries this host's packets.
/// It reconnects by itself when the hub goes away. Logs go to stderr; set RUST_LOG for more.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the spoke from one configuration file (needs root or CAP_NET_ADMIN for its TUN
    /// device). SIGINT or SIGTERM says goodbye to the hub and removes the TUN device and
    /// routes.
    Run {
        /// The spoke configuration (as written by `hub add-spoke`).
        #[arg(long, default_value = "/etc/slopn/spoke.toml")]
        config: PathBuf,
    },
    /// Run the spoke service: no tunnel until a client (the desktop app, `spoke connect`)
    /// asks for one; profiles are imported over the control socket. Runs as root (or with
    /// CAP_NET_ADMIN), normally from systemd (slopn-spoke.service); on Windows as a
    /// service (`spoke service install`).
    Service {
        /// Install or remove the Windows service (on Linux the package's systemd unit does
        /// this).
        #[command(subcommand)]
        action: Option<ServiceAction>,
        /// The control socket (mode 0660 and group --group if that group exists, else 0600;
        /// on Windows a named pipe).
        #[arg(long, global = true, default_value = slopn::control::SPOKE_SOCKET)]
        socket: PathBuf,
        /// Where profiles are kept (created for the owner only).
        #[arg(long, global = true, default_value = service::PROFILES)]
        profiles: PathBuf,
        /// The group whose members may use the socket.
        #[cfg(unix)]
        #[arg(long, global = true, default_value = service::GROUP)]
        group: String,
        /// An account allowed to use the pipe besides SYSTEM and the Administrators, by
        /// security identifier (`S-1-5-21-…`); `install` adds the user running it.
        #[cfg(windows)]
        #[arg(long = "allow-user", global = true, value_name = "SID")]
        users: Vec<String>,
        /// Run under the service control manager (what `install` registers).
        #[cfg(windows)]
        #[arg(long, hide = true)]
        windows_service: bool,
        /// Serve Prometheus metrics of the tunnel at this address (`GET /metrics`), e.g.
        /// 127.0.0.1:9465; off by default.
        #[arg(long, global = true, value_name = "ADDR")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Show the tunnel: state, addresses, RTT, bytes and rates each way, drops.
    Status {
        #[command(flatten)]
        socket: Socket,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
        /// Keep printing events as they happen.
        #[arg(long)]
        watch: bool,
    },
    /// Connect now. The service needs a profile (default: the one it used last); `spoke run`
    /// skips any reconnect delay.
    Connect {
        /// The profile to connect (spoke service).
        profile: Option<String>,
        #[command(flatten)]
        socket: Socket,
    },
    /// Say goodbye to the hub. The service also removes the TUN device, routes and DNS;
    /// `spoke run` keeps them and waits for `connect`.
    Disconnect {
        #[command(flatten)]
        socket: Socket,
    },
    /// List the service's profiles.
    Profiles {
        #[command(flatten)]
        socket: Socket,
    },
    /// Give the service a spoke file (as `hub add-spoke` wrote it) as profile NAME.
    Import {
        /// The profile's name.
        name: String,
        /// The spoke file (read by this command, as you).
        file: PathBuf,
        #[command(flatten)]
        socket: Socket,
    },
    /// Turn the kill switch of one of the service's profiles on or off (applied at once if
    /// it is connected). Full-tunnel profiles only.
    KillSwitch {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// The profile's name.
        profile: String,
        #[command(flatten)]
        socket: Socket,
    },
    /// Delete one of the service's profiles.
    Remove {
        /// The profile's name.
        name: String,
        #[command(flatten)]
        socket: Socket,
    },
    /// Remove the kill switch that lockdown kept after the spoke ended (or that a crashed
    /// spoke left): traffic leaves normally again. Needs root.
    Unlock {
        /// The spoke's TUN device (`tun_name` in its file).
        #[arg(long, default_value = "slopn0")]
        tun: String,
    },
    /// Show the recent log lines of the spoke (or service).
    Logs {
        /// Keep printing new lines as they come.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        socket: Socket,
    },
}

#[derive(Subcommand)]
enum ServiceAction {
    /// Register the service (automatic start) and start it; the user running this may use
    /// its pipe. Needs an elevated prompt.
    Install,
    /// Stop the service and remove it. Needs an elevated prompt.
    Uninstall,
}

#[derive(clap::Args)]
struct Socket {
    /// The control socket of the spoke or the spoke service.
    #[arg(long = "socket", default_value = slopn::control::SPOKE_SOCKET)]
    path: PathBuf,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run { config } => slopn::daemon::run_spoke(&config, slopn::logs::init()),
        Command::Unlock { tun } => unlock(&tun),
        Command::Service {
            action,
            socket,
            profiles,
            #[cfg(unix)]
            group,
            #[cfg(windows)]
            users,
            #[cfg(windows)]
            windows_service,
            metrics_listen,
        } => {
            let options = ServiceOptions {
                socket,
                profiles,
                #[cfg(unix)]
                group,
                #[cfg(windows)]
                users,
                metrics_listen,
            };
            match action {
                #[cfg(windows)]
                Some(ServiceAction::Install) => slopn::win_service::install(&options),
                #[cfg(windows)]
                Some(ServiceAction::Uninstall) => slopn::win_service::uninstall(),
                #[cfg(unix)]
                Some(_) => Err("on Linux the package installs the service as systemd's \
                                slopn-spoke.service: sudo systemctl enable --now slopn-spoke"
                    .into()),
                #[cfg(windows)]
                None if windows_service => {
                    slopn::win_service::run_dispatcher(options, slopn::logs::init())
                }
                None => service::run_service(&options, slopn::logs::init()),
            }
        }
        command => client(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spoke: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The commands that talk to a running spoke or service.
/// Removes the kill switch's table of device `tun` and puts back a resolver file a
/// spoke left.
fn unlock(tun: &str) -> Result<(), String> {
    say!("{}", slopn::kill_switch::unlock(tun)?);
    Ok(())
}

/// Connects to the spoke or the service on `socket`, refusing another program's socket.
fn connect(socket: &Socket) -> Result<Client, ClientError> {
    Client::connect_as(&socket.path, &[Role::Spoke, Role::SpokeService])
}

fn client(command: Command) -> Result<(), String> {
    let simple = |socket: &Socket, request: Request| {
        connect(socket)
            .and_then(|mut c| c.request(&request))
            .map(drop)
            .map_err(|e| explain(&e))
    };
    match command {
        Command::Status {
            socket,
            json,
            watch,
        } => {
            let mut client = connect(&socket).map_err(|e| explain(&e))?;
            let status: serde_json::Value = client
                .request_field(&Request::Status, "status")
                .map_err(|e| explain(&e))?;
            print_status(&status, json);
            if watch {
                let mut events = connect(&socket)
                    .and_then(|c| c.subscribe(&Request::Events))
                    .map_err(|e| explain(&e))?;
                while let Some(event) = events.next_line().map_err(|e| explain(&e))? {
                    say!("{}", serde_json::Value::Object(event));
                }
            }
            Ok(())
        }
        Command::Connect { profile, socket } => simple(&socket, Request::Connect { profile }),
        Command::Disconnect { socket } => simple(&socket, Request::Disconnect { session: None }),
        Command::Profiles { socket } => {
            let profiles: Vec<ProfileSummary> = connect(&socket)
                .and_then(|mut c| c.request_field(&Request::Profiles, "profiles"))
                .map_err(|e| explain(&e))?;
            if profiles.is_empty() {
                say!("no profiles: add one with `spoke import NAME FILE`");
            }
            for p in profiles {
                let tunnel = match (p.full_tunnel, p.kill_switch, p.lockdown) {
                    (false, ..) => "split tunnel",
                    (true, false, _) => "full tunnel",
                    (true, true, false) => "full tunnel, kill switch",
                    (true, true, true) => "full tunnel, kill switch with lockdown",
                };
                say!(
                    "{:<20} {:<32} {} ({}; {tunnel})",
                    p.name,
                    p.hub,
                    p.server_name,
                    p.auth
                );
            }
            Ok(())
        }
        Command::Import { name, file, socket } => {
            let toml = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let answer = connect(&socket)
                .and_then(|mut c| c.request(&Request::Import { name, toml }))
                .map_err(|e| explain(&e))?;
            if let Some(warning) = answer.get("warning").and_then(|w| w.as_str()) {
                eprintln!("spoke: warning: {warning}");
            }
            Ok(())
        }
        Command::Remove { name, socket } => simple(&socket, Request::Remove { name }),
        Command::KillSwitch {
            state,
            profile,
            socket,
        } => simple(
            &socket,
            Request::SetKillSwitch {
                profile,
                on: state == "on",
            },
        ),
        Command::Logs { follow, socket } => {
            let mut logs = connect(&socket)
                .and_then(|c| c.subscribe(&Request::Logs))
                .map_err(|e| explain(&e))?;
            // Past lines arrive at once; when none comes for a moment, the backlog is done.
            if !follow {
                logs.set_timeout(Some(std::time::Duration::from_millis(200)))
                    .map_err(|e| explain(&e))?;
            }
            while let Ok(Some(line)) = logs.next_line() {
                let line: LogLine =
                    serde_json::from_value(serde_json::Value::Object(line)).unwrap_or_default();
                say!("{} {:>5} {}", line.time, line.level, line.message);
            }
            Ok(())
        }
        Command::Run { .. } | Command::Service { .. } | Command::Unlock { .. } => {
            unreachable!("handled in main")
        }
    }
}

fn print_status(value: &serde_json::Value, json: bool) {
    if json {
        say!("{value}");
        return;
    }
    let s: SpokeStatus = serde_json::from_value(value.clone()).unwrap_or_default();
    let mbit = |bytes_per_sec: f64| bytes_per_sec * 8.0 / 1e6;
    // What to do next, where a state calls for it.
    let hint = match s.state {
        TunnelState::Stopped if s.error.is_none() => "  (run `spoke connect` to connect again)",
        TunnelState::Stopped => "  (fix what `error` says, then `spoke connect`)",
        TunnelState::Connecting | TunnelState::Reconnecting => {
            "  (looking for the hub; `spoke logs` says why it is not there yet)"
        }
        TunnelState::Disconnected if s.profile.is_none() => {
            "  (connect a profile: `spoke connect NAME`)"
        }
        _ => "",
    };
    say!("state:     {}{hint}", s.state.name());
    if let Some(silent) = s.hub_silent_secs {
        say!(
            "warning:   nothing heard from the hub for {silent:.1} s: it may be down or the path \
             to it broken (the tunnel reconnects by itself if the silence lasts)"
        );
    }
    if let Some(profile) = &s.profile {
        say!("profile:   {profile}");
    }
    if let Some(error) = &s.error {
        say!("error:     {error}");
    }
    say!("hub:       {}", s.hub);
    say!("identity:  {}", s.identity.as_deref().unwrap_or("-"));
    fn list<T: std::fmt::Display>(items: &[T]) -> String {
        if items.is_empty() {
            return "-".to_owned();
        }
        let items: Vec<String> = items.iter().map(T::to_string).collect();
        items.join(", ")
    }
    say!("addresses: {}", list(&s.addresses));
    say!("routes:    {}", list(&s.routes));
    if !s.dns_servers.is_empty() {
        say!("dns:       {}", list(&s.dns_servers));
    }
    if let Some(group) = &s.key_exchange {
        let kind = if group == "X25519MLKEM768" {
            "post-quantum hybrid"
        } else {
            "classic: not post-quantum"
        };
        say!("key exchange: {group} ({kind})");
    }
    if s.kill_switch {
        say!("kill switch: on (nothing leaves but through the tunnel)");
    }
    // Before a session is up the round trip is quinn's initial guess, not a measurement.
    match s.rtt_ms {
        Some(rtt) if s.state == TunnelState::Established => say!("rtt:       {rtt:.2} ms"),
        _ => say!("rtt:       -"),
    }
    match s.tun_mtu {
        Some(mtu) if s.black_holes > 0 => {
            say!(
                "mtu:       {mtu} (dropped for a black hole {} times)",
                s.black_holes
            )
        }
        Some(mtu) => say!("mtu:       {mtu}"),
        None => say!("mtu:       -"),
    }
    say!(
        "received:  {} B in {} packets ({:.2} Mbit/s)",
        s.rx_bytes,
        s.rx_packets,
        mbit(s.rx_bytes_per_sec)
    );
    say!(
        "sent:      {} B in {} packets ({:.2} Mbit/s)",
        s.tx_bytes,
        s.tx_packets,
        mbit(s.tx_bytes_per_sec)
    );
    let drops: Vec<String> = s
        .drops
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    say!("drops:     {}", list(&drops));
}
