//! The load generator for one hub and many spokes (`scripts/bench-scale` runs it in
//! namespaces; it is a benchmark, not a test).
//!
//! `prepare` adds N spokes to a hub's `hub.toml`, with tokens derived from a secret it
//! keeps in the same directory; `run` starts those N spokes in this one process, each
//! with its own UDP socket and the settings of a spoke file the hub's `init` wrote, and
//! reports once a second: how many have their addresses, how many handshakes completed,
//! echo round trips through the hub from the active ones. When sessions are lost (the hub
//! was killed and restarted) it reports how long until every spoke is back and whether
//! each got its old address.
//!
//!     scale prepare --dir DIR --spokes 10000
//!     scale run --dir DIR --spokes 10000 --template DIR/spokes/load.toml --active 100

mod echo;
mod fleet;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use slopn::config::{SpokeFile, load};
use slopn::keys::{derive, random_seed};
use slopn_proto::Credential;

use crate::fleet::Fleet;

/// One hub, many spokes: the load generator.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// `cargo bench` passes this; ignored.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Add N spokes (`load-0` ...) to DIR/hub.toml, with tokens derived from DIR/load.secret.
    Prepare {
        /// The directory `hub init` wrote.
        #[arg(long)]
        dir: PathBuf,
        /// How many spokes.
        #[arg(long)]
        spokes: usize,
    },
    /// Run N spokes against the hub until SIGINT or SIGTERM.
    Run {
        /// The directory `prepare` used.
        #[arg(long)]
        dir: PathBuf,
        /// How many spokes.
        #[arg(long)]
        spokes: usize,
        /// A spoke file of that hub (hub address, CA, timers); its token is not used.
        #[arg(long)]
        template: PathBuf,
        /// How many spokes send an echo to the hub every second.
        #[arg(long, default_value_t = 100)]
        active: usize,
        /// Local address of the spokes' sockets.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: SocketAddr,
        /// Exit once every spoke is back after a loss.
        #[arg(long)]
        exit_after_storm: bool,
        /// Churn for this many seconds from SIGUSR1 (sent once all are assigned): each
        /// second CHURN spokes leave (and come back 5 s later) and CHURN others move to a
        /// new port.
        #[arg(long, default_value_t = 0)]
        churn_secs: u64,
        /// Spokes that leave, and spokes that roam, each second of churn.
        #[arg(long, default_value_t = 5)]
        churn: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Prepare { dir, spokes } => prepare(&dir, spokes),
        Command::Run {
            dir,
            spokes,
            template,
            active,
            bind,
            exit_after_storm,
            churn_secs,
            churn,
        } => run(
            &dir,
            spokes,
            &template,
            active,
            bind,
            exit_after_storm,
            Churn {
                secs: churn_secs,
                per_second: churn,
            },
        ),
    };
    if let Err(e) = result {
        eprintln!("scale: {e}");
        std::process::exit(1);
    }
}

type Result<T> = std::result::Result<T, String>;

/// The secret the spokes' tokens derive from, created on first use.
fn secret(dir: &Path) -> Result<Vec<u8>> {
    let path = dir.join("load.secret");
    match std::fs::read_to_string(&path) {
        Ok(text) => hex::decode(text.trim()).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = random_seed();
            slopn::keys::write_private(&path, hex::encode(secret).as_bytes())
                .map_err(|e| e.to_string())?;
            Ok(secret.to_vec())
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn token(secret: &[u8], i: usize) -> String {
    hex::encode(derive(secret, format!("load spoke {i}").as_bytes()))
}

fn prepare(dir: &Path, n: usize) -> Result<()> {
    let secret = secret(dir)?;
    let path = dir.join("hub.toml");
    let mut text =
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    for i in 0..n {
        let digest = Credential::digest(token(&secret, i).as_bytes());
        let _ = write!(
            text,
            "\n[[spoke]]\nname = \"load-{i}\"\ntoken_sha256 = \"{}\"\n",
            hex::encode(digest)
        );
    }
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("added {n} spokes to {}", path.display());
    Ok(())
}

/// Milliseconds since the Unix epoch, for lining up with the script's own clock.
fn wall_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// How much churn after all are assigned.
struct Churn {
    secs: u64,
    per_second: usize,
}

/// A small, fast random number generator (xorshift64*) for picking spokes.
struct Pick(u64);

impl Pick {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    dir: &Path,
    n: usize,
    template: &Path,
    active: usize,
    bind: SocketAddr,
    exit_after_storm: bool,
    churn: Churn,
) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).map_err(|e| e.to_string())?;
    }
    let churn_go = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, churn_go.clone())
        .map_err(|e| e.to_string())?;
    let secret = secret(dir)?;
    let file: SpokeFile = load(template, "spoke configuration").map_err(|e| e.to_string())?;
    let (base, _) = file.resolve(template).map_err(|e| e.to_string())?;

    let start = Instant::now();
    let mut fleet = Fleet::new(n, start).map_err(|e| e.to_string())?;
    for i in 0..n {
        let mut config = base.clone();
        config.token = token(&secret, i);
        config.seed = derive(&secret, format!("load seed {i}").as_bytes());
        fleet
            .add(config, bind, i < active)
            .map_err(|e| format!("spoke {i}: {e} (raise the open file limit: ulimit -n)"))?;
    }
    println!(
        "started n={n} in_ms={} wall_ms={}",
        start.elapsed().as_millis(),
        wall_ms()
    );

    let mut report = Report::new(n, start);
    let mut tick = start;
    let mut pick = Pick(u64::from(std::process::id()) | 1);
    let mut churn_until = None;
    let mut settled = churn.secs == 0;
    while !stop.load(Ordering::Relaxed) {
        tick += Duration::from_secs(1);
        fleet.run_until(tick).map_err(|e| e.to_string())?;
        fleet.send_echoes();
        if report.assigned_at.is_some() && churn_go.load(Ordering::Relaxed) {
            let until = *churn_until.get_or_insert(tick + Duration::from_secs(churn.secs));
            let per_second = if tick < until { churn.per_second } else { 0 };
            let away = Duration::from_secs(5);
            fleet
                .churn(per_second, per_second, away, bind, |n| pick.below(n))
                .map_err(|e| e.to_string())?;
            if !settled && tick >= until && fleet.away() == 0 && fleet.up() == n {
                settled = true;
                println!("settled n={n} wall_ms={}", wall_ms());
            }
        }
        if report.second(&mut fleet) && exit_after_storm {
            break;
        }
    }
    report.summary();
    Ok(())
}

