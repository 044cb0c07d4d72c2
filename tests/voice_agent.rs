//! The inbound voice agent end to end (README "The voice agent"): the ARI
//! simulator's externalMedia carries real RTP, the fake Realtime server
//! speaks the GA protocol, MariaDB holds the clients, the inbound log and
//! the promises. Each test fails if the behaviour it names breaks.

mod common;

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use overdue_dialer::billing::demo_data::Data;
use overdue_dialer::config::Config;
use overdue_dialer::dialer::Dialer;
use overdue_dialer::realtime_sim::{g711, FakeConfig, FakeRealtime};
use overdue_dialer::sim::{Heard, SimConfig, Simulator};

use common::{due, TestDb};

/// The known caller, client 7, owes 85 000 pesos on one invoice.
const KNOWN: &str = "3001234567";
/// Two clients share this number.
const SHARED: &str = "3009999999";
const UNKNOWN: &str = "3005550000";

struct Rig {
    db: TestDb,
    sim: Simulator,
    fake: FakeRealtime,
    config: Config,
}

static PORTS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(42_000);

async fn rig(fake: FakeConfig) -> Rig {
    let mut data = Data::default();
    due(&mut data, 7, "604 444 1234 / 300 123 4567", "85000.00");
    due(&mut data, 8, SHARED, "12345.00");
    due(&mut data, 9, SHARED, "54321.00");
    let db = TestDb::with_data(&data).await;
    let sim = Simulator::start(
        SimConfig {
            time_scale: 0.02,
            ..SimConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    let fake = FakeRealtime::start(fake).await.unwrap();
    let mut config = common::config(&db, &sim);
    config.voice_agent.url = fake.url();
    config.voice_agent.api_key = overdue_dialer::config::Secret::new("sk-fake-realtime");
    // Each test its own ports: the tests of this binary run in parallel.
    let first = PORTS.fetch_add(50, std::sync::atomic::Ordering::SeqCst);
    config.voice_agent.rtp_ports = format!("{first}-{}", first + 49);
    Rig {
        db,
        sim,
        fake,
        config,
    }
}

#[derive(Debug)]
struct Row {
    how: Option<String>,
    client_id: Option<i64>,
    match_detail: Option<String>,
    caller: Option<String>,
    tokens_out: Option<u64>,
    channel: String,
}

impl Rig {
    async fn dialer(&self) -> Dialer {
        Dialer::connect(self.config.clone(), "test-host".into())
            .await
            .unwrap()
    }

    async fn inbound_rows(&self) -> Vec<Row> {
        let mut conn = self.db.conn().await;
        #[allow(clippy::type_complexity)]
        let rows: Vec<(Option<String>, Option<i64>, Option<String>, Option<String>, Option<u64>, String)> =
            conn.query(
                "SELECT how, client_id, match_detail, caller_e164, tokens_out, channel_id FROM overdue_inbound_log ORDER BY id",
            )
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        rows.into_iter()
            .map(
                |(how, client_id, match_detail, caller, tokens_out, channel)| Row {
                    how,
                    client_id,
                    match_detail,
                    caller,
                    tokens_out,
                    channel,
                },
            )
            .collect()
    }

    /// Waits until every inbound call has its `how` written.
    async fn finished(&self, calls: usize) -> Vec<Row> {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let rows = self.inbound_rows().await;
            if rows.len() >= calls && rows.iter().all(|r| r.how.is_some()) {
                return rows;
            }
            assert!(
                Instant::now() < until,
                "inbound calls not finished: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Nothing of the call left on Asterisk or at OpenAI.
    async fn all_closed(&self) {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until
            && (self.sim.live_channels() > 0
                || self.sim.live_bridges() > 0
                || self.fake.open_connections() > 0)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(self.sim.live_channels(), 0, "channels left on Asterisk");
        assert_eq!(self.sim.live_bridges(), 0, "bridges left on Asterisk");
        assert_eq!(self.fake.open_connections(), 0, "OpenAI socket left open");
    }
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The talk spurts the caller heard (split at marker bits).
fn spurts(heard: &[Heard]) -> Vec<Vec<&Heard>> {
    let mut out: Vec<Vec<&Heard>> = Vec::new();
    for h in heard {
        if h.marker || out.is_empty() {
            out.push(Vec::new());
        }
        if let Some(last) = out.last_mut() {
            last.push(h);
        }
    }
    out
}

fn bytes(spurt: &[&Heard]) -> Vec<u8> {
    spurt
        .iter()
        .flat_map(|h| h.payload.iter().copied())
        .collect()
}

/// Quiet enough for the fake's VAD to stay silent, and recognisable.
fn murmur(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| [0xF1u8, 0xF7, 0xFB, 0x75, 0x7A, 0xF3][i % 6] ^ ((i / 6 % 2) as u8))
        .collect()
}

#[tokio::test]
async fn the_agent_greets_and_its_audio_reaches_the_caller_paced_and_intact() {
    let rig = rig(FakeConfig {
        response_audio_ms: 1000,
        // Like the real service: audio faster than real time, in deltas of
        // any size (here 200 bytes). Pacing and packet sizes are ours.
        chunk_interval: Duration::ZERO,
        audio_chunk_ms: 25,
        ..FakeConfig::default()
    })
    .await;
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_call(KNOWN).unwrap();
    let heard = wait_for("the greeting", 10, || {
        let h = rig.sim.heard(&id);
        (h.len() >= 50).then_some(h)
    })
    .await;
    let greeting = &spurts(&heard)[0];
    let audio = bytes(greeting);
    assert_eq!(greeting.len(), 50, "1000 ms in 20 ms packets");
    assert!(g711::is_pattern_ulaw(&audio), "the fake's audio, intact");
    assert!(heard
        .iter()
        .all(|h| h.payload_type == 0 && h.payload.len() == 160));
    assert!(greeting[0].marker && greeting[1..].iter().all(|h| !h.marker));
    for w in greeting.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
        assert_eq!(w[1].ts, w[0].ts.wrapping_add(160));
        assert_eq!(w[1].ssrc, w[0].ssrc);
    }
    // Paced, not burst: 50 packets of 20 ms take about a second.
    let span = greeting[49].at.duration_since(greeting[0].at);
    assert!(span >= Duration::from_millis(900), "burst in {span:?}");
    // The session asked for μ-law both ways; instructions hold the account.
    let conn = rig.fake.conn(0).unwrap();
    let session = conn.sessions.last().unwrap();
    assert_eq!(session["audio"]["output"]["format"]["type"], "audio/pcmu");
    let update = &conn.events_of("session.update")[0]["session"];
    let instructions = update["instructions"].as_str().unwrap();
    assert!(instructions.contains("85000 pesos"), "{instructions}");
    rig.sim.hang_up_caller(&id);
    let rows = rig.finished(1).await;
    assert_eq!(rows[0].how.as_deref(), Some("caller_hung_up"));
    assert_eq!(rows[0].client_id, Some(7));
    assert_eq!(rows[0].caller.as_deref(), Some("+573001234567"));
    assert!(rows[0].tokens_out.unwrap_or(0) > 0, "usage recorded");
    rig.all_closed().await;
    dialer.shutdown().await;
}

#[tokio::test]
async fn the_callers_audio_reaches_openai_intact_and_in_order() {
    let rig = rig(FakeConfig {
        response_audio_ms: 200,
        ..FakeConfig::default()
    })
    .await;
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_call(KNOWN).unwrap();
    wait_for("the greeting", 10, || {
        (rig.sim.heard(&id).len() >= 10).then_some(())
    })
    .await;
    let said = murmur(160 * 40);
    rig.sim.caller_says(&id, said.clone());
    let audio_in = wait_for("the caller's audio at OpenAI", 10, || {
        let a = rig.fake.conn(0)?.audio_in;
        a.windows(said.len())
            .any(|w| w == said.as_slice())
            .then_some(a)
    })
    .await;
    assert!(!audio_in.is_empty());
    rig.sim.hang_up_caller(&id);
    rig.finished(1).await;
    rig.all_closed().await;
    dialer.shutdown().await;
}

#[tokio::test]
async fn barge_in_stops_the_agent_and_truncates_at_what_the_caller_heard() {
    barge_in(FakeConfig {
        response_audio_ms: 4000,
        chunk_interval: Duration::ZERO,
        ..FakeConfig::default()
    })
    .await;
}

/// The response is still streaming (real time) when the caller talks, and
/// the server leaves it active until the daemon cancels it: later deltas
/// of the cut item must not be played.
#[tokio::test]
async fn barge_in_mid_stream_cancels_and_drops_the_rest_of_the_item() {
    let conn = barge_in(FakeConfig {
        response_audio_ms: 4000,
        barge_in_cancels: false,
        ..FakeConfig::default()
    })
    .await;
    assert!(
        !conn.events_of("response.cancel").is_empty(),
        "the daemon cancelled"
    );
    assert!(
        conn.errors.is_empty(),
        "the cancel found the response active: {:?}",
        conn.errors
    );
}

async fn barge_in(fake: FakeConfig) -> overdue_dialer::realtime_sim::ConnRecord {
    let rig = rig(fake).await;
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_call(KNOWN).unwrap();
    wait_for("half a second of greeting", 10, || {
        (rig.sim.heard(&id).len() >= 25).then_some(())
    })
    .await;
    rig.sim.caller_says(&id, g711::tone_ulaw(600, 440, 8000.0));
    let truncation = wait_for("the truncation", 10, || {
        rig.fake.conn(0)?.truncations.first().cloned()
    })
    .await;
    // Let any leftover arrive, then the next response (after the caller
    // stops) starts a new spurt.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let heard = rig.sim.heard(&id);
    // What was heard before the caller's turn, and after it (the answer):
    // split at the silence while the caller talked.
    let cut_at = heard
        .windows(2)
        .position(|w| w[1].at.duration_since(w[0].at) > Duration::from_millis(300))
        .map_or(heard.len(), |i| i + 1);
    let spurts: Vec<Vec<&Heard>> = vec![
        heard[..cut_at].iter().collect(),
        heard[cut_at..].iter().collect(),
    ];
    assert!(
        heard[cut_at..].first().is_none_or(|h| h.marker),
        "a new talk spurt after the turn"
    );
    let greeting = bytes(&spurts[0]);
    assert!(
        g711::is_pattern_ulaw(&greeting),
        "no leftover of the cut item, nothing else"
    );
    let heard_ms = spurts[0].len() as u64 * 20;
    assert!(heard_ms < 4000, "the greeting was cut");
    assert!(
        truncation.audio_end_ms.abs_diff(heard_ms) <= 20,
        "truncated at {} ms, the caller heard {heard_ms} ms",
        truncation.audio_end_ms
    );
    assert!(truncation.audio_end_ms <= truncation.item_audio_ms);
    // Asterisk sends nothing while the caller is silent; the daemon fills
    // the gap, so OpenAI hears the turn end and answers.
    assert!(
        spurts[1].len() >= 5,
        "no answer after the caller's turn: {} packets",
        spurts[1].len()
    );
    assert!(g711::is_pattern_ulaw(&bytes(&spurts[1])[..800]));
    let conn = rig.fake.conn(0).unwrap();
    assert!(
        conn.errors
            .iter()
            .all(|e| e["code"] == "response_cancel_not_active"),
        "{:?}",
        conn.errors
    );
    rig.sim.hang_up_caller(&id);
    rig.finished(1).await;
    rig.all_closed().await;
    dialer.shutdown().await;
    conn
}

#[tokio::test]
async fn a_promise_to_pay_is_written_and_a_bad_date_refused_back() {
    let rig = rig(FakeConfig {
        response_audio_ms: 200,
        ..FakeConfig::default()
    })
    .await;
    let today = overdue_dialer::clock::local_now(rig.config.timezone).date();
    let far = today + chrono::Duration::days(90);
    let soon = today + chrono::Duration::days(5);
    rig.fake.next_response_calls_tool(
        "registrar_promesa_de_pago",
        &format!(r#"{{"fecha":"{far}","monto":85000}}"#),
    );
    rig.fake.next_response_calls_tool(
        "registrar_promesa_de_pago",
        &format!(r#"{{"fecha":"{soon}","monto":50000}}"#),
    );
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_call(KNOWN).unwrap();
    let outputs = wait_for("two tool results", 10, || {
        let o = rig.fake.conn(0)?.function_outputs;
        (o.len() >= 2).then_some(o)
    })
    .await;
    assert!(
        outputs[0].output.contains("\"ok\":false"),
        "{}",
        outputs[0].output
    );
    assert!(
        outputs[1].output.contains("\"ok\":true"),
        "{}",
        outputs[1].output
    );
    let promises = dialer.campaign.billing.promises(7).await.unwrap();
    assert_eq!(promises, vec![(soon, Some(50000))]);
    // Each result went back only after its response was done, and the
    // model was asked to go on.
    let conn = rig.fake.conn(0).unwrap();
    assert!(conn.events_of("response.create").len() >= 3);
    rig.sim.hang_up_caller(&id);
    let rows = rig.finished(1).await;
    let mut conn = rig.db.conn().await;
    let linked: Vec<Option<u64>> = conn
        .query("SELECT inbound_call_id FROM overdue_payment_promise")
        .await
        .unwrap();
    assert_eq!(linked.len(), 1);
    assert!(linked[0].is_some(), "the promise names its inbound call");
    assert_eq!(rows[0].how.as_deref(), Some("caller_hung_up"));
    rig.all_closed().await;
    dialer.shutdown().await;
}

#[tokio::test]
async fn transfer_leaves_the_caller_in_the_configured_context() {
    let mut rig = rig(FakeConfig {
        response_audio_ms: 300,
        ..FakeConfig::default()
    })
    .await;
    rig.config.transfer.context = "agents".into();
    rig.config.transfer.extension = "500".into();
    rig.config.transfer.priority = 2;
    rig.fake
        .next_response_calls_tool("transferir_a_asesor", "{}");
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_call(KNOWN).unwrap();
    let rows = rig.finished(1).await;
    assert_eq!(rows[0].how.as_deref(), Some("transferred"));
    assert_eq!(
        rig.sim.continued_to(&id),
        Some(("agents".to_owned(), "500".to_owned(), 2))
    );
    // The agent said it was transferring before it did.
    assert!(rig.sim.heard(&id).len() >= 10, "last words played");
    let tools: Vec<String> = rig.fake.conn(0).unwrap().sessions.last().unwrap()["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(tools.contains(&"transferir_a_asesor".to_owned()));
    // Only the caller is left, in the dialplan; our channel and bridge are gone.
    assert_eq!(rig.sim.live_bridges(), 0);
    rig.sim.hang_up_caller(&id);
    rig.all_closed().await;
    dialer.shutdown().await;
}

#[tokio::test]
async fn the_agent_ends_the_call_after_its_goodbye() {
    let rig = rig(FakeConfig {
        response_audio_ms: 300,
        chunk_interval: Duration::ZERO,
        ..FakeConfig::default()
    })
    .await;
    rig.fake.next_response_calls_tool("finalizar_llamada", "{}");
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_call(KNOWN).unwrap();
    let rows = rig.finished(1).await;
    assert_eq!(rows[0].how.as_deref(), Some("agent"));
    // The goodbye (300 ms, delivered at once) was heard whole, and only
    // then was the caller hung up.
    let heard = rig.sim.heard(&id);
    assert_eq!(heard.len(), 15, "goodbye heard: {} packets", heard.len());
    assert!(g711::is_pattern_ulaw(&bytes(
        &heard.iter().collect::<Vec<_>>()
    )));
    let hung_up = rig
        .sim
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE" && r.path == format!("/ari/channels/{id}"))
        .expect("the caller was hung up");
    assert!(
        hung_up.at > heard[14].at,
        "hung up before the goodbye ended"
    );
    rig.all_closed().await;
    dialer.shutdown().await;
}

async fn fallback_case(configure: impl FnOnce(&mut Rig), fake: FakeConfig, want: &str) {
    let mut rig = rig(fake).await;
    configure(&mut rig);
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_call(KNOWN).unwrap();
    let rows = rig.finished(1).await;
    assert_eq!(rows[0].how.as_deref(), Some(want));
    let played = rig
        .sim
        .requests()
        .iter()
        .any(|r| r.method == "POST" && r.path == format!("/ari/channels/{id}/play"));
    assert!(played, "the fallback prompt was played");
    rig.all_closed().await;
    dialer.shutdown().await;
}

#[tokio::test]
async fn no_api_key_means_the_fallback() {
    fallback_case(
        |r| r.config.voice_agent.api_key = Default::default(),
        FakeConfig::default(),
        "fallback_no_key",
    )
    .await;
}

#[tokio::test]
async fn openai_unreachable_means_the_fallback() {
    fallback_case(
        |r| r.config.voice_agent.url = "ws://127.0.0.1:9/v1/realtime".into(),
        FakeConfig::default(),
        "fallback_unreachable",
    )
    .await;
}

#[tokio::test]
async fn a_slow_handshake_means_the_fallback() {
    fallback_case(
        |r| r.config.voice_agent.connect_timeout_ms = 300,
        FakeConfig {
            handshake_delay: Duration::from_secs(3),
            ..FakeConfig::default()
        },
        "fallback_unreachable",
    )
    .await;
}

#[tokio::test]
async fn a_session_without_mulaw_both_ways_means_the_fallback() {
    fallback_case(
        |_| {},
        FakeConfig {
            confirm_output_format: Some("audio/pcm".into()),
            ..FakeConfig::default()
        },
        "fallback_refused",
    )
    .await;
}

#[tokio::test]
async fn a_wrong_key_means_the_fallback() {
    fallback_case(
        |r| r.config.voice_agent.api_key = overdue_dialer::config::Secret::new("sk-wrong"),
        FakeConfig::default(),
        "fallback_refused",
    )
    .await;
}

#[tokio::test]
async fn callers_beyond_max_concurrent_hear_the_fallback() {
    let mut rig = rig(FakeConfig {
        response_audio_ms: 5000,
        chunk_interval: Duration::ZERO,
        ..FakeConfig::default()
    })
    .await;
    rig.config.voice_agent.max_concurrent = 1;
    let dialer = rig.dialer().await;
    let first = rig.sim.inbound_call(KNOWN).unwrap();
    wait_for("the first agent call", 10, || {
        (!rig.sim.heard(&first).is_empty()).then_some(())
    })
    .await;
    let _second = rig.sim.inbound_call(UNKNOWN).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !rig
        .inbound_rows()
        .await
        .iter()
        .any(|r| r.how.as_deref() == Some("fallback_busy"))
    {
        assert!(
            Instant::now() < until,
            "the second caller did not get the fallback"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first call is still with the agent meanwhile.
    assert_eq!(rig.fake.open_connections(), 1);
    rig.sim.hang_up_caller(&first);
    let rows = rig.finished(2).await;
    let hows: Vec<&str> = rows.iter().filter_map(|r| r.how.as_deref()).collect();
    assert!(
        hows.contains(&"fallback_busy") && hows.contains(&"caller_hung_up"),
        "{hows:?}"
    );
    assert_eq!(rig.fake.connections(), 1, "no session for the busy caller");
    rig.all_closed().await;
    dialer.shutdown().await;
}

#[tokio::test]
async fn the_caller_hanging_up_mid_answer_closes_everything() {
    let rig = rig(FakeConfig {
        response_audio_ms: 5000,
        chunk_interval: Duration::ZERO,
        ..FakeConfig::default()
    })
    .await;
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_local_call(KNOWN).unwrap();
    wait_for("the greeting", 10, || {
        (rig.sim.heard(&id).len() >= 10).then_some(())
    })
    .await;
    rig.sim.hang_up_caller(&id);
    let rows = rig.finished(1).await;
    assert_eq!(rows[0].how.as_deref(), Some("caller_hung_up"));
    // Asterisk leaves the externalMedia channel up in the bridge (LAB.md
    // fact 19): the daemon must delete it, the bridge and the session.
    rig.all_closed().await;
    let n = rig.sim.heard(&id).len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rig.sim.heard(&id).len(), n, "no RTP after the hang-up");
    dialer.shutdown().await;
}

async fn no_account_disclosed(number: &str, detail: &str) {
    let rig = rig(FakeConfig {
        response_audio_ms: 200,
        ..FakeConfig::default()
    })
    .await;
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_call(number).unwrap();
    let update = wait_for("the session", 10, || {
        rig.fake
            .conn(0)?
            .events_of("session.update")
            .first()
            .map(|v| (*v).clone())
    })
    .await;
    let instructions = update["session"]["instructions"]
        .as_str()
        .unwrap()
        .to_owned();
    for secret in ["12345", "54321", "85000", "12.345", "54.321"] {
        assert!(
            !instructions.contains(secret),
            "{secret} disclosed: {instructions}"
        );
    }
    assert!(instructions.contains("no conoces ningún dato"));
    let tools = update["session"]["tools"].to_string();
    assert!(
        !tools.contains("registrar_promesa_de_pago"),
        "no promise without an account"
    );
    rig.sim.hang_up_caller(&id);
    let rows = rig.finished(1).await;
    assert_eq!(rows[0].client_id, None);
    assert!(
        rows[0]
            .match_detail
            .as_deref()
            .unwrap_or("")
            .contains(detail),
        "{:?}",
        rows[0].match_detail
    );
    rig.all_closed().await;
    dialer.shutdown().await;
}

#[tokio::test]
async fn an_unknown_caller_learns_no_balance() {
    no_account_disclosed(UNKNOWN, "no client has this number").await;
}

#[tokio::test]
async fn two_clients_on_one_number_learn_no_balance() {
    no_account_disclosed(SHARED, "2 clients share").await;
}

#[tokio::test]
async fn the_fallback_speaks_the_matched_clients_balance_only() {
    let mut rig = rig(FakeConfig::default()).await;
    rig.config.voice_agent.api_key = Default::default();
    rig.config.voice_agent.fallback_media =
        vec!["sound:morosos_natalia".into(), "number:{saldo}".into()];
    let dialer = rig.dialer().await;
    let known = rig.sim.inbound_call(KNOWN).unwrap();
    rig.finished(1).await;
    let shared = rig.sim.inbound_call(SHARED).unwrap();
    rig.finished(2).await;
    let plays = |id: &str| -> Vec<String> {
        rig.sim
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == format!("/ari/channels/{id}/play"))
            .map(|r| r.query.clone())
            .collect()
    };
    assert!(
        plays(&known)
            .iter()
            .any(|q| q.contains("number%3A85000") || q.contains("number:85000")),
        "{:?}",
        plays(&known)
    );
    assert!(
        plays(&shared).iter().all(|q| !q.contains("number")),
        "{:?}",
        plays(&shared)
    );
    rig.all_closed().await;
    dialer.shutdown().await;
}

/// OpenAI drops the session mid-call: the caller hears the apology, then
/// goes to a person when one is configured, else is hung up.
async fn openai_lost(transfer: bool) {
    let mut rig = rig(FakeConfig {
        response_audio_ms: 5000,
        chunk_interval: Duration::ZERO,
        ..FakeConfig::default()
    })
    .await;
    if transfer {
        rig.config.transfer.context = "agents".into();
    }
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_call(KNOWN).unwrap();
    wait_for("the greeting", 10, || {
        (rig.sim.heard(&id).len() >= 5).then_some(())
    })
    .await;
    let Rig {
        db,
        sim,
        fake,
        config,
    } = rig;
    fake.shutdown().await;
    let rig = Rig {
        db,
        sim,
        fake: FakeRealtime::start(FakeConfig::default()).await.unwrap(),
        config,
    };
    let rows = rig.finished(1).await;
    let apology = rig.sim.requests().iter().any(|r| {
        r.method == "POST"
            && r.path == format!("/ari/channels/{id}/play")
            && r.query.contains("an-error-has-occurred")
    });
    assert!(apology, "the apology was played");
    if transfer {
        assert_eq!(rows[0].how.as_deref(), Some("transferred"));
        assert_eq!(
            rig.sim.continued_to(&id),
            Some(("agents".to_owned(), "s".to_owned(), 1))
        );
        rig.sim.hang_up_caller(&id);
    } else {
        assert_eq!(rows[0].how.as_deref(), Some("error"));
        assert_eq!(rig.sim.continued_to(&id), None);
    }
    rig.all_closed().await;
    dialer.shutdown().await;
}

#[tokio::test]
async fn openai_lost_mid_call_apologises_then_transfers() {
    openai_lost(true).await;
}

#[tokio::test]
async fn openai_lost_mid_call_apologises_then_hangs_up() {
    openai_lost(false).await;
}

/// On shutdown an agent call may finish within the grace period; one that
/// outlasts it is ended, recorded, and nothing is left behind.
#[tokio::test]
async fn shutdown_lets_agent_calls_finish_within_the_grace_period() {
    let rig = rig(FakeConfig {
        response_audio_ms: 5000,
        chunk_interval: Duration::ZERO,
        ..FakeConfig::default()
    })
    .await;
    let dialer = rig.dialer().await;
    let finishing = rig.sim.inbound_call(KNOWN).unwrap();
    let lingering = rig.sim.inbound_call(UNKNOWN).unwrap();
    wait_for("both greetings", 10, || {
        (!rig.sim.heard(&finishing).is_empty() && !rig.sim.heard(&lingering).is_empty())
            .then_some(())
    })
    .await;
    let agent = dialer.voice_agent.clone();
    let started = Instant::now();
    let stopping = tokio::spawn(async move { agent.finish(Duration::from_millis(1500)).await });
    // A new caller meanwhile gets the fallback, not the agent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = rig.sim.inbound_call(KNOWN).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.sim.hang_up_caller(&finishing);
    stopping.await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "the grace period was honoured"
    );
    let rows = rig.finished(3).await;
    let how = |id: &str| {
        rows.iter()
            .find(|r| r.channel == id)
            .and_then(|r| r.how.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        how(&finishing),
        "caller_hung_up",
        "finished by itself within the grace"
    );
    assert_eq!(how(&lingering), "error", "ended when the grace was over");
    assert_eq!(how(&late), "fallback_busy", "no agent while stopping");
    assert!(rig.sim.continued_to(&late).is_none());
    rig.all_closed().await;
    dialer.shutdown().await;
}

/// RTP from anyone but Asterisk's externalMedia address never reaches
/// OpenAI: nobody else can talk into a call.
#[tokio::test]
async fn rtp_from_a_stranger_is_dropped() {
    let rig = rig(FakeConfig {
        response_audio_ms: 200,
        ..FakeConfig::default()
    })
    .await;
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_call(KNOWN).unwrap();
    wait_for("the greeting", 10, || {
        (!rig.sim.heard(&id).is_empty()).then_some(())
    })
    .await;
    // The call's port is the first of its range.
    let port = *rig.config.voice_agent.port_range().unwrap().start();
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let intruder: Vec<u8> = (0..160).map(|i| 0x70 | (i % 7) as u8).collect();
    let mut packet = vec![0x80, 0x00, 0x00, 0x01, 0, 0, 0, 160, 0, 0, 0, 9];
    packet.extend_from_slice(&intruder);
    for _ in 0..10 {
        stranger
            .send_to(&packet, ("127.0.0.1", port))
            .await
            .unwrap();
    }
    // The caller's own audio still goes through meanwhile.
    let said = murmur(160 * 10);
    rig.sim.caller_says(&id, said.clone());
    let audio_in = wait_for("the caller's audio", 10, || {
        let a = rig.fake.conn(0)?.audio_in;
        a.windows(said.len())
            .any(|w| w == said.as_slice())
            .then_some(a)
    })
    .await;
    assert!(
        !audio_in
            .windows(intruder.len())
            .any(|w| w == intruder.as_slice()),
        "a stranger's packet reached OpenAI"
    );
    assert!(
        dialer
            .voice_agent
            .stats
            .dropped_rtp
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 10
    );
    rig.sim.hang_up_caller(&id);
    rig.finished(1).await;
    rig.all_closed().await;
    dialer.shutdown().await;
}

/// `voice_agent.max_call_secs` ends the call with a goodbye.
#[tokio::test]
async fn the_longest_call_ends_with_a_goodbye() {
    let mut rig = rig(FakeConfig {
        response_audio_ms: 300,
        ..FakeConfig::default()
    })
    .await;
    rig.config.voice_agent.max_call_secs = 1;
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_call(KNOWN).unwrap();
    let rows = rig.finished(1).await;
    assert_eq!(rows[0].how.as_deref(), Some("max_length"));
    let conn = rig.fake.conn(0).unwrap();
    let goodbye = conn.events_of("response.create").iter().any(|e| {
        e["response"]["instructions"]
            .as_str()
            .is_some_and(|i| i.contains("despídete"))
    });
    assert!(goodbye, "a goodbye was asked for");
    assert!(rig.sim.heard(&id).len() >= 30, "greeting and goodbye heard");
    rig.all_closed().await;
    dialer.shutdown().await;
}

/// A quiet call (nobody talking, nothing from OpenAI for seconds) stays
/// with the agent: the liveness pings are answered, so silence from the
/// server is not taken for a lost session.
#[tokio::test]
async fn a_quiet_call_is_not_taken_for_a_lost_session() {
    let rig = rig(FakeConfig {
        response_audio_ms: 200,
        ..FakeConfig::default()
    })
    .await;
    let dialer = rig.dialer().await;
    let id = rig.sim.inbound_call(KNOWN).unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(rig.fake.open_connections(), 1, "the session is still open");
    rig.sim.hang_up_caller(&id);
    let rows = rig.finished(1).await;
    assert_eq!(rows[0].how.as_deref(), Some("caller_hung_up"));
    rig.all_closed().await;
    dialer.shutdown().await;
}

/// The daemon SIGKILLed mid agent call leaves the externalMedia channel and
/// the bridge up (Asterisk never removes them by itself, LAB.md fact 19):
/// the next start removes both.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_daemons_agent_media_is_removed_at_the_next_start() {
    let rig = rig(FakeConfig {
        response_audio_ms: 60_000,
        ..FakeConfig::default()
    })
    .await;
    let mut cmd = common::daemon_command(&rig.db, &rig.sim);
    cmd.arg("run")
        .env("OVERDUE_WINDOW", common::OPEN_ALL_WEEK)
        .env("OVERDUE_CAMPAIGN__SCHEDULE", "[]")
        .env("OVERDUE_CAMPAIGN__POLL_INTERVAL_SECS", "86400")
        .env("OVERDUE_VOICE_AGENT__URL", rig.fake.url())
        .env("OPENAI_API_KEY", "sk-fake-realtime")
        .env(
            "OVERDUE_VOICE_AGENT__RTP_PORTS",
            &rig.config.voice_agent.rtp_ports,
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut daemon = cmd.spawn().expect("start the daemon");
    let until = Instant::now() + Duration::from_secs(20);
    let id = loop {
        if let Some(id) = rig.sim.inbound_call(KNOWN) {
            break id;
        }
        assert!(
            Instant::now() < until,
            "the daemon never registered its apps"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    wait_for("the agent talking", 15, || {
        (rig.sim.heard(&id).len() >= 5).then_some(())
    })
    .await;
    daemon.kill().unwrap(); // SIGKILL
    let _ = daemon.wait();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rig.sim.live_bridges(), 1, "the bridge outlives the daemon");
    assert_eq!(
        rig.sim.live_channels(),
        2,
        "caller and externalMedia channel"
    );
    let dialer = rig.dialer().await;
    assert_eq!(rig.sim.live_bridges(), 0, "bridge removed at start");
    assert_eq!(rig.sim.live_channels(), 1, "only the caller is left");
    rig.sim.hang_up_caller(&id);
    let rows = rig.inbound_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].how.as_deref(),
        Some("error"),
        "the killed call's row is closed"
    );
    dialer.shutdown().await;
}
