//! The kill switch through the spoke service (what the desktop client's toggle does): saved
//! in the profile, applied at once to a running tunnel, off again, refused for a split
//! tunnel; nothing leaks around the full tunnel meanwhile.

use std::path::Path;
use std::time::Duration;

use slopn::control::{self, Client, ClientError, ProfileSummary, Request, SpokeStatus};

use crate::gateway::{stop_web_server, web_server};
use crate::lab::Lab;
use crate::leaks::{LeakCounter, Requests, kill_switch_table};

fn set(socket: &Path, profile: &str, on: bool) -> Result<ProfileSummary, String> {
    let request = Request::SetKillSwitch {
        profile: profile.into(),
        on,
    };
    let mut answer = control::request(socket, &request).map_err(|e| match e {
        ClientError::Refused(sentence) => sentence,
        other => panic!("{request:?}: {other}"),
    })?;
    Ok(serde_json::from_value(answer.remove("profile").unwrap()).unwrap())
}

fn status(socket: &Path) -> SpokeStatus {
    Client::connect(socket)
        .unwrap()
        .request_field(&Request::Status, "status")
        .unwrap()
}

/// Spoke 0's file as `hub init` wrote it, for a full or a split tunnel.
fn spoke_file(lab: &Lab, full_tunnel: bool) -> String {
    let text = std::fs::read_to_string(lab.spoke_toml(0)).unwrap();
    let mut file: toml::Table = toml::from_str(&text).unwrap();
    file.remove("control_socket");
    file.insert("accept_default_route".into(), full_tunnel.into());
    toml::to_string(&file).unwrap()
}

#[test]
fn the_services_kill_switch_is_saved_applied_at_once_and_refused_for_a_split_tunnel() {
    let Some(mut lab) = Lab::with_gateway("the_services_kill_switch", 1) else {
        return;
    };
    let internet = lab.internet.take().unwrap();
    let server = web_server(&internet);
    lab.start_hub();
    lab.start_service(0, "root");
    let socket = lab.service_socket(0);
    for (name, full_tunnel) in [("full", true), ("split", false)] {
        control::request(
            &socket,
            &Request::Import {
                name: name.into(),
                toml: spoke_file(&lab, full_tunnel),
            },
        )
        .unwrap();
    }
    control::request(
        &socket,
        &Request::Connect {
            profile: Some("full".into()),
        },
    )
    .unwrap();
    lab.wait_for("established", Duration::from_secs(20), |_| {
        status(&socket).state.name() == "established"
    });
    let counter = LeakCounter::install(&lab.spoke_ns[0], lab.hub_addr());
    let requests = Requests::to_internet(&lab.spoke_ns[0]);
    assert!(!status(&socket).kill_switch);
    assert!(kill_switch_table(&lab.spoke_ns[0]).is_none());

    // On: the table is in when the answer comes, and the profile keeps it.
    let summary = set(&socket, "full", true).unwrap();
    assert!(summary.kill_switch && summary.full_tunnel, "{summary:?}");
    assert!(kill_switch_table(&lab.spoke_ns[0]).is_some());
    assert!(status(&socket).kill_switch);
    let saved = std::fs::read_to_string(lab.service_profiles(0).join("full.toml")).unwrap();
    assert!(saved.contains("kill_switch = true"), "{saved}");
    let tunneled = requests.tunneled();
    lab.wait_for(
        "requests through the tunnel",
        Duration::from_secs(10),
        |_| requests.tunneled() >= tunneled + 10,
    );

    // Off: the table goes at once.
    assert!(!set(&socket, "full", false).unwrap().kill_switch);
    assert!(kill_switch_table(&lab.spoke_ns[0]).is_none());
    assert!(!status(&socket).kill_switch);

    // Meanwhile nothing went around the full tunnel. (A disconnect the user asks for lets
    // traffic out normally again: the requests stop first.)
    assert_eq!(counter.leaked(), 0, "packets left around the tunnel");
    let tunneled = requests.tunneled();
    drop(requests);

    // On again, then a disconnect removes it with the tunnel; the next connect brings it
    // back from the profile before the first packet.
    set(&socket, "full", true).unwrap();
    control::request(&socket, &Request::Disconnect { session: None }).unwrap();
    assert!(kill_switch_table(&lab.spoke_ns[0]).is_none());
    control::request(
        &socket,
        &Request::Connect {
            profile: Some("full".into()),
        },
    )
    .unwrap();
    assert!(kill_switch_table(&lab.spoke_ns[0]).is_some());
    lab.wait_for("established again", Duration::from_secs(20), |_| {
        status(&socket).state.name() == "established"
    });

    // Refused with a sentence: a split tunnel, a profile that is not there.
    let split = set(&socket, "split", true).unwrap_err();
    assert!(split.contains("split tunnel"), "{split}");
    let missing = set(&socket, "nobody", true).unwrap_err();
    assert!(missing.contains("no profile named"), "{missing}");
    let split_file = std::fs::read_to_string(lab.service_profiles(0).join("split.toml")).unwrap();
    assert!(
        !split_file.contains("kill_switch"),
        "nothing saved: {split_file}"
    );

    println!(
        "kill switch through the service: on, off, on across a reconnect; {tunneled} \
         requests through the tunnel, 0 packets around it"
    );
    control::request(&socket, &Request::Disconnect { session: None }).unwrap();
    stop_web_server(&internet, server);
}
