//! The Tauri application: the window's commands, the tray icon and its menu, notifications,
//! and the [`Sink`] that hands every new [`View`] to the window and the tray.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use slopn_control::LogLine;
use tauri::image::Image;
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{AppHandle, Emitter, Manager, State, WindowEvent};
use tauri_plugin_notification::NotificationExt;

use crate::form::{FieldError, ProfileForm};
use crate::link::{Link, Sink};
use crate::notify::Notice;
use crate::tray;
use crate::view::View;

/// When `main` started, for the "window ready" figure.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Hands views to the window and the tray, notifications to the desktop.
struct Window {
    app: AppHandle,
    tray: OnceLock<Tray>,
}

/// The tray icon and the menu items whose state follows the view.
struct Tray {
    icon: TrayIcon,
    connect: MenuItem<tauri::Wry>,
    disconnect: MenuItem<tauri::Wry>,
}

impl Sink for Window {
    fn view(&self, view: &View) {
        let _ = self.app.emit("view", view);
        if let Some(tray) = self.tray.get() {
            let _ = tray.icon.set_icon(Some(tray_image(view.tone)));
            let _ = tray
                .icon
                .set_tooltip(Some(format!("SloPN: {}", view.headline)));
            let _ = tray
                .connect
                .set_enabled(!view.phase.is_active() && !view.profiles.is_empty());
            let _ = tray.disconnect.set_enabled(view.phase.is_active());
        }
    }

    fn logs(&self, lines: &[LogLine], reset: bool) {
        #[derive(Serialize, Clone)]
        struct Batch<'a> {
            lines: &'a [LogLine],
            reset: bool,
        }
        let _ = self.app.emit("logs", Batch { lines, reset });
    }

    fn notify(&self, notice: &Notice) {
        eprintln!("slopn-gui: notification: {}: {}", notice.title, notice.body);
        let shown = self
            .app
            .notification()
            .builder()
            .title(&notice.title)
            .body(&notice.body)
            .show();
        if let Err(e) = shown {
            eprintln!("slopn-gui: the desktop did not take the notification: {e}");
        }
    }
}

fn tray_image(tone: &str) -> Image<'static> {
    const SIZE: u32 = 64;
    Image::new_owned(tray::pixels(SIZE, tone), SIZE, SIZE)
}

/// What the window's scripts reach through `invoke`.
struct Backend {
    link: Link,
}

/// Runs a blocking socket call off the window's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tauri::async_runtime::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: {e}"))?
}

#[tauri::command]
fn ready() -> u64 {
    let ms = STARTED.get().map_or(0, |t| t.elapsed().as_millis() as u64);
    eprintln!("slopn-gui: window ready {ms} ms after start");
    ms
}

#[tauri::command]
fn view(backend: State<'_, Arc<Backend>>) -> View {
    backend.link.view()
}

#[tauri::command]
fn logs(backend: State<'_, Arc<Backend>>) -> Vec<LogLine> {
    backend.link.logs()
}

#[tauri::command]
async fn connect(backend: State<'_, Arc<Backend>>, profile: String) -> Result<(), String> {
    let backend = backend.inner().clone();
    blocking(move || backend.link.connect(&profile)).await
}

#[tauri::command]
async fn disconnect(backend: State<'_, Arc<Backend>>) -> Result<(), String> {
    let backend = backend.inner().clone();
    blocking(move || backend.link.disconnect()).await
}

#[tauri::command]
async fn import_profile(
    backend: State<'_, Arc<Backend>>,
    name: String,
    toml: String,
) -> Result<Option<String>, String> {
    let backend = backend.inner().clone();
    blocking(move || backend.link.import(&name, &toml)).await
}

/// Why the new-profile form was not saved: its fields, or the service's sentence.
#[derive(Debug, Serialize)]
struct FormRejection {
    fields: Vec<FieldError>,
    message: Option<String>,
}

#[tauri::command]
async fn create_profile(
    backend: State<'_, Arc<Backend>>,
    form: ProfileForm,
) -> Result<Option<String>, FormRejection> {
    let (name, toml) = form.to_toml().map_err(|fields| FormRejection {
        fields,
        message: None,
    })?;
    let backend = backend.inner().clone();
    blocking(move || backend.link.import(&name, &toml))
        .await
        .map_err(|message| FormRejection {
            fields: Vec::new(),
            message: Some(message),
        })
}

#[tauri::command]
async fn set_kill_switch(
    backend: State<'_, Arc<Backend>>,
    profile: String,
    on: bool,
) -> Result<(), String> {
    let backend = backend.inner().clone();
    blocking(move || backend.link.set_kill_switch(&profile, on)).await
}

#[tauri::command]
async fn remove_profile(backend: State<'_, Arc<Backend>>, name: String) -> Result<(), String> {
    let backend = backend.inner().clone();
    blocking(move || backend.link.remove(&name)).await
}

