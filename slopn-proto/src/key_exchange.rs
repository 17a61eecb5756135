//! The TLS key exchange: X25519MLKEM768, the hybrid of X25519 and ML-KEM-768 that browsers
//! and aws-lc-rs deploy (codepoint 0x11EC, draft-ietf-tls-ecdhe-mlkem), built for the
//! *ring* provider, which has X25519 but no ML-KEM.
//!
//! Traffic recorded today stays safe against a future quantum computer only if the key
//! exchange resists one: ML-KEM does, X25519 does not. Combining both keeps the session
//! as strong as the stronger of the two: if ML-KEM (young) turned out weak, X25519 still
//! protects it.
//!
//! On the wire (post-quantum part first, then the classical one):
//!
//! ```text
//! client share:  ML-KEM-768 encapsulation key (1184 bytes) || X25519 public key (32)
//! server share:  ML-KEM-768 ciphertext        (1088 bytes) || X25519 public key (32)
//! secret:        ML-KEM-768 shared secret     (32 bytes)   || X25519 shared secret (32)
//! ```
//!
//! ML-KEM comes from libcrux: formally verified (panic freedom, functional correctness
//! against FIPS 203, secret-independent timing) in the form NSS and OpenSSH ship, with
//! an AVX2 path chosen at run time, and an API that takes its randomness as bytes, so a
//! seeded simulation replays it.

use rustls::crypto::{
    ActiveKeyExchange, CompletedKeyExchange, SecureRandom, SharedSecret, SupportedKxGroup,
};
use rustls::{Error, NamedGroup, PeerMisbehaved, ProtocolVersion};

use libcrux_ml_kem::mlkem768;

/// Bytes of an ML-KEM-768 encapsulation key.
pub const MLKEM768_ENCAPSULATION_KEY_LEN: usize = 1184;
/// Bytes of an ML-KEM-768 ciphertext.
pub const MLKEM768_CIPHERTEXT_LEN: usize = 1088;
/// Bytes of an X25519 public key.
pub const X25519_LEN: usize = 32;

/// Which key exchange groups an end offers (a spoke) or accepts (a hub), in preference
/// order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyExchange {
    /// X25519MLKEM768 first, X25519 as well: a spoke sends both key shares (one X25519
    /// key serves both), so a hub without the hybrid needs no HelloRetryRequest; a hub
    /// picks the hybrid whenever the spoke offers it.
    #[default]
    Hybrid,
    /// X25519 only.
    Classic,
    /// X25519MLKEM768 only: a peer without it fails the handshake.
    HybridOnly,
}

impl KeyExchange {
    /// The groups, most preferred first, with *ring*'s X25519 and the OS's randomness.
    pub fn groups(self) -> Vec<&'static dyn SupportedKxGroup> {
        self.groups_with(X25519MLKEM768, rustls::crypto::ring::kx_group::X25519)
    }

    /// The groups from `hybrid` and `classic` (a simulation's seeded ones).
    pub fn groups_with(
        self,
        hybrid: &'static dyn SupportedKxGroup,
        classic: &'static dyn SupportedKxGroup,
    ) -> Vec<&'static dyn SupportedKxGroup> {
        match self {
            Self::Hybrid => vec![hybrid, classic],
            Self::Classic => vec![classic],
            Self::HybridOnly => vec![hybrid],
        }
    }
}

/// A group's name as status documents and logs show it.
pub fn group_name(group: NamedGroup) -> String {
    match group {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768".into(),
        NamedGroup::X25519 => "X25519".into(),
        other => format!("{other:?}"),
    }
}

/// The sentence for a handshake refused for want of a key exchange group both ends have
/// (rustls's error `reason`), or `None` if it was refused for something else.
pub fn refusal(reason: &str) -> Option<&'static str> {
    reason.contains("NoKxGroupsInCommon").then_some(
        "refused a spoke in the TLS handshake: it offers no key exchange group this hub \
         accepts (with key_exchange = \"hybrid-only\" only X25519MLKEM768, the post-quantum \
         hybrid). Upgrade the spoke, or set key_exchange = \"hybrid\" in its file or in \
         hub.toml.",
    )
}

/// The operating system's randomness, through *ring*.
#[derive(Debug)]
struct OsRandom;

impl SecureRandom for OsRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), buf)
            .map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

