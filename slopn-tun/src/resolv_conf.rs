//! The tunnel's DNS servers written into `/etc/resolv.conf`, for systems without
//! systemd-resolved. The file keeps what it said before as comment lines, so a spoke that
//! crashed can still put it back (at its next start, or `spoke unlock`).
//!
//! The file is rewritten in place (one write of the whole text), not replaced by a
//! rename: `/etc/resolv.conf` is often a symbolic link or, under `ip netns exec`, a bind
//! mount, and both must stay what they are.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;

use crate::TunError;

/// The system's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The first line of a file SloPN wrote.
const HEADER: &str = "# Written by SloPN for the tunnel";
/// How each line of the original file is kept.
const ORIGINAL: &str = "#slopn-original: ";

/// `original` with `servers` (of device `device`) as its only name servers; its other lines
/// (`search`, `options`) stay in force, and all of it is kept to be restored.
pub fn tunnel_text(original: &str, device: &str, servers: &[IpAddr]) -> String {
    let mut text = format!(
        "{HEADER} {device}: its DNS servers while it is up. The lines starting with \
         {ORIGINAL:?} are this file as it was; the spoke puts them back when it stops (or run \
         `spoke unlock`).\n"
    );
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    for line in original.lines() {
        if !line.trim_start().starts_with("nameserver") {
            text.push_str(line);
            text.push('\n');
        }
    }
    for line in original.lines() {
        text.push_str(ORIGINAL);
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The file as it was before SloPN wrote `text`, or `None` if SloPN did not write it.
pub fn original_text(text: &str) -> Option<String> {
    if !text.starts_with(HEADER) {
        return None;
    }
    let mut original = String::new();
    for line in text.lines() {
        if let Some(kept) = line.strip_prefix(ORIGINAL) {
            original.push_str(kept);
            original.push('\n');
        }
    }
    Some(original)
}

fn read(path: &Path) -> Result<String, TunError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(TunError::Io {
            what: format!("reading {}", path.display()),
            source,
        }),
    }
}

/// Rewrites `path` in place with one write (see the module's comment).
fn write(path: &Path, text: &str) -> Result<(), TunError> {
    let written = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        });
    written.map_err(|source| TunError::Io {
        what: format!(
            "writing the tunnel's DNS servers into {} (set dns_method = \"off\" in the spoke \
             file to leave it alone)",
            path.display()
        ),
        source,
    })
}

/// Points `path` at `servers` for `device`, keeping what it said (if SloPN wrote it
/// already, what it said before that). No servers: the original is put back.
pub fn set(path: &Path, device: &str, servers: &[IpAddr]) -> Result<(), TunError> {
    let current = read(path)?;
    let original = original_text(&current).unwrap_or(current);
    if servers.is_empty() {
        return write(path, &original);
    }
    write(path, &tunnel_text(&original, device, servers))
}

/// Puts back what `path` said before SloPN wrote it. Whether there was anything to put
/// back.
pub fn restore(path: &Path) -> Result<bool, TunError> {
    match original_text(&read(path)?) {
        Some(original) => write(path, &original).map(|()| true),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL_FILE: &str = "# from DHCP\nnameserver 192.168.1.1\nsearch lan\noptions edns0\n";

    fn servers() -> Vec<IpAddr> {
        vec!["10.100.0.53".parse().unwrap(), "fd00::53".parse().unwrap()]
    }

    #[test]
    fn the_tunnels_servers_replace_the_name_servers_and_the_original_comes_back() {
        let text = tunnel_text(ORIGINAL_FILE, "slopn0", &servers());
        let active: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            active,
            [
                "nameserver 10.100.0.53",
                "nameserver fd00::53",
                "search lan",
                "options edns0"
            ]
        );
        assert_eq!(original_text(&text).as_deref(), Some(ORIGINAL_FILE));
        assert_eq!(original_text(ORIGINAL_FILE), None);
        assert_eq!(original_text(""), None);
    }

    #[test]
    fn a_file_written_twice_or_after_a_crash_keeps_the_first_original() {
        let dir = std::env::temp_dir().join(format!("slopn-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, ORIGINAL_FILE).unwrap();
        set(&path, "slopn0", &servers()).unwrap();
        // A new assignment (or a new start after a crash) writes over SloPN's own text.
        set(&path, "slopn0", &servers()[..1]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("nameserver 10.100.0.53\n"), "{text}");
        assert!(!text.contains("nameserver fd00::53\n"), "{text}");
        assert!(restore(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), ORIGINAL_FILE);
        assert!(!restore(&path).unwrap(), "nothing more to restore");
        // No servers any more: the original is put back.
        set(&path, "slopn0", &servers()).unwrap();
        set(&path, "slopn0", &[]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), ORIGINAL_FILE);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
