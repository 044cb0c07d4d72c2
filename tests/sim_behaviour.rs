//! Simulator behaviour the recordings do not cover but README "A pass" relies on:
//! direct trunk endpoints, ring delays, prompts, unregistered apps, and
//! the faults around Asterisk stopping and originates going astray; the
//! RTP of externalMedia channels, the far end's keys, and `continue`; AMD
//! on a trunk, the callee's own keys, what a channel heard, and the hop
//! into the voice agent's app that the daemon builds on.

use std::time::{Duration, Instant};

use overdue_dialer::ari::{
    AriClient, AriError, Backoff, ConnState, Event, EventConnection, Originate,
};
use overdue_dialer::config::Secret;
use overdue_dialer::sim::{AmdVerdict, Callee, SimConfig, Simulator};

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

fn originate(endpoint: &str) -> Originate {
    Originate {
        endpoint: endpoint.into(),
        app: "overdue-app".into(),
        timeout_secs: Some(30),
        ..Originate::default()
    }
}

/// `GET /ari/asterisk/info`, which the ARI client has no call for.
async fn asterisk_info(sim: &Simulator, query: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}/ari/asterisk/info{query}", sim.url()))
        .basic_auth("asterisk", Some("asterisk"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

fn parse_stamp(s: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.3f%z")
        .unwrap_or_else(|e| panic!("{s:?} is not Asterisk's timestamp format: {e}"))
}

fn epoch(events: &EventConnection) -> u64 {
    match *events.state.borrow() {
        ConnState::Connected { epoch } => epoch,
        _ => 0,
    }
}

/// Waits until the event connection is back after a restart.
async fn reconnected(events: &mut EventConnection, before: u64) {
    tokio::time::timeout(
        Duration::from_secs(5),
        events
            .state
            .wait_for(|s| matches!(s, ConnState::Connected { epoch } if *epoch > before)),
    )
    .await
    .expect("never reconnected")
    .unwrap();
}

/// Events until none has come for `quiet`.
async fn drain(events: &mut EventConnection, quiet: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(Some(env)) = tokio::time::timeout(quiet, events.events.recv()).await {
        out.push(env.event);
    }
    out
}

async fn until_stasis(events: &mut EventConnection, id: &str) {
    loop {
        let env = tokio::time::timeout(Duration::from_secs(5), events.events.recv())
            .await
            .expect("never entered Stasis")
            .unwrap();
        if matches!(&env.event, Event::StasisStart { channel, .. } if channel.id == id) {
            return;
        }
    }
}

#[tokio::test]
async fn startup_time_changes_with_every_restart() {
    let r = rig(fast()).await;
    let (status, info) = asterisk_info(&r.sim, "").await;
    assert_eq!(status, 200);
    let first = r.sim.startup_time();
    assert_eq!(info["status"]["startup_time"], first.as_str());
    assert_eq!(info["system"]["version"], "22.10.1");
    assert!(info["system"]["entity_id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(info["build"].is_object() && info["config"].is_object());
    let (_, only) = asterisk_info(&r.sim, "?only=status").await;
    assert_eq!(
        only.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["status".to_owned()])
    );

    r.sim.restart(Duration::from_millis(20)).await.unwrap();
    let second = r.sim.startup_time();
    assert!(
        parse_stamp(&second) > parse_stamp(&first),
        "{first} → {second}"
    );
    assert_eq!(
        asterisk_info(&r.sim, "").await.1["status"]["startup_time"],
        second.as_str()
    );

    r.sim.stop_now(Duration::from_millis(20)).await.unwrap();
    let third = r.sim.startup_time();
    assert!(
        parse_stamp(&third) > parse_stamp(&second),
        "{second} → {third}"
    );
    assert_eq!(
        asterisk_info(&r.sim, "").await.1["status"]["startup_time"],
        third.as_str()
    );
}

#[tokio::test]
async fn stopping_gracefully_refuses_originates_until_the_calls_end() {
    let mut r = rig(fast()).await;
    let first = r.sim.startup_time();
    let ch = r
        .ari
        .originate(&originate("Local/3001234568@sim-pstn"))
        .await
        .unwrap();
    until_stasis(&mut r.events, &ch.id).await;
    let check = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(r.sim.is_stopping());
        for endpoint in ["Local/3001234560@sim-pstn", "PJSIP/3001234560@voip_issabel"] {
            let err = r.ari.originate(&originate(endpoint)).await.unwrap_err();
            assert_eq!(err.status().map(|s| s.as_u16()), Some(500), "{endpoint}");
            assert_eq!(err.message(), Some("Allocation failed"));
        }
        let (status, info) = asterisk_info(&r.sim, "").await;
        assert_eq!(status, 200);
        assert_eq!(info["status"]["startup_time"], first.as_str());
        assert_eq!(r.sim.live_channels(), 2, "the call goes on");
        r.ari.hangup(&ch.id, "normal").await.unwrap();
    };
    let (stopped, ()) = tokio::join!(r.sim.stop_gracefully(Duration::from_millis(20)), check);
    stopped.unwrap();
    assert!(!r.sim.is_stopping());
    assert!(r.sim.startup_time() > first);
    r.ari.ping().await.unwrap();
    r.ari
        .originate(&originate("Local/3001234564@sim-pstn"))
        .await
        .expect("originates are taken again");
}

#[tokio::test]
async fn stop_now_leaves_nothing_and_asterisk_comes_back() {
    let mut r = rig(fast()).await;
    let before = epoch(&r.events);
    let answered = r
        .ari
        .originate(&originate("Local/3001234568@sim-pstn"))
        .await
        .unwrap();
    until_stasis(&mut r.events, &answered.id).await;
    r.ari
        .play(
            &answered.id,
            &["sound:morosos_natalia".into()],
            Some("es_MX"),
            None,
        )
        .await
        .unwrap();
    let ringing = r
        .ari
        .originate(&originate("PJSIP/3001234565@voip_issabel"))
        .await
        .unwrap();
    let through_voip = r
        .ari
        .originate(&originate("Local/3001234568@from-voip"))
        .await
        .unwrap();
    until_stasis(&mut r.events, &through_voip.id).await;
    let agent = r
        .ari
        .originate(&originate("Local/3241000752@from-voip"))
        .await
        .unwrap();
    until_stasis(&mut r.events, &agent.id).await;
    let inbound = r.sim.inbound_call("3001234567").unwrap();
    until_stasis(&mut r.events, &inbound).await;
    let em = overdue_dialer::ari::ExternalMedia {
        app: "openai-app".into(),
        external_host: "127.0.0.1:40000".into(),
        format: "ulaw".into(),
        channel_id: None,
        data: None,
    };
    let rtp = r.ari.external_media(&em).await.unwrap();
    until_stasis(&mut r.events, &rtp.id).await;
    let bridge = r.ari.create_bridge("agent").await.unwrap();
    r.ari.add_to_bridge(&bridge.id, &rtp.id).await.unwrap();

    r.sim.stop_now(Duration::from_millis(50)).await.unwrap();
    assert_eq!((r.sim.live_channels(), r.sim.live_bridges()), (0, 0));
    let evs = drain(&mut r.events, Duration::from_millis(100)).await;
    for id in [
        &answered.id,
        &ringing.id,
        &through_voip.id,
        &agent.id,
        &rtp.id,
    ] {
        assert_eq!(destroyed_cause(&evs, id), 0, "{id}: cause 0 at shutdown");
        assert!(
            evs.iter().any(|e| matches!(e,
                Event::ChannelHangupRequest { channel, cause: 4, soft: Some(true) } if channel.id == *id)),
            "{id}: the shutdown's soft hangup"
        );
    }
    assert!(evs.iter().any(|e| matches!(e,
        Event::PlaybackFinished { playback } if playback.state == "failed")));
    for id in [&answered.id, &through_voip.id, &agent.id, &rtp.id, &inbound] {
        assert!(
            evs.iter()
                .any(|e| matches!(e, Event::StasisEnd { channel } if channel.id == *id)),
            "{id} leaves Stasis"
        );
    }

    // Back, empty: connections work and the client re-registers.
    r.ari.ping().await.unwrap();
    assert!(r.ari.channels().await.unwrap().is_empty());
    reconnected(&mut r.events, before).await;
    let again = r
        .ari
        .originate(&originate("Local/3001234568@sim-pstn"))
        .await
        .unwrap();
    until_stasis(&mut r.events, &again.id).await;
    r.ari.hangup(&again.id, "normal").await.unwrap();
    until_destroyed(&mut r.events, &again.id).await;
}

#[tokio::test]
async fn a_late_originate_answer_comes_after_the_calls_events() {
    let mut r = rig(fast()).await;
    r.sim.configure(|c| {
        c.late_originate_answers
            .insert("3001234568".into(), Duration::from_millis(300));
    });
    let o = Originate {
        channel_id: Some("late-1".into()),
        ..originate("Local/3001234568@sim-pstn")
    };
    let sent = Instant::now();
    let ((answer, answered_at), stasis_at) = tokio::join!(
        async { (r.ari.originate(&o).await, Instant::now()) },
        async {
            until_stasis(&mut r.events, "late-1").await;
            Instant::now()
        }
    );
    assert_eq!(answer.unwrap().id, "late-1");
    assert!(stasis_at < answered_at, "the call was up before its answer");
    assert!(answered_at - sent >= Duration::from_millis(300));

    // Later than the client waits: the client gives up, the call rings on.
    let impatient = AriClient::new(
        &r.sim.url(),
        "asterisk",
        Secret::new("asterisk"),
        Duration::from_millis(100),
    )
    .unwrap();
    r.sim.configure(|c| {
        c.late_originate_answers
            .insert("3001234568".into(), Duration::from_secs(1));
    });
    let o = Originate {
        channel_id: Some("late-2".into()),
        ..originate("Local/3001234568@sim-pstn")
    };
    let err = impatient.originate(&o).await.unwrap_err();
    assert!(matches!(err, AriError::Timeout { .. }), "{err}");
    until_stasis(&mut r.events, "late-2").await;
    assert_eq!(r.ari.channel("late-2").await.unwrap().state, "Up");
    for id in ["late-1", "late-2"] {
        r.ari.hangup(id, "normal").await.unwrap();
    }
}

#[tokio::test]
async fn a_lost_originate_places_nothing_and_never_answers() {
    let mut r = rig(fast()).await;
    r.sim.configure(|c| {
        c.lost_originates.insert("3001234560".into());
    });
    let impatient = AriClient::new(
        &r.sim.url(),
        "asterisk",
        Secret::new("asterisk"),
        Duration::from_millis(200),
    )
    .unwrap();
    let err = impatient
        .originate(&originate("Local/3001234560@sim-pstn"))
        .await
        .unwrap_err();
    assert!(matches!(err, AriError::Timeout { .. }), "{err}");
    assert_eq!((r.sim.live_channels(), r.sim.live_calls()), (0, 0));
    assert_eq!(r.sim.originate_count(), 1);
    assert!(r
        .sim
        .requests()
        .iter()
        .any(|q| q.path == "/ari/channels" && q.query.contains("3001234560")));
    assert!(
        drain(&mut r.events, Duration::from_millis(50))
            .await
            .is_empty(),
        "no event for a call never placed"
    );
}

/// Waits for the next event that `pick` accepts, keeping the others.
async fn wait_for(
    events: &mut EventConnection,
    seen: &mut Vec<(String, Event)>,
    pick: impl Fn(&str, &Event) -> bool,
) -> Instant {
    loop {
        let env = tokio::time::timeout(Duration::from_secs(5), events.events.recv())
            .await
            .expect("the awaited event never came")
            .unwrap();
        let hit = pick(&env.application, &env.event);
        seen.push((env.application, env.event));
        if hit {
            return Instant::now();
        }
    }
}

async fn until_no_channels(sim: &Simulator) {
    for _ in 0..100 {
        if sim.live_channels() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sim.live_channels(), 0, "channels left alive");
}

/// A two-item playback on `id`: Started, Continuing, Finished `done`, each
/// item lasting its scaled length; every event to `app`.
async fn two_item_prompt(r: &mut Rig, id: &str, app: &str) {
    let mut seen = Vec::new();
    let pb = r
        .ari
        .play(
            id,
            &["sound:morosos_natalia".into(), "number:125000".into()],
            Some("es_MX"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (pb.state.as_str(), pb.target_uri.clone()),
        ("queued", format!("channel:{id}"))
    );
    let is = |kind: &'static str| {
        move |_: &str, e: &Event| {
            matches!(
                (kind, e),
                ("started", Event::PlaybackStarted { .. })
                    | ("continuing", Event::PlaybackContinuing { .. })
                    | ("finished", Event::PlaybackFinished { .. })
            )
        }
    };
    let started = wait_for(&mut r.events, &mut seen, is("started")).await;
    let continuing = wait_for(&mut r.events, &mut seen, is("continuing")).await;
    let finished = wait_for(&mut r.events, &mut seen, is("finished")).await;
    let playbacks: Vec<(&str, &str, &str, Option<&str>)> = seen
        .iter()
        .filter_map(|(a, e)| match e {
            Event::PlaybackStarted { playback }
            | Event::PlaybackContinuing { playback }
            | Event::PlaybackFinished { playback } => Some((
                a.as_str(),
                playback.state.as_str(),
                playback.media_uri.as_str(),
                playback.next_media_uri.as_deref(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        playbacks,
        vec![
            (
                app,
                "playing",
                "sound:morosos_natalia",
                Some("number:125000")
            ),
            (app, "continuing", "number:125000", None),
            (app, "done", "number:125000", None),
        ]
    );
    // 4.38 s of prompt, then 0.6 s a spoken word ("ciento veinticinco
    // mil"), at the rig's time scale.
    let first = r.sim.scaled(Duration::from_millis(4380));
    let second = r.sim.scaled(Duration::from_millis(1800));
    for (took, length) in [
        (continuing - started, first),
        (finished - continuing, second),
    ] {
        assert!(
            took >= length.mul_f64(0.8) && took < length * 3 + Duration::from_millis(200),
            "an item of {length:?} took {took:?}"
        );
    }
}

#[tokio::test]
async fn an_inbound_trunk_call_plays_a_prompt_then_our_delete_ends_it() {
    let mut r = rig(fast()).await;
    let id = r.sim.inbound_call("3001234567").unwrap();
    until_stasis(&mut r.events, &id).await;
    two_item_prompt(&mut r, &id, "openai-app").await;
    r.ari.hangup(&id, "normal").await.unwrap();
    until_no_channels(&r.sim).await;
    let evs = drain(&mut r.events, Duration::from_millis(50)).await;
    assert!(
        matches!(
            evs.as_slice(),
            [
                Event::ChannelHangupRequest {
                    cause: 32,
                    soft: Some(true),
                    ..
                },
                Event::StasisEnd { .. },
            ]
        ),
        "{evs:?}"
    );
}

/// The event WebSocket read raw, for fields the decoder drops.
async fn raw_events(sim: &Simulator) -> tokio::sync::mpsc::UnboundedReceiver<serde_json::Value> {
    use base64::Engine;
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let url = format!("ws://{}/ari/events?app=overdue-app,openai-app", sim.addr());
    let mut req = url.into_client_request().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("asterisk:asterisk");
    req.headers_mut()
        .insert("Authorization", format!("Basic {auth}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (_sink, mut stream) = ws.split();
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Text(text) = msg {
                if let Ok(v) = serde_json::from_str(&text) {
                    let _ = tx.send(v);
                }
            }
        }
    });
    rx
}

/// Every channel an event names: `channel`, `peer`, `caller`.
fn named_channels(ev: &serde_json::Value) -> Vec<(String, String)> {
    ["channel", "peer", "caller"]
        .iter()
        .filter_map(|k| ev.get(*k))
        .filter(|c| c.is_object())
        .map(|c| {
            let s = |f: &str| c[f].as_str().unwrap_or("").to_owned();
            (s("id"), s("name"))
        })
        .collect()
}

#[tokio::test]
async fn an_inbound_local_call_is_its_2_half_and_its_1_stays_unseen() {
    // Read raw, with no other connection holding the apps.
    let sim = Simulator::start(fast(), 0).await.unwrap();
    let ari = AriClient::new(
        &sim.url(),
        "asterisk",
        Secret::new("asterisk"),
        Duration::from_secs(2),
    )
    .unwrap();
    let mut raw = raw_events(&sim).await;
    let id = sim.inbound_local_call("5512345678").unwrap();
    assert!(id.ends_with(";2"), "{id}");
    let first = tokio::time::timeout(Duration::from_secs(5), raw.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first["type"].as_str(), first["application"].as_str()),
        (Some("StasisStart"), Some("openai-app"))
    );
    let ch = &first["channel"];
    assert_eq!(ch["id"], id.as_str());
    assert_eq!(ch["state"], "Up");
    assert_eq!(ch["caller"]["number"], "5512345678");
    assert_eq!(
        (&ch["dialplan"]["context"], &ch["dialplan"]["exten"]),
        (&"from-voip".into(), &"3241000752".into())
    );
    assert_eq!(
        (&ch["dialplan"]["priority"], &ch["dialplan"]["app_name"]),
        (&2.into(), &"Stasis".into())
    );
    let name = ch["name"].as_str().unwrap();
    assert!(
        name.starts_with("Local/3241000752@from-voip-") && name.ends_with(";2"),
        "{name}"
    );
    // Its ;1 half exists, in no app.
    let channels = ari.channels().await.unwrap();
    assert_eq!(channels.len(), 2);
    let one = channels.iter().find(|c| c.id != id).unwrap().clone();
    assert_eq!(one.name, format!("{};1", name.trim_end_matches(";2")));
    let apps = ari.applications().await.unwrap();
    assert!(apps.iter().all(|a| !a.channel_ids.contains(&one.id)));

    let pb = ari
        .play(&id, &["sound:morosos_natalia".into()], Some("es_MX"), None)
        .await
        .unwrap();
    let mut got = vec![first.clone()];
    let mut next = async || {
        let ev = tokio::time::timeout(Duration::from_secs(5), raw.recv())
            .await
            .expect("no event")
            .unwrap();
        got.push(ev.clone());
        ev
    };
    for state in ["playing", "done"] {
        let ev = next().await;
        assert_eq!(ev["application"], "openai-app", "{ev}");
        assert_eq!(
            (&ev["playback"]["id"], &ev["playback"]["state"]),
            (&pb.id.as_str().into(), &state.into()),
            "{ev}"
        );
    }
    ari.hangup(&id, "normal").await.unwrap();
    // As recording `inbound` shows openai-app: the soft hangup, StasisEnd, nothing more.
    for kind in ["ChannelHangupRequest", "StasisEnd"] {
        let ev = next().await;
        assert_eq!(
            (ev["type"].as_str(), ev["channel"]["id"].as_str()),
            (Some(kind), Some(id.as_str())),
            "{ev}"
        );
    }
    until_no_channels(&sim).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    while let Ok(ev) = raw.try_recv() {
        got.push(ev);
    }
    assert_eq!(got.len(), 5, "{got:#?}");
    for ev in &got {
        for (cid, cname) in named_channels(ev) {
            assert!(cid != one.id && !cname.ends_with(";1"), "{ev}");
        }
    }
    let gone = ari.channel(&one.id).await.unwrap_err();
    assert_eq!(gone.status().map(|s| s.as_u16()), Some(404));
}

/// The caller hangs up during a prompt: the playback fails, then the
/// channel leaves Stasis (recordings `short` and
/// `inbound-caller-hangs-up-with-externalmedia`); the app that met the
/// channel in `Stasis()` hears no more of it.
#[tokio::test]
async fn the_caller_hanging_up_mid_prompt_fails_the_playback() {
    let mut r = rig(fast()).await;
    for local in [false, true] {
        let id = if local {
            r.sim.inbound_local_call("5512345678")
        } else {
            r.sim.inbound_call("5512345678")
        }
        .unwrap();
        until_stasis(&mut r.events, &id).await;
        r.ari
            .play(&id, &["sound:morosos_natalia".into()], Some("es_MX"), None)
            .await
            .unwrap();
        let mut seen = Vec::new();
        wait_for(&mut r.events, &mut seen, |_, e| {
            matches!(e, Event::PlaybackStarted { .. })
        })
        .await;
        r.sim.hang_up_caller(&id);
        until_no_channels(&r.sim).await;
        let evs = drain(&mut r.events, Duration::from_millis(50)).await;
        assert!(
            matches!(evs.as_slice(), [
                Event::ChannelHangupRequest { channel, cause: 16, soft: None },
                Event::PlaybackFinished { playback },
                Event::StasisEnd { channel: left },
            ] if channel.id == id && playback.state == "failed" && left.id == id),
            "local {local}: {evs:?}"
        );
        let gone = r.ari.channel(&id).await.unwrap_err();
        assert_eq!(gone.status().map(|s| s.as_u16()), Some(404));
    }
}

#[tokio::test]
async fn the_agent_half_plays_and_a_playback_can_be_stopped() {
    let mut r = rig(fast()).await;
    let ch = r
        .ari
        .originate(&originate("Local/3241000752@from-voip"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    wait_for(&mut r.events, &mut seen, |app, e| {
        app == "openai-app" && matches!(e, Event::StasisStart { .. })
    })
    .await;
    let Some((_, Event::StasisStart { channel: agent, .. })) = seen.last() else {
        unreachable!()
    };
    let agent = agent.id.clone();
    assert_ne!(agent, ch.id);
    two_item_prompt(&mut r, &agent, "openai-app").await;

    // DELETE /ari/playbacks/{id}: 204, then `done` (fact 15); then 404.
    let pb = r
        .ari
        .play(
            &agent,
            &["sound:morosos_natalia".into()],
            Some("es_MX"),
            None,
        )
        .await
        .unwrap();
    let stop = || async {
        reqwest::Client::new()
            .delete(format!("{}/ari/playbacks/{}", r.sim.url(), pb.id))
            .basic_auth("asterisk", Some("asterisk"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(stop().await, 204);
    let mut seen = Vec::new();
    let stopped = Instant::now();
    wait_for(
        &mut r.events,
        &mut seen,
        |_, e| matches!(e, Event::PlaybackFinished { playback } if playback.state == "done"),
    )
    .await;
    assert!(stopped.elapsed() < r.sim.scaled(Duration::from_millis(4380)));
    assert_eq!(stop().await, 404);
    r.ari.hangup(&agent, "normal").await.unwrap();
    until_no_channels(&r.sim).await;
}

#[tokio::test]
async fn a_per_number_answer_delay_is_honoured() {
    let mut r = rig(fast()).await;
    r.sim.configure(|c| {
        c.answer_delays
            .insert("3001234560".into(), Duration::from_secs(10));
    });
    let scaled = r.sim.scaled(Duration::from_secs(10));
    for (number, delayed) in [("3001234560", true), ("3001234561", false)] {
        for endpoint in [
            format!("Local/{number}@sim-pstn"),
            format!("Local/{number}@from-voip"),
            format!("PJSIP/{number}@voip_issabel"),
        ] {
            let sent = Instant::now();
            let ch = r.ari.originate(&originate(&endpoint)).await.unwrap();
            let mut seen = Vec::new();
            let answered = wait_for(
                &mut r.events,
                &mut seen,
                |_, e| matches!(e, Event::StasisStart { channel, .. } if channel.id == ch.id),
            )
            .await;
            let rang = seen.iter().any(|(_, e)| {
                matches!(e, Event::ChannelStateChange { channel }
                    if channel.id == ch.id && channel.state == "Ringing")
            });
            assert_eq!(rang, delayed, "{endpoint}");
            let took = answered - sent;
            if delayed {
                assert!(took >= scaled, "{endpoint}: answered after {took:?}");
            } else {
                assert!(took < scaled, "{endpoint}: answered after {took:?}");
            }
            r.ari.hangup(&ch.id, "normal").await.unwrap();
            until_destroyed(&mut r.events, &ch.id).await;
        }
    }
    until_no_channels(&r.sim).await;
}

// ---- externalMedia's RTP (facts 12, 19, 20) ----

/// An inbound caller in `openai-app` and an externalMedia channel sending
/// to `daemon`, both in Stasis; not bridged yet.
struct Media {
    r: Rig,
    caller: String,
    rtp: overdue_dialer::ari::model::Channel,
    daemon: tokio::net::UdpSocket,
}

async fn media_rig() -> Media {
    let mut r = rig(fast()).await;
    let daemon = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let caller = r.sim.inbound_local_call("5512345678").unwrap();
    until_stasis(&mut r.events, &caller).await;
    let em = overdue_dialer::ari::ExternalMedia {
        app: "openai-app".into(),
        external_host: daemon.local_addr().unwrap().to_string(),
        format: "ulaw".into(),
        channel_id: None,
        data: Some(caller.clone()),
    };
    let rtp = r.ari.external_media(&em).await.unwrap();
    until_stasis(&mut r.events, &rtp.id).await;
    Media {
        r,
        caller,
        rtp,
        daemon,
    }
}

impl Media {
    async fn bridge(&self) -> String {
        let bridge = self.r.ari.create_bridge("agent").await.unwrap();
        self.r
            .ari
            .add_to_bridge(&bridge.id, &self.caller)
            .await
            .unwrap();
        self.r
            .ari
            .add_to_bridge(&bridge.id, &self.rtp.id)
            .await
            .unwrap();
        bridge.id
    }

    /// `UNICASTRTP_LOCAL_ADDRESS`:`UNICASTRTP_LOCAL_PORT`.
    fn unicast(&self) -> std::net::SocketAddr {
        let vars = self.rtp.channelvars.clone().unwrap();
        format!(
            "{}:{}",
            vars["UNICASTRTP_LOCAL_ADDRESS"], vars["UNICASTRTP_LOCAL_PORT"]
        )
        .parse()
        .unwrap()
    }

    /// The next datagram the daemon gets, if one comes within `wait`.
    async fn next(&self, wait: Duration) -> Option<(Instant, std::net::SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; 2048];
        let (n, from) = tokio::time::timeout(wait, self.daemon.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        buf.truncate(n);
        Some((Instant::now(), from, buf))
    }
}

/// `BRIDGEPEER` and `STASISSTATUS` aside.
fn no_varsets(evs: Vec<Event>) -> Vec<Event> {
    evs.into_iter()
        .filter(|e| !matches!(e, Event::ChannelVarset { .. }))
        .collect()
}

/// An RTP packet as a daemon sends it.
fn packet(seq: u16, ts: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
    rtp_types::RtpPacketBuilder::<&[u8], &[u8]>::new()
        .payload_type(0)
        .sequence_number(seq)
        .timestamp(ts)
        .ssrc(0xD00D)
        .marker_bit(marker)
        .payload(payload)
        .write_vec()
        .unwrap()
}

#[tokio::test]
async fn the_callers_speech_reaches_the_daemon_as_paced_rtp() {
    let m = media_rig().await;
    // The real socket, where the channel variables say.
    assert_eq!(m.r.sim.external_media_addr(&m.rtp.id), Some(m.unicast()));
    assert_ne!(m.unicast().port(), 0);
    m.bridge().await;
    assert!(
        m.next(Duration::from_millis(200)).await.is_none(),
        "nothing while the caller is silent"
    );
    // 50 frames and a part frame, never silence, each byte telling its place.
    let speech: Vec<u8> = (0..50 * 160 + 100).map(|i| (i % 251) as u8).collect();
    m.r.sim.caller_says(&m.caller, speech.clone());
    let mut got = Vec::new();
    for n in 0..51 {
        got.push(
            m.next(Duration::from_secs(2))
                .await
                .unwrap_or_else(|| panic!("packet {n} never came")),
        );
    }
    assert!(
        m.next(Duration::from_millis(200)).await.is_none(),
        "nothing once the speech is said"
    );
    let mut payload = Vec::new();
    let mut first = None;
    for (k, (_, from, bytes)) in got.iter().enumerate() {
        assert_eq!(*from, m.unicast(), "sent from the channel's own socket");
        assert_eq!(bytes.len(), 172);
        let p = rtp_types::RtpPacket::parse(bytes).unwrap();
        assert_eq!(
            (p.version(), p.payload_type(), p.marker_bit(), p.n_csrcs()),
            (2, 0, false, 0)
        );
        assert!(!p.extension_bit() && p.padding().is_none());
        let (seq0, ssrc) = *first.get_or_insert((p.sequence_number(), p.ssrc()));
        assert_eq!(p.sequence_number(), seq0.wrapping_add(k as u16));
        assert_eq!(p.ssrc(), ssrc, "one SSRC");
        assert_eq!(p.timestamp(), 160 * (k as u32 + 1), "timestamps from 160");
        payload.extend_from_slice(p.payload());
    }
    let mut padded = speech;
    padded.resize(51 * 160, 0xFF);
    assert_eq!(
        payload, padded,
        "the speech intact, in order, padded with silence"
    );
    let mut gaps: Vec<Duration> = got.windows(2).map(|w| w[1].0 - w[0].0).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median >= Duration::from_millis(15) && median <= Duration::from_millis(25),
        "one packet every 20 ms: median gap {median:?}"
    );
    let span = got[50].0 - got[0].0;
    assert!(
        span >= Duration::from_millis(800),
        "paced, not sent at once: {span:?}"
    );
}

#[tokio::test]
async fn what_the_daemon_sends_is_heard_by_the_bridged_caller() {
    let m = media_rig().await;
    let to = m.unicast();
    let me = m.daemon.local_addr().unwrap();
    // Not bridged yet: nobody hears it.
    m.daemon
        .send_to(&packet(1, 0, false, &[0x11; 160]), to)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(m.r.sim.heard(&m.caller).is_empty());
    m.bridge().await;
    let sent = [
        (7u16, 160u32, true, vec![0x01u8; 160]),
        (8, 320, false, vec![0x02; 160]),
        (9, 480, false, vec![0x03; 80]),
    ];
    for (seq, ts, marker, payload) in &sent {
        m.daemon
            .send_to(&packet(*seq, *ts, *marker, payload), to)
            .await
            .unwrap();
    }
    m.daemon.send_to(b"not rtp", to).await.unwrap();
    for _ in 0..200 {
        if m.r.sim.heard(&m.caller).len() == 3 && m.r.sim.bad_rtp() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let heard = m.r.sim.heard(&m.caller);
    let got: Vec<(u16, u32, bool, Vec<u8>)> = heard
        .iter()
        .map(|h| (h.seq, h.ts, h.marker, h.payload.clone()))
        .collect();
    assert_eq!(got, sent.to_vec());
    for h in &heard {
        assert_eq!((h.from, h.ssrc, h.payload_type), (me, 0xD00D, 0));
    }
    assert!(heard.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(
        m.r.sim.bad_rtp(),
        1,
        "the datagram that is no RTP is counted, not heard"
    );
    assert!(m.r.sim.heard(&m.rtp.id).is_empty());
}

#[tokio::test]
async fn after_the_caller_hangs_up_the_rtp_channel_stays_up_and_silent() {
    let mut m = media_rig().await;
    let bridge = m.bridge().await;
    let to = m.unicast();
    m.daemon
        .send_to(&packet(1, 160, false, &[0x55; 160]), to)
        .await
        .unwrap();
    // Two seconds of speech; the caller hangs up a few packets in.
    m.r.sim.caller_says(&m.caller, vec![0x2A; 100 * 160]);
    for _ in 0..5 {
        m.next(Duration::from_secs(2))
            .await
            .expect("speech never came");
    }
    drain(&mut m.r.events, Duration::from_millis(20)).await;
    m.r.sim.hang_up_caller(&m.caller);
    let evs = no_varsets(drain(&mut m.r.events, Duration::from_millis(100)).await);
    assert!(
        matches!(evs.as_slice(), [
            Event::ChannelHangupRequest { cause: 16, .. },
            Event::ChannelLeftBridge { channel: left, .. },
            Event::StasisEnd { channel: ended },
        ] if left.id == m.caller && ended.id == m.caller),
        "only the caller leaves: {evs:?}"
    );
    // Packets sent before the hang-up may wait in the socket; then nothing.
    let mut buf = [0u8; 2048];
    while m.daemon.try_recv_from(&mut buf).is_ok() {}
    assert!(
        m.next(Duration::from_millis(300)).await.is_none(),
        "no RTP once the caller is gone"
    );
    let ch = m.r.ari.channel(&m.rtp.id).await.unwrap();
    assert_eq!(ch.state, "Up");
    let b: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/ari/bridges/{bridge}", m.r.sim.url()))
        .basic_auth("asterisk", Some("asterisk"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b["channels"], serde_json::json!([m.rtp.id]));
    // What the caller heard stays readable; later packets reach nobody.
    m.daemon
        .send_to(&packet(2, 320, false, &[0x55; 160]), to)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(m.r.sim.heard(&m.caller).len(), 1);

    m.r.ari.hangup(&m.rtp.id, "normal").await.unwrap();
    let evs = no_varsets(drain(&mut m.r.events, Duration::from_millis(100)).await);
    assert!(
        matches!(
            evs.as_slice(),
            [
                Event::ChannelHangupRequest {
                    cause: 32,
                    soft: Some(true),
                    ..
                },
                Event::ChannelLeftBridge { .. },
                Event::StasisEnd { .. },
                Event::ChannelDestroyed { cause: 16, .. },
            ]
        ),
        "{evs:?}"
    );
    assert_eq!(m.r.sim.external_media_addr(&m.rtp.id), None);
    // The socket is closed: its port can be bound again.
    let mut rebound = false;
    for _ in 0..50 {
        if std::net::UdpSocket::bind(to).is_ok() {
            rebound = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rebound, "the externalMedia socket stayed open");
    m.r.ari.destroy_bridge(&bridge).await.unwrap();
    assert_eq!((m.r.sim.live_channels(), m.r.sim.live_bridges()), (0, 0));
}

// ---- the far end's keys and `continue` (facts 15, 16) ----

/// A callee who stays on, its call in Stasis: (`;1`, `;2`).
async fn stasis_call(r: &mut Rig) -> (String, String) {
    let a = r
        .ari
        .originate(&originate("Local/3001234568@sim-pstn"))
        .await
        .unwrap()
        .id;
    until_stasis(&mut r.events, &a).await;
    let b = r
        .ari
        .channels()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id != a)
        .unwrap()
        .id;
    (a, b)
}

async fn post(sim: &Simulator, path: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{}/ari/{path}", sim.url()))
        .basic_auth("asterisk", Some("asterisk"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn a_key_pressed_reaches_the_channel_in_stasis() {
    let mut r = rig(fast()).await;
    let (a, b) = stasis_call(&mut r).await;
    drain(&mut r.events, Duration::from_millis(20)).await;
    // On `;1` itself, and from the callee's `;2`: both reported on `;1`.
    for (pressed, digit) in [(&a, '5'), (&b, '#')] {
        let at = Instant::now();
        r.sim.press(pressed, digit);
        let mut seen = Vec::new();
        let got = wait_for(&mut r.events, &mut seen, |_, e| {
            matches!(e, Event::ChannelDtmfReceived { .. })
        })
        .await;
        let Some((
            app,
            Event::ChannelDtmfReceived {
                channel,
                digit: d,
                duration_ms,
            },
        )) = seen.pop()
        else {
            unreachable!()
        };
        assert_eq!(
            (app.as_str(), channel.id.as_str(), d, duration_ms),
            ("overdue-app", a.as_str(), digit.to_string(), 100)
        );
        assert!(
            got - at >= r.sim.scaled(Duration::from_millis(200)),
            "as the digit ends"
        );
    }
    r.ari.hangup(&a, "normal").await.unwrap();
    until_no_channels(&r.sim).await;
}

#[tokio::test]
async fn the_dtmf_callee_presses_1_and_the_prompt_plays_on_until_stopped() {
    let mut r = rig(SimConfig {
        time_scale: 0.05,
        ..SimConfig::default()
    })
    .await;
    r.sim.configure(|c| {
        if let Some(s) = c.sounds.get_mut("morosos_natalia") {
            s.duration = Duration::from_millis(20_180);
        }
    });
    let a = r
        .ari
        .originate(&originate("Local/3001234561@sim-pstn-dtmf"))
        .await
        .unwrap()
        .id;
    until_stasis(&mut r.events, &a).await;
    let pb = r
        .ari
        .play(&a, &["sound:morosos_natalia".into()], Some("es_MX"), None)
        .await
        .unwrap();
    let mut seen = Vec::new();
    wait_for(&mut r.events, &mut seen, |_, e| {
        matches!(e, Event::ChannelDtmfReceived { channel, digit, .. } if channel.id == a && digit == "1")
    })
    .await;
    assert!(
        !seen
            .iter()
            .any(|(_, e)| matches!(e, Event::PlaybackFinished { .. })),
        "the prompt goes on: {seen:?}"
    );
    let stop = reqwest::Client::new()
        .delete(format!("{}/ari/playbacks/{}", r.sim.url(), pb.id))
        .basic_auth("asterisk", Some("asterisk"))
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status().as_u16(), 204);
    wait_for(
        &mut r.events,
        &mut seen,
        |_, e| matches!(e, Event::PlaybackFinished { playback } if playback.state == "done"),
    )
    .await;
    r.ari.hangup(&a, "normal").await.unwrap();
    until_no_channels(&r.sim).await;
}

/// Raw events (from `raw_events`) until one of type `kind`, of channel
/// `of` if given; keeps them all.
async fn raw_until(
    raw: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    seen: &mut Vec<serde_json::Value>,
    kind: &str,
    of: Option<&str>,
) {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), raw.recv())
            .await
            .unwrap_or_else(|_| panic!("no {kind}: {seen:#?}"))
            .unwrap();
        let hit = ev["type"] == kind && of.is_none_or(|id| ev["channel"]["id"] == id);
        seen.push(ev);
        if hit {
            return;
        }
    }
}

fn kinds(seen: &[serde_json::Value]) -> Vec<&str> {
    seen.iter().filter_map(|e| e["type"].as_str()).collect()
}

#[tokio::test]
async fn continue_waits_for_the_prompt_leaves_the_bridge_then_stasis() {
    // Read raw, with no other connection holding the apps.
    let sim = Simulator::start(fast(), 0).await.unwrap();
    let ari = AriClient::new(
        &sim.url(),
        "asterisk",
        Secret::new("asterisk"),
        Duration::from_secs(2),
    )
    .unwrap();
    let mut raw = raw_events(&sim).await;
    let mut seen = Vec::new();
    let a = ari
        .originate(&originate("Local/3001234568@sim-pstn"))
        .await
        .unwrap()
        .id;
    raw_until(&mut raw, &mut seen, "StasisStart", None).await;
    let bridge = ari.create_bridge("hold").await.unwrap();
    ari.add_to_bridge(&bridge.id, &a).await.unwrap();
    ari.play(&a, &["sound:morosos_natalia".into()], Some("es_MX"), None)
        .await
        .unwrap();
    raw_until(&mut raw, &mut seen, "PlaybackStarted", None).await;
    let (status, _) = post(
        &sim,
        &format!("channels/{a}/continue?context=overdue-queue&priority=1"),
    )
    .await;
    assert_eq!(status, 204, "answered at once");
    assert_eq!(
        sim.continued_to(&a),
        None,
        "still in Stasis while the prompt plays"
    );
    seen.clear();
    raw_until(&mut raw, &mut seen, "ChannelDialplan", Some(&a)).await;
    // The callee's `;2` goes on with its own dialplan meanwhile.
    seen.retain(|e| e["channel"]["id"] == a.as_str() || e.get("playback").is_some());
    assert_eq!(
        kinds(&seen),
        vec![
            "PlaybackFinished",
            "ChannelVarset",
            "ChannelLeftBridge",
            "StasisEnd",
            "ChannelDialplan"
        ]
    );
    assert_eq!(
        seen[0]["playback"]["state"], "done",
        "the prompt played to its end"
    );
    let dp = &seen[4]["channel"]["dialplan"];
    assert_eq!(
        (&dp["context"], &dp["exten"], &dp["priority"]),
        (&"overdue-queue".into(), &"s".into(), &1.into())
    );
    assert_eq!(
        sim.continued_to(&a),
        Some(("overdue-queue".into(), "s".into(), 1))
    );
    // Out of Stasis: up, no longer in the bridge, refused by Stasis commands.
    assert_eq!(ari.channel(&a).await.unwrap().state, "Up");
    assert!(sim.live_bridges() == 1 && ari.channels().await.unwrap().len() == 2);
    assert_eq!(
        post(&sim, &format!("channels/{a}/continue")).await,
        (
            409,
            r#"{"message":"Channel not in Stasis application"}"#.into()
        )
    );
    assert_eq!(
        post(&sim, "channels/no-such-channel/continue").await,
        (404, r#"{"message":"Channel not found"}"#.into())
    );
    // The far end hangs up in the queue: the app, still following, hears it.
    seen.clear();
    sim.hang_up_caller(&a);
    raw_until(&mut raw, &mut seen, "ChannelDestroyed", Some(&a)).await;
    let of_a: Vec<(&str, String)> = seen
        .iter()
        .filter(|e| e["channel"]["id"] == a.as_str())
        .map(|e| {
            let detail = match e["type"].as_str() {
                Some("ChannelVarset") => e["variable"].as_str().unwrap_or("").to_owned(),
                _ => e["cause"].to_string(),
            };
            (e["type"].as_str().unwrap_or(""), detail)
        })
        .collect();
    assert_eq!(
        of_a,
        vec![
            ("ChannelHangupRequest", "16".into()),
            ("ChannelVarset", "STASISSTATUS".into()),
            ("ChannelDestroyed", "16".into()),
        ]
    );
    assert!(seen.iter().all(|e| e["type"] != "StasisEnd"));
    until_no_channels(&sim).await;
    ari.destroy_bridge(&bridge.id).await.unwrap();
}

#[tokio::test]
async fn a_continued_call_ends_when_its_queue_hangs_up() {
    let mut r = rig(fast()).await;
    r.sim
        .configure(|c| c.continue_hangup_after = Some(Duration::from_secs(5)));
    let (a, _) = stasis_call(&mut r).await;
    let at = Instant::now();
    let (status, _) = post(
        &r.sim,
        &format!("channels/{a}/continue?context=overdue-queue"),
    )
    .await;
    assert_eq!(status, 204);
    let evs = until_destroyed(&mut r.events, &a).await;
    assert!(at.elapsed() >= r.sim.scaled(Duration::from_secs(5)));
    assert!(evs
        .iter()
        .any(|e| matches!(e, Event::StasisEnd { channel } if channel.id == a)));
    assert!(
        !evs.iter()
            .any(|e| matches!(e, Event::ChannelHangupRequest { channel, .. } if channel.id == a)),
        "Hangup() in the dialplan: no hangup request for `;1`: {evs:?}"
    );
    assert_eq!(destroyed_cause(&evs, &a), 16);
    assert_eq!(
        r.sim.continued_to(&a),
        Some(("overdue-queue".into(), "s".into(), 1))
    );
    until_no_channels(&r.sim).await;
}

// ---- AMD, the callee's own keys, what was played, the hop to the agent ----

/// A simulator read raw, with no other connection holding the apps.
async fn raw_rig(
    cfg: SimConfig,
) -> (
    Simulator,
    AriClient,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let sim = Simulator::start(cfg, 0).await.unwrap();
    let ari = AriClient::new(
        &sim.url(),
        "asterisk",
        Secret::new("asterisk"),
        Duration::from_secs(2),
    )
    .unwrap();
    let raw = raw_events(&sim).await;
    (sim, ari, raw)
}

/// `variable=value` of every `ChannelVarset` of `id` in `seen`, once per
/// event (not per app receiving it).
fn varsets(seen: &[serde_json::Value], id: &str, app: &str) -> Vec<String> {
    seen.iter()
        .filter(|e| e["type"] == "ChannelVarset" && e["channel"]["id"] == id)
        .filter(|e| e["application"] == app)
        .map(|e| {
            format!(
                "{}={}",
                e["variable"].as_str().unwrap_or(""),
                e["value"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// (type, app) of every event of channel `id` in `seen`.
fn of_channel<'a>(seen: &'a [serde_json::Value], id: &str) -> Vec<(&'a str, &'a str)> {
    seen.iter()
        .filter(|e| e["channel"]["id"] == id)
        .map(|e| {
            (
                e["type"].as_str().unwrap_or(""),
                e["application"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

#[tokio::test]
async fn amd_on_a_trunk_gives_the_numbers_verdict_and_keys_wait_for_stasis() {
    let mut cfg = SimConfig {
        time_scale: 0.05,
        ..SimConfig::default()
    };
    let number = "3001234568";
    cfg.amd.insert(
        number.into(),
        AmdVerdict {
            status: "MACHINE".into(),
            cause: "MAXWORDS-3-2".into(),
            after: Duration::from_secs(2),
        },
    );
    // The first key comes during AMD(), the second once back in Stasis.
    cfg.dtmf.insert(
        number.into(),
        vec![
            (Duration::from_millis(500), '7'),
            (Duration::from_secs(4), '9'),
        ],
    );
    let (sim, ari, mut raw) = raw_rig(cfg).await;
    let a = ari
        .originate(&originate(&format!("PJSIP/{number}@voip_issabel")))
        .await
        .unwrap()
        .id;
    let mut seen = Vec::new();
    raw_until(&mut raw, &mut seen, "StasisStart", Some(&a)).await;
    let answered = Instant::now();
    let answered_stamp = parse_stamp(seen.last().unwrap()["timestamp"].as_str().unwrap());
    seen.clear();
    let (status, _) = post(&sim, &format!("channels/{a}/continue?context=overdue-amd")).await;
    assert_eq!(status, 204);
    raw_until(&mut raw, &mut seen, "StasisStart", Some(&a)).await;
    assert!(
        answered.elapsed() >= sim.scaled(Duration::from_secs(2)),
        "the verdict comes after its delay"
    );
    let back = seen.last().unwrap();
    assert_eq!(
        back["args"],
        serde_json::json!(["amd", "MACHINE", "MAXWORDS-3-2"])
    );
    assert_eq!(
        back["channel"]["dialplan"],
        serde_json::json!({
            "context": "overdue-amd", "exten": "s", "priority": 2,
            "app_name": "Stasis", "app_data": "overdue-app,amd,MACHINE,MAXWORDS-3-2"
        })
    );
    assert_eq!(
        of_channel(&seen, &a)
            .into_iter()
            .map(|(kind, _)| kind)
            .collect::<Vec<_>>(),
        [
            "StasisEnd",
            "ChannelDialplan",
            "ChannelVarset",
            "ChannelVarset",
            "ChannelDialplan",
            "ChannelVarset",
            "StasisStart"
        ],
        "no key reached the app during AMD(): {seen:#?}"
    );
    assert_eq!(
        varsets(&seen, &a, "overdue-app"),
        [
            "AMDSTATUS=MACHINE",
            "AMDCAUSE=MAXWORDS-3-2",
            "STASISSTATUS="
        ]
    );
    // Back in Stasis: the callee's next key arrives.
    seen.clear();
    raw_until(&mut raw, &mut seen, "ChannelDtmfReceived", Some(&a)).await;
    let key = seen.last().unwrap();
    assert_eq!(key["digit"], "9");
    let took = parse_stamp(key["timestamp"].as_str().unwrap()) - answered_stamp;
    assert!(
        took.to_std().unwrap_or_default()
            >= sim.scaled(Duration::from_millis(4200)) - Duration::from_millis(1),
        "pressed 4 s after the answer, reported as it ends: {took:?}"
    );
    ari.hangup(&a, "normal").await.unwrap();
    seen.clear();
    raw_until(&mut raw, &mut seen, "ChannelDestroyed", Some(&a)).await;
    assert_eq!(seen.last().unwrap()["cause"], 16);
    // This Stasis() and the originate's, which ran the dialplan, return.
    assert_eq!(
        varsets(&seen, &a, "overdue-app"),
        ["STASISSTATUS=SUCCESS", "STASISSTATUS=SUCCESS"]
    );
    until_no_channels(&sim).await;
}

#[tokio::test]
async fn a_callee_hanging_up_during_amd_never_comes_back_to_stasis() {
    // 3001234567 hangs up 2 s after answering; AMD() would decide at 2.92 s.
    let (sim, ari, mut raw) = raw_rig(SimConfig {
        time_scale: 0.05,
        ..SimConfig::default()
    })
    .await;
    let a = ari
        .originate(&originate("Local/3001234567@sim-pstn"))
        .await
        .unwrap()
        .id;
    let mut seen = Vec::new();
    raw_until(&mut raw, &mut seen, "StasisStart", Some(&a)).await;
    seen.clear();
    let path = format!("channels/{a}/continue?context=amd&extension=s&priority=1");
    assert_eq!(post(&sim, &path).await.0, 204);
    raw_until(&mut raw, &mut seen, "ChannelDestroyed", Some(&a)).await;
    assert_eq!(seen.last().unwrap()["cause"], 16);
    assert_eq!(
        varsets(&seen, &a, "overdue-app"),
        ["AMDSTATUS=HANGUP", "AMDCAUSE=", "STASISSTATUS=SUCCESS"]
    );
    // Nothing comes back later either.
    tokio::time::sleep(sim.scaled(Duration::from_secs(2))).await;
    while let Ok(ev) = raw.try_recv() {
        seen.push(ev);
    }
    assert_eq!(
        seen.iter()
            .filter(|e| e["type"] == "StasisStart" || e["type"] == "StasisEnd")
            .count(),
        1,
        "one StasisEnd at the continue, no StasisStart: {seen:#?}"
    );
    until_no_channels(&sim).await;
}

#[tokio::test]
async fn a_callees_keys_reach_the_app_on_every_route_that_answers() {
    let number = "3001234568";
    let mut cfg = fast();
    cfg.dtmf.insert(
        number.into(),
        vec![(Duration::from_secs(1), '1'), (Duration::from_secs(2), '#')],
    );
    let (sim, ari, mut raw) = raw_rig(cfg).await;
    // Asterisk's own stamps, so a slow reader does not skew the delays.
    let stamp = |e: &serde_json::Value| parse_stamp(e["timestamp"].as_str().unwrap_or(""));
    for endpoint in [
        format!("Local/{number}@sim-pstn"),
        format!("Local/{number}@from-voip"),
        format!("PJSIP/{number}@voip_issabel"),
        format!("SIP/voip_issabel/{number}"),
    ] {
        let a = ari.originate(&originate(&endpoint)).await.unwrap().id;
        let mut seen = Vec::new();
        raw_until(&mut raw, &mut seen, "StasisStart", Some(&a)).await;
        let answered = stamp(seen.last().unwrap());
        let mut keys = Vec::new();
        for after in [1200, 2200] {
            raw_until(&mut raw, &mut seen, "ChannelDtmfReceived", Some(&a)).await;
            let key = seen.last().unwrap();
            let took = (stamp(key) - answered).to_std().unwrap_or_default();
            // Stamps are whole milliseconds.
            let due = sim.scaled(Duration::from_millis(after)) - Duration::from_millis(1);
            assert!(
                took >= due,
                "{endpoint}: a key due {after} ms (scaled) after the answer came after {took:?}"
            );
            assert_eq!(
                (&key["application"], &key["duration_ms"]),
                (&"overdue-app".into(), &100.into())
            );
            keys.push(key["digit"].as_str().unwrap_or("").to_owned());
        }
        assert_eq!(keys, ["1", "#"], "{endpoint}");
        ari.hangup(&a, "normal").await.unwrap();
        until_no_channels(&sim).await;
    }
}

#[tokio::test]
async fn played_lists_each_item_heard_and_a_stopped_prompt() {
    let mut r = rig(fast()).await;
    let (a, b) = stasis_call(&mut r).await;
    let mut seen = Vec::new();
    let finished = |state: &'static str| move |_: &str, e: &Event| matches!(e, Event::PlaybackFinished { playback } if playback.state == state);
    r.ari
        .play(
            &a,
            &["sound:morosos_natalia".into(), "number:125000".into()],
            Some("es_MX"),
            None,
        )
        .await
        .unwrap();
    wait_for(&mut r.events, &mut seen, finished("done")).await;
    // A sound Asterisk does not have: nothing heard.
    r.ari
        .play(&a, &["sound:no_such_prompt".into()], Some("es_MX"), None)
        .await
        .unwrap();
    wait_for(&mut r.events, &mut seen, finished("failed")).await;
    let pb = r
        .ari
        .play(&a, &["sound:morosos_natalia".into()], Some("es_MX"), None)
        .await
        .unwrap();
    wait_for(&mut r.events, &mut seen, |_, e| {
        matches!(e, Event::PlaybackStarted { .. })
    })
    .await;
    let stop = reqwest::Client::new()
        .delete(format!("{}/ari/playbacks/{}", r.sim.url(), pb.id))
        .basic_auth("asterisk", Some("asterisk"))
        .send()
        .await
        .unwrap();
    assert_eq!(stop.status().as_u16(), 204);
    // Fact 15: a stopped playback finishes `done`.
    wait_for(&mut r.events, &mut seen, finished("done")).await;
    r.ari.hangup(&a, "normal").await.unwrap();
    until_no_channels(&r.sim).await;
    let played = r.sim.played(&a);
    assert_eq!(
        played
            .iter()
            .map(|p| (p.media.as_str(), p.lang.as_deref(), p.stopped))
            .collect::<Vec<_>>(),
        [
            ("sound:morosos_natalia", Some("es_MX"), false),
            ("number:125000", Some("es_MX"), false),
            ("sound:morosos_natalia", Some("es_MX"), true),
        ],
        "kept after the channel is gone"
    );
    let lengths: Vec<Duration> = played
        .iter()
        .map(|p| p.ended.expect("every item ended") - p.started)
        .collect();
    let prompt = r.sim.scaled(Duration::from_millis(4380));
    assert!(lengths[0] >= prompt.mul_f64(0.8), "{lengths:?}");
    // "ciento veinticinco mil": three words of 0.6 s.
    assert!(
        lengths[1] >= r.sim.scaled(Duration::from_millis(1800)).mul_f64(0.8)
            && lengths[1] < r.sim.scaled(Duration::from_millis(3600)),
        "{lengths:?}"
    );
    assert!(lengths[2] < prompt, "cut short: {lengths:?}");
    assert!(played.windows(2).all(|w| w[0].started <= w[1].started));
    assert!(
        r.sim.played(&b).is_empty(),
        "nothing was played to the callee's half"
    );
}

#[tokio::test]
async fn a_continue_to_overdue_agent_hands_the_callee_to_the_voice_agent_app() {
    let (sim, ari, mut raw) = raw_rig(fast()).await;
    let number = "3001234568";
    let a = ari
        .originate(&originate(&format!("Local/{number}@sim-pstn")))
        .await
        .unwrap()
        .id;
    let mut seen = Vec::new();
    raw_until(&mut raw, &mut seen, "StasisStart", Some(&a)).await;
    seen.clear();
    let path = format!("channels/{a}/continue?context=overdue-agent&extension={number}&priority=1");
    assert_eq!(post(&sim, &path).await.0, 204);
    raw_until(&mut raw, &mut seen, "StasisStart", Some(&a)).await;
    let start = seen.last().unwrap();
    assert_eq!(start["application"], "openai-app");
    assert_eq!(start["args"], serde_json::json!(["client", number]));
    assert_eq!(
        start["channel"]["dialplan"],
        serde_json::json!({
            "context": "overdue-agent", "exten": number, "priority": 1,
            "app_name": "Stasis", "app_data": format!("openai-app,client,{number}")
        })
    );
    assert_eq!(
        of_channel(&seen, &a),
        [
            ("StasisEnd", "overdue-app"),
            ("ChannelDialplan", "overdue-app"),
            ("ChannelVarset", "overdue-app"),
            ("StasisStart", "openai-app"),
        ]
    );
    // In Stasis there like any channel: it plays and joins a bridge.
    ari.play(&a, &["sound:hello-world".into()], None, None)
        .await
        .unwrap();
    seen.clear();
    raw_until(&mut raw, &mut seen, "PlaybackFinished", None).await;
    assert!(seen
        .iter()
        .filter(|e| e.get("playback").is_some())
        .all(|e| e["application"] == "openai-app" && e["playback"]["state"] != "failed"));
    let bridge = ari.create_bridge("agent").await.unwrap();
    ari.add_to_bridge(&bridge.id, &a).await.unwrap();
    raw_until(&mut raw, &mut seen, "ChannelEnteredBridge", Some(&a)).await;
    assert_eq!(seen.last().unwrap()["application"], "openai-app");
    seen.clear();
    ari.hangup(&a, "normal").await.unwrap();
    raw_until(&mut raw, &mut seen, "ChannelDestroyed", Some(&a)).await;
    // Each app gets its own copy: wait for any other.
    until_no_channels(&sim).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    while let Ok(ev) = raw.try_recv() {
        seen.push(ev);
    }
    let events = of_channel(&seen, &a);
    assert!(
        events.contains(&("ChannelLeftBridge", "openai-app")),
        "{events:?}"
    );
    assert!(events.contains(&("StasisEnd", "openai-app")), "{events:?}");
    // openai-app followed it only while it was in its Stasis.
    assert_eq!(events.last(), Some(&("ChannelDestroyed", "overdue-app")));
    assert!(
        !events.contains(&("ChannelDestroyed", "openai-app")),
        "{events:?}"
    );
    let returns: Vec<String> = varsets(&seen, &a, "overdue-app")
        .into_iter()
        .filter(|v| v.starts_with("STASISSTATUS"))
        .collect();
    assert_eq!(returns, ["STASISSTATUS=SUCCESS", "STASISSTATUS=SUCCESS"]);
    until_no_channels(&sim).await;
    ari.destroy_bridge(&bridge.id).await.unwrap();
}
