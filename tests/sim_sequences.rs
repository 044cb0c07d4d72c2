//! The simulator against the recordings of a real Asterisk 22: driven as
//! the lab drove Asterisk, it must emit the recorded event types, for the
//! same channels, with the same statuses and causes, in the recorded order.
//!
//! Tolerated differences, as between two real runs: events of different
//! channels stamped in the same millisecond may swap, and so may two that
//! arrived in the opposite order of their stamps (two threads raced to
//! the WebSocket: `;2` and `;1` destroyed in `amd-human`); the callee's `Wait()`
//! dialplan event floats (the lab saw it 4 to 500 ms after the answer);
//! values that are times, ids or ports are not compared (an externalMedia
//! channel is named after its `external_host`, whose port a test picks).

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
        let host = rest.split('-').next().unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(ip, _)| ip);
        return format!("UnicastRTP/{host}");
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
    recorded_for(scenario, None)
}

/// The recording, or only what `app` received.
fn recorded_for(scenario: &str, app: Option<&str>) -> Vec<(Token, String)> {
    EVENTS
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["scenario"] == scenario)
        .filter(|r| app.is_none_or(|a| r["event"]["application"] == a))
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
    let stamp = |s: &String| s[..23.min(s.len())].to_owned();
    for i in 0..want.len() {
        for j in i + 1..want.len() {
            let (a, b) = (&want[i], &want[j]);
            // Only an order the stamps confirm is an order Asterisk kept.
            if stamp(&a.1) >= stamp(&b.1) || floats(&a.0) || floats(&b.0) {
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

/// A REST call the lab's client has no method for; the status it got.
async fn rest(sim: &Simulator, method: reqwest::Method, path: &str) -> u16 {
    reqwest::Client::new()
        .request(method, format!("{}/ari/{path}", sim.url()))
        .basic_auth("asterisk", Some("asterisk"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn rest_json(sim: &Simulator, path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/ari/{path}", sim.url()))
        .basic_auth("asterisk", Some("asterisk"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Where an externalMedia channel takes audio back (fact 12).
fn unicast_addr(ch: &overdue_dialer::ari::model::Channel) -> std::net::SocketAddr {
    let vars = ch.channelvars.clone().unwrap();
    format!(
        "{}:{}",
        vars["UNICASTRTP_LOCAL_ADDRESS"], vars["UNICASTRTP_LOCAL_PORT"]
    )
    .parse()
    .unwrap()
}

/// Fact 19, as the daemon's agent sees it: an inbound caller reaching
/// `openai-app` through a Local channel is bridged with an externalMedia
/// channel, speaks, and hangs up; the RTP channel stays up in the bridge,
/// silent, until we delete it and the bridge. Compared with what
/// `openai-app` received in the lab (the lab's caller was a Local pair that
/// `overdue-app` originated: the scenario below replays that whole).
#[tokio::test]
async fn inbound_caller_hangs_up_with_externalmedia() {
    let scenario = "inbound-caller-hangs-up-with-externalmedia";
    let want = recorded_for(scenario, Some("openai-app"));
    let mut lab = lab_with(|c| c.inbound_sets_ulaw = true).await;
    let daemon = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let caller = lab.sim.inbound_local_call("5512345678").unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let ev = next_event(&mut lab, deadline).await.unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["channel"]["id"].as_str()),
        (Some("StasisStart"), Some(caller.as_str()))
    );
    got.push(token(&ev));
    assert_eq!(
        rest(
            &lab.sim,
            reqwest::Method::POST,
            &format!("channels/{caller}/answer")
        )
        .await,
        204
    );
    let bridge = lab.ari.create_bridge("agent").await.unwrap();
    lab.ari.add_to_bridge(&bridge.id, &caller).await.unwrap();
    let em = overdue_dialer::ari::ExternalMedia {
        app: "openai-app".into(),
        external_host: daemon.local_addr().unwrap().to_string(),
        format: "ulaw".into(),
        channel_id: Some(format!("{caller}-rtp")),
        data: Some(caller.clone()),
    };
    let rtp = lab.ari.external_media(&em).await.unwrap();
    assert_eq!(
        Some(unicast_addr(&rtp)),
        lab.sim.external_media_addr(&rtp.id)
    );
    loop {
        let ev = next_event(&mut lab, deadline).await.unwrap();
        got.push(token(&ev));
        if ev["type"] == "StasisStart" {
            // `data` comes back whole, `;` included (fact 19).
            assert_eq!(ev["args"], serde_json::json!([caller]));
            assert_eq!(
                ev["channel"]["dialplan"]["app_data"],
                format!("openai-app,{caller}")
            );
            break;
        }
    }
    lab.ari.add_to_bridge(&bridge.id, &rtp.id).await.unwrap();

    // The lab's 50 packets of μ-law silence: heard by the caller, and
    // (the bridge being silent) no packet back.
    let to = unicast_addr(&rtp);
    for n in 0..50u16 {
        let packet = rtp_types::RtpPacketBuilder::<&[u8], &[u8]>::new()
            .payload_type(0)
            .sequence_number(1000 + n)
            .timestamp(160 * u32::from(n))
            .ssrc(0x5eed)
            .payload([0xFFu8; 160].as_slice())
            .write_vec()
            .unwrap();
        daemon.send_to(&packet, to).await.unwrap();
    }
    let mut buf = [0u8; 2048];
    for _ in 0..100 {
        if lab.sim.heard(&caller).len() == 50 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(lab.sim.heard(&caller).len(), 50);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), daemon.recv_from(&mut buf))
            .await
            .is_err(),
        "silence sends nothing"
    );
    // 1.42 s of speech: 71 packets, as the lab's `hello-world` gave.
    lab.sim.caller_says(&caller, vec![0x2A; 71 * 160]);
    for n in 0..71 {
        let (len, from) = tokio::time::timeout(Duration::from_secs(2), daemon.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("packet {n} never came"))
            .unwrap();
        assert_eq!((len, from), (172, to));
    }

    lab.sim.hang_up_caller(&caller);
    let mut destroy_at = None;
    loop {
        let ev = match destroy_at {
            Some(at) => match tokio::time::timeout_at(at, lab.events.recv()).await {
                Ok(ev) => ev.unwrap(),
                Err(_) => {
                    // 5 s on: no RTP since the caller went (every packet of
                    // its speech came before); the RTP channel is alone in
                    // the bridge, up.
                    assert!(
                        daemon.try_recv_from(&mut buf).is_err(),
                        "RTP after the caller went"
                    );
                    let b = rest_json(&lab.sim, &format!("bridges/{}", bridge.id)).await;
                    assert_eq!(b["channels"], serde_json::json!([rtp.id]));
                    let c = rest_json(&lab.sim, &format!("channels/{}", rtp.id)).await;
                    assert_eq!(c["state"], "Up");
                    lab.ari.hangup(&rtp.id, "normal").await.unwrap();
                    lab.ari.destroy_bridge(&bridge.id).await.unwrap();
                    destroy_at = Some(deadline);
                    continue;
                }
            },
            None => next_event(&mut lab, deadline).await.unwrap(),
        };
        got.push(token(&ev));
        match ev["type"].as_str().unwrap_or("") {
            "StasisEnd" if ev["channel"]["id"] == caller.as_str() => {
                destroy_at =
                    Some(tokio::time::Instant::now() + lab.sim.scaled(Duration::from_secs(5)));
            }
            "BridgeDestroyed" => break,
            _ => {}
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(ev) = lab.events.try_recv() {
        got.push(token(&ev));
    }
    assert_equivalent(scenario, &want, &got);
    assert_eq!(
        lab.sim.heard(&caller).len(),
        50,
        "still readable after the hang-up"
    );
    assert_eq!((lab.sim.live_channels(), lab.sim.live_bridges()), (0, 0));
}

/// The same scenario driven as the lab drove it: `overdue-app` originates
/// the Local pair whose `;2` reaches `openai-app`, and the caller's hang-up
/// is our `DELETE` of `;1`.
#[tokio::test]
async fn inbound_caller_hangs_up_with_externalmedia_as_recorded() {
    let scenario = "inbound-caller-hangs-up-with-externalmedia";
    let want = recorded(scenario);
    let mut lab = lab_with(|c| c.inbound_sets_ulaw = true).await;
    let daemon = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut o = rec_originate(
        "Local/3241000752@from-voip",
        "rec-inbound-caller-hangs-up-with-externalmedia-1",
    );
    o.caller_id = Some("5512345678".into());
    let one = lab.ari.originate(&o).await.unwrap().id;
    let bridge_id = "rec-inbound-caller-hangs-up-with-externalmedia";
    let rtp_id = "rec-inbound-caller-hangs-up-with-externalmedia-rtp";
    let mut got = Vec::new();
    let mut teardown = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Some(ev) = next_event(&mut lab, deadline).await {
        got.push(token(&ev));
        let id = ev["channel"]["id"].as_str().unwrap_or("").to_owned();
        match (
            ev["type"].as_str().unwrap_or(""),
            ev["application"].as_str().unwrap_or(""),
        ) {
            ("StasisStart", "openai-app") if id.ends_with(";2") => {
                let created = reqwest::Client::new()
                    .post(format!(
                        "{}/ari/bridges?type=mixing&bridgeId={bridge_id}",
                        lab.sim.url()
                    ))
                    .basic_auth("asterisk", Some("asterisk"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(created.status().as_u16(), 200);
                lab.ari.add_to_bridge(bridge_id, &id).await.unwrap();
                let em = overdue_dialer::ari::ExternalMedia {
                    app: "openai-app".into(),
                    external_host: daemon.local_addr().unwrap().to_string(),
                    format: "ulaw".into(),
                    channel_id: Some(rtp_id.into()),
                    data: Some(id.clone()),
                };
                lab.ari.external_media(&em).await.unwrap();
            }
            ("StasisStart", _) if id == rtp_id => {
                assert_eq!(
                    ev["channel"]["dialplan"]["app_data"],
                    "openai-app,rec-inbound-caller-hangs-up-with-externalmedia-1;2"
                );
                lab.ari.add_to_bridge(bridge_id, rtp_id).await.unwrap();
                // `;1` plays: the caller speaks into the bridge.
                lab.ari
                    .play(&one, &["sound:hello-world".into()], None, None)
                    .await
                    .unwrap();
            }
            ("PlaybackFinished", _) => lab.ari.hangup(&one, "normal").await.unwrap(),
            ("ChannelDestroyed", _) if id.ends_with(";2") => {
                let sim = lab.sim.clone();
                let ari = lab.ari.clone();
                teardown = Some(tokio::spawn(async move {
                    tokio::time::sleep(sim.scaled(Duration::from_secs(5))).await;
                    let b = rest_json(&sim, &format!("bridges/{bridge_id}")).await;
                    assert_eq!(b["channels"], serde_json::json!([rtp_id]));
                    ari.hangup(rtp_id, "normal").await.unwrap();
                    ari.destroy_bridge(bridge_id).await.unwrap();
                }));
            }
            ("BridgeDestroyed", _) => break,
            _ => {}
        }
    }
    teardown.expect("the caller never hung up").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(ev) = lab.events.try_recv() {
        got.push(token(&ev));
    }
    assert_equivalent(scenario, &want, &got);
    assert_eq!((lab.sim.live_channels(), lab.sim.live_bridges()), (0, 0));
}

/// The callee presses 1 during the prompt (fact 15): we stop the prompt
/// (`done`) and `continue` the call to the human agents (fact 16), whose
/// dialplan plays, waits and hangs up.
#[tokio::test]
async fn callee_dtmf() {
    let scenario = "callee-dtmf";
    let want = recorded(scenario);
    let mut lab = lab_with(long_prompt).await;
    let id = "rec-callee-dtmf-1";
    lab.ari
        .originate(&rec_originate("Local/3001234561@sim-pstn-dtmf", id))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut playback = None;
    let mut destroyed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while destroyed < 2 {
        let ev = next_event(&mut lab, deadline).await.unwrap();
        got.push(token(&ev));
        match ev["type"].as_str().unwrap_or("") {
            "StasisStart" => {
                let pb = lab
                    .ari
                    .play(id, &["sound:morosos_natalia".into()], Some("es_MX"), None)
                    .await
                    .unwrap();
                playback = Some(pb.id);
            }
            "ChannelDtmfReceived" => {
                assert_eq!(
                    (ev["channel"]["id"].as_str(), ev["digit"].as_str()),
                    (Some(id), Some("1"))
                );
                assert_eq!(ev["duration_ms"], 100);
                let pb = playback.as_deref().expect("no prompt");
                assert_eq!(
                    rest(
                        &lab.sim,
                        reqwest::Method::DELETE,
                        &format!("playbacks/{pb}")
                    )
                    .await,
                    204
                );
                let path =
                    format!("channels/{id}/continue?context=agents&extension=100&priority=1");
                assert_eq!(rest(&lab.sim, reqwest::Method::POST, &path).await, 204);
            }
            "ChannelDestroyed" => destroyed += 1,
            _ => {}
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(ev) = lab.events.try_recv() {
        got.push(token(&ev));
    }
    assert_equivalent(scenario, &want, &got);
    assert_eq!(
        lab.sim.continued_to(id),
        Some(("agents".into(), "100".into(), 1))
    );
    assert_eq!(lab.sim.live_channels(), 0);
}

/// `StasisStart`'s `args` and `channel.dialplan`, and every `ChannelVarset`
/// (`variable=value`) of `id`, in order: what the tokens leave out.
fn details(events: &[Value], id: &str) -> (Vec<(Value, Value)>, Vec<String>) {
    let of = |e: &&Value| e["channel"]["id"] == id;
    let starts = events
        .iter()
        .filter(of)
        .filter(|e| e["type"] == "StasisStart")
        .map(|e| (e["args"].clone(), e["channel"]["dialplan"].clone()))
        .collect();
    let vars =
        events
            .iter()
            .filter(of)
            .filter(|e| e["type"] == "ChannelVarset")
            .map(|e| {
                // Channel names in values (`BRIDGEPEER`) without Asterisk's sequence number.
                let value = e["value"].as_str().unwrap_or("").split(',').map(|v| {
                    match v.rsplit_once('-') {
                        Some((base, tail)) if v.starts_with("Local/") => {
                            format!("{base};{}", tail.rsplit(';').next().unwrap_or(""))
                        }
                        _ => v.to_owned(),
                    }
                });
                format!(
                    "{}={}",
                    e["variable"].as_str().unwrap_or(""),
                    value.collect::<Vec<_>>().join(",")
                )
            })
            .collect();
    (starts, vars)
}

fn recorded_events(scenario: &str) -> Vec<Value> {
    EVENTS
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["scenario"] == scenario)
        .map(|r| r["event"].clone())
        .collect()
}

/// Fact 17: on the first `StasisStart` we `continue` to `amd`; `AMD()`
/// decides and the same channel comes back to Stasis with the verdict as
/// its args, where we hang it up. The callee's greeting goes on meanwhile.
async fn amd_scenario(scenario: &str, context: &str, decided_after: Duration) {
    let want = recorded(scenario);
    // A slower scale than the other scenarios: the callee's greeting and
    // the verdict are only 0.7 s apart in `amd-human`.
    let mut lab = lab_with(|c| c.time_scale = 0.1).await;
    let id = format!("rec-{scenario}-1");
    lab.ari
        .originate(&rec_originate(&format!("Local/3001234560@{context}"), &id))
        .await
        .unwrap();
    let (mut got, mut raw) = (Vec::new(), Vec::new());
    let mut continued_at = None;
    let mut returned_at = None;
    let mut destroyed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while destroyed < 2 {
        let ev = next_event(&mut lab, deadline).await.unwrap();
        got.push(token(&ev));
        match ev["type"].as_str().unwrap_or("") {
            "StasisStart" if continued_at.is_none() => {
                continued_at = Some(std::time::Instant::now());
                let path = format!("channels/{id}/continue?context=amd&extension=s&priority=1");
                assert_eq!(rest(&lab.sim, reqwest::Method::POST, &path).await, 204);
            }
            "StasisStart" => {
                returned_at = Some(std::time::Instant::now());
                lab.ari.hangup(&id, "normal").await.unwrap();
            }
            "ChannelDestroyed" => destroyed += 1,
            _ => {}
        }
        raw.push(ev);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(ev) = lab.events.try_recv() {
        got.push(token(&ev));
        raw.push(ev);
    }
    assert_equivalent(scenario, &want, &got);
    assert_eq!(
        details(&raw, &id),
        details(&recorded_events(scenario), &id),
        "[{scenario}] StasisStart args and dialplan, and the variables of ;1"
    );
    let (Some(continued), Some(returned)) = (continued_at, returned_at) else {
        panic!("[{scenario}] never came back to Stasis");
    };
    let took = returned - continued;
    let expected = lab.sim.scaled(decided_after);
    assert!(
        took >= expected.mul_f64(0.9) && took < expected * 2 + Duration::from_millis(200),
        "[{scenario}] AMD decided after {took:?}, recorded {expected:?} (scaled)"
    );
    assert_eq!(lab.sim.live_channels(), 0);
}

#[tokio::test]
async fn amd_human() {
    amd_scenario("amd-human", "sim-human", Duration::from_millis(2920)).await;
}

#[tokio::test]
async fn amd_machine() {
    amd_scenario("amd-machine", "sim-machine", Duration::from_millis(1660)).await;
}

#[tokio::test]
async fn amd_notsure() {
    amd_scenario("amd-notsure", "sim-notsure", Duration::from_millis(5010)).await;
}

/// Fact 18: the callee presses 1, we stop the prompt and bridge the
/// caller with an agent we originate (`Local/100@agents`); the agent hangs
/// up after its hello and only its channel goes; then we hang up the
/// caller left alone in the bridge and delete the bridge.
#[tokio::test]
async fn callee_dtmf_bridge() {
    let scenario = "callee-dtmf-bridge";
    let want = recorded(scenario);
    let mut lab = lab_with(long_prompt).await;
    let (caller, agent) = ("rec-callee-dtmf-bridge-1", "rec-callee-dtmf-bridge-agent");
    let bridge = "rec-callee-dtmf-bridge-br";
    lab.ari
        .originate(&rec_originate("Local/3001234561@sim-pstn-dtmf", caller))
        .await
        .unwrap();
    let (mut got, mut raw) = (Vec::new(), Vec::new());
    let mut playback = None;
    let mut alone_in_bridge = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ev = next_event(&mut lab, deadline).await.unwrap();
        got.push(token(&ev));
        let id = ev["channel"]["id"].as_str().unwrap_or("").to_owned();
        match ev["type"].as_str().unwrap_or("") {
            "StasisStart" if id == caller => {
                let pb = lab
                    .ari
                    .play(
                        caller,
                        &["sound:morosos_natalia".into()],
                        Some("es_MX"),
                        None,
                    )
                    .await
                    .unwrap();
                playback = Some(pb.id);
            }
            "ChannelDtmfReceived" => {
                let pb = playback.as_deref().expect("no prompt");
                let stop = format!("playbacks/{pb}");
                assert_eq!(rest(&lab.sim, reqwest::Method::DELETE, &stop).await, 204);
                let b = lab.ari.create_bridge_with_id(bridge, "").await.unwrap();
                assert_eq!(b.technology, "simple_bridge");
                lab.ari.add_to_bridge(bridge, caller).await.unwrap();
                lab.ari
                    .originate(&rec_originate("Local/100@agents", agent))
                    .await
                    .unwrap();
            }
            "StasisStart" if id == agent => lab.ari.add_to_bridge(bridge, agent).await.unwrap(),
            "StasisEnd" if id == agent => {
                // The caller is still up, alone in the bridge (fact 18).
                alone_in_bridge = Some(rest_json(&lab.sim, &format!("bridges/{bridge}")).await);
                lab.ari.hangup(caller, "normal").await.unwrap();
                lab.ari.destroy_bridge(bridge).await.unwrap();
            }
            "BridgeDestroyed" => break,
            _ => {}
        }
        raw.push(ev);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(ev) = lab.events.try_recv() {
        got.push(token(&ev));
        raw.push(ev);
    }
    assert_equivalent(scenario, &want, &got);
    let recorded = recorded_events(scenario);
    for id in [caller, agent] {
        assert_eq!(details(&raw, id), details(&recorded, id), "{id}");
    }
    assert_eq!(
        alone_in_bridge.map(|b| b["channels"].clone()),
        Some(serde_json::json!([caller]))
    );
    assert_eq!((lab.sim.live_channels(), lab.sim.live_bridges()), (0, 0));
}
