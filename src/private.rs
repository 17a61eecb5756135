//! Files and directories only their owner (and the system's administrators) may read:
//! keys, tokens, profiles. Unix says so with modes; Windows with an ACL on the directory,
//! which the files in it inherit.

use std::fs::OpenOptions;
use std::path::Path;

/// Options that create a file readable and writable by its owner only (mode 0600 on Unix;
/// on Windows the file inherits its directory's ACL, see [`create_dir`]).
pub fn open_options() -> OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = OpenOptions::new();
        options.mode(0o600);
        options
    }
    #[cfg(not(unix))]
    OpenOptions::new()
}

/// Creates `dir` (and its parents) for its owner only, tightening it if it exists: mode
/// 0700 on Unix; on Windows an ACL of SYSTEM and the Administrators alone, not inherited
/// from above (`ProgramData` lets every user read what is in it).
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)?;
        let out = std::process::Command::new("icacls")
            .arg(dir)
            .args(windows_acl_args())
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "icacls could not restrict it to SYSTEM and the Administrators: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            )))
        }
    }
}

/// `icacls` arguments after the directory: drop inherited entries, grant full control to
/// SYSTEM (S-1-5-18) and the Administrators (S-1-5-32-544), for the directory and all it
/// will hold.
#[cfg_attr(unix, allow(dead_code))]
fn windows_acl_args() -> [&'static str; 5] {
    [
        "/inheritance:r",
        "/grant:r",
        "*S-1-5-18:(OI)(CI)F",
        "/grant:r",
        "*S-1-5-32-544:(OI)(CI)F",
    ]
}

/// Makes a directory's new entries durable (Unix: fsync the directory; NTFS journals its
/// metadata, and a directory cannot be opened as a file there).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_windows_acl_keeps_only_system_and_administrators() {
        assert_eq!(
            windows_acl_args().join(" "),
            "/inheritance:r /grant:r *S-1-5-18:(OI)(CI)F /grant:r *S-1-5-32-544:(OI)(CI)F"
        );
    }
}
