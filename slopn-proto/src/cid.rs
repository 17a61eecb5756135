//! Connection IDs from the seed, signed with a key that survives restarts.
//!
//! quinn's own generators draw from the OS RNG. Ours draws from the seeded RNG, and signs
//! each ID with a key derived from the stateless-reset key. A restarted hub with the same
//! key therefore recognises IDs its previous incarnation issued and answers packets on those
//! dead connections with a stateless reset, so spokes reconnect at once instead of waiting
//! for their idle timeout.

use std::hash::Hasher;
use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NONCE_LEN: usize = 4;
const SIGNATURE_LEN: usize = 4;

/// Generates 8-byte connection IDs: 4 random bytes and a 4-byte keyed signature.
pub(crate) struct SignedCidGenerator {
    rng: StdRng,
    key: u64,
}

impl SignedCidGenerator {
    pub(crate) fn new(seed: [u8; 32], key: u64) -> Self {
        Self {
            rng: StdRng::from_seed(seed),
            key,
        }
    }

    fn signature(&self, nonce: &[u8]) -> [u8; 8] {
        let mut hasher = rustc_hash::FxHasher::default();
        hasher.write_u64(self.key);
        hasher.write(nonce);
        hasher.finish().to_le_bytes()
    }
}

impl ConnectionIdGenerator for SignedCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0; NONCE_LEN + SIGNATURE_LEN];
        self.rng.fill_bytes(&mut bytes[..NONCE_LEN]);
        let signature = self.signature(&bytes[..NONCE_LEN]);
        bytes[NONCE_LEN..].copy_from_slice(&signature[..SIGNATURE_LEN]);
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() != NONCE_LEN + SIGNATURE_LEN {
            return Err(InvalidCid);
        }
        let (nonce, signature) = cid.split_at(NONCE_LEN);
        if self.signature(nonce)[..SIGNATURE_LEN] == *signature {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        NONCE_LEN + SIGNATURE_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}
