//! The hub's and the spoke's configuration files (TOML), and their translation into the
//! state machines' configurations. Every error names the file and says what to fix.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use slopn_proto::control::{self, MAX_CREDENTIAL_LEN};
use slopn_proto::tls::{self, CertifiedKey};
use slopn_proto::{Auth, Congestion, Credential, HubConfig, PoolConfig, SpokeConfig};

use crate::key_exchange::KeyExchangeSetting;
use crate::runtime::Runtime;

/// A configuration problem, phrased for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

fn default_tun() -> String {
    "slopn0".into()
}
fn default_idle() -> u64 {
    6
}
pub(crate) fn default_congestion() -> String {
    Congestion::default().name().into()
}

/// The congestion controller named in `path`'s `congestion` option.
fn congestion(label: &str, name: &str) -> Result<Congestion, ConfigError> {
    Congestion::from_name(name).ok_or_else(|| {
        let names: Vec<_> = Congestion::ALL.iter().map(|c| c.name()).collect();
        ConfigError::new(format!(
            "{label}: unknown congestion controller {name:?}; use one of {}",
            names.join(", ")
        ))
    })
}

const DEFAULT_LINK_MTU: u16 = 1500;
/// The link MTUs a file may set: IPv6's minimum to the common jumbo-frame limit.
const LINK_MTUS: std::ops::RangeInclusive<u16> = 1280..=9216;

/// IPv6's minimum link MTU (RFC 8200): the least a TUN device with an IPv6 address may have.
const IPV6_MIN_MTU: u16 = 1280;

fn default_link_mtu() -> u16 {
    DEFAULT_LINK_MTU
}
fn is_default_link_mtu(mtu: &u16) -> bool {
    *mtu == DEFAULT_LINK_MTU
}

/// Checks `link_mtu` and sets the transport's path MTU bound from it.
fn link_mtu(
    label: &str,
    mtu: u16,
    transport: &mut slopn_proto::TransportSettings,
) -> Result<(), ConfigError> {
    if !LINK_MTUS.contains(&mtu) {
        return Err(ConfigError::new(format!(
            "{label}: `link_mtu` is {mtu}; it must be {} to {} (the MTU of the network between \
             hub and spokes, 1500 on most, 9000 with jumbo frames)",
            LINK_MTUS.start(),
            LINK_MTUS.end()
        )));
    }
    transport.set_link_mtu(mtu);
    Ok(())
}

/// Reads `link_mtu`, saying the range rather than "expected u16" when it is far out of it.
fn link_mtu_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let mtu = i64::deserialize(d)?;
    u16::try_from(mtu).map_err(|_| {
        serde::de::Error::custom(format!(
            "`link_mtu` is {mtu}; it must be {} to {}",
            LINK_MTUS.start(),
            LINK_MTUS.end()
        ))
    })
}

fn default_keep_alive() -> u64 {
    2
}
fn default_true() -> bool {
    true
}
fn default_connect_timeout() -> u64 {
    15
}
fn default_listen() -> SocketAddr {
    "0.0.0.0:4433".parse().expect("valid")
}

/// `hub.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubFile {
    /// UDP address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The hub's certificate chain (PEM), relative to this file.
    pub certificate: PathBuf,
    /// The hub's private key (PEM), relative to this file.
    pub private_key: PathBuf,
    /// The IPv4 (or IPv6) network spokes get addresses from.
    pub pool: IpNet,
    /// The hub's own address in `pool` (default: its first host address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_address: Option<IpAddr>,
    /// An optional second pool of the other family, for dual stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool6: Option<IpNet>,
    /// Further networks reachable through the hub, advertised to spokes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IpNet>,
    /// Refuse spoke-to-spoke traffic.
    #[serde(default)]
    pub isolate_spokes: bool,
    /// Gateway mode: forward spokes' traffic to other networks out of `uplink`, masqueraded
    /// behind the hub's address there, and advertise a default route to spokes.
    #[serde(default)]
    pub gateway: bool,
    /// In gateway mode, whether to advertise the default route, so that spokes that accept
    /// it send everything through the hub (full tunnel). With `false`, spokes reach only the
    /// pools and `routes` (split tunnel).
    #[serde(default = "default_true")]
    pub default_route: bool,
    /// The interface towards the internet in gateway mode (default: that of the default
    /// route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    /// DNS servers pushed to spokes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<IpAddr>,
    /// CA certificate (PEM) that signs spokes' client certificates, for spokes with
    /// `auth = "certificate"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Name of the hub's TUN device.
    #[serde(default = "default_tun")]
    pub tun_name: String,
    /// Seconds without a packet after which a spoke is considered gone.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// The MTU of the network between hub and spokes (default 1500): path MTU discovery
    /// probes up to it, and the tunnel carries IP packets of up to `link_mtu` - 86 bytes
    /// (1414 by default, 8914 on a 9000-byte jumbo-frame network). 1280 to 9216.
    #[serde(
        default = "default_link_mtu",
        skip_serializing_if = "is_default_link_mtu",
        deserialize_with = "link_mtu_value"
    )]
    pub link_mtu: u16,
    /// Congestion controller for what the hub sends: `tunnel` (default: ignores random loss,
    /// backs off when losses come with queueing delay), `cubic`, `newreno` or `bbr`.
    #[serde(default = "default_congestion")]
    pub congestion: String,
    /// The TLS key exchange: `hybrid` (default: X25519MLKEM768 preferred, X25519 accepted),
    /// `classic` (X25519 only) or `hybrid-only` (spokes without X25519MLKEM768 refused).
    #[serde(default, skip_serializing_if = "KeyExchangeSetting::is_default")]
    pub key_exchange: KeyExchangeSetting,
    /// Which runtime moves the packets: `mio` (default) or `tokio`.
    #[serde(default, skip_serializing_if = "Runtime::is_default")]
    pub runtime: Runtime,
    /// Path of the control socket (default: `/run/slopn/hub.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`GET /metrics`), e.g. `127.0.0.1:9464`; off when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where spokes reach the hub (`host:port`), written into new spoke configurations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_endpoint: Option<String>,
    /// The name in the hub's certificate, written into new spoke configurations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The spokes allowed in.
    #[serde(default, rename = "spoke")]
    pub spokes: Vec<SpokeEntry>,
}

