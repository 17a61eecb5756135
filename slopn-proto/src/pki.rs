//! Certificate helpers: a CA, the hub's server certificate and spokes' client certificates,
//! all Ed25519, returned as PEM.
//!
//! Keys are derived from caller-supplied 32-byte seeds and validity periods are explicit, so
//! this module reads neither a clock nor an OS random source. Tools seed it from the
//! operating system's RNG; tests from fixed values, which makes certificates reproducible.
//! Ed25519 signatures have a fixed size, so handshakes have the same size on every run.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, SanType, SerialNumber,
};
use rustls::pki_types::PrivatePkcs8KeyDer;
use thiserror::Error;

use crate::tls::{CertifiedKey, TlsError};

/// Why a certificate could not be made or loaded.
#[derive(Debug, Error)]
pub enum PkiError {
    /// rcgen rejected the parameters or the input PEM.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A name is neither a DNS name nor an IP address.
    #[error("{0:?} is not a valid DNS name or IP address")]
    BadName(String),
    /// The generated PEM could not be loaded back for TLS.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from an hour before `start` (tolerating clock skew) for `days` days.
    pub fn days_from(start: SystemTime, days: u64) -> Self {
        Self {
            not_before: start - Duration::from_secs(3600),
            not_after: start + Duration::from_secs(days * 86_400),
        }
    }

    fn apply(&self, params: &mut CertificateParams) {
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// The certificate (`CERTIFICATE` block).
    pub cert_pem: String,
    /// The PKCS#8 private key (`PRIVATE KEY` block).
    pub key_pem: String,
}

impl IssuedCertificate {
    /// Loads the pair for use as a TLS identity.
    pub fn certified_key(&self) -> Result<CertifiedKey, TlsError> {
        CertifiedKey::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }
}

/// A certificate authority that signs the hub's and spokes' certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new self-signed CA named `common_name`, its key derived from `seed`.
    pub fn generate(
        common_name: &str,
        seed: [u8; 32],
        validity: Validity,
    ) -> Result<Self, PkiError> {
        let key = key_from_seed(seed)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(serial(&seed));
        validity.apply(&mut params);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and private key, as written by [`Self::cert_pem`] and
    /// [`Self::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate, which spokes (and, for mTLS, the hub) trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key. Keep it offline or at least owner-readable only.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A server certificate for the hub, valid for each of `names` (DNS names or IP
    /// addresses); the first name is also the common name.
    pub fn issue_server(
        &self,
        names: &[String],
        seed: [u8; 32],
        validity: Validity,
    ) -> Result<IssuedCertificate, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(names.first().map_or("slopn hub", String::as_str));
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params, seed, validity)
    }

    /// A client certificate naming `identity` (common name and DNS SAN), for mTLS.
    pub fn issue_client(
        &self,
        identity: &str,
        seed: [u8; 32],
        validity: Validity,
    ) -> Result<IssuedCertificate, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(identity);
        params.subject_alt_names = vec![san(identity)?];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.issue(params, seed, validity)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        seed: [u8; 32],
        validity: Validity,
    ) -> Result<IssuedCertificate, PkiError> {
        let key = key_from_seed(seed)?;
        params.serial_number = Some(serial(&seed));
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(PkiError::BadName(name.to_owned()));
    }
    Ok(SanType::DnsName(
        name.try_into()
            .map_err(|_| PkiError::BadName(name.to_owned()))?,
    ))
}

/// An Ed25519 key pair from a 32-byte seed, via its PKCS#8 v1 encoding (RFC 8410).
fn key_from_seed(seed: [u8; 32]) -> Result<KeyPair, PkiError> {
    const PKCS8_ED25519_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PKCS8_ED25519_PREFIX.to_vec();
    der.extend_from_slice(&seed);
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der),
        &PKCS_ED25519,
    )?)
}

/// A positive 16-byte serial number derived from the key seed.
fn serial(seed: &[u8; 32]) -> SerialNumber {
    let digest = ring::digest::digest(&ring::digest::SHA256, seed);
    let mut bytes = digest.as_ref()[..16].to_vec();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validity() -> Validity {
        Validity::days_from(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            30,
        )
    }

    #[test]
    fn issues_loadable_reproducible_certificates() {
        let ca = CertificateAuthority::generate("test CA", [1; 32], validity()).unwrap();
        let hub = ca
            .issue_server(
                &["hub.example".into(), "192.0.2.1".into()],
                [2; 32],
                validity(),
            )
            .unwrap();
        hub.certified_key().unwrap();
        let again = CertificateAuthority::generate("test CA", [1; 32], validity()).unwrap();
        assert_eq!(ca.cert_pem(), again.cert_pem());
        let reloaded = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let spoke = reloaded.issue_client("alice", [3; 32], validity()).unwrap();
        assert!(spoke.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(ca.issue_client("not a name", [3; 32], validity()).is_err());
    }
}
