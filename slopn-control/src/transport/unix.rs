//! Unix stream sockets: the socket file's mode and group say who may connect.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::server::ServerError;

/// A connection: std's Unix stream, whose clones share the socket.
pub(crate) type Stream = UnixStream;

/// Who may use the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The socket file's permission bits (0600: the owner only; 0660: the owner and a group).
    pub mode: u32,
    /// The group to give the socket to (with mode 0660).
    pub group: Option<u32>,
}

impl Access {
    /// The owner (and root) only: mode 0600.
    pub const OWNER: Access = Access {
        mode: 0o600,
        group: None,
    };

    /// The owner and the members of group `gid`: mode 0660.
    pub fn group(gid: u32) -> Self {
        Self {
            mode: 0o660,
            group: Some(gid),
        }
    }
}

/// A listening socket.
pub(crate) struct Listener(UnixListener);

impl Listener {
    /// Binds under a temporary name, sets mode and group, then renames into place, so the
    /// socket is never reachable with looser permissions. Creates the directory and
    /// replaces a stale socket; refuses one that answers.
    pub(crate) fn bind(path: &Path, access: &Access) -> Result<Self, ServerError> {
        let fail = |what| {
            move |source| ServerError::Io {
                path: path.to_owned(),
                what,
                source,
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail("creating its directory"))?;
        }
        if UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&temporary);
        let listener = UnixListener::bind(&temporary).map_err(fail("binding"))?;
        let secured =
            std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(access.mode))
                .map_err(fail("setting its permissions"))
                .and_then(|()| match access.group {
                    Some(gid) => std::os::unix::fs::chown(&temporary, None, Some(gid))
                        .map_err(fail("giving it to its group")),
                    None => Ok(()),
                })
                .and_then(|()| {
                    std::fs::rename(&temporary, path).map_err(fail("moving it into place"))
                });
        if let Err(e) = secured {
            let _ = std::fs::remove_file(&temporary);
            return Err(e);
        }
        Ok(Self(listener))
    }

    /// Waits for the next client.
    pub(crate) fn accept(&self) -> std::io::Result<Stream> {
        self.0.accept().map(|(stream, _)| stream)
    }

    /// Wakes a thread waiting in [`accept`](Self::accept) and removes the socket file.
    pub(crate) fn close(path: &Path) {
        let _ = UnixStream::connect(path);
        let _ = std::fs::remove_file(path);
    }
}
