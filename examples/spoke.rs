//! The SloPN spoke.
//!
//! ```text
//! spoke run --config /etc/slopn/spoke.toml
//! spoke status
//! spoke disconnect; spoke connect
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slopn::control::{self, Request};

/// SloPN spoke: connects to a hub, gets a tunnel address and carries this host's packets.
/// It reconnects by itself when the hub goes away. Logs go to stderr; set RUST_LOG for more.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const SOCKET: &str = "/run/slopn/spoke.sock";

#[derive(Subcommand)]
enum Command {
    /// Run the spoke (needs root or CAP_NET_ADMIN for its TUN device). SIGINT or SIGTERM
    /// says goodbye to the hub and removes the TUN device and routes.
    Run {
        /// The spoke configuration (as written by `hub add-spoke`).
        #[arg(long, default_value = "/etc/slopn/spoke.toml")]
        config: PathBuf,
    },
    /// Show the tunnel: addresses, RTT, bytes and rates each way, drops.
    Status {
        /// The spoke's control socket.
        #[arg(long, default_value = SOCKET)]
        socket: PathBuf,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
        /// Keep printing events as they happen.
        #[arg(long)]
        watch: bool,
    },
    /// Connect now (after `disconnect`, or to skip a reconnect delay).
    Connect {
        /// The spoke's control socket.
        #[arg(long, default_value = SOCKET)]
        socket: PathBuf,
    },
    /// Say goodbye to the hub and stay disconnected (the TUN device stays).
    Disconnect {
        /// The spoke's control socket.
        #[arg(long, default_value = SOCKET)]
        socket: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => {
            slopn::daemon::init_logging();
            slopn::daemon::run_spoke(&config)
        }
        Command::Status {
            socket,
            json,
            watch,
        } => control::request(&socket, &Request::Status).and_then(|v| {
            print_status(&v["status"], json);
            if watch {
                control::watch(&socket, |event| {
                    println!("{event}");
                    true
                })?;
            }
            Ok(())
        }),
        Command::Connect { socket } => control::request(&socket, &Request::Connect).map(drop),
        Command::Disconnect { socket } => {
            control::request(&socket, &Request::Disconnect { session: None }).map(drop)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spoke: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_status(s: &serde_json::Value, json: bool) {
    if json {
        println!("{s}");
        return;
    }
    let rate = |k: &str| s[k].as_f64().unwrap_or(0.0) * 8.0 / 1e6;
    println!("state:     {}", s["state"].as_str().unwrap_or("?"));
    println!("hub:       {}", s["hub"].as_str().unwrap_or("?"));
    println!("identity:  {}", s["identity"].as_str().unwrap_or("-"));
    println!("addresses: {}", s["addresses"]);
    println!("routes:    {}", s["routes"]);
    match s["rtt_ms"].as_f64() {
        Some(rtt) => println!("rtt:       {rtt:.2} ms"),
        None => println!("rtt:       -"),
    }
    println!("mtu:       {}", s["tun_mtu"]);
    println!(
        "received:  {} B in {} packets ({:.2} Mbit/s)",
        s["rx_bytes"],
        s["rx_packets"],
        rate("rx_bytes_per_sec")
    );
    println!(
        "sent:      {} B in {} packets ({:.2} Mbit/s)",
        s["tx_bytes"],
        s["tx_packets"],
        rate("tx_bytes_per_sec")
    );
    println!("drops:     {}", s["drops"]);
}
