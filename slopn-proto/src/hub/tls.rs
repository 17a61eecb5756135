//! The hub's TLS setup, kept to rebuild the QUIC server configuration when credentials
//! change.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use super::HubError;
use crate::auth::Authenticator;
use crate::clock::WallClock;
use crate::tls::{self, CertifiedKey};

/// What the hub needs to rebuild its QUIC server configuration when credentials change.
pub(super) struct HubTls {
    pub(super) provider: Arc<rustls::crypto::CryptoProvider>,
    pub(super) identity: CertifiedKey,
    pub(super) client_ca: Vec<CertificateDer<'static>>,
    pub(super) token_key: [u8; 32],
    pub(super) transport: Arc<quinn_proto::TransportConfig>,
    pub(super) clock: Arc<WallClock>,
}

impl HubTls {
    /// The server configuration for these credentials: a client certificate is optional,
    /// required when every spoke uses one, and not asked for when none does.
    pub(super) fn server_config(
        &self,
        authenticator: &Authenticator,
    ) -> Result<Arc<quinn_proto::ServerConfig>, HubError> {
        if authenticator.uses_certificates() && self.client_ca.is_empty() {
            return Err(HubError::Config(
                "some spokes authenticate with certificates, but no client CA is configured".into(),
            ));
        }
        let client_ca: &[CertificateDer<'static>] = if authenticator.uses_certificates() {
            &self.client_ca
        } else {
            &[]
        };
        let crypto = tls::server_config(
            &self.provider,
            &self.identity,
            client_ca,
            authenticator.certificates_only(),
            self.clock.clone(),
        )?;
        let token_key =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&self.token_key);
        let mut server = quinn_proto::ServerConfig::new(crypto, Arc::new(token_key));
        server.transport_config(self.transport.clone());
        server.time_source(self.clock.clone());
        server.migration(true);
        Ok(Arc::new(server))
    }
}
