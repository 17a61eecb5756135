//! The spoke service as a Windows service (the desktop client's privileged half there):
//! `spoke service install` registers it with the service control manager (automatic start,
//! LocalSystem) and starts it, allowing the user who ran the install to use its pipe;
//! `spoke service uninstall` stops and removes it. The manager runs
//! `spoke service --windows-service …`, which hands the thread to the dispatcher; the
//! service then runs [`serve_until`] until the manager says stop.

use std::ffi::OsString;
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use slopn_control::Topic;
use tracing::{error, info};
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use crate::service::{ServiceOptions, serve_until};
use crate::win_service_args::{launch_arguments, parse_whoami_sid};

/// The service's name for the service control manager (`sc query SloPN`).
pub const NAME: &str = "SloPN";

/// What the manager receives from the dispatcher's thread.
static STARTED: OnceLock<(ServiceOptions, Arc<Topic>)> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// Turns a `windows-service` failure into a sentence, naming the usual cause.
fn explain(what: &str, e: windows_service::Error) -> String {
    let denied = matches!(&e, windows_service::Error::Winapi(io) if io.raw_os_error() == Some(5));
    if denied {
        format!("{what}: access denied: run it from an elevated prompt (Run as administrator)")
    } else {
        format!("{what}: {e}")
    }
}

/// The security identifier of the user running this (`whoami /user`): from an elevated
/// prompt, still the user who opened it.
fn current_user_sid() -> Result<String, String> {
    let out = std::process::Command::new("whoami")
        .args(["/user", "/fo", "csv", "/nh"])
        .output()
        .map_err(|e| format!("running whoami: {e}"))?;
    parse_whoami_sid(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| "whoami /user printed no security identifier".to_owned())
}

/// Registers the service (automatic start, as LocalSystem) with `options` plus the
/// installing user, and starts it.
pub fn install(options: &ServiceOptions) -> Result<(), String> {
    let mut options = options.clone();
    match current_user_sid() {
        Ok(me) if !options.users.contains(&me) => options.users.push(me),
        Ok(_) => {}
        // Told whom to allow: go on without the installing user.
        Err(e) if !options.users.is_empty() => {
            tracing::warn!("{e}; allowing only the accounts given with --allow-user")
        }
        Err(e) => {
            return Err(format!(
                "{e}: cannot tell who is installing; name the account that may use the \
                 service with --allow-user SID (`whoami /user` shows it)"
            ));
        }
    }
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .map_err(|e| explain("opening the service control manager", e))?;
    let executable =
        std::env::current_exe().map_err(|e| format!("finding spoke.exe's own path: {e}"))?;
    let info = ServiceInfo {
        name: NAME.into(),
        display_name: "SloPN spoke".into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: executable,
        launch_arguments: launch_arguments(&options),
        dependencies: Vec::new(),
        account_name: None,
        account_password: None,
    };
    let service = manager
        .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)
        .map_err(|e| match &e {
            windows_service::Error::Winapi(io) if io.raw_os_error() == Some(1073) => {
                format!("the {NAME} service is installed already: `spoke service uninstall` first")
            }
            _ => explain("creating the service", e),
        })?;
    let _ = service.set_description(
        "SloPN VPN: runs the tunnels the SloPN desktop client asks for (control pipe \
         \\\\.\\pipe\\slopn-spoke)",
    );
    service
        .start::<OsString>(&[])
        .map_err(|e| explain("starting the service", e))?;
    info!(users = ?options.users, "service {NAME} installed and started");
    Ok(())
}

/// Stops the service (waiting up to 30 s for its orderly disconnect) and removes it.
pub fn uninstall() -> Result<(), String> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .map_err(|e| explain("opening the service control manager", e))?;
    let service = manager
        .open_service(
            NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .map_err(|e| match &e {
            windows_service::Error::Winapi(io) if io.raw_os_error() == Some(1060) => {
                format!("the {NAME} service is not installed")
            }
            _ => explain("opening the service", e),
        })?;
    service
        .delete()
        .map_err(|e| explain("removing the service", e))?;
    let state = |s: &windows_service::service::Service| s.query_status().map(|q| q.current_state);
    if state(&service).map_err(|e| explain("asking the service's state", e))?
        != ServiceState::Stopped
    {
        service
            .stop()
            .map_err(|e| explain("stopping the service", e))?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(&service).map_err(|e| explain("asking the service's state", e))?
        != ServiceState::Stopped
    {
        if Instant::now() > deadline {
            return Err(format!(
                "the {NAME} service did not stop within 30 s; it is removed once it does"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Hands this thread to the service dispatcher (only under the service control manager:
/// elsewhere it fails at once, saying so).
pub fn run_dispatcher(options: ServiceOptions, logs: Arc<Topic>) -> Result<(), String> {
    let _ = STARTED.set((options, logs));
    service_dispatcher::start(NAME, ffi_service_main).map_err(|e| {
        format!(
            "--windows-service is for the service control manager ({e}); run `spoke service` \
             to serve in this console, or `spoke service install`"
        )
    })
}

fn service_main(_arguments: Vec<OsString>) {
    if let Err(e) = run_under_manager() {
        error!("the {NAME} service failed: {e}");
    }
}

fn status(state: ServiceState, exit: ServiceExitCode) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: exit,
        checkpoint: 0,
        wait_hint: Duration::from_secs(if state == ServiceState::StopPending {
            30
        } else {
            0
        }),
        process_id: None,
    }
}

fn run_under_manager() -> Result<(), String> {
    let (options, logs) = STARTED
        .get()
        .ok_or("the service started without its options")?;
    let (stop, stopped) = mpsc::channel();
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            let _ = stop.send(());
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = service_control_handler::register(NAME, handler)
        .map_err(|e| explain("registering the control handler", e))?;
    let report = |state, exit| {
        handle
            .set_service_status(status(state, exit))
            .map_err(|e| explain("reporting the service's state", e))
    };
    report(ServiceState::Running, ServiceExitCode::Win32(0))?;
    let result = serve_until(options, logs.clone(), &stopped);
    report(ServiceState::StopPending, ServiceExitCode::Win32(0))?;
    // A failure shows in `sc query SloPN` as a service-specific error; the log says why.
    let exit = match result {
        Ok(()) => ServiceExitCode::Win32(0),
        Err(_) => ServiceExitCode::ServiceSpecific(1),
    };
    report(ServiceState::Stopped, exit)?;
    result
}
