//! The `slopn-gui` binary: SloPN's desktop client (see the library's documentation).

fn main() -> std::process::ExitCode {
    // A status window needs no GPU compositing, and without it WebKit uses about 80 MiB less
    // memory and half the CPU on machines that render in software (virtual machines, no
    // GPU). Set before any thread exists, as the environment must be; a user's own setting
    // (WEBKIT_DISABLE_COMPOSITING_MODE=0 turns compositing back on) is kept.
    if std::env::var_os("WEBKIT_DISABLE_COMPOSITING_MODE").is_none() {
        // SAFETY: nothing else runs yet: `main` has just started and has spawned no thread,
        // so nothing can read the environment while it changes.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("WEBKIT_DISABLE_COMPOSITING_MODE", "1");
        }
    }
    match slopn_gui::app::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slopn-gui: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
