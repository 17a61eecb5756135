//! libcrux's ML-KEM-768 (what SloPN ships) and RustCrypto's, an independent implementation
//! of FIPS 203, agree byte for byte on the inputs of slopn-proto's known-answer test
//! (`key_exchange::tests::known_answer_*`): the key pair from the seed d || z, the
//! ciphertext and shared secret from the message m, and decapsulation.

use libcrux_ml_kem::mlkem768;
use ml_kem::EncapsulateDeterministic;
use ml_kem::kem::Decapsulate;
use ml_kem::{EncodedSizeUser, KemCore, MlKem768};

#[test]
fn libcrux_and_rustcrypto_agree_on_the_known_answer_inputs() {
    for (seed, message) in [(0x33u8, 0x44u8), (0x00, 0xff), (0xa5, 0x5a)] {
        let (d, z, m) = ([seed; 32], [seed; 32], [message; 32]);
        let ours = mlkem768::generate_key_pair([seed; 64]);
        let (dk, ek) = MlKem768::generate_deterministic(&d.into(), &z.into());
        assert_eq!(ours.pk().as_slice(), ek.as_bytes().as_slice(), "encapsulation key");
        assert_eq!(ours.sk().as_slice(), dk.as_bytes().as_slice(), "decapsulation key");

        let (ciphertext, secret) = mlkem768::encapsulate(ours.public_key(), m);
        let (their_ciphertext, their_secret) = ek.encapsulate_deterministic(&m.into()).unwrap();
        assert_eq!(ciphertext.as_slice().as_slice(), their_ciphertext.as_slice(), "ciphertext");
        assert_eq!(&secret[..], their_secret.as_slice(), "shared secret");
        let decapsulated = dk.decapsulate(&their_ciphertext).unwrap();
        assert_eq!(&mlkem768::decapsulate(ours.private_key(), &ciphertext)[..], decapsulated.as_slice());
    }
}
