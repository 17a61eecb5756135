//! Replays the fuzz targets' corpora (`fuzz/corpus/<target>/`) through the same code the
//! fuzzers run, so every input that ever found something, and the seeds, stay covered.

mod fuzzing;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "empty corpus {}", dir.display());
    for path in entries {
        let data = std::fs::read(&path).unwrap();
        run(&data);
    }
}

#[test]
fn control_corpus() {
    replay("control", fuzzing::control);
}

#[test]
fn ip_packet_corpus() {
    replay("ip_packet", fuzzing::ip_packet);
}

#[test]
fn key_share_corpus() {
    replay("key_share", fuzzing::key_share);
}

#[test]
fn hub_corpus() {
    replay("hub", fuzzing::hub);
}
