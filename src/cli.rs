//! What the command-line tools share: control-socket errors as sentences that say what to do.

use slopn_control::ClientError;

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
