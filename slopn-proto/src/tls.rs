//! TLS 1.3 configuration for QUIC: rustls with the *ring* provider only, ALPN pinned to
//! [`ALPN`], spokes trusting only the configured CA (no system roots),
//! and certificate validity checked against the state machine's own wall clock.

use std::sync::Arc;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::clock::WallClock;
use crate::control::ALPN;
use crate::key_exchange::KeyExchange;

/// Why a TLS identity or trust store could not be loaded or used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The PEM data holds no certificate.
    #[error("no certificate found in the PEM data")]
    NoCertificate,
    /// The PEM data holds no private key.
    #[error("no private key found in the PEM data")]
    NoPrivateKey,
    /// The PEM data could not be parsed.
    #[error("invalid PEM data: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    /// rustls refused the certificate, key or trust anchor.
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// A CA certificate could not be used as a trust anchor.
    #[error("CA certificate unusable as a trust anchor: {0}")]
    TrustAnchor(#[from] rustls::client::VerifierBuilderError),
}

fn client_verifier_error(e: rustls::server::VerifierBuilderError) -> TlsError {
    TlsError::Rustls(rustls::Error::General(format!(
        "client CA unusable as a trust anchor: {e}"
    )))
}

/// The identity a client certificate names: its first DNS subject alternative name, or
/// else its common name.
pub(crate) fn certificate_identity(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                return Some((*dns).to_owned());
            }
        }
    }
    x509.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// A certificate chain and its private key: the hub's TLS identity.
#[derive(Debug)]
pub struct CertifiedKey {
    /// End-entity certificate first, then any intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the end-entity certificate.
    pub key: PrivateKeyDer<'static>,
}

impl CertifiedKey {
    /// Parses a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = parse_certificates(cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey,
            e => TlsError::Pem(e),
        })?;
        Ok(Self { chain, key })
    }
}

impl Clone for CertifiedKey {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Parses every certificate in PEM data (for example a CA bundle); at least one is required.
pub fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// The crypto provider hub and spoke use unless their configuration names another:
/// [`provider`] with the hybrid post-quantum key exchange ([`KeyExchange::Hybrid`]).
pub fn default_provider() -> Arc<CryptoProvider> {
    provider(KeyExchange::default())
}

/// *ring* with AES-128-GCM preferred (128-bit security, the first choice of the major QUIC
/// stacks, and 10 AES rounds per block instead of AES-256's 14 on every tunnelled byte),
/// and the key exchange groups of `key_exchange` (X25519MLKEM768 and X25519 by default).
///
/// Its key exchange and random values come from the operating system. A simulation that
/// must replay byte for byte gives [`HubConfig::crypto`](crate::HubConfig::crypto) and
/// [`SpokeConfig::crypto`](crate::SpokeConfig::crypto) a provider whose `secure_random`
/// and `kx_groups` draw from a seed instead (the simulation tests have one).
pub fn provider(key_exchange: KeyExchange) -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: key_exchange.groups(),
        ..rustls::crypto::ring::default_provider()
    })
}

/// The hub's QUIC TLS configuration. With `client_ca`, spokes may (or, with
/// `require_client_cert`, must) present a client certificate signed by one of them.
pub(crate) fn server_config(
    provider: &Arc<CryptoProvider>,
    identity: &CertifiedKey,
    client_ca: &[CertificateDer<'static>],
    require_client_cert: bool,
    clock: Arc<WallClock>,
) -> Result<Arc<QuicServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_details(provider.clone(), clock)
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = if client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in client_ca {
            roots.add(cert.clone())?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        let verifier = if require_client_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(verifier.build().map_err(client_verifier_error)?)
    };
    let mut config = builder.with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // Sessions are short-lived relative to reconnects and tokens authenticate every session:
    // resumption would only add state.
    config.send_tls13_tickets = 0;
    let config = QuicServerConfig::try_from(config)
        .map_err(|_| rustls::Error::General("no TLS_AES_128_GCM_SHA256 suite".into()))?;
    Ok(Arc::new(config))
}

/// The spoke's QUIC TLS configuration: trusts exactly `trust_anchors`, and presents
/// `client_cert` if given.
pub(crate) fn client_config(
    provider: &Arc<CryptoProvider>,
    trust_anchors: &[CertificateDer<'static>],
    client_cert: Option<&CertifiedKey>,
    clock: Arc<WallClock>,
) -> Result<Arc<QuicClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in trust_anchors {
        roots.add(cert.clone())?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let builder = rustls::ClientConfig::builder_with_details(provider.clone(), clock)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier);
    let mut config = match client_cert {
        Some(cert) => builder.with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    let config = QuicClientConfig::try_from(config)
        .map_err(|_| rustls::Error::General("no TLS_AES_128_GCM_SHA256 suite".into()))?;
    Ok(Arc::new(config))
}
