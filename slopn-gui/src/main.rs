//! The `slopn-gui` binary: SloPN's desktop client (see the library's documentation).

fn main() -> std::process::ExitCode {
    match slopn_gui::app::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slopn-gui: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
