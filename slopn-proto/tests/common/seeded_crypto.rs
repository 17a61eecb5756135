//! A crypto provider whose handshake randomness comes from a seed: *ring*'s cipher suites and
//! signatures (Ed25519 signs deterministically), an X25519 key exchange whose private keys
//! come from the seed, and a seeded `secure_random`. With it a simulation replays byte for
//! byte, TLS included.

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret,
    SupportedKxGroup,
};
use rustls::{Error, NamedGroup};
use slopn_proto::key_exchange::{KeyExchange, X25519MlKem768};
use slopn_proto::tls;

#[derive(Debug)]
struct SeededRandom(Mutex<StdRng>);

impl SeededRandom {
    fn bytes<const N: usize>(&self) -> [u8; N] {
        let mut out = [0; N];
        self.fill(&mut out).expect("never fails");
        out
    }
}

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        self.0.lock().unwrap().fill(buf);
        Ok(())
    }
}

#[derive(Debug)]
struct SeededX25519(&'static SeededRandom);

impl SupportedKxGroup for SeededX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let secret = x25519_dalek::StaticSecret::from(self.0.bytes::<32>());
        let public = x25519_dalek::PublicKey::from(&secret);
        Ok(Box::new(X25519Exchange { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct X25519Exchange {
    secret: x25519_dalek::StaticSecret,
    public: x25519_dalek::PublicKey,
}

impl ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        let peer: [u8; 32] = peer
            .try_into()
            .map_err(|_| Error::from(rustls::PeerMisbehaved::InvalidKeyShare))?;
        let shared = self.secret.diffie_hellman(&peer.into());
        if !shared.was_contributory() {
            return Err(rustls::PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_bytes()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// SloPN's default provider (the hybrid key exchange) with its randomness drawn from `seed`.
pub fn provider(seed: u64) -> Arc<CryptoProvider> {
    provider_with(seed, KeyExchange::default())
}

/// SloPN's provider for `key_exchange` with its randomness drawn from `seed`.
pub fn provider_with(seed: u64, key_exchange: KeyExchange) -> Arc<CryptoProvider> {
    let random: &'static SeededRandom = Box::leak(Box::new(SeededRandom(Mutex::new(
        StdRng::seed_from_u64(seed),
    ))));
    let x25519: &'static SeededX25519 = Box::leak(Box::new(SeededX25519(random)));
    let hybrid: &'static X25519MlKem768 = Box::leak(Box::new(X25519MlKem768::new(x25519, random)));
    Arc::new(CryptoProvider {
        kx_groups: key_exchange.groups_with(hybrid, x25519),
        secure_random: random,
        ..tls::default_provider().as_ref().clone()
    })
}
