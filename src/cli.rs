//! What the command-line tools share: control-socket errors as sentences that say what to do,
//! and printing that a closed pipe ends quietly.

use std::fmt;
use std::io::{self, Write};

use slopn_control::ClientError;

/// Prints a line on standard output, like `println!`, except that when the reader has gone
/// away (`hub status | head -1`) the program ends quietly, as other command-line tools do,
/// instead of panicking.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}

/// What [`say!`] does.
pub fn print_line(line: fmt::Arguments) {
    if let Err(e) = writeln!(io::stdout().lock(), "{line}") {
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// `error` from talking to a control socket, with the fix.
pub fn explain(error: &ClientError) -> String {
    #[cfg(unix)]
    let fix = match error {
        ClientError::NotRunning(_) => {
            " Start it (`hub run`, `spoke run`, or `systemctl start slopn-spoke` for the \
             service), or use --socket if it was configured with another `control_socket`."
        }
        ClientError::Forbidden(_) => {
            " Run as root, or join the group that may use it (`usermod -aG slopn $USER`, then \
             log in again)."
        }
        _ => "",
    };
    #[cfg(windows)]
    let fix = match error {
        ClientError::NotRunning(_) => {
            " Start it (`sc start SloPN`, or install it from an elevated prompt: `spoke \
             service install`), or use --socket if it was configured with another pipe."
        }
        ClientError::Forbidden(_) => {
            " Use an elevated prompt, or reinstall the service from your own elevated prompt \
             (`spoke service uninstall`, `spoke service install`) so that it allows you."
        }
        _ => "",
    };
    let error = error.to_string();
    format!("{}.{fix}", error.trim_end_matches('.'))
}
