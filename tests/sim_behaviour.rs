//! Simulator behaviour the recordings do not cover but SPEC §5 relies on:
//! direct trunk endpoints, ring delays, prompts, unregistered apps.

use std::time::Duration;

use overdue_dialer::ari::{AriClient, Backoff, Event, EventConnection, Originate};
use overdue_dialer::config::Secret;
use overdue_dialer::sim::{Callee, SimConfig, Simulator};

struct Rig {
    sim: Simulator,
    ari: AriClient,
    events: EventConnection,
}

async fn rig(cfg: SimConfig) -> Rig {
    let sim = Simulator::start(cfg, 0).await.unwrap();
    let ari = AriClient::new(
        &sim.url(),
        "asterisk",
        Secret::new("asterisk"),
        Duration::from_secs(2),
    )
    .unwrap();
    let mut events = EventConnection::spawn(
        &ari,
        &["overdue-app", "openai-app"],
        256,
        Backoff::default(),
    );
    assert!(events.wait_connected(Duration::from_secs(5)).await);
    Rig { sim, ari, events }
}

fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.02,
        ..SimConfig::default()
    }
}

/// Collects events until `id` is destroyed.
async fn until_destroyed(events: &mut EventConnection, id: &str) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        let env = tokio::time::timeout(Duration::from_secs(10), events.events.recv())
            .await
            .expect("call never ended")
            .unwrap();
        let done =
            matches!(&env.event, Event::ChannelDestroyed { channel, .. } if channel.id == id);
        out.push(env.event);
        if done {
            return out;
        }
    }
}

fn destroyed_cause(evs: &[Event], id: &str) -> i64 {
    evs.iter()
        .find_map(|e| match e {
            Event::ChannelDestroyed { channel, cause, .. } if channel.id == id => Some(*cause),
            _ => None,
        })
        .unwrap()
}

