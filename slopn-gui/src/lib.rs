//! SloPN's desktop client: a window and a tray icon over the spoke service.
//!
//! The client is the unprivileged half of the desktop app. It never runs as root and never
//! links the datapath: everything it knows and does goes through the spoke service's control
//! socket ([`slopn_control`]), which it follows with a [`link::Link`]. The window is plain
//! HTML, CSS and JavaScript in `ui/`, rendered by WebKitGTK through Tauri; it shows the
//! [`view::View`] the link derives from the service's status, and calls back into the
//! commands in [`app`].
//!
//! - [`link`]: status once a second and on every event, events, log lines; reconnects alone.
//! - [`view`]: what the window shows, and the sentences for a service it cannot use.
//! - [`notify`]: when a lost or restored tunnel is worth a desktop notification.
//! - [`form`]: the new-profile form, checked field by field and written as a spoke file.
//! - [`tray`]: the tray icon, drawn in the colour of the state.

pub mod app;
pub mod form;
pub mod link;
pub mod notify;
pub mod tray;
pub mod view;
