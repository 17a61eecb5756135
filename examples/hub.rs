//! The SloPN hub.
//!
//! ```text
//! hub init --dir /etc/slopn --name hub.example.com --spoke alice --spoke bob
//! hub run --config /etc/slopn/hub.toml
//! hub status
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slopn::cli::explain;
use slopn::config::AuthMode;
use slopn::control::{Client, ClientError, Request, Role};
use slopn::keys::{self, InitOptions};
use slopn::say;

/// SloPN hub: accepts spokes over QUIC, assigns their tunnel addresses and routes their
/// packets. Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a CA, the hub's certificate and key (files 0600), hub.toml and, for each
    /// --spoke, a ready spoke configuration with its own token in DIR/spokes/NAME.toml.
    Init {
        /// Directory to write into; must not hold a hub.toml yet.
        #[arg(long)]
        dir: PathBuf,
        /// The hub's DNS name or IP address as spokes reach it (goes into its certificate).
        #[arg(long)]
        name: String,
        /// UDP port to listen on.
        #[arg(long, default_value_t = 4433)]
        port: u16,
        /// Network to assign spoke addresses from; the hub takes its first address.
        #[arg(long, default_value = "10.100.0.0/24")]
        pool: ipnet::IpNet,
        /// A second network of the other family, for dual stack (e.g. fd00:100::/64).
        #[arg(long)]
        pool6: Option<ipnet::IpNet>,
        /// A spoke to create (repeat for more).
        #[arg(long = "spoke", value_name = "NAME")]
        spokes: Vec<String>,
    },
    /// Add a spoke to DIR/hub.toml and write DIR/spokes/NAME.toml, with a fresh token or a
    /// client certificate from the hub's CA. A running hub picks it up on SIGHUP.
    AddSpoke {
        /// The directory `init` wrote.
        #[arg(long)]
        dir: PathBuf,
        /// How the spoke authenticates: a token, or a certificate (mTLS).
        #[arg(long, value_enum, default_value = "token")]
        auth: Auth,
        /// The spoke's name.
        name: String,
    },
    /// Run the hub (needs root or CAP_NET_ADMIN for its TUN device). SIGINT or SIGTERM says
    /// goodbye to every spoke and removes the TUN device.
    Run {
        /// The hub configuration.
        #[arg(long, default_value = "/etc/slopn/hub.toml")]
        config: PathBuf,
    },
    /// Show a running hub's spokes and counters.
    Status {
        /// The hub's control socket.
        #[arg(long, default_value = "/run/slopn/hub.sock")]
        socket: PathBuf,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// End one spoke's session (it may reconnect).
    Disconnect {
        /// The hub's control socket.
        #[arg(long, default_value = "/run/slopn/hub.sock")]
        socket: PathBuf,
        /// The session number, as `status` shows it.
        session: u64,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Auth {
    Token,
    Certificate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init {
            dir,
            name,
            port,
            pool,
            pool6,
            spokes,
        } => keys::init(&InitOptions {
            dir,
            name,
            port,
            pool,
            pool6,
            spokes,
        })
        .map(|files| {
            for f in files {
                say!("wrote {}", f.display());
            }
        })
        .map_err(|e| e.to_string()),
        Command::AddSpoke { dir, name, auth } => keys::add_spoke(
            &dir,
            &name,
            match auth {
                Auth::Token => AuthMode::Token,
                Auth::Certificate => AuthMode::Certificate,
            },
        )
        .map(|f| {
            say!(
                "wrote {} (copy it to the spoke; it holds its token)",
                f.display()
            )
        })
        .map_err(|e| e.to_string()),
        Command::Run { config } => slopn::hub::run_hub(&config, slopn::logs::init()),
        Command::Status { socket, json } => hub_request(&socket, &Request::Status)
            .map(|v| print_status(&v["status"], json))
            .map_err(|e| explain(&e)),
        Command::Disconnect { socket, session } => hub_request(
            &socket,
            &Request::Disconnect {
                session: Some(session),
            },
        )
        .map(drop)
        .map_err(|e| explain(&e)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hub: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `request` to the hub on `socket`, refusing another program's socket.
fn hub_request(
    socket: &Path,
    request: &Request,
) -> Result<serde_json::Map<String, serde_json::Value>, ClientError> {
    Client::connect_as(socket, &[Role::Hub])?.request(request)
}

fn print_status(s: &serde_json::Value, json: bool) {
    if json {
        say!("{s}");
        return;
    }
    say!(
        "spokes: {}   in: {} B ({:.0} B/s)   out: {} B ({:.0} B/s)   auth failures: {}   ignored: {}   drops: {}",
        s["spokes_assigned"],
        s["rx_bytes"],
        s["rx_bytes_per_sec"].as_f64().unwrap_or(0.0),
        s["tx_bytes"],
        s["tx_bytes_per_sec"].as_f64().unwrap_or(0.0),
        s["auth_failures"],
        s["ignored_datagrams"],
        s["drops"]
    );
    for session in s["sessions"].as_array().into_iter().flatten() {
        say!(
            "  #{} {} {} from {}  {}  rtt {:.2} ms  in {} B  out {} B  drops {}",
            session["session"],
            session["identity"].as_str().unwrap_or("-"),
            session["addresses"],
            session["remote"].as_str().unwrap_or("?"),
            session["key_exchange"].as_str().unwrap_or("-"),
            session["rtt_ms"].as_f64().unwrap_or(0.0),
            session["rx_bytes"],
            session["tx_bytes"],
            session["drops"]
        );
    }
}
