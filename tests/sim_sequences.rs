//! The simulator against the recordings of a real Asterisk 22: driven as
//! the lab drove Asterisk, it must emit the recorded event types, for the
//! same channels, with the same statuses and causes, in the recorded order.
//!
//! Tolerated differences, as between two real runs: events of different
//! channels stamped in the same millisecond may swap; the callee's `Wait()`
//! dialplan event floats (the lab saw it 4 to 500 ms after the answer);
//! values that are times or ids are not compared.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::StreamExt;
use overdue_dialer::ari::{AriClient, Originate};
use overdue_dialer::config::Secret;
use overdue_dialer::sim::{SimConfig, Simulator, SoundSpec};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const EVENTS: &str = include_str!("fixtures/ari/events.jsonl");

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Token {
    app: String,
    kind: String,
    role: String,
    detail: String,
}

/// A channel's role: its name without Asterisk's sequence number
/// (`Local/3001234564@from-voip;1`), `inner` for the far side of a
/// dialplan `Dial()`, `-` for playbacks.
fn role(ev: &Value) -> String {
    if ev["type"] == "Dial" && ev.get("caller").is_some() {
        return "inner".into();
    }
    let ch = ev.get("channel").or_else(|| ev.get("peer"));
    let Some(name) = ch.and_then(|c| c["name"].as_str()) else {
        return "-".into();
    };
    if let Some(rest) = name.strip_prefix("UnicastRTP/") {
        return format!("UnicastRTP/{}", rest.split('-').next().unwrap_or(""));
    }
    match name.rsplit_once('-') {
        Some((base, tail)) => match tail.split_once(';') {
            Some((_, half)) => format!("{base};{half}"),
            None => base.to_owned(),
        },
        None => name.to_owned(),
    }
}

fn token(ev: &Value) -> Token {
    let kind = ev["type"].as_str().unwrap_or("").to_owned();
    let s = |k: &str| ev[k].as_str().unwrap_or("").to_owned();
    let detail = match kind.as_str() {
        "ChannelVarset" => s("variable"),
        "Dial" => s("dialstatus"),
        "ChannelHangupRequest" => format!(
            "{} soft={}",
            ev["cause"],
            ev["soft"].as_bool().unwrap_or(false)
        ),
        "ChannelDestroyed" => format!("{}", ev["cause"]),
        "ChannelStateChange" => ev["channel"]["state"].as_str().unwrap_or("").to_owned(),
        "ChannelDialplan" => s("dialplan_app"),
        k if k.starts_with("Playback") => format!(
            "{} {}",
            ev["playback"]["state"].as_str().unwrap_or(""),
            ev["playback"]["media_uri"].as_str().unwrap_or("")
        ),
        _ => String::new(),
    };
    Token {
        app: s("application"),
        kind,
        role: role(ev),
        detail,
    }
}

fn floats(t: &Token) -> bool {
    t.kind == "ChannelDialplan" && t.detail == "Wait"
}