/// X25519MLKEM768 with *ring*'s X25519 and the OS's randomness.
pub static X25519MLKEM768: &dyn SupportedKxGroup = &X25519MlKem768 {
    classic: rustls::crypto::ring::kx_group::X25519,
    random: &OsRandom,
};

/// The X25519MLKEM768 group over an X25519 group and a source of randomness (for
/// ML-KEM's key generation and encapsulation).
#[derive(Debug)]
pub struct X25519MlKem768 {
    classic: &'static dyn SupportedKxGroup,
    random: &'static dyn SecureRandom,
}

impl X25519MlKem768 {
    /// The hybrid over `classic` (which must be X25519) and `random`.
    pub const fn new(
        classic: &'static dyn SupportedKxGroup,
        random: &'static dyn SecureRandom,
    ) -> Self {
        Self { classic, random }
    }

    fn random<const N: usize>(&self) -> Result<[u8; N], Error> {
        let mut bytes = [0; N];
        self.random.fill(&mut bytes)?;
        Ok(bytes)
    }
}

fn invalid_key_share() -> Error {
    Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare)
}

/// Splits a peer's share into its ML-KEM part (`pq_len` bytes) and X25519 part.
fn split(share: &[u8], pq_len: usize) -> Result<(&[u8], &[u8]), Error> {
    if share.len() != pq_len + X25519_LEN {
        return Err(invalid_key_share());
    }
    Ok(share.split_at(pq_len))
}

/// The combined secret: ML-KEM's, then X25519's.
fn combine(post_quantum: &[u8], classic: &[u8]) -> SharedSecret {
    SharedSecret::from([post_quantum, classic].concat())
}

/// The hub's side: encapsulates to the spoke's ML-KEM key and agrees on X25519.
pub(crate) fn server_share(
    client_share: &[u8],
    classic: &dyn SupportedKxGroup,
    encapsulation_randomness: [u8; 32],
) -> Result<CompletedKeyExchange, Error> {
    let (key, classic_share) = split(client_share, MLKEM768_ENCAPSULATION_KEY_LEN)?;
    let key = mlkem768::MlKem768PublicKey::try_from(key).map_err(|_| invalid_key_share())?;
    // FIPS 203's encapsulation key check: every coefficient reduced modulo q.
    if !mlkem768::validate_public_key(&key) {
        return Err(invalid_key_share());
    }
    let classic = classic.start_and_complete(classic_share)?;
    let (ciphertext, secret) = mlkem768::encapsulate(&key, encapsulation_randomness);
    Ok(CompletedKeyExchange {
        group: NamedGroup::X25519MLKEM768,
        pub_key: [ciphertext.as_slice().as_slice(), &classic.pub_key].concat(),
        secret: combine(secret.as_slice(), classic.secret.secret_bytes()),
    })
}

impl SupportedKxGroup for X25519MlKem768 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let classic = self.classic.start()?;
        let key_pair = mlkem768::generate_key_pair(self.random::<64>()?);
        let pub_key = [key_pair.pk().as_slice(), classic.pub_key()].concat();
        Ok(Box::new(Active {
            classic,
            key_pair,
            pub_key,
        }))
    }

    fn start_and_complete(&self, client_share: &[u8]) -> Result<CompletedKeyExchange, Error> {
        server_share(client_share, self.classic, self.random::<32>()?)
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_3
    }
}

/// The spoke's side between its ClientHello and the hub's answer.
struct Active {
    classic: Box<dyn ActiveKeyExchange>,
    key_pair: mlkem768::MlKem768KeyPair,
    /// The encapsulation key, then the X25519 public key.
    pub_key: Vec<u8>,
}

impl ActiveKeyExchange for Active {
    fn complete(self: Box<Self>, server_share: &[u8]) -> Result<SharedSecret, Error> {
        let (ciphertext, classic_share) = split(server_share, MLKEM768_CIPHERTEXT_LEN)?;
        let ciphertext =
            mlkem768::MlKem768Ciphertext::try_from(ciphertext).map_err(|_| invalid_key_share())?;
        let classic = self.classic.complete(classic_share)?;
        let secret = mlkem768::decapsulate(self.key_pair.private_key(), &ciphertext);
        Ok(combine(secret.as_slice(), classic.secret_bytes()))
    }

