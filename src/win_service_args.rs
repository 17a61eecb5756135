//! The Windows service's command line and the installing user's identity, built and
//! parsed apart from the Windows calls so that they are tested everywhere.

use std::ffi::OsString;

use crate::service::ServiceOptions;

/// The arguments the service control manager starts `spoke.exe` with: the service's own
/// options, so that what `install` was told holds at every start.
pub fn launch_arguments(options: &ServiceOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "service".into(),
        "--windows-service".into(),
        "--socket".into(),
        options.socket.clone().into(),
        "--profiles".into(),
        options.profiles.clone().into(),
    ];
    #[cfg(windows)]
    for sid in &options.users {
        args.push("--allow-user".into());
        args.push(sid.into());
    }
    if let Some(addr) = options.metrics_listen {
        args.push("--metrics-listen".into());
        args.push(addr.to_string().into());
    }
    args
}

/// The security identifier in `whoami /user /fo csv /nh`'s output
/// (`"host\user","S-1-5-21-…"`).
pub fn parse_whoami_sid(out: &str) -> Option<String> {
    let line = out.lines().find(|l| !l.trim().is_empty())?;
    let sid = line.rsplit(',').next()?.trim().trim_matches('"');
    let digits = sid.strip_prefix("S-1-")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
        .then(|| sid.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whoami_gives_the_sid() {
        assert_eq!(
            parse_whoami_sid("\r\n\"desktop-1\\alice\",\"S-1-5-21-111-222-333-1001\"\r\n")
                .as_deref(),
            Some("S-1-5-21-111-222-333-1001")
        );
        for bad in [
            "",
            "\"x\\y\",\"\"",
            "\"x\\y\",\"S-1-5-21-1) (A\"",
            "garbage",
        ] {
            assert_eq!(parse_whoami_sid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_service_starts_with_its_options() {
        let options = ServiceOptions {
            metrics_listen: Some("127.0.0.1:9465".parse().unwrap()),
            ..ServiceOptions::default()
        };
        let args: Vec<String> = launch_arguments(&options)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(&args[..2], ["service", "--windows-service"]);
        assert!(
            args.windows(2)
                .any(|w| w == ["--profiles", crate::service::PROFILES])
        );
        assert!(
            args.windows(2)
                .any(|w| w == ["--metrics-listen", "127.0.0.1:9465"])
        );
    }
}
