//! The recordings from a real Asterisk 22 against our event decoder.

use overdue_dialer::ari::events::{decode, Event};

const EVENTS: &str = include_str!("fixtures/ari/events.jsonl");

#[test]
fn every_recorded_event_decodes() {
    let mut typed = 0;
    let mut lines = 0;
    for (n, line) in EVENTS.lines().enumerate() {
        let rec: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
        let raw = rec["event"].to_string();
        let env = decode(&raw).unwrap_or_else(|e| {
            panic!(
                "line {} ({}) does not decode: {e}",
                n + 1,
                rec["event"]["type"]
            )
        });
        assert_eq!(
            env.application,
            rec["event"]["application"].as_str().unwrap()
        );
        let kind = rec["event"]["type"].as_str().unwrap();
        let known = !matches!(env.event, Event::Other);
        // Types we act on must decode to their variant, not fall through to Other.
        let acted_on = [
            "StasisStart",
            "StasisEnd",
            "Dial",
            "ChannelStateChange",
            "ChannelVarset",
            "ChannelHangupRequest",
            "ChannelDestroyed",
            "PlaybackStarted",
            "PlaybackFinished",
            "ChannelEnteredBridge",
            "ChannelLeftBridge",
            "ChannelDtmfReceived",
        ];
        assert_eq!(known, acted_on.contains(&kind), "line {}: {kind}", n + 1);
        if let Event::ChannelDestroyed { channel, cause, .. } = &env.event {
            assert!(!channel.id.is_empty());
            assert_eq!(*cause, rec["event"]["cause"].as_i64().unwrap());
        }
        typed += usize::from(known);
        lines += 1;
    }
    assert_eq!(lines, EVENTS.lines().count());
    assert!(lines >= 387 && typed > 300, "{lines} lines, {typed} typed");
}

#[test]
fn fixtures_match_the_shared_recordings() {
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/ari/events.jsonl");
    match std::fs::read_to_string(shared) {
        Ok(text) => assert!(
            text == EVENTS,
            "shared/ari/events.jsonl changed: refresh tests/fixtures/ari (see its README)"
        ),
        // A plain clone without shared/ beside it: the fixtures are the recordings.
        Err(_) => eprintln!("no shared/ beside the repository; using tests/fixtures/ari as is"),
    }
    let lab = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/ari/README.md");
    if let Ok(text) = std::fs::read_to_string(lab) {
        assert!(
            text == include_str!("fixtures/ari/LAB.md"),
            "shared/ari/README.md changed: refresh tests/fixtures/ari/LAB.md (see its README)"
        );
    }
}