#[tauri::command]
fn save_logs(backend: State<'_, Arc<Backend>>, path: PathBuf) -> Result<usize, String> {
    let lines = backend.link.logs();
    let mut text = Vec::new();
    for l in &lines {
        let _ = writeln!(text, "{} {:>5} {} {}", l.time, l.level, l.target, l.message);
    }
    std::fs::write(&path, text)
        .map(|()| lines.len())
        .map_err(|e| format!("Cannot save the log to {}: {e}", path.display()))
}

fn show(app: &AppHandle) {
    if let Some(window) = app.get_webview_window("main") {
        let _ = window.show();
        let _ = window.unminimize();
        let _ = window.set_focus();
    }
}

/// The tray's Connect: the profile in use or last used, else the first.
fn tray_connect(app: &AppHandle) {
    let backend = app.state::<Arc<Backend>>().inner().clone();
    let app = app.clone();
    std::thread::spawn(move || {
        let view = backend.link.view();
        let profile = view
            .profile
            .or_else(|| view.profiles.first().map(|p| p.name.clone()));
        match profile {
            Some(profile) => {
                if let Err(e) = backend.link.connect(&profile) {
                    let _ = app.emit("error", e);
                    show(&app);
                }
            }
            None => show(&app),
        }
    });
}

fn tray_disconnect(app: &AppHandle) {
    let backend = app.state::<Arc<Backend>>().inner().clone();
    let app = app.clone();
    std::thread::spawn(move || {
        if let Err(e) = backend.link.disconnect() {
            let _ = app.emit("error", e);
        }
    });
}

fn build_tray(app: &AppHandle) -> tauri::Result<Tray> {
    let connect = MenuItem::with_id(app, "connect", "Connect", false, None::<&str>)?;
    let disconnect = MenuItem::with_id(app, "disconnect", "Disconnect", false, None::<&str>)?;
    let show_item = MenuItem::with_id(app, "show", "Show SloPN", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
    let separator = PredefinedMenuItem::separator(app)?;
    let menu = Menu::with_items(app, &[&connect, &disconnect, &show_item, &separator, &quit])?;
    let icon = TrayIconBuilder::with_id("slopn")
        .temp_dir_path(tray_files())
        .icon(tray_image("red"))
        .tooltip("SloPN")
        .menu(&menu)
        .show_menu_on_left_click(true)
        .on_menu_event(|app, event| match event.id().as_ref() {
            "connect" => tray_connect(app),
            "disconnect" => tray_disconnect(app),
            "show" => show(app),
            "quit" => app.exit(0),
            _ => {}
        })
        .build(app)?;
    Ok(Tray {
        icon,
        connect,
        disconnect,
    })
}

/// Where the tray may write its icon files: a directory of this user's, not the shared
/// /tmp/tray-icon that another user may own.
fn tray_files() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("slopn-gui"),
        None => {
            std::env::temp_dir().join(format!("slopn-gui-{}", effective_uid().unwrap_or(u32::MAX)))
        }
    }
}

/// The effective user ID, from /proc (0 is root).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Runs the desktop client until Quit.
pub fn run() -> Result<(), String> {
    STARTED.get_or_init(Instant::now);
    if effective_uid() == Some(0) {
        return Err(
            "SloPN's desktop client does not run as root: the window needs no \
                    privileges (the slopn-spoke service has them). Start it as your own user."
                .into(),
        );
    }
    // The service's socket, unless SLOPN_SOCKET names another.
    let socket = PathBuf::from(
        std::env::var_os("SLOPN_SOCKET").unwrap_or_else(|| slopn_control::SPOKE_SOCKET.into()),
    );
    tauri::Builder::default()
        .plugin(tauri_plugin_dialog::init())
        .plugin(tauri_plugin_notification::init())
        .invoke_handler(tauri::generate_handler![
            ready,
            view,
            logs,
            connect,
            disconnect,
            import_profile,
            create_profile,
            remove_profile,
            set_kill_switch,
            save_logs
        ])
        .setup(move |app| {
            let window = Arc::new(Window {
                app: app.handle().clone(),
                tray: OnceLock::new(),
            });
            // Without a tray the window is the app: closing it quits.
            if std::env::var_os("SLOPN_NO_TRAY").is_none() {
                match build_tray(app.handle()) {
                    Ok(tray) => {
                        let _ = window.tray.set(tray);
                    }
                    Err(e) => eprintln!("slopn-gui: no tray icon: {e}"),
                }
            }
            let link = Link::start(&socket, window, Duration::from_secs(1));
            app.manage(Arc::new(Backend { link }));
            Ok(())
        })
        .on_window_event(|window, event| {
            // Closing the window leaves the app in the tray (Quit ends it).
            if let WindowEvent::CloseRequested { api, .. } = event
                && window.app_handle().tray_by_id("slopn").is_some()
            {
                api.prevent_close();
                let _ = window.hide();
            }
        })
        .run(tauri::generate_context!())
        .map_err(|e| format!("the window could not start: {e}"))
}
