//! Windows named pipes, through the `interprocess` crate: a security descriptor (an ACL)
//! says who may connect, remote clients are refused, and the pipe vanishes with the server.
//!
//! Named pipes have no read timeouts and no `shutdown` that wakes a reader on another
//! thread, which the protocol's limits rely on (an idle client is closed, a subscriber that
//! hung up is noticed, a subscription is ended from another thread). So [`Stream`] reads
//! only what `PeekNamedPipe` says has arrived, and otherwise waits itself, in short sleeps
//! that lengthen while nothing happens (1 to 20 ms): control traffic, not a datapath.
//! (The pipe's own non-blocking mode cannot stand in: its "no data yet" is the error code
//! a closed pipe gives.) Writes block until the reader makes room; write timeouts are not
//! enforced, so a local client that stops reading holds its own connection's thread until
//! it goes, and is cut off from events all the same.

use std::io::{self, Read, Write};
use std::os::windows::io::{AsHandle, AsRawHandle};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use interprocess::os::windows::named_pipe::{
    DuplexPipeStream, PipeListener, PipeListenerOptions, pipe_mode,
};
use interprocess::os::windows::security_descriptor::SecurityDescriptor;
use widestring::U16CString;

use crate::server::ServerError;

type Pipe = DuplexPipeStream<pipe_mode::Bytes>;

/// The longest sleep between two tries of a read or write that would block.
const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// Who may use the pipe, besides SYSTEM, the Administrators and the pipe's owner (the
/// account the server runs as), who always may.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Further accounts or groups by security identifier (`S-1-5-21-…`), allowed to read
    /// and write: the user who installed the spoke service, so that their desktop client
    /// can steer it.
    pub users: Vec<String>,
}

impl Access {
    /// SYSTEM, the Administrators and the pipe's owner only.
    pub const OWNER: Access = Access { users: Vec::new() };

    /// Also the accounts or groups `sids` (security identifiers such as `S-1-5-21-…`).
    pub fn users(sids: Vec<String>) -> Self {
        Self { users: sids }
    }
}

/// The security descriptor (in Windows' SDDL) for `access`: a protected DACL granting all
/// to SYSTEM, the Administrators and the owner, and read and write to each listed SID.
/// `None` when one of them is not a SID (only digits and dashes after `S-1-`), so that no
/// text can smuggle another entry into the descriptor.
pub(crate) fn sddl(access: &Access) -> Option<String> {
    let mut sddl = String::from("D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;OW)");
    for sid in &access.users {
        let digits = sid.strip_prefix("S-1-")?;
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'-')
            || digits.starts_with('-')
            || digits.ends_with('-')
            || digits.contains("--")
        {
            return None;
        }
        sddl.push_str(&format!("(A;;GRGW;;;{sid})"));
    }
    Some(sddl)
}