    /// The X25519 part, offered as a key share of its own as well: a hub without the
    /// hybrid takes it without a HelloRetryRequest.
    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        Some((self.classic.group(), self.classic.pub_key()))
    }

    fn complete_hybrid_component(
        self: Box<Self>,
        server_share: &[u8],
    ) -> Result<SharedSecret, Error> {
        self.classic.complete(server_share)
    }

    fn pub_key(&self) -> &[u8] {
        &self.pub_key
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn x25519() -> &'static dyn SupportedKxGroup {
        rustls::crypto::ring::kx_group::X25519
    }

    /// X25519 with a fixed private key (x25519-dalek: ring takes none from outside).
    #[derive(Debug)]
    struct FixedX25519([u8; 32]);

    struct FixedActive(x25519_dalek::StaticSecret, x25519_dalek::PublicKey);

    impl SupportedKxGroup for FixedX25519 {
        fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
            let secret = x25519_dalek::StaticSecret::from(self.0);
            let public = x25519_dalek::PublicKey::from(&secret);
            Ok(Box::new(FixedActive(secret, public)))
        }
        fn name(&self) -> NamedGroup {
            NamedGroup::X25519
        }
    }

    impl ActiveKeyExchange for FixedActive {
        fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
            let peer: [u8; 32] = peer.try_into().map_err(|_| invalid_key_share())?;
            Ok(SharedSecret::from(
                &self.0.diffie_hellman(&peer.into()).as_bytes()[..],
            ))
        }
        fn pub_key(&self) -> &[u8] {
            self.1.as_bytes()
        }
        fn group(&self) -> NamedGroup {
            NamedGroup::X25519
        }
    }

    /// Randomness that is always the same byte.
    #[derive(Debug)]
    struct Fixed(u8);

    impl SecureRandom for Fixed {
        fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
            buf.fill(self.0);
            Ok(())
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sha256(bytes: &[u8]) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    }

    #[test]
    fn known_answer_the_shares_and_secret_are_ml_kem_then_x25519() {
        static CLIENT_X25519: FixedX25519 = FixedX25519([0x11; 32]);
        static SERVER_X25519: FixedX25519 = FixedX25519([0x22; 32]);
        static CLIENT: X25519MlKem768 = X25519MlKem768::new(&CLIENT_X25519, &Fixed(0x33));
        static SERVER: X25519MlKem768 = X25519MlKem768::new(&SERVER_X25519, &Fixed(0x44));
        let client = CLIENT.start().unwrap();
        let server = SERVER.start_and_complete(client.pub_key()).unwrap();
        let secret = client.complete(&server.pub_key).unwrap();
        assert_eq!(secret.secret_bytes(), server.secret.secret_bytes());

        // Each part is the component's own: ML-KEM-768 from its 64-byte seed and 32-byte
        // message, X25519 from the fixed keys; ML-KEM first in shares and secret.
        let key_pair = mlkem768::generate_key_pair([0x33; 64]);
        let (ciphertext, pq) = mlkem768::encapsulate(key_pair.public_key(), [0x44; 32]);
        let client_x = x25519_dalek::StaticSecret::from([0x11; 32]);
        let server_x = x25519_dalek::StaticSecret::from([0x22; 32]);
        let classic = server_x.diffie_hellman(&x25519_dalek::PublicKey::from(&client_x));
        let client_share = [
            key_pair.pk().as_slice(),
            x25519_dalek::PublicKey::from(&client_x).as_bytes(),
        ]
        .concat();
        let server_share = [
            ciphertext.as_slice().as_slice(),
            x25519_dalek::PublicKey::from(&server_x).as_bytes(),
        ]
        .concat();
        assert_eq!(CLIENT.start().unwrap().pub_key(), client_share);
        assert_eq!(server.pub_key, server_share);
        assert_eq!(
            secret.secret_bytes(),
            [&pq[..], classic.as_bytes()].concat()
        );
        // Pinned: a change of library or layout shows here first (the interop test with
        // aws-lc-rs, interop/, proves the layout against the reference).
        assert_eq!(
            sha256(&client_share),
            "c7a03faed6df023335367bc548e9a386f1cec5ed9dd4846a10f7b23c7e5aa38a",
            "client share"
        );
        assert_eq!(
            sha256(&server_share),
            "9019c35e7087910bb3095ae224ec10e4240dab1913a8d6770442e187eff205ac",
            "server share"
        );
        assert_eq!(
            sha256(secret.secret_bytes()),
            "64b107e83128df1cf47371506ff21e85d53a8e23cca000a684fc63348f6f14a7",
            "secret"
        );
    }

    proptest! {
        #[test]
        fn any_client_share_is_answered_or_refused_never_a_panic(
            share in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..1400),
                proptest::collection::vec(any::<u8>(), 1216..=1216),
            ]
        ) {
            let answer = X25519MLKEM768.start_and_complete(&share);
            if share.len() != 1216 {
                prop_assert!(answer.is_err());
            }
        }

        #[test]
        fn any_server_share_completes_or_is_refused_never_a_panic(
            share in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..1400),
                proptest::collection::vec(any::<u8>(), 1120..=1120),
            ]
        ) {
            let client = X25519MLKEM768.start().unwrap();
            let done = client.complete(&share);
            if share.len() != 1120 {
                prop_assert!(done.is_err());
            }
        }

        #[test]
        fn a_valid_key_with_any_x25519_part_never_panics(x in proptest::array::uniform32(any::<u8>())) {
            let client = X25519MLKEM768.start().unwrap();
            let share = [&client.pub_key()[..1184], &x[..]].concat();
            let _ = X25519MLKEM768.start_and_complete(&share);
        }
    }

    #[test]
    fn both_sides_agree_on_a_64_byte_secret_with_the_drafts_lengths() {
        let client = X25519MLKEM768.start().unwrap();
        assert_eq!(client.pub_key().len(), 1184 + 32);
        assert_eq!(client.group(), NamedGroup::X25519MLKEM768);
        let (group, classic) = client.hybrid_component().unwrap();
        assert_eq!(
            (group, classic),
            (NamedGroup::X25519, &client.pub_key()[1184..])
        );
        let server = X25519MLKEM768.start_and_complete(client.pub_key()).unwrap();
        assert_eq!(server.pub_key.len(), 1088 + 32);
        let secret = client.complete(&server.pub_key).unwrap();
        assert_eq!(secret.secret_bytes().len(), 64);
        assert_eq!(secret.secret_bytes(), server.secret.secret_bytes());
    }

    #[test]
    fn short_long_and_garbled_shares_are_refused_without_a_panic() {
        let client = X25519MLKEM768.start().unwrap();
        let share = client.pub_key().to_vec();
        for bad in [
            &[][..],
            &share[..1184],
            &share[..share.len() - 1],
            &[share.as_slice(), &[0]].concat(),
        ] {
            assert!(X25519MLKEM768.start_and_complete(bad).is_err());
        }
        // An encapsulation key whose coefficients are not reduced modulo q (all ones).
        let unreduced = [vec![0xff; 1184], share[1184..].to_vec()].concat();
        assert!(X25519MLKEM768.start_and_complete(&unreduced).is_err());
        // An all-zero X25519 share makes a non-contributory X25519 secret.
        let zero = [share[..1184].to_vec(), vec![0; 32]].concat();
        assert!(X25519MLKEM768.start_and_complete(&zero).is_err());
        // The server's share: the wrong length.
        for len in [0, 1088, 1088 + 31, 1088 + 33] {
            let client = X25519MLKEM768.start().unwrap();
            assert!(client.complete(&vec![1; len]).is_err(), "{len}");
        }
    }

    #[test]
    fn a_tampered_ciphertext_gives_another_secret_not_an_error() {
        // ML-KEM's implicit rejection: the spoke derives a different secret and the
        // handshake fails later, at Finished, as with any tampering.
        let client = X25519MLKEM768.start().unwrap();
        let client_share = client.pub_key().to_vec();
        let server = server_share(&client_share, x25519(), [7; 32]).unwrap();
        let mut tampered = server.pub_key.clone();
        tampered[0] ^= 1;
        let secret = client.complete(&tampered).unwrap();
        assert_ne!(secret.secret_bytes(), server.secret.secret_bytes());
    }

    #[test]
    fn the_groups_follow_the_setting() {
        let names =
            |k: KeyExchange| -> Vec<NamedGroup> { k.groups().iter().map(|g| g.name()).collect() };
        assert_eq!(
            names(KeyExchange::Hybrid),
            [NamedGroup::X25519MLKEM768, NamedGroup::X25519]
        );
        assert_eq!(names(KeyExchange::Classic), [NamedGroup::X25519]);
        assert_eq!(names(KeyExchange::HybridOnly), [NamedGroup::X25519MLKEM768]);
        assert!(!X25519MLKEM768.usable_for_version(ProtocolVersion::TLSv1_2));
        assert_eq!(group_name(NamedGroup::X25519MLKEM768), "X25519MLKEM768");
    }
}
