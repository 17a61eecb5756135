//! The spoke service's stored profiles: spoke files imported over the control socket, kept
//! in a directory only root can read, each checked before it is saved and saved whole or
//! not at all.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use slopn_control::{MAX_PROFILE_BYTES, MAX_PROFILE_NAME, MAX_PROFILES, ProfileSummary};
use tracing::warn;

use crate::config::SpokeFile;

/// Whether a write may replace the file there.
#[derive(Clone, Copy)]
enum Replace {
    No,
    Yes,
}

/// Profiles in one directory, one `NAME.toml` each.
#[derive(Debug)]
pub struct ProfileStore {
    dir: PathBuf,
}

/// Checks a profile name: 1-64 of `A-Za-z0-9._-`, not starting with `.` (so no `/`, no
/// `..`, no hidden files).
pub fn check_name(name: &str) -> Result<(), String> {
    if slopn_control::is_profile_name(name) {
        Ok(())
    } else {
        Err(format!(
            "the profile name {name:?} is not allowed: use 1 to {MAX_PROFILE_NAME} letters, \
             digits, '.', '_' or '-', not starting with '.'"
        ))
    }
}

/// Parses and checks a spoke file's text as a profile (all but the hub's name resolving).
pub fn parse(name: &str, text: &str) -> Result<SpokeFile, String> {
    if text.len() > MAX_PROFILE_BYTES {
        return Err(format!(
            "the spoke file is {} KiB; spoke files are a few KiB (at most {} KiB). Check that \
             you picked the file the hub operator gave you.",
            text.len() / 1024,
            MAX_PROFILE_BYTES / 1024
        ));
    }
    let file: SpokeFile = toml::from_str(text).map_err(|e| {
        format!(
            "this is not a valid spoke file: {}. Import the file as `hub init` or `hub \
             add-spoke` wrote it.",
            e.message()
        )
    })?;
    file.check_profile(&format!("profile {name:?}"))
        .map_err(|e| e.to_string())?;
    Ok(file)
}

fn summary(name: &str, file: &SpokeFile) -> ProfileSummary {
    ProfileSummary {
        name: name.to_owned(),
        hub: file.hub.clone(),
        server_name: file.server_name.clone(),
        auth: if file.certificate_pem.is_some() {
            "certificate"
        } else {
            "token"
        }
        .into(),
        full_tunnel: file.accept_default_route,
        kill_switch: file.kill_switch,
        lockdown: file.lockdown,
    }
}

impl ProfileStore {
    /// Opens the store at `dir`, creating it readable by its owner only.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let fail = |e: std::io::Error| format!("profile directory {}: {e}", dir.display());
        crate::private::create_dir(dir).map_err(fail)?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    /// The names of the stored profiles, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let name = name.strip_suffix(".toml")?;
                check_name(name).ok().map(|()| name.to_owned())
            })
            .collect();
        names.sort();
        names
    }

    /// The stored profiles, by name. Files that no longer parse are skipped with a warning.
    pub fn list(&self) -> Vec<ProfileSummary> {
        self.names()
            .into_iter()
            .filter_map(|name| match self.load(&name) {
                Ok(file) => Some(summary(&name, &file)),
                Err(e) => {
                    warn!("skipping profile {name:?}: {e}");
                    None
                }
            })
            .collect()
    }

    /// The profile `name`.
    pub fn load(&self, name: &str) -> Result<SpokeFile, String> {
        let text = self.read(name)?;
        toml::from_str(&text).map_err(|e| format!("profile {name:?} is damaged: {}", e.message()))
    }

    /// The text of profile `name`.
    fn read(&self, name: &str) -> Result<String, String> {
        check_name(name)?;
        fs::read_to_string(self.path(name)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "there is no profile named {name:?}: import the spoke file first (`profiles` \
                 lists what there is)"
            ),
            _ => format!("cannot read profile {name:?}: {e}"),
        })
    }

    /// Checks and stores `text` as profile `name`, refusing to replace one.
    pub fn import(&self, name: &str, text: &str) -> Result<ProfileSummary, String> {
        check_name(name)?;
        let file = parse(name, text)?;
        if self.names().len() >= MAX_PROFILES {
            return Err(format!(
                "there are {MAX_PROFILES} profiles already, as many as the service keeps: remove \
                 one first"
            ));
        }
        self.create(&self.path(name), text)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => format!(
                    "a profile named {name:?} exists already: remove it first, or import under \
                 another name"
                ),
                _ => format!("cannot save profile {name:?}: {e}"),
            })?;
        Ok(summary(name, &file))
    }

    /// Turns the kill switch of profile `name` on or off, saved in the profile (turning it
    /// off keeps `lockdown` and `allow_lan`, which apply again when it is turned on). The
    /// changed text passes the import checks first: a split tunnel is refused.
    pub fn set_kill_switch(
        &self,
        name: &str,
        on: bool,
    ) -> Result<(SpokeFile, ProfileSummary), String> {
        let text = self.read(name)?;
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| format!("profile {name:?} is damaged: {}", e.message()))?;
        table.insert("kill_switch".into(), toml::Value::Boolean(on));
        let text =
            toml::to_string(&table).map_err(|e| format!("cannot write profile {name:?}: {e}"))?;
        let file = parse(name, &text)?;
        self.write(&self.path(name), &text, Replace::Yes)
            .map_err(|e| format!("cannot save profile {name:?}: {e}"))?;
        let summary = summary(name, &file);
        Ok((file, summary))
    }

    /// Writes a temporary file, syncs it, and links it into place only if `path` does not
    /// exist: a crash or a concurrent import leaves no half file and replaces nothing.
    fn create(&self, path: &Path, text: &str) -> std::io::Result<()> {
        self.write(path, text, Replace::No)
    }

    /// Writes a temporary file, syncs it, and links it into place (`Replace::No`: only if
    /// `path` does not exist) or renames it over `path`: a crash leaves the old file or the
    /// new one, never half of one.
    fn write(&self, path: &Path, text: &str, replace: Replace) -> std::io::Result<()> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let temporary = self.dir.join(format!(
            ".import-{}-{}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = crate::private::open_options()
                .write(true)
                .create_new(true)
                .open(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            match replace {
                Replace::No => fs::hard_link(&temporary, path),
                Replace::Yes => fs::rename(&temporary, path),
            }
        })();
        let _ = fs::remove_file(&temporary);
        written?;
        crate::private::sync_dir(&self.dir)
    }

    /// Deletes profile `name`.
    pub fn remove(&self, name: &str) -> Result<(), String> {
        check_name(name)?;
        fs::remove_file(self.path(name)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("there is no profile named {name:?}"),
            _ => format!("cannot remove profile {name:?}: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_or_hide_are_refused() {
        for good in ["alice", "work-vpn", "a.b_c", "X1", &"n".repeat(64)] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "../etc/passwd",
            "a b",
            "ä",
            &"n".repeat(65),
        ] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains("is not allowed"), "{e}");
        }
    }
}