/// The once-a-second lines and the milestones.
struct Report {
    n: usize,
    start: Instant,
    assigned_at: Option<Duration>,
    peak_rate: u64,
    /// Sessions were lost and not every spoke is back yet.
    in_storm: bool,
    lost_total: u64,
    lost_reset: u64,
    lost_timeout: u64,
    same: u64,
    other: u64,
    attempts: u64,
    left: u64,
    roamed: u64,
    rtts: Vec<Duration>,
}

impl Report {
    fn new(n: usize, start: Instant) -> Self {
        Self {
            n,
            start,
            assigned_at: None,
            peak_rate: 0,
            in_storm: false,
            lost_total: 0,
            lost_reset: 0,
            lost_timeout: 0,
            same: 0,
            other: 0,
            attempts: 0,
            left: 0,
            roamed: 0,
            rtts: Vec::new(),
        }
    }

    /// Prints this second's line; true once every spoke is back after a loss.
    fn second(&mut self, fleet: &mut Fleet) -> bool {
        let mut tally = fleet.take_tally();
        let now = Instant::now();
        let t = now.duration_since(self.start).as_secs_f64();
        self.peak_rate = self.peak_rate.max(tally.assigned);
        self.attempts += tally.attempts;
        self.same += tally.same_address;
        self.other += tally.other_address;
        self.lost_total += tally.lost;
        self.lost_reset += tally.lost_reset;
        self.lost_timeout += tally.lost_timeout;
        if tally.lost > 0 && !self.in_storm {
            self.in_storm = true;
            println!("loss t={t:.1} wall_ms={}", wall_ms());
        }
        let (connecting, reconnecting, stopped) = fleet.states();
        self.left += tally.left;
        self.roamed += tally.roamed;
        let (p50, p99) = percentiles(&mut tally.rtts);
        println!(
            "t={t:.1} up={} connecting={connecting} reconnecting={reconnecting} stopped={stopped} \
             assigned/s={} attempts/s={} echo={}/{} rtt_p50_ms={p50:.2} rtt_p99_ms={p99:.2} send_dropped={}",
            fleet.up(),
            tally.assigned,
            tally.attempts,
            tally.echoes_answered,
            tally.echoes_sent,
            tally.send_dropped,
        );
        self.rtts.extend(tally.rtts);
        let (renewed, renewed_at) = fleet.renewed();
        if self.assigned_at.is_none()
            && renewed == self.n
            && let Some(at) = renewed_at
        {
            let took = at.duration_since(self.start);
            self.assigned_at = Some(took);
            fleet.mark();
            println!(
                "assigned n={} in_s={:.2} mean_per_s={:.0} wall_ms={}",
                self.n,
                took.as_secs_f64(),
                self.n as f64 / took.as_secs_f64(),
                wall_ms()
            );
        }
        if self.in_storm
            && renewed == self.n
            && fleet.up() == self.n
            && let Some(at) = renewed_at
        {
            // The wall clock of the moment the last spoke came back.
            let back_ms = wall_ms() - now.duration_since(at).as_millis();
            println!(
                "back n={} lost={} by_reset={} by_timeout={} same_address={} other_address={} wall_ms={back_ms}",
                self.n, self.lost_total, self.lost_reset, self.lost_timeout, self.same, self.other,
            );
            self.in_storm = false;
            return true;
        }
        false
    }

    fn summary(&mut self) {
        let (p50, p99) = percentiles(&mut self.rtts);
        println!(
            "summary n={} assigned_in_s={} peak_assigned_per_s={} attempts={} left={} roamed={} echo_rtt_p50_ms={p50:.2} echo_rtt_p99_ms={p99:.2}",
            self.n,
            self.assigned_at
                .map_or("never".into(), |d| format!("{:.2}", d.as_secs_f64())),
            self.peak_rate,
            self.attempts,
            self.left,
            self.roamed,
        );
    }
}

/// The median and 99th percentile in milliseconds (0 without samples).
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}
