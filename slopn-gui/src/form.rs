//! The "new profile" form: checked field by field before anything is sent, then written as
//! the spoke file the service imports (which checks it again, completely).

use serde::{Deserialize, Serialize};
use slopn_control::MAX_TOKEN_BYTES;

/// The UDP port hubs listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 4433;

/// What the user typed.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProfileForm {
    /// The profile's name.
    pub name: String,
    /// The hub, `host` or `host:port`.
    pub hub: String,
    /// The name in the hub's certificate (default: the hub's host).
    pub server_name: String,
    /// The access token.
    pub token: String,
    /// The CA certificate, PEM.
    pub ca_pem: String,
}

/// A problem with one field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field (`name`, `hub`, `server_name`, `token`, `ca_pem`).
    pub field: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// The spoke file the form becomes.
#[derive(Serialize)]
struct SpokeFile<'a> {
    hub: &'a str,
    server_name: &'a str,
    ca_pem: &'a str,
    token: &'a str,
}

impl ProfileForm {
    /// The name, hub and server name as they will be saved (trimmed, with the default port
    /// and server name filled in).
    fn normalized(&self) -> (String, String, String) {
        let name = self.name.trim().to_owned();
        let mut hub = self.hub.trim().to_owned();
        let bare_v6 = hub.contains("::") && !hub.starts_with('[');
        if !hub.is_empty() && (bare_v6 || !hub.contains(':')) {
            hub = if bare_v6 {
                format!("[{hub}]:{DEFAULT_PORT}")
            } else {
                format!("{hub}:{DEFAULT_PORT}")
            };
        }
        let mut server_name = self.server_name.trim().to_owned();
        if server_name.is_empty() {
            server_name = host(&hub).to_owned();
        }
        (name, hub, server_name)
    }

    /// Every problem, or the spoke file's text.
    pub fn to_toml(&self) -> Result<(String, String), Vec<FieldError>> {
        let (name, hub, server_name) = self.normalized();
        let token = self.token.trim();
        let ca_pem = self.ca_pem.trim();
        let mut errors = Vec::new();
        let mut problem = |field, message: &str| {
            errors.push(FieldError {
                field,
                message: message.to_owned(),
            })
        };
        if !slopn_control::is_profile_name(&name) {
            problem(
                "name",
                "Use 1 to 64 letters, digits, '.', '_' or '-' (not starting with '.').",
            );
        }
        let port_ok = slopn_control::hub_port(&hub).is_some();
        if hub.is_empty() || host(&hub).is_empty() || hub.contains(char::is_whitespace) {
            problem(
                "hub",
                "Enter the hub's address, such as hub.example.com or hub.example.com:4433.",
            );
        } else if !port_ok {
            problem(
                "hub",
                "The port after ':' must be a number from 1 to 65535.",
            );
        }
        if server_name.contains(char::is_whitespace) {
            problem(
                "server_name",
                "A server name has no spaces: it is the name in the hub's certificate.",
            );
        }
        if token.is_empty() {
            problem("token", "Paste the access token the hub operator gave you.");
        } else if token.len() > MAX_TOKEN_BYTES || token.contains(char::is_whitespace) {
            problem(
                "token",
                &format!(
                    "This is not an access token: a token is one word of at most \
                     {MAX_TOKEN_BYTES} characters."
                ),
            );
        }
        if !(ca_pem.contains("-----BEGIN CERTIFICATE-----")
            && ca_pem.contains("-----END CERTIFICATE-----"))
        {
            problem(
                "ca_pem",
                "Paste the CA certificate (the text from -----BEGIN CERTIFICATE----- to \
                 -----END CERTIFICATE-----) or choose the hub's ca.pem.",
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let file = SpokeFile {
            hub: &hub,
            server_name: &server_name,
            ca_pem: &format!("{ca_pem}\n"),
            token,
        };
        let text = toml::to_string(&file).map_err(|e| {
            vec![FieldError {
                field: "name",
                message: format!("Cannot write the profile: {e}"),
            }]
        })?;
        Ok((name, text))
    }
}

/// The host of `host:port` or `[v6]:port`.
fn host(hub: &str) -> &str {
    let host = hub.rsplit_once(':').map_or(hub, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";

    fn form() -> ProfileForm {
        ProfileForm {
            name: " office ".into(),
            hub: "hub.example.com".into(),
            server_name: String::new(),
            token: "abc123".into(),
            ca_pem: CA.into(),
        }
    }

    #[test]
    fn a_complete_form_becomes_a_spoke_file_with_defaults_filled_in() {
        let (name, text) = form().to_toml().unwrap();
        assert_eq!(name, "office");
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["hub"].as_str(), Some("hub.example.com:4433"));
        assert_eq!(parsed["server_name"].as_str(), Some("hub.example.com"));
        assert_eq!(parsed["token"].as_str(), Some("abc123"));
        assert!(parsed["ca_pem"].as_str().unwrap().starts_with("-----BEGIN"));
        let v6 = ProfileForm {
            hub: "2001:db8::1".into(),
            ..form()
        };
        let (_, text) = v6.to_toml().unwrap();
        assert!(text.contains("hub = \"[2001:db8::1]:4433\""), "{text}");
        assert!(text.contains("server_name = \"2001:db8::1\""), "{text}");
    }

    #[test]
    fn every_bad_field_is_named_with_a_fix() {
        let bad = ProfileForm {
            name: "../x".into(),
            hub: "hub.example.com:99999".into(),
            server_name: "two words".into(),
            token: String::new(),
            ca_pem: "not pem".into(),
        };
        let errors = bad.to_toml().unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["name", "hub", "server_name", "token", "ca_pem"]);
        let long = ProfileForm {
            token: "t".repeat(5000),
            ..form()
        };
        assert_eq!(long.to_toml().unwrap_err()[0].field, "token");
    }
}
