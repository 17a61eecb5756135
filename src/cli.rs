//! What the command-line tools share: control-socket errors as sentences that say what to do.

use slopn_control::ClientError;

/// `error` from talking to a control socket, with the fix.
pub fn explain(error: &ClientError) -> String {
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
    let error = error.to_string();
    format!("{}.{fix}", error.trim_end_matches('.'))
}
