//! The desktop client end to end, in a real window: Xvfb, the GUI's debug build run as an
//! unprivileged user under tauri-driver and WebKitWebDriver, a real hub in one network
//! namespace and the spoke service in another. The test clicks through what a user does and
//! saves a screenshot of each state (see `desktop::screenshot_dir`).

mod desktop;

use std::time::{Duration, Instant};

use desktop::{Desktop, Gui, HUB_TUNNEL_IP, Network};

const SHORT: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(30);

/// Tray colours (see `slopn_gui::tray::colour`).
fn tray_colour(tone: &str) -> [u8; 3] {
    slopn_gui::tray::colour(tone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_client_connects_shows_traffic_survives_a_hub_restart_and_explains_failures() {
    if !desktop::runnable("the_desktop_client_end_to_end") {
        return;
    }
    let shots = desktop::screenshot_dir();
    let shot = |name: &str| shots.join(format!("{name}.png"));
    let mut net = Network::new();
    net.start_hub();
    net.start_service();
    let desktop = Desktop::start(&net);

    // The window comes up, finds the service, and has no profile yet.
    let gui = Gui::start(&net, &desktop, "main", true).await;
    let ready = gui.started.elapsed();
    gui.wait_phase("disconnected", SHORT).await;
    assert!(gui.text("#no-profiles").await.contains("No profile yet"));
    gui.screenshot(&shot("1-empty")).await;

    // A form with nothing in it says what each field needs.
    gui.click("#new-profile").await;
    gui.click("#form-save").await;
    gui.wait_css(".field-error[data-for='token']:not(:empty)", SHORT)
        .await;
    let hub_error = gui.text(".field-error[data-for='hub']").await;
    assert!(hub_error.contains("hub's address"), "{hub_error}");
    gui.screenshot_here(&shot("2-form-errors")).await;
    gui.click("#form-cancel").await;

    // Import the spoke file `hub init` wrote, as the user would pick it.
    let file = net.spoke_file_for_user();
    gui.choose_file("#import-file", &file).await;
    gui.wait_css("#profile-list li[data-name='laptop']", SHORT)
        .await;

    // Connect: "connected", with the address the service assigned.
    let click = Instant::now();
    gui.click("#toggle").await;
    gui.wait_phase("connected", SHORT).await;
    let click_to_connected = click.elapsed();
    let assigned = net.status().addresses[0].to_string();
    assert_eq!(gui.text("#address").await, assigned);
    assert_eq!(gui.text("#status-headline").await, "Connected");
    assert_eq!(
        gui.text("#key-exchange").await,
        "Post-quantum (X25519MLKEM768)"
    );
    assert!(net.tun_exists());

    // Traffic through the tunnel shows as a download rate above zero.
    let ping = net
        .spoke_ns
        .command("ping")
        .args(["-c", "15", "-i", "0.2", "-s", "1000", HUB_TUNNEL_IP])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rose = Instant::now();
    loop {
        let rate = gui.text("#rx-rate").await;
        if rate != "0 bit/s" {
            println!(
                "download rate shown: {rate} ({:?} after the first ping)",
                rose.elapsed()
            );
            break;
        }
        assert!(rose.elapsed() < SHORT, "the download rate stayed at zero");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gui.screenshot(&shot("3-connected")).await;
    desktop.screenshot(&shot("3-connected-desktop"));
    assert!(
        ping.wait_with_output().unwrap().status.success(),
        "ping through the tunnel"
    );
    assert!(
        desktop.tray_pixels(tray_colour("green")) > 50,
        "the tray icon is green"
    );

    // The kill switch, turned on while connected: the service installs its table at once,
    // saves it in the profile, and the window says what it does; off removes it.
    assert!(!net.kill_switch_table());
    gui.click("label.switch-row").await;
    desktop::wait_until("the kill switch on", SHORT, || net.status().kill_switch);
    assert!(net.kill_switch_table(), "the kill switch's table is in");
    gui.wait_true(
        "document.getElementById('kill-switch-note').textContent.startsWith('On: nothing leaves')",
        SHORT,
    )
    .await;
    gui.wait_true("document.getElementById('kill-switch').checked", SHORT)
        .await;
    gui.screenshot(&shot("3-kill-switch-on")).await;
    gui.click("label.switch-row").await;
    desktop::wait_until("the kill switch off", SHORT, || !net.status().kill_switch);
    assert!(!net.kill_switch_table(), "the kill switch's table is gone");
    gui.wait_true(
        "document.getElementById('kill-switch-note').textContent.startsWith('Off')",
        SHORT,
    )
    .await;
    // Its toast ("Kill switch off.") hides nothing: in a window too short for all the cards,
    // scrolled to the end, the last card ends above it.
    let size = gui.size().await;
    gui.resize((size.0, size.1 * 3 / 4)).await;
    gui.wait_true(
        "(() => { const t = document.getElementById('toast'); if (t.hidden) return false; \
         window.scrollTo(0, document.documentElement.scrollHeight); \
         const last = [...document.querySelectorAll('main .card')].pop(); \
         return last.getBoundingClientRect().bottom <= t.getBoundingClientRect().top; })()",
        SHORT,
    )
    .await;
    gui.screenshot_here(&shot("3-toast-scrolled")).await;
    gui.resize(size).await;

    // A second window at the same time shows the same state.
    let second = Gui::start(&net, &desktop, "second", true).await;
    second.wait_phase("connected", SHORT).await;
    assert_eq!(second.text("#address").await, assigned);
    second.close().await;

    // Disconnect from the tray's menu (Connect is greyed out, so Disconnect is the first
    // item the keyboard reaches): the TUN device is gone when the window says so.
    desktop.open_tray_menu(SHORT);
    desktop.screenshot(&shot("3-tray-menu"));
    desktop.pick_menu_item(1);
    gui.wait_phase("disconnected", SHORT).await;
    assert!(!net.tun_exists(), "the TUN device is removed");
    assert!(desktop.tray_pixels(tray_colour("grey")) > 50, "grey tray");
    gui.screenshot(&shot("4-disconnected")).await;

    // Connect again from the tray (Connect is the first item now), then lose the hub:
    // "reconnecting", a notification, and back.
    desktop.open_tray_menu(SHORT);
    desktop.pick_menu_item(1);
    gui.wait_phase("connected", SHORT).await;
    net.kill_hub();
    // Silent past a keep-alive round: still connected, but the card says so, amber.
    gui.wait_true(
        "document.body.dataset.phase === 'connected' && document.body.dataset.tone === 'amber' \
         && document.querySelector('#status-detail').textContent.includes('Nothing heard from \
         the hub')",
        LONG,
    )
    .await;
    assert!(desktop.tray_pixels(tray_colour("amber")) > 50, "amber tray");
    gui.screenshot(&shot("5-hub-silent")).await;
    gui.wait_phase("reconnecting", LONG).await;
    let detail = gui.text("#status-detail").await;
    assert!(
        detail.contains("connection to the hub was lost"),
        "{detail}"
    );
    assert!(desktop.tray_pixels(tray_colour("amber")) > 50, "amber tray");
    gui.screenshot(&shot("5-reconnecting")).await;
    desktop::wait_until("the \"tunnel lost\" notification", SHORT, || {
        desktop.notifications().contains("SloPN: tunnel lost")
    });
    net.start_hub();
    gui.wait_phase("connected", LONG).await;
    desktop::wait_until("the \"connected again\" notification", SHORT, || {
        desktop.notifications().contains("SloPN: connected again")
    });

    // The log pane streams the service's lines and saves them where the user says.
    gui.click("#log-pane summary").await;
    gui.wait_css("#log-lines div", SHORT).await;
    assert!(gui.text("#log-lines").await.contains("spoke service ready"));
    let saved = net.user_dir("files").join("saved-log.txt");
    gui.click("#save-logs").await;
    desktop.type_into("Save the SloPN log", &saved.display().to_string());
    desktop::wait_until("the saved log", SHORT, || saved.exists());
    let text = std::fs::read_to_string(&saved).unwrap();
    assert!(text.contains("connected to the hub"), "{text}");
    gui.wait_css("#toast:not([hidden])", SHORT).await;

    // Profiles made with the form. One with a wrong token: stopped, with the service's
    // sentence. One whose hub does not answer: connecting, then stopped, with the reason.
    gui.click("#toggle").await;
    gui.wait_phase("disconnected", SHORT).await;
    let ca = net.user_dir("files").join("ca.pem");
    std::fs::copy(net.dir.join("ca.pem"), &ca).unwrap();
    std::os::unix::fs::chown(&ca, Some(desktop::GUI_UID), None).unwrap();
    for (name, hub, token) in [
        ("wrong", "10.0.0.2:4433", "not-the-token"),
        ("far", "10.0.0.2:4999", "some-token"),
    ] {
        gui.click("#new-profile").await;
        gui.fill("#profile-form input[name='name']", name).await;
        gui.fill("#profile-form input[name='hub']", hub).await;
        gui.fill("#profile-form input[name='token']", token).await;
        gui.choose_file("#ca-file", &ca).await;
        gui.wait_true(
            "document.querySelector(\"textarea[name='ca_pem']\").value.includes('BEGIN CERTIFICATE')",
            SHORT,
        )
        .await;
        gui.click("#form-save").await;
        gui.wait_css(&format!("#profile-list li[data-name='{name}']"), SHORT)
            .await;
    }
    let choose = |name: &str| {
        format!(
            "const s = document.getElementById('profile-select');
             s.value = '{name}'; s.dispatchEvent(new Event('change'));"
        )
    };
    gui.client.execute(&choose("wrong"), vec![]).await.unwrap();
    gui.click("#toggle").await;
    gui.wait_phase("stopped", LONG).await;
    let why = gui.text("#status-detail").await;
    assert!(why.contains("authentication failed"), "{why}");
    assert!(desktop.tray_pixels(tray_colour("red")) > 50, "red tray");
    gui.screenshot(&shot("6-stopped-wrong-token")).await;

    gui.client.execute(&choose("far"), vec![]).await.unwrap();
    gui.click("#toggle").await;
    gui.wait_phase("connecting", SHORT).await;
    assert!(gui.text("#status-detail").await.contains("10.0.0.2:4999"));
    gui.screenshot(&shot("6-connecting")).await;
    gui.wait_phase("stopped", LONG).await;
    let why = gui.text("#status-detail").await;
    assert!(
        why.contains("Could not reach the hub at 10.0.0.2:4999 within"),
        "{why}"
    );
    gui.screenshot(&shot("6-stopped-unreachable")).await;

    // A user outside the socket's group is told how to get in.
    let outsider = Gui::start(&net, &desktop, "outsider", false).await;
    outsider
        .wait_true(
            "document.getElementById('service-message').textContent.includes('usermod -aG slopn')",
            SHORT,
        )
        .await;
    outsider.screenshot(&shot("7-not-in-group")).await;
    outsider.close().await;

    // The service stops: the window says so and what to do.
    net.stop_service();
    gui.wait_phase("unavailable", SHORT).await;
    gui.wait_true(
        "document.getElementById('service-message').textContent.includes('sudo systemctl start slopn-spoke')",
        SHORT,
    )
    .await;
    gui.screenshot(&shot("8-service-stopped")).await;

    // Quit from the tray (Show SloPN and Quit are the items left enabled): the app ends.
    desktop.open_tray_menu(SHORT);
    desktop.pick_menu_item(2);
    desktop::wait_until("the GUI to quit", SHORT, || desktop::gui_processes() == 0);

    println!(
        "window ready {ready:?} after launch; Connect to connected {click_to_connected:?}; \
         screenshots in {}",
        shots.display()
    );
    gui.close().await;
}