fn dial_statuses(evs: &[Event], id: &str) -> Vec<String> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Dial {
                peer, dialstatus, ..
            } if peer.id == id => Some(dialstatus.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn direct_endpoints_carry_the_q850_cause() {
    let mut r = rig(fast()).await;
    r.sim.configure(|c| {
        c.callees.insert("3001112221".into(), Callee::Rejects);
    });
    for (number, cause, last_status) in [
        ("3001234564", 17, "BUSY"),
        ("3001234566", 34, "CONGESTION"),
        ("3001234569", 1, "CHANUNAVAIL"),
        ("3001112221", 21, "CHANUNAVAIL"),
        ("3001234565", 19, "RINGING"),
    ] {
        let o = Originate {
            endpoint: format!("PJSIP/{number}@voip_issabel"),
            app: "overdue-app".into(),
            timeout_secs: Some(30),
            ..Originate::default()
        };
        let ch = r.ari.originate(&o).await.unwrap();
        assert!(ch.name.starts_with("PJSIP/voip_issabel-"), "{}", ch.name);
        let evs = until_destroyed(&mut r.events, &ch.id).await;
        assert_eq!(destroyed_cause(&evs, &ch.id), cause, "{number}");
        assert_eq!(
            dial_statuses(&evs, &ch.id).last().map(String::as_str),
            Some(last_status),
            "{number}"
        );
        assert!(
            !evs.iter().any(|e| matches!(e, Event::StasisStart { .. })),
            "unanswered calls never enter Stasis"
        );
    }
    assert_eq!(r.sim.live_channels(), 0);
}

#[tokio::test]
async fn ring_delay_then_answer_then_prompt_to_the_end() {
    let mut r = rig(SimConfig {
        answer_delay: Duration::from_secs(2),
        ..fast()
    })
    .await;
    let o = Originate {
        endpoint: "SIP/voip_issabel/3001234560".into(),
        app: "overdue-app".into(),
        timeout_secs: Some(30),
        ..Originate::default()
    };
    let ch = r.ari.originate(&o).await.unwrap();
    let mut saw_ringing = false;
    loop {
        let env = r.events.events.recv().await.unwrap();
        match env.event {
            Event::ChannelStateChange { channel } if channel.state == "Ringing" => {
                saw_ringing = true
            }
            Event::StasisStart { channel, .. } => {
                assert_eq!(channel.id, ch.id);
                let pb = r
                    .ari
                    .play(
                        &ch.id,
                        &["sound:morosos_natalia".into(), "number:125000".into()],
                        Some("es_MX"),
                        None,
                    )
                    .await
                    .unwrap();
                assert_eq!(pb.state, "queued");
            }
            Event::PlaybackContinuing { playback } => {
                assert_eq!(playback.media_uri, "number:125000")
            }
            Event::PlaybackFinished { playback } => {
                assert_eq!(playback.state, "done");
                r.ari.hangup(&ch.id, "normal").await.unwrap();
            }
            Event::ChannelDestroyed { cause, .. } => {
                assert_eq!(cause, 16);
                break;
            }
            _ => {}
        }
    }
    assert!(saw_ringing);
}

#[tokio::test]
async fn missing_sound_fails_while_the_channel_stays_up() {
    let mut r = rig(fast()).await;
    let o = Originate {
        endpoint: "Local/3001234568@sim-pstn".into(),
        app: "overdue-app".into(),
        timeout_secs: Some(30),
        ..Originate::default()
    };
    let ch = r.ari.originate(&o).await.unwrap();
    loop {
        match r.events.events.recv().await.unwrap().event {
            Event::StasisStart { .. } => drop(
                r.ari
                    .play(
                        &ch.id,
                        &["sound:no_such_prompt".into()],
                        Some("es_MX"),
                        None,
                    )
                    .await
                    .unwrap(),
            ),
            Event::PlaybackFinished { playback } => {
                assert_eq!(playback.state, "failed");
                break;
            }
            _ => {}
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        r.ari.channel(&ch.id).await.unwrap().state,
        "Up",
        "the callee is still there"
    );
    r.ari.hangup(&ch.id, "normal").await.unwrap();
    until_destroyed(&mut r.events, &ch.id).await;
}

#[tokio::test]
async fn an_unregistered_app_gets_nothing_and_the_call_dies() {
    let mut r = rig(fast()).await;
    let o = Originate {
        endpoint: "Local/3001234560@sim-pstn".into(),
        app: "nobody-app".into(),
        timeout_secs: Some(30),
        ..Originate::default()
    };
    // Asterisk does not check the app: 200, then the answered call fails Stasis().
    r.ari.originate(&o).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.sim.live_channels(), 0);
    assert!(
        r.events.events.try_recv().is_err(),
        "no events for an app nobody registered"
    );
}

#[tokio::test]
async fn inbound_caller_reaches_the_agent_app() {
    let mut r = rig(fast()).await;
    let id = r.sim.inbound_call("3001234567").unwrap();
    let env = r.events.events.recv().await.unwrap();
    assert_eq!(env.application, "openai-app");
    let Event::StasisStart { channel, .. } = env.event else {
        panic!("{env:?}")
    };
    assert_eq!(
        (channel.id.as_str(), channel.caller.number.as_str()),
        (id.as_str(), "3001234567")
    );
    assert_eq!(
        (channel.dialplan.context.as_str(), channel.dialplan.priority),
        ("from-voip", 2)
    );
    r.ari.hangup(&id, "normal").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.sim.live_channels(), 0);
}

#[tokio::test]
async fn external_media_and_bridges() {
    let mut r = rig(fast()).await;
    let em = overdue_dialer::ari::ExternalMedia {
        app: "openai-app".into(),
        external_host: "127.0.0.1:40000".into(),
        format: "ulaw".into(),
        channel_id: None,
        data: Some("caller-1".into()),
    };
    let rtp = r.ari.external_media(&em).await.unwrap();
    assert!(rtp.name.starts_with("UnicastRTP/127.0.0.1:40000-"));
    let vars = rtp.channelvars.clone().unwrap();
    assert!(
        vars.contains_key("UNICASTRTP_LOCAL_ADDRESS") && vars.contains_key("UNICASTRTP_LOCAL_PORT")
    );
    loop {
        if let Event::StasisStart { channel, args, .. } =
            r.events.events.recv().await.unwrap().event
        {
            assert_eq!(
                (channel.id, args),
                (rtp.id.clone(), vec!["caller-1".to_owned()])
            );
            break;
        }
    }
    let bridge = r.ari.create_bridge("agent").await.unwrap();
    r.ari.add_to_bridge(&bridge.id, &rtp.id).await.unwrap();
    assert_eq!(r.sim.live_bridges(), 1);
    r.ari.hangup(&rtp.id, "normal").await.unwrap();
    r.ari.destroy_bridge(&bridge.id).await.unwrap();
    assert_eq!((r.sim.live_bridges(), r.sim.live_channels()), (0, 0));
    assert_eq!(
        r.ari
            .destroy_bridge(&bridge.id)
            .await
            .unwrap_err()
            .status()
            .map(|s| s.as_u16()),
        Some(404)
    );
}
