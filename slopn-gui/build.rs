//! Tauri's build step: embeds tauri.conf.json, the capabilities and the frontend in `ui/`.

fn main() {
    tauri_build::build()
}