/// One `[[spoke]]` entry of `hub.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpokeEntry {
    /// The spoke's name (its identity).
    pub name: String,
    /// How it authenticates.
    #[serde(default)]
    pub auth: AuthMode,
    /// With `auth = "token"`: SHA-256 of its token, in hex (`hub add-spoke` writes it; the hub
    /// never stores tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

/// How a spoke authenticates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A secret token.
    #[default]
    Token,
    /// A client certificate signed by the hub's `client_ca` (mTLS).
    Certificate,
}

/// How a spoke hands the DNS servers its hub pushes to the system (`dns_method`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsSetting {
    /// Per device through systemd-resolved (`resolvectl`); on Windows `netsh`.
    #[default]
    #[serde(rename = "system")]
    System,
    /// Written into `/etc/resolv.conf` while the tunnel is up and put back after: for
    /// hosts without systemd-resolved.
    #[serde(rename = "resolv.conf")]
    ResolvConf,
    /// Pushed servers are ignored.
    #[serde(rename = "off")]
    Off,
}

impl DnsSetting {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl From<DnsSetting> for slopn_tun::DnsMethod {
    fn from(setting: DnsSetting) -> Self {
        match setting {
            DnsSetting::System => Self::System,
            DnsSetting::ResolvConf => Self::ResolvConf,
            DnsSetting::Off => Self::Off,
        }
    }
}

/// `spoke.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpokeFile {
    /// The hub, as `host:port`.
    pub hub: String,
    /// The name in the hub's certificate (DNS name or IP address).
    pub server_name: String,
    /// The CA certificate (PEM file, relative to this file); or use `ca_pem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The CA certificate inline (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The access token (none with a client certificate).
    #[serde(default)]
    pub token: String,
    /// A client certificate (PEM) for hubs that authenticate spokes by certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    /// Its private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
    /// Whether a default route the hub pushes (gateway mode) sends all traffic through the
    /// tunnel (full tunnel). With `false` only the hub's networks and other pushed routes do
    /// (split tunnel).
    #[serde(default = "default_true")]
    pub accept_default_route: bool,
    /// If not empty, only these networks go through the tunnel (within what the hub
    /// advertises), besides the tunnel network itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IpNet>,
    /// While the spoke is meant to be up (connecting, established, reconnecting), nothing
    /// leaves this host but into the tunnel, to the hub, on loopback, DHCP and neighbour
    /// discovery, and to `allow_lan`: an nftables table drops the rest. Full tunnel only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kill_switch: bool,
    /// Keeps the kill switch's table when the spoke dies, until `spoke unlock` (or a
    /// disconnect through the spoke service). Only with `kill_switch`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lockdown: bool,
    /// Networks the kill switch lets through outside the tunnel (the local LAN, a
    /// printer). Only with `kill_switch`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_lan: Vec<IpNet>,
    /// How the DNS servers the hub pushes reach this host's resolver.
    #[serde(default, skip_serializing_if = "DnsSetting::is_default")]
    pub dns_method: DnsSetting,
    /// A static address to ask for (default: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// Name of the TUN device.
    #[serde(default = "default_tun")]
    pub tun_name: String,
    /// Path of the control socket (default: `/run/slopn/spoke.sock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`GET /metrics`), e.g. `127.0.0.1:9465`; off when
    /// absent (`spoke run` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds to wait for the first session before giving up.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Seconds without a packet after which the hub is considered gone.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// Seconds of silence after which a keep-alive is sent.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    /// The MTU of the network between hub and spokes (default 1500; the hub's file sets it
    /// too, and the smaller wins): path MTU discovery probes up to it, and the tunnel carries
    /// IP packets of up to `link_mtu` - 86 bytes. 1280 to 9216.
    #[serde(
        default = "default_link_mtu",
        skip_serializing_if = "is_default_link_mtu",
        deserialize_with = "link_mtu_value"
    )]
    pub link_mtu: u16,
    /// Congestion controller for what the spoke sends (see the hub's `congestion`).
    #[serde(default = "default_congestion")]
    pub congestion: String,
    /// The TLS key exchange: `hybrid` (default: offers X25519MLKEM768 and X25519),
    /// `classic` (X25519 only) or `hybrid-only` (a hub without X25519MLKEM768 refused).
    #[serde(default, skip_serializing_if = "KeyExchangeSetting::is_default")]
    pub key_exchange: KeyExchangeSetting,
    /// Which runtime moves the packets: `mio` (default) or `tokio`.
    #[serde(default, skip_serializing_if = "Runtime::is_default")]
    pub runtime: Runtime,
}

/// Reads and parses a TOML file.
pub fn load<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => match what {
                "hub" => " Create one with `hub init --dir <dir>`.",
                _ => " Get one from the hub operator (`hub add-spoke`).",
            },
            std::io::ErrorKind::PermissionDenied => " Run as its owner or as root.",
            _ => "",
        };
        ConfigError::new(format!(
            "cannot read the {what} configuration {}: {e}.{hint}",
            path.display()
        ))
    })?;
    toml::from_str(&text).map_err(|e| {
        let message = e.to_string();
        // A hub key written below a `[[spoke]]` line lands in that spoke's table.
        let hint = if message.contains("expected one of `name`, `auth`") {
            "Keys below a `[[spoke]]` line belong to that spoke: put the hub's own keys above \
             the first `[[spoke]]`. "
                .to_owned()
        } else {
            missing_key_example(&message)
                .map(|line| format!("Add a line such as `{line}`. "))
                .unwrap_or_default()
        };
        ConfigError::new(format!(
            "{} is not a valid {what} configuration: {message}{hint}See the configuration \
             reference in README.md.",
            path.display(),
        ))
    })
}

