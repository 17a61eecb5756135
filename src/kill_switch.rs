//! The kill switch of a spoke's tunnel (slopn-tun's nftables table) as spoke files ask for
//! it, and `spoke unlock`: what lockdown or a crash left behind, removed.

use std::net::SocketAddr;

#[cfg(unix)]
use tracing::info;

use crate::config::SpokeFile;

/// The kill switch's table (Unix; on Windows the setting is refused).
#[cfg(unix)]
pub(crate) type KillSwitch = slopn_tun::KillSwitch;
/// The kill switch (not on Windows yet: the setting is refused there).
#[cfg(not(unix))]
pub(crate) type KillSwitch = ();

/// The kill switch `file` asks for, on device `tun` with the hub at `hub`; locked with
/// `lockdown`.
#[cfg(unix)]
pub(crate) fn kill_switch(
    file: &SpokeFile,
    tun: &str,
    hub: SocketAddr,
) -> Result<Option<KillSwitch>, String> {
    if !file.kill_switch {
        return Ok(None);
    }
    let mut kill_switch = KillSwitch::install(tun, hub, &file.allow_lan).map_err(|e| {
        format!("cannot turn the kill switch on: {e}. Is nftables installed (the nft command)?")
    })?;
    if file.lockdown {
        kill_switch.lock();
    }
    info!(
        table = kill_switch.table(),
        lockdown = file.lockdown,
        "kill switch on: nothing leaves but through the tunnel"
    );
    Ok(Some(kill_switch))
}

/// The kill switch (not on Windows yet).
#[cfg(not(unix))]
pub(crate) fn kill_switch(
    file: &SpokeFile,
    _tun: &str,
    _hub: SocketAddr,
) -> Result<Option<KillSwitch>, String> {
    if file.kill_switch {
        return Err(
            "the kill switch is not available on Windows yet: remove kill_switch \
                    from the profile"
                .into(),
        );
    }
    Ok(None)
}

/// Removes the kill switch's table of device `tun` (kept by lockdown, or left by a spoke
/// that died) and puts back `/etc/resolv.conf` if a spoke that died left its servers in
/// it. What was done, as a sentence.
#[cfg(unix)]
pub fn unlock(tun: &str) -> Result<String, String> {
    let removed = slopn_tun::KillSwitch::remove(tun).map_err(|e| {
        format!("cannot remove the kill switch of {tun}: {e}. Run it as root (sudo spoke unlock).")
    })?;
    let restored = slopn_tun::restore_resolv_conf().map_err(|e| {
        format!("cannot put /etc/resolv.conf back: {e}. Run it as root (sudo spoke unlock).")
    })?;
    let mut done = if removed {
        format!("kill switch of {tun} removed: traffic leaves normally again")
    } else {
        format!("no kill switch on {tun}: nothing to unlock")
    };
    if restored {
        done.push_str("; /etc/resolv.conf put back as it was before the tunnel");
    }
    Ok(done)
}

/// The kill switch is not on Windows yet.
#[cfg(not(unix))]
pub fn unlock(_tun: &str) -> Result<String, String> {
    Err("the kill switch is not available on Windows yet: there is nothing to unlock".into())
}

/// Removes the kill switch's table of `tun`, locked or not.
#[cfg(unix)]
pub(crate) fn remove_kill_switch(tun: &str) -> Result<(), String> {
    KillSwitch::remove(tun)
        .map(drop)
        .map_err(|e| format!("cannot turn the kill switch off: {e}"))
}

/// The kill switch is not on Windows yet: there is none to remove.
#[cfg(not(unix))]
pub(crate) fn remove_kill_switch(_tun: &str) -> Result<(), String> {
    Ok(())
}
