//! `key_exchange` in hub.toml and spoke.toml: which TLS key exchange an end offers or
//! accepts (slopn-proto's [`KeyExchange`]).

use serde::{Deserialize, Serialize};
use slopn_proto::key_exchange::KeyExchange;

/// The `key_exchange` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyExchangeSetting {
    /// X25519MLKEM768 (post-quantum hybrid) preferred, X25519 accepted.
    #[default]
    Hybrid,
    /// X25519 only.
    Classic,
    /// X25519MLKEM768 only: a peer without it is refused in the handshake.
    HybridOnly,
}

impl KeyExchangeSetting {
    /// Whether this is the default (left out when a file is written).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl From<KeyExchangeSetting> for KeyExchange {
    fn from(setting: KeyExchangeSetting) -> Self {
        match setting {
            KeyExchangeSetting::Hybrid => Self::Hybrid,
            KeyExchangeSetting::Classic => Self::Classic,
            KeyExchangeSetting::HybridOnly => Self::HybridOnly,
        }
    }
}

/// The sentence for a handshake that failed because the spoke and the hub have no key
/// exchange group in common (the TLS `error` says so), given the spoke's setting; `None`
/// for another failure.
pub fn no_common_group(error: &str, setting: KeyExchangeSetting) -> Option<String> {
    if !error.contains("NoKxGroupsInCommon") {
        return None;
    }
    let fix = match setting {
        KeyExchangeSetting::HybridOnly => {
            "this spoke accepts only the post-quantum X25519MLKEM768 (key_exchange = \
             \"hybrid-only\") and the hub does not offer it: upgrade the hub or set \
             key_exchange = \"hybrid\" in this spoke's file"
        }
        _ => {
            "the hub accepts only the post-quantum X25519MLKEM768 (key_exchange = \
             \"hybrid-only\" in hub.toml) and this spoke does not offer it: set \
             key_exchange = \"hybrid\" in this spoke's file (or upgrade the spoke)"
        }
    };
    Some(format!(
        "the hub refused the TLS handshake: the two ends have no key exchange in common; {fix}."
    ))
}

/// What a spoke whose TLS handshake the hub refused may have to change about the key
/// exchange, given its own setting.
pub fn refusal_hint(setting: KeyExchangeSetting) -> &'static str {
    match setting {
        KeyExchangeSetting::Classic => {
            " If the hub requires the post-quantum key exchange (key_exchange = \
             \"hybrid-only\"), set key_exchange = \"hybrid\" in this spoke's file."
        }
        KeyExchangeSetting::HybridOnly => {
            " This spoke accepts only the post-quantum key exchange (key_exchange = \
             \"hybrid-only\"): if the hub is older or set to \"classic\", upgrade it or set \
             key_exchange = \"hybrid\" here."
        }
        KeyExchangeSetting::Hybrid => "",
    }
}