/// Whether `path` names a local named pipe (`\\.\pipe\NAME`).
pub(crate) fn is_pipe_path(path: &Path) -> bool {
    let text = path.to_string_lossy();
    text.len() > 9 && text[..9].eq_ignore_ascii_case(r"\\.\pipe\") && !text.contains('\0')
}

/// One end of a pipe connection. Clones share the pipe (and its shut-down state); each has
/// its own timeouts.
pub(crate) struct Stream {
    pipe: Arc<Pipe>,
    closed: Arc<AtomicBool>,
    /// Milliseconds, 0 for none.
    read_timeout: AtomicU64,
}

impl Stream {
    fn new(pipe: Pipe) -> io::Result<Self> {
        Ok(Self {
            pipe: Arc::new(pipe),
            closed: Arc::new(AtomicBool::new(false)),
            read_timeout: AtomicU64::new(0),
        })
    }

    /// Connects to the pipe at `path` (`\\.\pipe\NAME`).
    pub(crate) fn connect(path: &Path) -> io::Result<Self> {
        if !is_pipe_path(path) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                r"a control pipe's name starts with \\.\pipe\",
            ));
        }
        Self::new(Pipe::connect_by_path(path)?)
    }

    /// Another handle on the same connection.
    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            pipe: self.pipe.clone(),
            closed: self.closed.clone(),
            read_timeout: AtomicU64::new(self.read_timeout.load(Ordering::Relaxed)),
        })
    }

    /// Limits how long a read waits (`None`: forever); a read that runs out of time fails
    /// with `WouldBlock`, as on Unix.
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read_timeout.store(millis(timeout), Ordering::Relaxed);
        Ok(())
    }

    /// Accepted for the same interface as on Unix; a write to a pipe waits until the
    /// reader makes room (see the module's documentation).
    pub(crate) fn set_write_timeout(&self, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    /// Ends the connection for every clone: a read waiting elsewhere returns the end of
    /// the stream, writes fail. (The pipe closes once the last clone is dropped.)
    pub(crate) fn shutdown(&self, _how: std::net::Shutdown) -> io::Result<()> {
        self.closed.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// How many bytes have arrived and wait to be read; `None` once the writer closed its
    /// end (or the pipe broke).
    fn available(&self) -> io::Result<Option<usize>> {
        let mut available: u32 = 0;
        let handle = self.pipe.as_handle().as_raw_handle();
        // SAFETY: `handle` is an open pipe handle owned by `self.pipe`, alive for the call;
        // PeekNamedPipe reads no buffer (null, length 0) and writes only `available`.
        #[allow(unsafe_code)]
        let ok = unsafe {
            windows_sys::Win32::System::Pipes::PeekNamedPipe(
                handle,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                &mut available,
                std::ptr::null_mut(),
            )
        };
        if ok != 0 {
            return Ok(Some(available as usize));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error().and_then(|c| u32::try_from(c).ok()) {
            Some(
                windows_sys::Win32::Foundation::ERROR_BROKEN_PIPE
                | windows_sys::Win32::Foundation::ERROR_PIPE_NOT_CONNECTED
                | windows_sys::Win32::Foundation::ERROR_NO_DATA,
            ) => Ok(None),
            _ => Err(e),
        }
    }

    /// Tries `op` until it does something, the connection is shut down or `timeout_ms`
    /// (0: none) passes.
    fn wait<T>(
        &self,
        timeout_ms: u64,
        closed: impl Fn() -> io::Result<T>,
        mut op: impl FnMut() -> io::Result<Option<T>>,
    ) -> io::Result<T> {
        let deadline = (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms));
        let mut backoff = Duration::from_millis(1);
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return closed();
            }
            match op() {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

fn millis(timeout: Option<Duration>) -> u64 {
    timeout.map_or(0, |t| {
        u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let pipe = self.pipe.clone();
        let len = buf.len();
        self.wait(
            self.read_timeout.load(Ordering::Relaxed),
            || Ok(0),
            || match self.available()? {
                None => Ok(Some(0)),
                Some(0) => Ok(None),
                Some(n) => (&*pipe).read(&mut buf[..n.min(len)]).map(Some),
            },
        )
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.closed.load(Ordering::Relaxed) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        (&*self.pipe).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening pipe.
pub(crate) struct Listener(PipeListener<pipe_mode::Bytes, pipe_mode::Bytes>);

impl Listener {
    /// Creates the pipe with `access`'s ACL; refuses a name another server answers on.
    pub(crate) fn bind(path: &Path, access: &Access) -> Result<Self, ServerError> {
        let fail = |what| {
            move |source| ServerError::Io {
                path: path.to_owned(),
                what,
                source,
            }
        };
        let invalid = |what: &'static str, detail: &str| ServerError::Io {
            path: path.to_owned(),
            what,
            source: io::Error::new(io::ErrorKind::InvalidInput, detail.to_owned()),
        };
        if !is_pipe_path(path) {
            return Err(invalid(
                "naming it",
                r"a control pipe's name starts with \\.\pipe\",
            ));
        }
        if Pipe::connect_by_path(path).is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        let sddl = sddl(access).ok_or_else(|| {
            invalid(
                "securing it",
                "an allowed user is not a security identifier (S-1-…)",
            )
        })?;
        let sddl = U16CString::from_str(&sddl)
            .map_err(|_| invalid("securing it", "the security descriptor holds a NUL"))?;
        let descriptor =
            SecurityDescriptor::deserialize(&sddl).map_err(fail("building its ACL"))?;
        PipeListenerOptions::new()
            .path(path)
            .accept_remote(false)
            .security_descriptor(Some(descriptor))
            .create_duplex::<pipe_mode::Bytes>()
            .map(Self)
            .map_err(fail("creating it"))
    }

    /// Waits for the next client.
    pub(crate) fn accept(&self) -> io::Result<Stream> {
        Stream::new(self.0.accept()?)
    }

    /// Wakes a thread waiting in [`accept`](Self::accept); the pipe goes with the listener.
    pub(crate) fn close(path: &Path) {
        let _ = Pipe::connect_by_path(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_security_identifiers_enter_the_acl() {
        assert_eq!(
            sddl(&Access::OWNER).unwrap(),
            "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;OW)"
        );
        assert_eq!(
            sddl(&Access::users(vec!["S-1-5-21-1-2-3-1001".into()])).unwrap(),
            "D:P(A;;GA;;;SY)(A;;GA;;;BA)(A;;GA;;;OW)(A;;GRGW;;;S-1-5-21-1-2-3-1001)"
        );
        for bad in [
            "",
            "S-1-",
            "S-1-5)(A;;GA;;;WD",
            "WD",
            "S-1-5--1",
            "S-1-5-",
            "s-1-5-18",
        ] {
            assert_eq!(sddl(&Access::users(vec![bad.into()])), None, "{bad}");
        }
    }

    #[test]
    fn pipe_names() {
        assert!(is_pipe_path(Path::new(r"\\.\pipe\slopn-spoke")));
        assert!(is_pipe_path(Path::new(r"\\.\PIPE\x")));
        for bad in [
            r"\\.\pipe\",
            r"C:\slopn\spoke.sock",
            "/run/slopn/spoke.sock",
            r"\\host\pipe\x",
        ] {
            assert!(!is_pipe_path(Path::new(bad)), "{bad}");
        }
    }
}