fn recorded(scenario: &str) -> Vec<(Token, String)> {
    EVENTS
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["scenario"] == scenario)
        .map(|r| {
            (
                token(&r["event"]),
                r["event"]["timestamp"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Checks `got` against the recording: the same events per channel in the
/// same order, and across channels the recorded order wherever the
/// recorded timestamps differ.
fn assert_equivalent(scenario: &str, want: &[(Token, String)], got: &[Token]) {
    let show = |v: Vec<&Token>| {
        v.iter()
            .map(|t| format!("  {} {} {} {}", t.app, t.kind, t.role, t.detail))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut by_role_want: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for (i, (t, _)) in want.iter().enumerate() {
        by_role_want
            .entry((t.app.clone(), t.role.clone()))
            .or_default()
            .push(i);
    }
    let mut by_role_got: HashMap<(String, String), Vec<usize>> = HashMap::new();
    for (i, t) in got.iter().enumerate() {
        by_role_got
            .entry((t.app.clone(), t.role.clone()))
            .or_default()
            .push(i);
    }
    let mut position = vec![usize::MAX; want.len()];
    for (key, wants) in &by_role_want {
        let gots = by_role_got.get(key).cloned().unwrap_or_default();
        let w: Vec<&Token> = wants.iter().map(|&i| &want[i].0).collect();
        let g: Vec<&Token> = gots.iter().map(|&i| &got[i]).collect();
        assert_eq!(
            w,
            g,
            "[{scenario}] events of {key:?} differ.\nrecorded:\n{}\nsimulated:\n{}",
            show(w.clone()),
            show(g.clone())
        );
        for (wi, gi) in wants.iter().zip(gots) {
            position[*wi] = gi;
        }
    }
    assert_eq!(
        want.len(),
        got.len(),
        "[{scenario}] simulated events on channels the recording does not have:\n{}",
        show(got.iter().collect())
    );
    for i in 0..want.len() {
        for j in i + 1..want.len() {
            let (a, b) = (&want[i], &want[j]);
            if a.1[..23.min(a.1.len())] == b.1[..23.min(b.1.len())] || floats(&a.0) || floats(&b.0)
            {
                continue;
            }
            assert!(
                position[i] < position[j],
                "[{scenario}] recorded order broken: {:?} ({}) must come before {:?} ({})\nsimulated:\n{}",
                a.0,
                a.1,
                b.0,
                b.1,
                show(got.iter().collect())
            );
        }
    }
}

/// How the lab's event WebSocket ended.
#[derive(Debug, PartialEq)]
enum WsEnd {
    /// A close frame, with its code.
    Close(Option<u16>),
    /// The connection ended with no close frame (a client's 1006).
    NoCloseFrame(String),
}

struct Lab {
    sim: Arc<Simulator>,
    ari: AriClient,
    events: tokio::sync::mpsc::UnboundedReceiver<Value>,
    ended: tokio::sync::oneshot::Receiver<WsEnd>,
}

async fn lab() -> Lab {
    lab_with(|_| {}).await
}

async fn lab_with(configure: impl FnOnce(&mut SimConfig)) -> Lab {
    let mut cfg = SimConfig {
        time_scale: 0.05,
        ..SimConfig::default()
    };
    configure(&mut cfg);
    let sim = Arc::new(Simulator::start(cfg, 0).await.unwrap());
    let ari = AriClient::new(
        &sim.url(),
        "asterisk",
        Secret::new("asterisk"),
        Duration::from_secs(5),
    )
    .unwrap();
    let url = format!("ws://{}/ari/events?app=overdue-app,openai-app", sim.addr());
    let mut req = url.into_client_request().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("asterisk:asterisk");
    req.headers_mut()
        .insert("Authorization", format!("Basic {auth}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let (end_tx, ended) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (_sink, mut stream) = ws.split();
        let end = loop {
            match stream.next().await {
                Some(Ok(Message::Text(text))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&text) {
                        let _ = tx.send(v);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break WsEnd::Close(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break WsEnd::NoCloseFrame(e.to_string()),
                None => break WsEnd::NoCloseFrame("end of stream".into()),
            }
        };
        let _ = end_tx.send(end);
    });
    Lab {
        sim,
        ari,
        events,
        ended,
    }
}

fn originate(endpoint: &str, app: &str, timeout: u64) -> Originate {
    Originate {
        endpoint: endpoint.into(),
        app: app.into(),
        timeout_secs: Some(timeout),
        ..Originate::default()
    }
}

/// What the lab did when an event arrived.
#[derive(Clone, Copy, PartialEq)]
enum Script {
    /// Nothing: the call ends by itself.
    Watch,
    /// On StasisStart play the prompt in es_MX; on PlaybackFinished hang up.
    Prompt,
    /// On StasisStart hang up at once.
    HangUpAtOnce,
    /// Play with no language, a missing sound, `lang=es`, then `es_MX`; then hang up.
    Languages,
    /// On the `;2` StasisStart in openai-app, wait a second and hang it up.
    Inbound,
}

async fn drive(lab: &mut Lab, script: Script, destroyed_expected: usize) -> Vec<Token> {
    let mut got = Vec::new();
    let mut destroyed = 0;
    let mut plays = vec![
        (None, "sound:morosos_natalia"),
        (Some("es_MX"), "sound:no_such_prompt"),
        (Some("es"), "sound:morosos_natalia"),
        (Some("es_MX"), "sound:morosos_natalia"),
    ]
    .into_iter();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while destroyed < destroyed_expected {
        let ev = tokio::time::timeout_at(deadline, lab.events.recv())
            .await
            .expect("scenario did not finish")
            .unwrap();
        got.push(token(&ev));
        let kind = ev["type"].as_str().unwrap_or("");
        let id = ev["channel"]["id"].as_str().unwrap_or("").to_owned();
        let app = ev["application"].as_str().unwrap_or("");
        match (script, kind) {
            (_, "ChannelDestroyed") => destroyed += 1,
            (Script::Prompt, "StasisStart") => {
                lab.ari
                    .play(&id, &["sound:morosos_natalia".into()], Some("es_MX"), None)
                    .await
                    .unwrap();
            }
            (Script::Languages, "StasisStart") => {
                let (lang, media) = plays.next().unwrap();
                lab.ari
                    .play(&id, &[media.into()], lang, None)
                    .await
                    .unwrap();
            }
            (Script::Languages, "PlaybackFinished") => {
                let target = ev["playback"]["target_uri"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("channel:")
                    .to_owned();
                match plays.next() {
                    Some((lang, media)) => drop(
                        lab.ari
                            .play(&target, &[media.into()], lang, None)
                            .await
                            .unwrap(),
                    ),
                    None => lab.ari.hangup(&target, "normal").await.unwrap(),
                }
            }
            (Script::Prompt, "PlaybackFinished") if ev["playback"]["state"] == "done" => {
                let target = ev["playback"]["target_uri"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("channel:");
                lab.ari.hangup(target, "normal").await.unwrap();
            }
            (Script::HangUpAtOnce, "StasisStart") => lab.ari.hangup(&id, "normal").await.unwrap(),
            (Script::Inbound, "StasisStart") if app == "openai-app" => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                lab.ari.hangup(&id, "normal").await.unwrap();
            }
            _ => {}
        }
    }
    // Anything still in flight would be an extra event.
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(ev) = lab.events.try_recv() {
        got.push(token(&ev));
    }
    assert_eq!(lab.sim.live_channels(), 0, "channels left alive");
    got
}

async fn scenario(name: &str, endpoint: &str, timeout: u64, script: Script) {
    let want = recorded(name);
    let destroyed = want
        .iter()
        .filter(|(t, _)| t.kind == "ChannelDestroyed")
        .count();
    let mut lab = lab().await;
    lab.ari
        .originate(&originate(endpoint, "overdue-app", timeout))
        .await
        .unwrap();
    let got = drive(&mut lab, script, destroyed).await;
    assert_equivalent(name, &want, &got);
}

#[tokio::test]
async fn answer() {
    scenario("answer", "Local/3001234560@sim-pstn", 30, Script::Prompt).await;
}

#[tokio::test]
async fn busy() {
    scenario("busy", "Local/3001234564@sim-pstn", 30, Script::Watch).await;
}

#[tokio::test]
async fn noanswer() {
    scenario("noanswer", "Local/3001234565@sim-pstn", 10, Script::Watch).await;
}

#[tokio::test]
async fn congestion() {
    scenario("congestion", "Local/3001234566@sim-pstn", 30, Script::Watch).await;
}

#[tokio::test]
async fn unallocated() {
    scenario(
        "unallocated",
        "Local/3001234569@sim-pstn",
        30,
        Script::Watch,
    )
    .await;
}

#[tokio::test]
async fn short() {
    scenario("short", "Local/3001234567@sim-pstn", 30, Script::Prompt).await;
}

#[tokio::test]
async fn dialplan() {
    scenario("dialplan", "Local/3001234561@from-voip", 30, Script::Prompt).await;
}

#[tokio::test]
async fn fv_busy() {
    scenario("fv-busy", "Local/3001234564@from-voip", 30, Script::Watch).await;
}

#[tokio::test]
async fn fv_noanswer() {
    scenario(
        "fv-noanswer",
        "Local/3001234565@from-voip",
        10,
        Script::Watch,
    )
    .await;
}

#[tokio::test]
async fn fv_congestion() {
    scenario(
        "fv-congestion",
        "Local/3001234566@from-voip",
        30,
        Script::Watch,
    )
    .await;
}

#[tokio::test]
async fn fv_unallocated() {
    scenario(
        "fv-unallocated",
        "Local/3001234569@from-voip",
        30,
        Script::Watch,
    )
    .await;
}

#[tokio::test]
async fn fv_short() {
    scenario("fv-short", "Local/3001234567@from-voip", 30, Script::Prompt).await;
}

#[tokio::test]
async fn playlang() {
    scenario(
        "playlang",
        "Local/3001234568@sim-pstn",
        30,
        Script::Languages,
    )
    .await;
}

#[tokio::test]
async fn errors() {
    scenario(
        "errors",
        "Local/3001234560@no-such-context",
        30,
        Script::Watch,
    )
    .await;
}

#[tokio::test]
async fn channelid() {
    let want = recorded("channelid");
    let mut lab = lab().await;
    // Our own ids; the ;2 half follows otherChannelId, or "<id>;2" without it.
    let mut first = originate("Local/3001234564@from-voip", "overdue-app", 30);
    first.channel_id = Some("overdue-1795264373".into());
    first.other_channel_id = Some("overdue-1795264373-2".into());
    let ch = lab.ari.originate(&first).await.unwrap();
    assert_eq!(
        (ch.id.as_str(), ch.state.as_str()),
        ("overdue-1795264373", "Down")
    );
    let mut got = drive(&mut lab, Script::Watch, 2).await;
    // The lab hung this call up 5 ms after StasisStart, before the callee's
    // Wait() showed: give our DELETE room on a loaded machine too.
    lab.sim
        .configure(|c| c.dialplan_lag = Duration::from_millis(500));
    let mut second = originate("Local/3001234568@sim-pstn", "overdue-app", 30);
    second.channel_id = Some("overdue-1795264373-dup".into());
    lab.ari.originate(&second).await.unwrap();
    // A live id is refused.
    let dup = lab.ari.originate(&second).await.unwrap_err();
    assert_eq!(dup.status().map(|s| s.as_u16()), Some(409));
    assert_eq!(
        dup.message(),
        Some("Channel with given unique ID already exists")
    );
    got.extend(drive(&mut lab, Script::HangUpAtOnce, 2).await);
    assert_equivalent("channelid", &want, &got);
}

#[tokio::test]
async fn inbound() {
    let want = recorded("inbound");
    let mut lab = lab().await;
    let mut o = originate("Local/3241000752@from-voip", "overdue-app", 30);
    o.caller_id = Some("5512345678".into());
    lab.ari.originate(&o).await.unwrap();
    let got = drive(&mut lab, Script::Inbound, 2).await;
    assert_equivalent("inbound", &want, &got);
}

/// The lab's externalMedia run: an RTP channel and a callee in a mixing
/// bridge, the prompt played into the bridge, then everything torn down.
#[tokio::test]
async fn externalmedia() {
    let want = recorded("externalmedia");
    let mut lab = lab().await;
    let mut got = Vec::new();
    let em = overdue_dialer::ari::ExternalMedia {
        app: "openai-app".into(),
        external_host: "127.0.0.1:40000".into(),
        format: "ulaw".into(),
        channel_id: None,
        data: None,
    };
    let rtp = lab.ari.external_media(&em).await.unwrap();
    let callee = lab
        .ari
        .originate(&originate("Local/3001234568@sim-pstn", "openai-app", 30))
        .await
        .unwrap();
    let mut bridge = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ev = tokio::time::timeout_at(deadline, lab.events.recv())
            .await
            .expect("scenario did not finish")
            .unwrap();
        got.push(token(&ev));
        let id = ev["channel"]["id"].as_str().unwrap_or("").to_owned();
        match ev["type"].as_str().unwrap_or("") {
            "StasisStart" if id == callee.id => {
                let b = lab.ari.create_bridge("lab-em").await.unwrap();
                lab.ari.add_to_bridge(&b.id, &rtp.id).await.unwrap();
                lab.ari.add_to_bridge(&b.id, &callee.id).await.unwrap();
                // Let the bridge settle as the lab did, then play into it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                lab.ari
                    .play_bridge(&b.id, &["sound:morosos_natalia".into()], Some("es_MX"))
                    .await
                    .unwrap();
                bridge = Some(b.id);
            }
            "PlaybackFinished" => lab.ari.hangup(&callee.id, "normal").await.unwrap(),
            "ChannelDestroyed" if id == callee.id => {
                lab.ari.hangup(&rtp.id, "normal").await.unwrap()
            }
            "ChannelDestroyed" if id == rtp.id => {
                lab.ari
                    .destroy_bridge(bridge.as_deref().unwrap())
                    .await
                    .unwrap();
            }
            "BridgeDestroyed" => break,
            _ => {}
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(ev) = lab.events.try_recv() {
        got.push(token(&ev));
    }
    assert_equivalent("externalmedia", &want, &got);
    assert_eq!((lab.sim.live_channels(), lab.sim.live_bridges()), (0, 0));
}

/// The later scenarios' prompt: `morosos_natalia` lasts 20.18 s there.
fn long_prompt(cfg: &mut SimConfig) {
    cfg.sounds.insert(
        "morosos_natalia".into(),
        SoundSpec {
            languages: vec!["es_MX".into()],
            duration: Duration::from_millis(20_180),
        },
    );
}

/// The later scenarios' originate: timeout 15 and our own channel id.
fn rec_originate(endpoint: &str, channel_id: &str) -> Originate {
    Originate {
        channel_id: Some(channel_id.into()),
        ..originate(endpoint, "overdue-app", 15)
    }
}

async fn next_event(lab: &mut Lab, deadline: tokio::time::Instant) -> Option<Value> {
    tokio::time::timeout_at(deadline, lab.events.recv())
        .await
        .expect("scenario did not finish")
}

/// `GET /ari/asterisk/info`, which the lab's client has no call for.
async fn asterisk_info(sim: &Simulator) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}/ari/asterisk/info", sim.url()))
        .basic_auth("asterisk", Some("asterisk"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `core stop now` 2 s into the prompt: recorded until the WebSocket ended.
#[tokio::test]
async fn shutdown_mid_prompt() {
    let want = recorded("shutdown-mid-prompt");
    let mut lab = lab_with(long_prompt).await;
    let before = lab.sim.startup_time();
    let down = Duration::from_millis(50);
    lab.ari
        .originate(&rec_originate(
            "Local/3001234568@sim-pstn",
            "rec-shutdown-mid-prompt-1",
        ))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut stop = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Some(ev) = next_event(&mut lab, deadline).await {
        got.push(token(&ev));
        match ev["type"].as_str().unwrap_or("") {
            "StasisStart" => {
                let id = ev["channel"]["id"].as_str().unwrap().to_owned();
                lab.ari
                    .play(&id, &["sound:morosos_natalia".into()], Some("es_MX"), None)
                    .await
                    .unwrap();
            }
            "PlaybackStarted" => {
                let sim = lab.sim.clone();
                let after = sim.scaled(Duration::from_secs(2));
                stop = Some(tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    sim.stop_now(down).await
                }));
            }
            _ => {}
        }
    }
    assert_equivalent("shutdown-mid-prompt", &want, &got);
    let end = lab.ended.await.unwrap();
    assert!(
        matches!(end, WsEnd::NoCloseFrame(_)),
        "core stop now sends no close frame: {end:?}"
    );
    stop.expect("never played").await.unwrap().unwrap();
    assert_eq!(lab.sim.live_channels(), 0);
    assert!(lab.sim.startup_time() > before, "a new Asterisk process");
}

/// `core stop gracefully` during the prompt: nothing happens to the call,
/// originates are refused; once we hang up, close frame 1000.
#[tokio::test]
async fn shutdown_graceful_mid_prompt() {
    let want = recorded("shutdown-graceful-mid-prompt");
    let mut lab = lab_with(long_prompt).await;
    let endpoint = "Local/3001234568@sim-pstn";
    lab.ari
        .originate(&rec_originate(
            endpoint,
            "rec-shutdown-graceful-mid-prompt-1",
        ))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut stop = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Some(ev) = next_event(&mut lab, deadline).await {
        got.push(token(&ev));
        let id = ev["channel"]["id"].as_str().unwrap_or("").to_owned();
        match ev["type"].as_str().unwrap_or("") {
            "StasisStart" => {
                lab.ari
                    .play(&id, &["sound:morosos_natalia".into()], Some("es_MX"), None)
                    .await
                    .unwrap();
            }
            "PlaybackStarted" => {
                let sim = lab.sim.clone();
                stop = Some(tokio::spawn(async move {
                    sim.stop_gracefully(Duration::from_millis(50)).await
                }));
                tokio::time::sleep(lab.sim.scaled(Duration::from_secs(3))).await;
                assert!(lab.sim.is_stopping());
                let (status, info) = asterisk_info(&lab.sim).await;
                assert_eq!(status, 200, "{info}");
                assert_eq!(info["system"]["version"], "22.10.1");
                let refused = lab
                    .ari
                    .originate(&rec_originate(
                        endpoint,
                        "rec-shutdown-graceful-mid-prompt-2",
                    ))
                    .await
                    .unwrap_err();
                assert_eq!(refused.status().map(|s| s.as_u16()), Some(500));
                assert_eq!(refused.message(), Some("Allocation failed"));
            }
            "PlaybackFinished" => {
                assert_eq!(ev["playback"]["state"], "done", "the prompt plays on");
                let target = ev["playback"]["target_uri"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("channel:")
                    .to_owned();
                // The lab waited for a stop that never came, then hung up.
                tokio::time::sleep(lab.sim.scaled(Duration::from_secs(2))).await;
                lab.ari.hangup(&target, "normal").await.unwrap();
            }
            _ => {}
        }
    }
    assert_equivalent("shutdown-graceful-mid-prompt", &want, &got);
    assert_eq!(lab.ended.await.unwrap(), WsEnd::Close(Some(1000)));
    stop.expect("never played").await.unwrap().unwrap();
    assert!(!lab.sim.is_stopping());
    assert_eq!(lab.sim.live_channels(), 0);
}