/// An example line for a required key that `message` (a TOML error) says is missing.
fn missing_key_example(message: &str) -> Option<&'static str> {
    const EXAMPLES: [(&str, &str); 6] = [
        ("pool", r#"pool = "10.100.0.0/24""#),
        ("certificate", r#"certificate = "hub.pem""#),
        ("private_key", r#"private_key = "hub.key""#),
        ("hub", r#"hub = "hub.example.net:4433""#),
        ("server_name", r#"server_name = "hub.example.net""#),
        ("name", r#"name = "alice" (in each [[spoke]])"#),
    ];
    let key = message.split("missing field `").nth(1)?.split('`').next()?;
    EXAMPLES
        .iter()
        .find(|(name, _)| *name == key)
        .map(|(_, line)| *line)
}

/// Writes a TOML file readable by its owner only.
pub fn save<T: Serialize>(path: &Path, value: &T, header: &str) -> Result<(), ConfigError> {
    let body = toml::to_string_pretty(value)
        .map_err(|e| ConfigError::new(format!("cannot encode {}: {e}", path.display())))?;
    crate::keys::write_private(path, format!("{header}{body}").as_bytes())
}

fn relative(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// Reads `what` at `path`; `fix` is what to do when it is missing.
fn read_file(path: &Path, what: &str, fix: &str) -> Result<Vec<u8>, ConfigError> {
    let contents = std::fs::read(path).map_err(|e| {
        let fix = match e.kind() {
            std::io::ErrorKind::PermissionDenied => "Run as root or as the file's owner.",
            _ => fix,
        };
        ConfigError::new(format!("cannot read {what} {}: {e}. {fix}", path.display()))
    })?;
    if contents.is_empty() {
        return Err(ConfigError::new(format!(
            "{what} {} is empty. {fix}",
            path.display()
        )));
    }
    Ok(contents)
}

/// Everything the hub binary needs besides the state machine's configuration.
#[derive(Clone, Debug)]
pub struct HubRuntime {
    /// UDP listen address.
    pub listen: SocketAddr,
    /// TUN name.
    pub tun_name: String,
    /// Addresses of the hub's TUN device, with the pools' prefix lengths.
    pub tun_addresses: Vec<(IpAddr, u8)>,
    /// TUN MTU.
    pub tun_mtu: u16,
    /// Control socket path.
    pub control_socket: PathBuf,
}

impl HubFile {
    /// The state machine's configuration and the runtime settings. `path` is the file this
    /// was read from (relative paths are resolved against its directory).
    pub fn resolve(&self, path: &Path) -> Result<(HubConfig, HubRuntime), ConfigError> {
        let base = path.parent().unwrap_or(Path::new("."));
        let cert_path = relative(base, &self.certificate);
        let key_path = relative(base, &self.private_key);
        let fix = "Run `hub init` or set `certificate` and `private_key` in the configuration.";
        let cert = read_file(&cert_path, "the hub certificate", fix)?;
        let key = read_file(&key_path, "the hub private key", fix)?;
        let identity = CertifiedKey::from_pem(&cert, &key).map_err(|e| {
            ConfigError::new(format!(
                "{} / {}: {e}. Check that they are the PEM certificate and key written by `hub init`.",
                cert_path.display(),
                key_path.display()
            ))
        })?;
        let mut pools = vec![pool_config(self.pool, self.hub_address, path)?];
        if let Some(pool6) = self.pool6 {
            pools.push(pool_config(pool6, None, path)?);
        }
        let reload = self.reload(path)?;
        let client_ca = match &self.client_ca {
            Some(ca) => {
                let ca_path = relative(base, ca);
                let pem = read_file(
                    &ca_path,
                    "the client CA",
                    "Point `client_ca` at the CA that signs spokes' certificates (ca.pem).",
                )?;
                tls::parse_certificates(&pem)
                    .map_err(|e| ConfigError::new(format!("{}: {e}", ca_path.display())))?
            }
            None => Vec::new(),
        };
        let mut config = HubConfig::new(
            identity,
            pools.clone(),
            reload.credentials,
            crate::keys::random_seed(),
        );
        config.client_ca = client_ca;
        config.routes = reload.routes;
        config.dns_servers = reload.dns;
        config.isolate_spokes = self.isolate_spokes;
        if !(1..=MAX_TIMER_SECS).contains(&self.idle_timeout_secs) {
            return Err(ConfigError::new(format!(
                "{}: `idle_timeout_secs` is {}; it must be 1 to {MAX_TIMER_SECS} seconds",
                path.display(),
                self.idle_timeout_secs
            )));
        }
        config.transport.idle_timeout = Duration::from_secs(self.idle_timeout_secs);
        config.transport.congestion = congestion(&path.display().to_string(), &self.congestion)?;
        link_mtu(
            &path.display().to_string(),
            self.link_mtu,
            &mut config.transport,
        )?;
        config.crypto = slopn_proto::tls::provider(self.key_exchange.into());
        // The reset key survives restarts (it comes from the private key), so a restarted hub
        // resets its predecessor's connections and spokes reconnect at once.
        config.stateless_reset_key = Some(crate::keys::derive(&key, b"slopn stateless reset"));
        let runtime = HubRuntime {
            listen: self.listen,
            tun_name: self.tun_name.clone(),
            tun_addresses: pools
                .iter()
                .map(|p| (p.hub_address, p.network.prefix_len()))
                .collect(),
            // The kernel refuses IPv6 on a device below IPv6's minimum MTU; packets above
            // what a spoke's path carries are refused per spoke, and TCP's are clamped.
            tun_mtu: if self.pool6.is_some() || self.pool.addr().is_ipv6() {
                config.transport.max_tunnel_mtu().max(IPV6_MIN_MTU)
            } else {
                config.transport.max_tunnel_mtu()
            },
            control_socket: self
                .control_socket
                .clone()
                .unwrap_or_else(|| "/run/slopn/hub.sock".into()),
        };
        Ok((config, runtime))
    }
}

impl SpokeEntry {
    fn credential(&self, path: &Path) -> Result<Credential, ConfigError> {
        match (self.auth, &self.token_sha256) {
            (AuthMode::Certificate, None) => Ok(Credential::certificate(&self.name)),
            (AuthMode::Certificate, Some(_)) => Err(ConfigError::new(format!(
                "{}: spoke {:?} authenticates by certificate and must not have a token_sha256",
                path.display(),
                self.name
            ))),
            (AuthMode::Token, digest) => {
                let digest = digest
                    .as_deref()
                    .and_then(|d| hex::decode(d).ok())
                    .and_then(|d| <[u8; 32]>::try_from(d).ok())
                    .ok_or_else(|| {
                        ConfigError::new(format!(
                            "{}: spoke {:?} needs a token_sha256 of 64 hex digits. Re-add it \
                             with `hub add-spoke`.",
                            path.display(),
                            self.name
                        ))
                    })?;
                Ok(Credential {
                    identity: self.name.clone(),
                    auth: Auth::Token { sha256: digest },
                })
            }
        }
    }
}

/// What a running hub takes from its configuration file on SIGHUP.
#[derive(Clone, Debug)]
pub struct Reload {
    /// The spokes' credentials.
    pub credentials: Vec<Credential>,
    /// The advertised routes besides the pools (with the default route in gateway mode).
    pub routes: Vec<IpNet>,
    /// The DNS servers.
    pub dns: Vec<IpAddr>,
}

impl HubFile {
    /// The keys whose values differ from `running`'s that a reload does not apply (all but
    /// the spokes, routes and DNS servers): they take effect at the next start.
    pub fn needs_restart(&self, running: &HubFile) -> Vec<String> {
        // As the file names them (`[[spoke]]`).
        const RELOADED: [&str; 4] = ["spoke", "routes", "dns", "default_route"];
        let table = |file: &HubFile| match toml::Value::try_from(file) {
            Ok(toml::Value::Table(table)) => table,
            _ => toml::Table::new(),
        };
        let (new, old) = (table(self), table(running));
        let mut changed: Vec<String> = new
            .keys()
            .chain(old.keys())
            .filter(|key| !RELOADED.contains(&key.as_str()) && new.get(*key) != old.get(*key))
            .cloned()
            .collect();
        changed.sort();
        changed.dedup();
        changed
    }

    /// The parts of this configuration a running hub can reload.
    pub fn reload(&self, path: &Path) -> Result<Reload, ConfigError> {
        let credentials = self
            .spokes
            .iter()
            .map(|s| s.credential(path))
            .collect::<Result<_, _>>()?;
        let mut routes = self.routes.clone();
        if self.gateway && self.default_route {
            let families = [Some(self.pool), self.pool6];
            for pool in families.into_iter().flatten() {
                routes.push(match pool {
                    IpNet::V4(_) => "0.0.0.0/0".parse().expect("valid"),
                    IpNet::V6(_) => "::/0".parse().expect("valid"),
                });
            }
        }
        // Checked here so that a reload is refused as a whole, with the file's name.
        control::check_dns_servers(&self.dns)
            .map_err(|e| ConfigError::new(format!("{}: `dns`: {e}", path.display())))?;
        let pools = [Some(self.pool), self.pool6].into_iter().flatten();
        let ranges = control::normalize_ranges(
            pools
                .chain(routes.iter().copied())
                .map(control::IpRange::from_net)
                .collect(),
        );
        control::check_ranges(&ranges)
            .map_err(|e| ConfigError::new(format!("{}: `routes`: {e}", path.display())))?;
        Ok(Reload {
            credentials,
            routes,
            dns: self.dns.clone(),
        })
    }
}

fn pool_config(net: IpNet, hub: Option<IpAddr>, path: &Path) -> Result<PoolConfig, ConfigError> {
    check_pool(net)
        .map_err(|sentence| ConfigError::new(format!("{}: pool {sentence}", path.display())))?;
    let mut pool = PoolConfig::new(net);
    if let Some(addr) = hub {
        if !net.contains(&addr) {
            return Err(ConfigError::new(format!(
                "{}: hub_address {addr} is not inside pool {net}",
                path.display()
            )));
        }
        pool.hub_address = addr;
    }
    Ok(pool)
}

/// Whether address pool `net` has room for the hub and a spoke: the network's own and (IPv4)
/// broadcast addresses, the hub's, and one at least. `Err` is a sentence starting with the
/// network.
pub fn check_pool(net: IpNet) -> Result<(), String> {
    let max_prefix = if net.addr().is_ipv4() { 30 } else { 126 };
    if net.prefix_len() <= max_prefix {
        return Ok(());
    }
    let example = if net.addr().is_ipv4() {
        "10.100.0.0/24"
    } else {
        "fd00:100::/64"
    };
    Err(format!(
        "{net} has no room for the hub and its spokes: use a network of /{max_prefix} or \
         larger, such as {example}"
    ))
}

/// Everything the spoke binary needs besides the state machine's configuration.
#[derive(Clone, Debug)]
pub struct SpokeRuntime {
    /// TUN name.
    pub tun_name: String,
    /// How long to wait for the first session.
    pub connect_timeout: Duration,
    /// The hub as written in the file, for messages.
    pub hub: String,
}

impl SpokeFile {
    /// The state machine's configuration and the runtime settings, for the file at `path`
    /// (relative paths are resolved against its directory). Resolves the hub's name.
    pub fn resolve(&self, path: &Path) -> Result<(SpokeConfig, SpokeRuntime), ConfigError> {
        let label = path.display().to_string();
        let hub = self.hub_address(&label)?;
        self.build(path.parent(), &label, hub)
    }

    /// The same for a stored profile: `label` names it in messages, and the file may not
    /// refer to other files.
    pub fn resolve_profile(&self, label: &str) -> Result<(SpokeConfig, SpokeRuntime), ConfigError> {
        let hub = self.hub_address(label)?;
        self.build(None, label, hub)
    }

    /// Everything [`resolve_profile`](Self::resolve_profile) checks except that the hub's
    /// name resolves: what a profile must pass to be stored.
    pub fn check_profile(&self, label: &str) -> Result<(), ConfigError> {
        let port = slopn_control::hub_port(&self.hub).ok_or_else(|| {
            ConfigError::new(format!(
                "{label}: the hub address {:?} is not host:port, e.g. hub.example.com:4433",
                self.hub
            ))
        })?;
        let placeholder = SocketAddr::from(([192, 0, 2, 1], port));
        let (config, _) = self.build(None, label, placeholder)?;
        slopn_proto::Spoke::new(
            config,
            std::time::Instant::now(),
            std::time::SystemTime::now(),
        )
        .map(drop)
        .map_err(|e| ConfigError::new(format!("{label}: {e}")))
    }

    /// Resolves the hub's name (`label` names the configuration in the error).
    pub fn hub_address(&self, label: &str) -> Result<SocketAddr, ConfigError> {
        resolve_hub(&self.hub).map_err(|e| {
            ConfigError::new(format!(
                "{label}: cannot resolve the hub address {:?}: {e}. Check the name for typos \
                 and that this computer can resolve names (is it online?); the address is \
                 host:port, e.g. hub.example.com:4433.",
                self.hub
            ))
        })
    }

    /// The kill switch needs a full tunnel. (`lockdown` and `allow_lan` refine it and do
    /// nothing without it: a switch turned off keeps them for when it is turned on.)
    fn check_kill_switch(&self, label: &str) -> Result<(), ConfigError> {
        if self.kill_switch && !self.accept_default_route {
            return Err(ConfigError::new(format!(
                "{label}: kill_switch = true needs a full tunnel (accept_default_route = true): \
                 a split tunnel sends most traffic outside the tunnel on purpose. Remove \
                 kill_switch, or make the tunnel full."
            )));
        }
        Ok(())
    }

    /// `base` is the directory relative `ca` paths start from; `None` refuses them.
    fn build(
        &self,
        base: Option<&Path>,
        label: &str,
        hub: SocketAddr,
    ) -> Result<(SpokeConfig, SpokeRuntime), ConfigError> {
        self.check_kill_switch(label)?;
        let pem = match (&self.ca_pem, &self.ca, base) {
            (Some(_), Some(ca), _) => {
                return Err(ConfigError::new(format!(
                    "{label}: both `ca_pem` and `ca` ({}) are set: keep one",
                    ca.display()
                )));
            }
            (Some(pem), _, _) => pem.as_bytes().to_vec(),
            (None, Some(ca), Some(base)) => read_file(
                &relative(base, ca),
                "the CA certificate",
                "Copy the hub's ca.pem there or set `ca_pem` in the configuration.",
            )?,
            (None, Some(ca), None) => {
                return Err(ConfigError::new(format!(
                    "{label}: the CA certificate must be inline (`ca_pem`, as `hub add-spoke` \
                     writes it), not a file ({})",
                    ca.display()
                )));
            }
            (None, None, _) => {
                return Err(ConfigError::new(format!(
                    "{label}: no CA certificate: set `ca` (a PEM file) or `ca_pem`"
                )));
            }
        };
        let trust = tls::parse_certificates(&pem).map_err(|e| {
            ConfigError::new(format!(
                "{label}: the CA certificate is unusable ({e}): it must be the PEM text \
                 (-----BEGIN CERTIFICATE-----) of the hub's ca.pem"
            ))
        })?;
        if self.token.len() > MAX_CREDENTIAL_LEN {
            return Err(ConfigError::new(format!(
                "{label}: the token is {} bytes long; at most {MAX_CREDENTIAL_LEN} are allowed. \
                 Use the token from the hub operator's spoke file (`hub add-spoke`).",
                self.token.len()
            )));
        }
        let mut config = SpokeConfig::new(
            hub,
            &self.server_name,
            trust,
            &self.token,
            crate::keys::random_seed(),
        );
        config.client_certificate = match (&self.certificate_pem, &self.private_key_pem) {
            (Some(cert), Some(key)) => Some(
                CertifiedKey::from_pem(cert.as_bytes(), key.as_bytes()).map_err(|e| {
                    ConfigError::new(format!(
                        "{label}: the client certificate or key is unusable: {e}"
                    ))
                })?,
            ),
            (None, None) => None,
            _ => {
                return Err(ConfigError::new(format!(
                    "{label}: set both certificate_pem and private_key_pem, or neither"
                )));
            }
        };
        if self.token.is_empty() && config.client_certificate.is_none() {
            return Err(ConfigError::new(format!(
                "{label}: no credential: `token` is empty or missing. Use the spoke file the hub \
                 operator made with `hub add-spoke` (it holds the token), or set \
                 `certificate_pem` and `private_key_pem`"
            )));
        }
        for (key, value) in [
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("keep_alive_secs", self.keep_alive_secs),
            ("connect_timeout_secs", self.connect_timeout_secs),
        ] {
            if !(1..=MAX_TIMER_SECS).contains(&value) {
                return Err(ConfigError::new(format!(
                    "{label}: `{key}` is {value}; it must be 1 to {MAX_TIMER_SECS} seconds"
                )));
            }
        }
        if self.keep_alive_secs >= self.idle_timeout_secs {
            return Err(ConfigError::new(format!(
                "{label}: `keep_alive_secs` ({}) must be shorter than `idle_timeout_secs` ({}): \
                 keep-alives are what keep a quiet tunnel from timing out",
                self.keep_alive_secs, self.idle_timeout_secs
            )));
        }
        if !tun_name_ok(&self.tun_name) {
            return Err(ConfigError::new(format!(
                "{label}: `tun_name` {:?} is not a device name: 1 to 15 letters, digits, '_', \
                 '.' or '-', starting with a letter or digit",
                self.tun_name
            )));
        }
        config.requested_addresses = self.address.into_iter().collect();
        config.transport.idle_timeout = Duration::from_secs(self.idle_timeout_secs);
        config.transport.keep_alive_interval = Some(Duration::from_secs(self.keep_alive_secs));
        config.transport.congestion = congestion(label, &self.congestion)?;
        link_mtu(label, self.link_mtu, &mut config.transport)?;
        config.crypto = slopn_proto::tls::provider(self.key_exchange.into());
        let runtime = SpokeRuntime {
            tun_name: self.tun_name.clone(),
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            hub: self.hub.clone(),
        };
        Ok((config, runtime))
    }
}

/// The longest timer a spoke file may set (an hour): far longer makes no sense, and makes
/// deadlines overflow.
const MAX_TIMER_SECS: u64 = 3600;

/// Whether `name` can name a TUN device (and cannot pass for a command's option).
fn tun_name_ok(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn resolve_hub(hub: &str) -> std::io::Result<SocketAddr> {
    hub.to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address found"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{InitOptions, add_spoke, init};

    /// `hub init` into `dir` with one spoke, `alice`.
    fn init_with_alice(dir: &Path) {
        init(&InitOptions {
            dir: dir.to_owned(),
            name: "192.0.2.1".into(),
            port: 4433,
            pool: "10.7.0.0/24".parse().unwrap(),
            pool6: None,
            spokes: vec!["alice".into()],
        })
        .unwrap();
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("slopn-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn errors_name_the_file_and_the_fix() {
        let dir = temp("errors");
        let missing = dir.join("hub.toml");
        let e = load::<HubFile>(&missing, "hub").unwrap_err().to_string();
        assert!(
            e.contains(&missing.display().to_string()) && e.contains("hub init"),
            "{e}"
        );

        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&missing, "listen = 12\n").unwrap();
        let e = load::<HubFile>(&missing, "hub").unwrap_err().to_string();
        assert!(
            e.contains("not a valid hub configuration") && e.contains("README"),
            "{e}"
        );

        std::fs::write(
            &missing,
            "certificate = \"nope.pem\"\nprivate_key = \"nope.key\"\npool = \"10.1.0.0/24\"\n",
        )
        .unwrap();
        let file: HubFile = load(&missing, "hub").unwrap();
        let e = file.resolve(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem") && e.contains("hub init"), "{e}");

        let spoke = dir.join("spoke.toml");
        std::fs::write(
            &spoke,
            "hub = \"192.0.2.1:4433\"\nserver_name = \"h\"\ntoken = \"t\"\n",
        )
        .unwrap();
        let file: SpokeFile = load(&spoke, "spoke").unwrap();
        let e = file.resolve(&spoke).unwrap_err().to_string();
        assert!(
            e.contains("no CA certificate") && e.contains("ca_pem"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn spoke_files_with_unusable_values_are_refused_with_the_key_named() {
        // The desktop client checks tokens against the wire protocol's own limit.
        assert_eq!(slopn_control::MAX_TOKEN_BYTES, MAX_CREDENTIAL_LEN);
        let dir = temp("values");
        init_with_alice(&dir);
        let good: SpokeFile = load(&dir.join("spokes/alice.toml"), "spoke").unwrap();
        good.check_profile("alice").unwrap();
        type Change = fn(&mut SpokeFile);
        let cases: [(Change, &str); 6] = [
            (|f| f.keep_alive_secs = u64::MAX, "`keep_alive_secs`"),
            (|f| f.idle_timeout_secs = 0, "`idle_timeout_secs`"),
            (|f| f.connect_timeout_secs = 3601, "`connect_timeout_secs`"),
            (|f| f.tun_name = "-dns".into(), "`tun_name`"),
            (
                |f| f.tun_name = "a-name-too-long-for-linux".into(),
                "`tun_name`",
            ),
            (
                |f| f.token = "t".repeat(MAX_CREDENTIAL_LEN + 1),
                "at most 4096",
            ),
        ];
        for (change, expected) in cases {
            let mut file = good.clone();
            change(&mut file);
            let e = file.check_profile("alice").unwrap_err().to_string();
            assert!(e.contains(expected), "{expected}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hub_and_spoke_values_users_get_wrong_are_refused_with_what_to_do() {
        let dir = temp("mistakes");
        init_with_alice(&dir);
        let path = dir.join("hub.toml");
        let good: HubFile = load(&path, "hub").unwrap();
        let refused = |file: &HubFile, expected: &[&str]| {
            let e = file.resolve(&path).unwrap_err().to_string();
            for part in expected {
                assert!(e.contains(part), "{part}: {e}");
            }
        };
        let mut file = good.clone();
        file.idle_timeout_secs = 0;
        refused(&file, &["`idle_timeout_secs` is 0", "1 to 3600"]);
        for pool in ["10.9.0.0/31", "10.9.0.0/32"] {
            let mut file = good.clone();
            file.pool = pool.parse().unwrap();
            refused(&file, &["no room", "/30 or larger"]);
        }
        let mut file = good.clone();
        file.pool6 = Some("fd00::/127".parse().unwrap());
        refused(&file, &["no room", "/126 or larger"]);

        // A hub key below a `[[spoke]]` line, and a link MTU far out of range.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}link_mtu = 9000\n")).unwrap();
        let e = load::<HubFile>(&path, "hub").unwrap_err().to_string();
        assert!(e.contains("above the first `[[spoke]]`"), "{e}");
        let without_pool: String = text
            .lines()
            .filter(|l| !l.starts_with("pool ="))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, without_pool).unwrap();
        let e = load::<HubFile>(&path, "hub").unwrap_err().to_string();
        assert!(
            e.contains("missing field `pool`") && e.contains("pool = \"10.100.0.0/24\""),
            "{e}"
        );
        std::fs::write(&path, format!("link_mtu = 99999\n{text}")).unwrap();
        let e = load::<HubFile>(&path, "hub").unwrap_err().to_string();
        assert!(
            e.contains("`link_mtu` is 99999; it must be 1280 to 9216"),
            "{e}"
        );
        std::fs::write(&path, &text).unwrap();

        let spoke_path = dir.join("spokes/alice.toml");
        let spoke: SpokeFile = load(&spoke_path, "spoke").unwrap();
        let mut file = spoke.clone();
        file.keep_alive_secs = 6;
        let e = file.resolve(&spoke_path).unwrap_err().to_string();
        assert!(
            e.contains("must be shorter than `idle_timeout_secs`"),
            "{e}"
        );
        let mut file = spoke.clone();
        file.ca = Some("missing.pem".into());
        let e = file.resolve(&spoke_path).unwrap_err().to_string();
        assert!(e.contains("both `ca_pem` and `ca`"), "{e}");
        let mut file = spoke.clone();
        file.token.clear();
        let e = file.resolve(&spoke_path).unwrap_err().to_string();
        assert!(e.contains("`token` is empty or missing"), "{e}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let mut file = spoke;
        file.ca_pem = None;
        file.ca = Some(empty.clone());
        let e = file.resolve(&spoke_path).unwrap_err().to_string();
        assert!(e.contains(&format!("{} is empty", empty.display())), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn init_checks_everything_before_writing_anything() {
        let options = |spokes: &[&str], pool: &str, port: u16| InitOptions {
            dir: temp("init-checks"),
            name: "192.0.2.1".into(),
            port,
            pool: pool.parse().unwrap(),
            pool6: None,
            spokes: spokes.iter().map(|s| s.to_string()).collect(),
        };
        for (options, expected) in [
            (options(&["a", "a"], "10.7.0.0/24", 4433), "given twice"),
            (options(&["ok", "../x"], "10.7.0.0/24", 4433), "spoke name"),
            (options(&["ok"], "10.7.0.0/32", 4433), "no room"),
            (options(&["ok"], "10.7.0.0/24", 0), "--port 0"),
        ] {
            let e = init(&options).unwrap_err().to_string();
            assert!(e.contains(expected), "{expected}: {e}");
            assert!(!options.dir.exists(), "{expected}: files written");
        }
    }

    #[test]
    fn add_spoke_refuses_hidden_and_option_like_names_and_foreign_files() {
        let dir = temp("add-spoke-names");
        init_with_alice(&dir);
        let before = std::fs::read_to_string(dir.join("hub.toml")).unwrap();
        for name in [
            ".",
            "..",
            ".hidden",
            "-x",
            "",
            "a b",
            "a/b",
            &"x".repeat(65),
        ] {
            let e = add_spoke(&dir, name, AuthMode::Token)
                .unwrap_err()
                .to_string();
            assert!(e.contains("spoke name"), "{name:?}: {e}");
        }
        // A file left by a spoke removed from hub.toml is not overwritten.
        std::fs::write(dir.join("spokes/carol.toml"), "kept").unwrap();
        let e = add_spoke(&dir, "carol", AuthMode::Token)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exists already") && e.contains("names no such spoke"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("spokes/carol.toml")).unwrap(),
            "kept"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("hub.toml")).unwrap(),
            before
        );
        add_spoke(&dir, "_under.score-1", AuthMode::Token).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hub_files_the_protocol_cannot_carry_are_refused_at_start_and_reload() {
        let dir = temp("limits");
        init_with_alice(&dir);
        let path = dir.join("hub.toml");
        let good: HubFile = load(&path, "hub").unwrap();
        good.reload(&path).unwrap();
        let mut file = good.clone();
        file.dns = vec![IpAddr::from([10, 53, 0, 1])];
        file.pool = "10.9.0.0/24".parse().unwrap();
        file.link_mtu = 9000;
        file.spokes.pop();
        file.routes.push("10.99.0.0/16".parse().unwrap());
        assert_eq!(file.needs_restart(&good), ["link_mtu", "pool"]);
        let mut reloadable = good.clone();
        reloadable.spokes.pop();
        assert!(
            reloadable.needs_restart(&good).is_empty(),
            "spokes are reloaded"
        );
        file.dns = (0..65).map(|i| IpAddr::from([10, 53, 0, i])).collect();
        let e = file.reload(&path).unwrap_err().to_string();
        assert!(e.contains("`dns`") && e.contains("64 at most"), "{e}");
        let mut file = good.clone();
        file.routes = (0..1024u32)
            .map(|i| IpNet::new(IpAddr::from((0x0b00_0000 + (i << 9)).to_be_bytes()), 24).unwrap())
            .collect();
        let e = file.resolve(&path).unwrap_err().to_string();
        assert!(e.contains("`routes`") && e.contains("1024 at most"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn init_with_pool6_writes_a_dual_stack_hub_and_refuses_one_family_twice() {
        let options = |dir: &Path, pool6: &str| InitOptions {
            dir: dir.to_owned(),
            name: "192.0.2.1".into(),
            port: 4433,
            pool: "10.7.0.0/24".parse().unwrap(),
            pool6: Some(pool6.parse().unwrap()),
            spokes: vec!["alice".into()],
        };
        let dir = temp("init-pool6");
        init(&options(&dir, "fd00:7::/64")).unwrap();
        let hub_path = dir.join("hub.toml");
        let hub: HubFile = load(&hub_path, "hub").unwrap();
        let (_, runtime) = hub.resolve(&hub_path).unwrap();
        assert_eq!(
            runtime.tun_addresses,
            vec![
                ("10.7.0.1".parse().unwrap(), 24),
                ("fd00:7::1".parse().unwrap(), 64)
            ]
        );
        let same = temp("init-pool6-same");
        let e = init(&options(&same, "10.8.0.0/24"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--pool6") && e.contains("other family"), "{e}");
        assert!(
            !same.join("hub.toml").exists(),
            "nothing written after a refusal"
        );
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&same);
    }

    #[test]
    fn init_writes_a_working_hub_and_spokes_and_refuses_to_overwrite() {
        let dir = temp("init");
        let options = InitOptions {
            dir: dir.clone(),
            // An address, not a DNS name: the test must not send DNS queries anywhere.
            name: "192.0.2.1".into(),
            port: 4433,
            pool: "10.7.0.0/24".parse().unwrap(),
            pool6: None,
            spokes: vec!["alice".into()],
        };
        init(&options).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for secret in ["ca.key", "hub.key", "hub.toml", "spokes/alice.toml"] {
            let mode = std::fs::metadata(dir.join(secret))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{secret}");
        }
        let e = init(&options).unwrap_err().to_string();
        assert!(e.contains("initialised") && e.contains("add-spoke"), "{e}");
        add_spoke(&dir, "bob", AuthMode::Token).unwrap();
        assert!(
            add_spoke(&dir, "bob", AuthMode::Token)
                .unwrap_err()
                .to_string()
                .contains("exists")
        );
        assert!(add_spoke(&dir, "no spaces", AuthMode::Token).is_err());

        let hub_path = dir.join("hub.toml");
        let hub: HubFile = load(&hub_path, "hub").unwrap();
        let (config, runtime) = hub.resolve(&hub_path).unwrap();
        assert_eq!(config.credentials.len(), 2);
        assert_eq!(
            runtime.tun_addresses,
            vec![("10.7.0.1".parse().unwrap(), 24)]
        );
        let spoke_path = dir.join("spokes/bob.toml");
        let spoke: SpokeFile = load(&spoke_path, "spoke").unwrap();
        // The token in the spoke's file matches the digest in the hub's.
        let digest = slopn_proto::Credential::digest(spoke.token.as_bytes());
        assert!(
            config
                .credentials
                .iter()
                .any(|c| c.identity == "bob" && c.auth == Auth::Token { sha256: digest })
        );
        assert_eq!(spoke.server_name, "192.0.2.1");
        // A certificate spoke: no token anywhere, a certificate from the hub's CA.
        let carol = add_spoke(&dir, "carol", AuthMode::Certificate).unwrap();
        let carol: SpokeFile = load(&carol, "spoke").unwrap();
        assert!(carol.token.is_empty() && carol.certificate_pem.is_some());
        let (spoke_config, _) = carol.resolve(&dir.join("spokes/carol.toml")).unwrap();
        assert!(spoke_config.client_certificate.is_some());
        let hub: HubFile = load(&hub_path, "hub").unwrap();
        let (config, _) = hub.resolve(&hub_path).unwrap();
        assert!(
            config
                .credentials
                .contains(&Credential::certificate("carol"))
        );
        assert!(!config.client_ca.is_empty());

        // The congestion controller: `init` writes the default, other names are taken, an
        // unknown one is refused with the list.
        assert_eq!(config.transport.congestion, Congestion::Tunnel);
        let mut hub: HubFile = load(&hub_path, "hub").unwrap();
        hub.congestion = "bbr".into();
        let (config, _) = hub.resolve(&hub_path).unwrap();
        assert_eq!(config.transport.congestion, Congestion::Bbr);
        hub.congestion = "vegas".into();
        let e = hub.resolve(&hub_path).unwrap_err().to_string();
        assert!(
            e.contains("\"vegas\"") && e.contains("tunnel, cubic, newreno, bbr"),
            "{e}"
        );

        // The link MTU: 1500 unless set (and then not written), a jumbo-frame hub's spokes
        // get its value, out of range is refused with the range.
        assert_eq!(config.transport.max_mtu, 1452);
        let text = std::fs::read_to_string(&hub_path).unwrap();
        assert!(!text.contains("link_mtu"), "{text}");
        let mut hub: HubFile = load(&hub_path, "hub").unwrap();
        hub.link_mtu = 9000;
        let (config, runtime) = hub.resolve(&hub_path).unwrap();
        assert_eq!((config.transport.max_mtu, runtime.tun_mtu), (8952, 8914));
        save(&hub_path, &hub, "").unwrap();
        let dave = add_spoke(&dir, "dave", AuthMode::Token).unwrap();
        let dave: SpokeFile = load(&dave, "spoke").unwrap();
        assert_eq!(dave.link_mtu, 9000);
        let (spoke_config, _) = dave.resolve(&dir.join("spokes/dave.toml")).unwrap();
        assert_eq!(spoke_config.transport.max_mtu, 8952);
        for bad in [1279, 9217] {
            hub.link_mtu = bad;
            let e = hub.resolve(&hub_path).unwrap_err().to_string();
            assert!(
                e.contains("`link_mtu` is") && e.contains("1280 to 9216"),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
