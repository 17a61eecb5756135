//! Keys, certificates and tokens: `hub init` and `hub add-spoke`.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ipnet::IpNet;
use slopn_proto::pki::{CertificateAuthority, Validity};

use crate::config::{AuthMode, ConfigError, HubFile, SpokeEntry, SpokeFile, load, save};
use crate::runtime::Runtime;

/// 32 bytes from the operating system's random source.
pub fn random_seed() -> [u8; 32] {
    let mut seed = [0; 32];
    getrandom::fill(&mut seed).expect("the OS random source works");
    seed
}

/// A 32-byte key derived from secret material for one purpose.
pub fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let mut input = label.to_vec();
    input.extend_from_slice(secret);
    slopn_proto::Credential::digest(&input)
}

/// Writes a file readable and writable by its owner only (mode 0600), replacing it.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), ConfigError> {
    write_mode(path, contents, 0o600)
}

fn write_mode(path: &Path, contents: &[u8], mode: u32) -> Result<(), ConfigError> {
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| ConfigError(format!("cannot write {}: {e}", path.display()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    let _ = std::fs::remove_file(path);
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    options.mode(mode);
    #[cfg(not(unix))]
    let _ = mode; // `hub init` and `add-spoke` are for the hub, on Linux.
    let mut file = options
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(fail)?;
    file.write_all(contents).map_err(fail)
}

/// What `hub init` needs.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Directory for every file.
    pub dir: PathBuf,
    /// The hub's DNS name or IP address, as spokes will reach it; goes into its certificate.
    pub name: String,
    /// The UDP port spokes connect to.
    pub port: u16,
    /// The address pool.
    pub pool: IpNet,
    /// A second pool of the other family (dual stack), if any.
    pub pool6: Option<IpNet>,
    /// Spokes to create right away.
    pub spokes: Vec<String>,
}

const HUB_HEADER: &str =
    "# SloPN hub configuration (see README.md, \"Configuration reference\").\n\n";
const SPOKE_HEADER: &str = "# SloPN spoke configuration (see README.md, \"Configuration reference\").\n# Copy this file to the spoke; it holds the spoke's secret token.\n\n";

/// Creates a CA, the hub's certificate and key, `hub.toml`, and a spoke configuration per
/// named spoke. Returns the files written.
pub fn init(options: &InitOptions) -> Result<Vec<PathBuf>, ConfigError> {
    let dir = &options.dir;
    let hub_toml = dir.join("hub.toml");
    if hub_toml.exists() {
        return Err(ConfigError(format!(
            "{} exists already: this directory is initialised. Add spokes with `hub add-spoke \
             --dir {}`, or choose an empty directory.",
            hub_toml.display(),
            dir.display()
        )));
    }
    // Everything is checked before the first file is written: a refused `init` leaves the
    // directory as it was.
    if options.port == 0 {
        return Err(ConfigError(
            "--port 0 is no port spokes can reach: give the UDP port the hub listens on, \
             such as 4433"
                .into(),
        ));
    }
    for pool in std::iter::once(options.pool).chain(options.pool6) {
        crate::config::check_pool(pool)
            .map_err(|sentence| ConfigError(format!("--pool {sentence}")))?;
    }
    for (i, spoke) in options.spokes.iter().enumerate() {
        check_spoke_name(spoke)?;
        if options.spokes[..i].contains(spoke) {
            return Err(ConfigError(format!(
                "--spoke {spoke:?} is given twice: each spoke needs its own name"
            )));
        }
    }
    if let Some(pool6) = options.pool6
        && pool6.addr().is_ipv4() == options.pool.addr().is_ipv4()
    {
        return Err(ConfigError(format!(
            "--pool6 {pool6} is of the same address family as --pool {}: give the other \
             family's network for dual stack, e.g. --pool6 fd00:100::/64",
            options.pool
        )));
    }
    let now = SystemTime::now();
    let pki_error = |e: slopn_proto::pki::PkiError| ConfigError(e.to_string());
    let ca = CertificateAuthority::generate(
        &format!("SloPN CA for {}", options.name),
        random_seed(),
        Validity::days_from(now, 3650),
    )
    .map_err(pki_error)?;
    let hub = ca
        .issue_server(
            std::slice::from_ref(&options.name),
            random_seed(),
            Validity::days_from(now, 825),
        )
        .map_err(|e| match e {
            slopn_proto::pki::PkiError::BadName(name) => ConfigError(format!(
                "--name {name:?} is neither a DNS name nor an IP address"
            )),
            other => pki_error(other),
        })?;
    let mut written = Vec::new();
    for (file, contents, mode) in [
        ("ca.pem", ca.cert_pem().to_owned(), 0o644),
        ("ca.key", ca.key_pem(), 0o600),
        ("hub.pem", hub.cert_pem.clone(), 0o644),
        ("hub.key", hub.key_pem.clone(), 0o600),
    ] {
        let path = dir.join(file);
        write_mode(&path, contents.as_bytes(), mode)?;
        written.push(path);
    }
    let listen = SocketAddr::new([0, 0, 0, 0].into(), options.port);
    let file = HubFile {
        listen,
        certificate: "hub.pem".into(),
        private_key: "hub.key".into(),
        pool: options.pool,
        hub_address: None,
        pool6: options.pool6,
        routes: Vec::new(),
        isolate_spokes: false,
        gateway: false,
        default_route: true,
        uplink: None,
        dns: Vec::new(),
        client_ca: Some("ca.pem".into()),
        tun_name: "slopn0".into(),
        idle_timeout_secs: 6,
        link_mtu: 1500,
        congestion: crate::config::default_congestion(),
        key_exchange: Default::default(),
        runtime: Runtime::default(),
        control_socket: None,
        metrics_listen: None,
        public_endpoint: Some(endpoint(&options.name, options.port)),
        server_name: Some(options.name.clone()),
        spokes: Vec::new(),
    };
    save(&hub_toml, &file, HUB_HEADER)?;
    written.push(hub_toml);
    for spoke in &options.spokes {
        written.push(add_spoke(dir, spoke, AuthMode::Token)?);
    }
    Ok(written)
}

fn endpoint(name: &str, port: u16) -> String {
    if name.contains(':') {
        format!("[{name}]:{port}")
    } else {
        format!("{name}:{port}")
    }
}

/// Adds spoke `name` to `DIR/hub.toml` and writes its configuration to `DIR/spokes/NAME.toml`,
/// which is returned: with a fresh token, or with a client certificate signed by the CA in
/// `DIR/ca.pem` and `DIR/ca.key`.
pub fn add_spoke(dir: &Path, name: &str, auth: AuthMode) -> Result<PathBuf, ConfigError> {
    check_spoke_name(name)?;
    let hub_toml = dir.join("hub.toml");
    let mut hub: HubFile = load(&hub_toml, "hub")?;
    if hub.spokes.iter().any(|s| s.name == name) {
        return Err(ConfigError(format!(
            "{}: a spoke named {name:?} exists already",
            hub_toml.display()
        )));
    }
    let path = dir.join("spokes").join(format!("{name}.toml"));
    if path.exists() {
        return Err(ConfigError(format!(
            "{} exists already, though {} names no such spoke: move it away (it may be a \
             removed spoke's file) or choose another name",
            path.display(),
            hub_toml.display()
        )));
    }
    let ca_path = dir.join("ca.pem");
    let (token, certificate) = match auth {
        AuthMode::Token => {
            let token = hex::encode(random_seed());
            hub.spokes.push(SpokeEntry {
                name: name.to_owned(),
                auth,
                token_sha256: Some(hex::encode(slopn_proto::Credential::digest(
                    token.as_bytes(),
                ))),
            });
            (token, None)
        }
        AuthMode::Certificate => {
            let key_path = dir.join("ca.key");
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|e| {
                    ConfigError(format!(
                        "cannot read {}: {e}. Certificates are issued with the CA `hub init` wrote.",
                        p.display()
                    ))
                })
            };
            let ca = CertificateAuthority::from_pem(&read(&ca_path)?, &read(&key_path)?)
                .map_err(|e| ConfigError(format!("{}: {e}", key_path.display())))?;
            let cert = ca
                .issue_client(
                    name,
                    random_seed(),
                    Validity::days_from(SystemTime::now(), 825),
                )
                .map_err(|e| ConfigError(e.to_string()))?;
            hub.spokes.push(SpokeEntry {
                name: name.to_owned(),
                auth,
                token_sha256: None,
            });
            if hub.client_ca.is_none() {
                hub.client_ca = Some("ca.pem".into());
            }
            (String::new(), Some(cert))
        }
    };
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(|e| {
        ConfigError(format!(
            "cannot read {}: {e}. It is written by `hub init`.",
            ca_path.display()
        ))
    })?;
    let server_name = hub.server_name.clone().ok_or_else(|| {
        ConfigError(format!(
            "{}: set `server_name` (the name in the hub's certificate) so spokes can be added",
            hub_toml.display()
        ))
    })?;
    let public = hub
        .public_endpoint
        .clone()
        .unwrap_or_else(|| endpoint(&server_name, hub.listen.port()));
    let spoke = SpokeFile {
        hub: public,
        server_name,
        ca: None,
        ca_pem: Some(ca_pem),
        token,
        certificate_pem: certificate.as_ref().map(|c| c.cert_pem.clone()),
        private_key_pem: certificate.map(|c| c.key_pem),
        address: None,
        accept_default_route: true,
        routes: Vec::new(),
        kill_switch: false,
        lockdown: false,
        allow_lan: Vec::new(),
        dns_method: Default::default(),
        tun_name: "slopn0".into(),
        control_socket: None,
        metrics_listen: None,
        connect_timeout_secs: 15,
        idle_timeout_secs: 6,
        keep_alive_secs: 2,
        // The spoke probes up to the hub's network's MTU: the operator sets it once.
        link_mtu: hub.link_mtu,
        congestion: crate::config::default_congestion(),
        key_exchange: Default::default(),
        runtime: Runtime::default(),
    };
    save(&path, &spoke, SPOKE_HEADER)?;
    if let Err(e) = save(&hub_toml, &hub, HUB_HEADER) {
        // Not half done: without its entry in hub.toml the spoke file is of no use.
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// A spoke's name is its identity, its file's name and a label in metrics: 1 to 64 letters,
/// digits, '-', '_' or '.', not starting with '.' (a hidden file, or `..`) or '-' (an option).
fn check_spoke_name(name: &str) -> Result<(), ConfigError> {
    let valid = (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if valid {
        return Ok(());
    }
    Err(ConfigError(format!(
        "spoke name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', starting with a \
         letter, a digit or '_'"
    )))
}
