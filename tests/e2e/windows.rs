//! The Windows spoke (`spoke.exe` for `x86_64-pc-windows-gnu`, path in `SLOPN_WINDOWS_SPOKE`)
//! under Wine: its service serves the named pipe, the Windows command line imports, lists,
//! connects and removes through it, connecting without Wintun fails with the sentence that
//! says what to do, and `spoke service install` / `uninstall` go through the service
//! control manager (Wine's). Nothing here can run a Wintun adapter; everything short of it
//! runs as the Windows binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use slopn::tun::netns;

use crate::lab::examples_dir;

/// Where `scripts/test` puts the path of the Windows `spoke.exe`.
const EXE_ENV: &str = "SLOPN_WINDOWS_SPOKE";

struct Wine {
    exe: PathBuf,
    runner: PathBuf,
}

impl Wine {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.runner);
        command.arg(&self.exe).args(args);
        command
    }

    /// Runs the Windows CLI; its output, stdout and stderr together.
    fn spoke(&self, args: &[&str]) -> (bool, String) {
        let out: Output = self
            .command(args)
            .stdin(Stdio::null())
            .output()
            .expect("wine runs");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Waits until `status` answers on `pipe`.
    fn wait_answering(&self, pipe: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let (ok, text) = self.spoke(&["status", "--socket", pipe]);
            if ok {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "the service never answered on {pipe}: {text}"
            );
        }
    }
}

/// The Windows spoke under Wine, or `None` (after saying why) where it was not built.
fn wine(test: &str) -> Option<Wine> {
    let exe = std::env::var_os(EXE_ENV).map(PathBuf::from);
    let runner = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/wine-runner");
    let ready = match &exe {
        Some(exe) if exe.is_file() => Ok(()),
        _ => Err(format!(
            "{EXE_ENV} does not name spoke.exe built for x86_64-pc-windows-gnu (scripts/test \
             builds it and sets it)"
        )),
    };
    netns::skip_unless(test, ready).then(|| Wine {
        exe: exe.unwrap(),
        runner,
    })
}

/// A Linux path as Wine sees it (drive Z: is `/`).
fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// Kills the foreground service when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_windows_spoke_service_answers_on_its_pipe_under_wine() {
    let Some(wine) = wine("the_windows_spoke_service_answers_on_its_pipe_under_wine") else {
        return;
    };
    let prefix = netns::unique_prefix();
    let dir = std::env::temp_dir().join(format!("{prefix}-windows"));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(examples_dir().join("hub"))
        .args(["init", "--dir"])
        .arg(&dir)
        .args(["--name", "127.0.0.1", "--port", "4999", "--spoke", "alice"])
        .output()
        .expect("hub binary built");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pipe = format!(r"\\.\pipe\{prefix}");
    let profiles = windows_path(&dir.join("profiles"));
    let service = wine
        .command(&["service", "--socket", &pipe, "--profiles", &profiles])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wine runs");
    let service = Running(service);
    let took = wine.wait_answering(&pipe, Duration::from_secs(60));
    println!("the Windows service answered on {pipe} {took:?} after start");

    let (ok, text) = wine.spoke(&["profiles", "--socket", &pipe]);
    assert!(ok && text.contains("no profiles"), "{text}");
    let file = windows_path(&dir.join("spokes/alice.toml"));
    let (ok, text) = wine.spoke(&["import", "alice", &file, "--socket", &pipe]);
    assert!(ok, "{text}");
    let (ok, text) = wine.spoke(&["profiles", "--socket", &pipe]);
    assert!(
        ok && text.contains("alice") && text.contains("127.0.0.1:4999"),
        "{text}"
    );
    assert!(
        dir.join("profiles/alice.toml").is_file(),
        "the profile is saved in the service's directory"
    );

    // No Wintun under Wine: the connect fails, saying what to do, and the status keeps it.
    let (ok, text) = wine.spoke(&["connect", "alice", "--socket", &pipe]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("wintun.dll could not be loaded: put it beside spoke.exe"),
        "{text}"
    );
    let (ok, text) = wine.spoke(&["status", "--socket", &pipe]);
    assert!(
        ok && text.contains("stopped") && text.contains("wintun.dll"),
        "{text}"
    );

    // Bad input over the pipe is refused with a sentence; the service carries on.
    let (ok, text) = wine.spoke(&["connect", "nobody", "--socket", &pipe]);
    assert!(!ok && text.contains("nobody"), "{text}");
    let (ok, text) = wine.spoke(&["status", "--socket", r"C:\not-a-pipe"]);
    assert!(!ok && text.contains(r"\\.\pipe\"), "{text}");

    let (ok, text) = wine.spoke(&["remove", "alice", "--socket", &pipe]);
    assert!(ok, "{text}");
    let (ok, text) = wine.spoke(&["profiles", "--socket", &pipe]);
    assert!(ok && text.contains("no profiles"), "{text}");
    drop(service);
    let (ok, text) = wine.spoke(&["status", "--socket", &pipe]);
    assert!(!ok && text.contains("sc start SloPN"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Uninstalls the service when the test ends, however it ends.
struct Installed<'a>(&'a Wine);

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        let _ = self.0.spoke(&["service", "uninstall"]);
    }
}

#[test]
fn spoke_service_install_and_uninstall_go_through_the_service_manager_under_wine() {
    let Some(wine) = wine("spoke_service_install_and_uninstall_go_through_the_service_manager")
    else {
        return;
    };
    let prefix = netns::unique_prefix();
    let dir = std::env::temp_dir().join(format!("{prefix}-winsvc"));
    let pipe = format!(r"\\.\pipe\{prefix}-svc");
    let profiles = windows_path(&dir.join("profiles"));
    // A service left by an earlier run that died is removed first.
    let _ = wine.spoke(&["service", "uninstall"]);
    // Wine's whoami cannot name the user: the account to allow is given.
    let (ok, text) = wine.spoke(&[
        "service",
        "install",
        "--socket",
        &pipe,
        "--profiles",
        &profiles,
        "--allow-user",
        "S-1-5-21-1-2-3-1001",
    ]);
    let installed = Installed(&wine);
    assert!(ok, "{text}");
    let took = wine.wait_answering(&pipe, Duration::from_secs(60));
    println!("the service started by the service manager answered {took:?} after install");
    let (ok, text) = wine.spoke(&["service", "install", "--allow-user", "S-1-5-21-1-2-3-1001"]);
    assert!(!ok && text.contains("installed already"), "{text}");
    assert!(
        dir.join("profiles").is_dir(),
        "the service made its directory"
    );

    let (ok, text) = wine.spoke(&["service", "uninstall"]);
    assert!(ok, "{text}");
    let (ok, text) = wine.spoke(&["status", "--socket", &pipe]);
    assert!(!ok && text.contains("nothing answers"), "{text}");
    let (ok, text) = wine.spoke(&["service", "uninstall"]);
    assert!(!ok && text.contains("not installed"), "{text}");
    drop(installed);
    let _ = std::fs::remove_dir_all(&dir);
}
