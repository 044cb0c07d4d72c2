//! Whole passes, from debtor to written outcome, against the simulator and
//! a real MariaDB (README "A pass", "Schema").

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::NaiveDateTime;
use common::TestDb;
use mysql_async::prelude::*;
use overdue_dialer::billing::demo_data::Data;
use overdue_dialer::campaign::pass::{PassOptions, PassSummary};
use overdue_dialer::config::{Config, TrunkConfig};
use overdue_dialer::dialer::{one_pass, Dialer};
use overdue_dialer::sim::{Callee, SimConfig, Simulator, SoundSpec};

/// Clients that are all due (corte 1), flagged, with one open invoice.
fn clients(phones: &[(i64, &str)]) -> Data {
    let mut data = Data::default();
    for &(id, phone) in phones {
        common::due(&mut data, id, phone, "125000.00");
    }
    data
}

fn trunk(name: &str, endpoint: &str, priority: u32, max: u32) -> TrunkConfig {
    TrunkConfig {
        caller_id: Some("6041234567".into()),
        ..common::trunk(name, endpoint, priority, max)
    }
}

struct Rig {
    db: TestDb,
    sim: Simulator,
    config: Config,
}

/// The simulator runs 50 times faster than life: ring timeout 30 s → 0.6 s,
/// the 4.38 s prompt 88 ms, digit 7's callee hangs up after 40 ms.
async fn rig(data: &Data, trunks: Vec<TrunkConfig>) -> Rig {
    let db = TestDb::with_data(data).await;
    let sim = Simulator::start(
        SimConfig {
            time_scale: 0.02,
            ..SimConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    let mut config = common::config(&db, &sim);
    config.trunks = trunks;
    config.campaign.calls_per_second = 1000.0;
    config.campaign.max_concurrent_calls = 50;
    Rig { db, sim, config }
}

impl Rig {
    /// A prompt that never ends: calls stay up until something cuts them.
    fn endless_prompt(&mut self) {
        self.sim.configure(|c| {
            c.sounds.insert(
                "very_long".into(),
                SoundSpec {
                    languages: vec!["es_MX".into()],
                    duration: Duration::from_secs(10_000),
                },
            );
        });
        self.config.campaign.media = vec!["sound:very_long".into()];
    }

    async fn pass(&self) -> PassSummary {
        let (_tx, abort) = tokio::sync::watch::channel(false);
        let opts = PassOptions {
            ignore_window: true,
            drain: None,
            probe: None,
        };
        let summary = one_pass(self.config.clone(), "test-host".into(), opts, abort)
            .await
            .unwrap();
        // Nothing may be left behind on the PBX.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            self.sim.live_channels(),
            0,
            "channels left alive after the pass"
        );
        summary
    }

    async fn log_rows(&self) -> BTreeMap<i64, LogRow> {
        let mut conn = self.db.conn().await;
        let rows: Vec<mysql_async::Row> = conn
            .query("SELECT client_id, attempt_no, outcome, hangup_cause, trunk, channel_id, phone_e164, answered_at, ended_at, detail FROM overdue_call_log ORDER BY client_id, attempt_no")
            .await
            .unwrap();
        rows.into_iter()
            .map(|r| {
                let id: i64 = r.get(0).unwrap();
                let row = LogRow {
                    attempt_no: r.get(1).unwrap(),
                    outcome: r.get(2).unwrap(),
                    cause: r.get(3).unwrap(),
                    trunk: r.get(4).unwrap(),
                    channel_id: r.get(5).unwrap(),
                    phone: r.get(6).unwrap(),
                    answered: r.get(7).unwrap(),
                    ended: r.get(8).unwrap(),
                    detail: r.get(9).unwrap(),
                };
                (id, row)
            })
            .collect()
    }

    async fn client(&self, id: i64) -> (i64, i64, bool) {
        let mut conn = self.db.conn().await;
        let row: Option<(i64, i64, Option<NaiveDateTime>)> = conn
            .exec_first("SELECT outbound_call_attempts, outbound_call_is_sent, outbound_call_completed_at FROM afiliados WHERE id = ?", (id,))
            .await
            .unwrap();
        let (a, s, c) = row.unwrap();
        (a, s, c.is_some())
    }

    /// Moves every recorded attempt back in time, as if `minutes` had passed.
    async fn age(&self, minutes: i64) {
        let mut conn = self.db.conn().await;
        conn.exec_drop(
            "UPDATE overdue_call_log SET ended_at = ended_at - INTERVAL ? MINUTE, claimed_at = claimed_at - INTERVAL ? MINUTE",
            (minutes, minutes),
        )
        .await
        .unwrap();
    }

    fn originates_to(&self, number: &str) -> usize {
        self.sim
            .requests()
            .iter()
            .filter(|r| r.path == "/ari/channels" && r.method == "POST" && r.query.contains(number))
            .count()
    }
}

#[derive(Debug, Clone)]
#[allow(dead_code)]
struct LogRow {
    attempt_no: u32,
    outcome: Option<String>,
    cause: Option<i64>,
    trunk: Option<String>,
    channel_id: Option<String>,
    phone: Option<String>,
    answered: Option<NaiveDateTime>,
    ended: Option<NaiveDateTime>,
    detail: Option<String>,
}

/// One client per outcome the PBX can produce.
const CASES: &[(i64, &str, &str)] = &[
    (1, "3001234560", "completed"),
    (2, "3001234567", "hung_up_early"),
    (3, "3001234564", "busy"),
    (4, "3001234565", "no_answer"),
    (5, "3001234566", "congestion"),
    (6, "3001234569", "invalid_number"),
    (7, "3001112221", "rejected"),
    (8, "601 234 5678", "invalid_number"),
];

async fn every_outcome(endpoint: &str) {
    let phones: Vec<(i64, &str)> = CASES.iter().map(|&(id, p, _)| (id, p)).collect();
    let rig = rig(&clients(&phones), vec![trunk("t1", endpoint, 1, 10)]).await;
    rig.sim.configure(|c| {
        c.callees.insert("3001112221".into(), Callee::Rejects);
    });
    let summary = rig.pass().await;
    let rows = rig.log_rows().await;
    for &(id, phone, want) in CASES {
        let row = &rows[&id];
        assert_eq!(
            row.outcome.as_deref(),
            Some(want),
            "client {id} ({phone}) via {endpoint}: {row:?}"
        );
        let (attempts, sent, completed_at) = rig.client(id).await;
        // Digit 7 hangs up 2 s into the prompt: answered, but not heard
        // long enough (campaign.min_heard_secs) to count as delivered.
        let answered = want == "completed" || want == "hung_up_early";
        let delivered = want == "completed";
        assert_eq!(
            (sent == 1, completed_at),
            (delivered, delivered),
            "client {id} flags"
        );
        if id == 8 {
            // A landline: never dialled, recorded with the raw value, no attempt spent.
            assert_eq!(attempts, 0);
            assert_eq!(row.trunk, None);
            assert_eq!(rig.originates_to("6012345678"), 0);
            assert!(
                row.detail.as_deref().unwrap_or("").contains("fixed line"),
                "{row:?}"
            );
        } else {
            assert_eq!(attempts, 1, "client {id}");
            assert_eq!(row.trunk.as_deref(), Some("t1"));
            assert_eq!(
                row.channel_id.as_deref(),
                Some(format!("overdue-{id}-1").as_str())
            );
            assert_eq!(row.phone.as_deref(), Some(format!("+57{phone}").as_str()));
            assert!(row.ended.is_some());
            assert_eq!(row.answered.is_some(), answered, "client {id}");
        }
    }
    let direct = endpoint.starts_with("PJSIP");
    // Causes as Asterisk reports them: on a direct trunk the Q.850 cause itself.
    assert_eq!(rows[&3].cause, Some(if direct { 17 } else { 16 }));
    assert_eq!(rows[&4].cause, Some(19));
    assert_eq!(rows[&6].cause, Some(1));
    if direct {
        assert_eq!(rows[&5].cause, Some(34));
        assert_eq!(rows[&7].cause, Some(21));
    }
    assert_eq!(summary.outcomes.values().sum::<usize>(), CASES.len());
}

#[tokio::test]
async fn every_outcome_through_a_local_endpoint() {
    every_outcome("Local/{number}@from-voip").await;
}

#[tokio::test]
async fn every_outcome_through_a_direct_endpoint() {
    every_outcome("PJSIP/{number}@voip_issabel").await;
}

#[tokio::test]
async fn two_hundred_clients_keep_twenty_channels_busy() {
    let phones: Vec<(i64, String)> = (1..=200).map(|i| (i, format!("3{:08}8", i))).collect();
    let refs: Vec<(i64, &str)> = phones.iter().map(|(i, p)| (*i, p.as_str())).collect();
    let mut rig = rig(
        &clients(&refs),
        vec![trunk("t1", "PJSIP/{number}@voip_issabel", 1, 100)],
    )
    .await;
    rig.config.campaign.max_concurrent_calls = 20;
    // Each call: answer, 0.2 s prompt, hang up.
    rig.sim.configure(|c| {
        c.time_scale = 0.05;
    });
    let summary = rig.pass().await;
    assert_eq!(
        summary
            .outcomes
            .get(&overdue_dialer::rules::outcome::Outcome::Completed),
        Some(&200)
    );
    assert_eq!(
        rig.sim.peak_calls(),
        20,
        "never more than max_concurrent_calls, and the limit is reached"
    );
    // Every channel is filled before the first call ends, and every call that
    // ends while clients remain is replaced (200 originates for 200 clients).
    // How fast a channel is refilled is a timing: the benchmark measures it
    // (utilisation in BENCHMARKS.md); tests never assert timings.
    let log = rig.sim.live_log();
    let first_drop = log.windows(2).position(|w| w[1].1 < w[0].1).unwrap();
    assert_eq!(
        log[..=first_drop].iter().map(|(_, n)| *n).max(),
        Some(20),
        "all channels filled at once"
    );
    assert_eq!(rig.sim.originate_count(), 200);
}

#[tokio::test]
async fn a_client_who_pays_mid_pass_is_not_dialled() {
    // 5 channels: the pass reads 20 clients at a time, so client 60 is
    // read only after 40 calls have been placed — long after it paid.
    let phones: Vec<(i64, String)> = (1..=60).map(|i| (i, format!("3{:08}8", i))).collect();
    let refs: Vec<(i64, &str)> = phones.iter().map(|(i, p)| (*i, p.as_str())).collect();
    let mut rig = rig(
        &clients(&refs),
        vec![trunk("t1", "PJSIP/{number}@voip_issabel", 1, 100)],
    )
    .await;
    rig.config.campaign.max_concurrent_calls = 5;
    rig.sim.configure(|c| c.time_scale = 0.05);
    let pays = async {
        while rig.sim.originate_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut conn = rig.db.conn().await;
        conn.query_drop("UPDATE factura SET cerrado = 1, saldo = 0 WHERE `id-afiliado` = 60")
            .await
            .unwrap();
    };
    let (summary, ()) = tokio::join!(rig.pass(), pays);
    assert_eq!(summary.selected, 59);
    assert_eq!(
        summary
            .outcomes
            .get(&overdue_dialer::rules::outcome::Outcome::Completed),
        Some(&59)
    );
    assert_eq!(
        rig.originates_to(&phones[59].1),
        0,
        "the paid client was dialled"
    );
    assert_eq!(rig.sim.originate_count(), 59);
    assert!(!rig.log_rows().await.contains_key(&60));
}

#[tokio::test]
async fn per_call_timeout_hangs_up_a_callee_who_stays_on() {
    let mut rig = rig(
        &clients(&[(1, "3001234568")]),
        vec![trunk("t1", "Local/{number}@sim-pstn", 1, 10)],
    )
    .await;
    rig.endless_prompt();
    rig.config.campaign.ring_timeout_secs = 1;
    rig.config.campaign.call_timeout_secs = 2;
    let began = std::time::Instant::now();
    rig.pass().await;
    assert!(began.elapsed() >= Duration::from_secs(2));
    let rows = rig.log_rows().await;
    assert_eq!(rows[&1].outcome.as_deref(), Some("timeout"));
    assert_eq!(rig.client(1).await, (1, 0, false));
}

#[tokio::test]
async fn global_timeout_aborts_calls_in_flight() {
    let mut rig = rig(
        &clients(&[(1, "3001234568"), (2, "3101234568"), (3, "3201234568")]),
        vec![trunk("t1", "PJSIP/{number}@t", 1, 10)],
    )
    .await;
    rig.endless_prompt();
    rig.config.campaign.run_timeout_base_secs = 1;
    rig.config.campaign.run_timeout_per_client_secs = 0;
    let summary = rig.pass().await;
    let rows = rig.log_rows().await;
    for id in 1..=3 {
        assert_eq!(rows[&id].outcome.as_deref(), Some("aborted"), "client {id}");
    }
    assert_eq!(summary.outcomes.len(), 1);
}

#[tokio::test]
async fn busy_now_answered_later_and_max_attempts() {
    // Client 1 is busy, then answers; client 2 is always busy.
    let mut rig = rig(
        &clients(&[(1, "3001230001"), (2, "3001230002")]),
        vec![trunk("t1", "PJSIP/{number}@t", 1, 10)],
    )
    .await;
    rig.config.campaign.max_attempts = 2;
    rig.sim.configure(|c| {
        c.callees.insert("3001230001".into(), Callee::Busy);
        c.callees.insert("3001230002".into(), Callee::Busy);
    });
    rig.pass().await;
    assert_eq!(rig.client(1).await, (1, 0, false));
    // Too soon: the 30-minute busy delay has not passed.
    let summary = rig.pass().await;
    assert_eq!(summary.selected, 0);
    rig.age(31).await;
    rig.sim.configure(|c| {
        c.callees.insert(
            "3001230001".into(),
            Callee::Answers {
                hangs_up_after: Duration::from_secs(60),
            },
        );
    });
    rig.pass().await;
    assert_eq!(
        rig.client(1).await,
        (2, 1, true),
        "answered on the second pass"
    );
    assert_eq!(rig.client(2).await, (2, 0, false));
    rig.age(31).await;
    let summary = rig.pass().await;
    assert_eq!(
        summary.selected, 0,
        "client 2 reached max_attempts, client 1 was reached"
    );
    assert_eq!(rig.originates_to("3001230002"), 2);
    let mut conn = rig.db.conn().await;
    let attempts: Vec<(i64, u32, String)> = conn.query("SELECT client_id, attempt_no, outcome FROM overdue_call_log ORDER BY client_id, attempt_no").await.unwrap();
    let want: Vec<(i64, u32, String)> = vec![
        (1, 1, "busy".into()),
        (1, 2, "completed".into()),
        (2, 1, "busy".into()),
        (2, 2, "busy".into()),
    ];
    assert_eq!(attempts, want);
}

#[tokio::test]
async fn a_refusing_trunk_spends_no_attempt() {
    let phones: Vec<(i64, String)> = (1..=10).map(|i| (i, format!("300123{i:03}0"))).collect();
    let refs: Vec<(i64, &str)> = phones.iter().map(|(i, p)| (*i, p.as_str())).collect();
    let rig = rig(
        &clients(&refs),
        vec![
            trunk("t1", "PJSIP/{number}@broken", 1, 10),
            trunk("t2", "Local/{number}@from-voip", 2, 10),
        ],
    )
    .await;
    rig.sim.configure(|c| {
        c.failing_technologies.insert("PJSIP".into());
    });
    let summary = rig.pass().await;
    let rows = rig.log_rows().await;
    for (id, _) in &phones {
        assert_eq!(
            rows[id].outcome.as_deref(),
            Some("completed"),
            "client {id}"
        );
        assert_eq!(rows[id].trunk.as_deref(), Some("t2"));
        assert_eq!(rig.client(*id).await.0, 1, "the refusal spent no attempt");
    }
    let refused = rig
        .sim
        .requests()
        .iter()
        .filter(|r| r.path == "/ari/channels" && r.query.contains("PJSIP"))
        .count();
    assert!(refused >= 1);
    let t1 = summary.trunks.iter().find(|(n, _)| n == "t1").unwrap();
    assert!(t1.1.failed >= 1 && t1.1.answered == 0, "{summary:?}");
}

/// Collects log output in memory (single-threaded runtime: every task logs here).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_missing_prompt_is_not_a_delivered_reminder() {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut rig = rig(
        &clients(&[(1, "3001234568")]),
        vec![trunk("t1", "Local/{number}@sim-pstn", 1, 10)],
    )
    .await;
    rig.config.campaign.media = vec!["sound:no_such_prompt".into()];
    rig.pass().await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.lines().any(|l| l.contains("ERROR")
            && l.contains("PROMPT NOT PLAYED")
            && l.contains("sound:no_such_prompt")),
        "{text}"
    );
    let rows = rig.log_rows().await;
    assert_eq!(rows[&1].outcome.as_deref(), Some("failed"));
    let detail = rows[&1].detail.clone().unwrap_or_default();
    assert!(
        detail.contains("sound:no_such_prompt"),
        "the record says which sound: {detail}"
    );
    assert_eq!(rig.client(1).await, (1, 0, false));
}

/// An inbound call hears the whole fallback prompt and is hung up within a
/// second of its end, leaving nothing on Asterisk.
async fn inbound_fallback(local: bool) {
    let rig = rig(
        &clients(&[]),
        vec![trunk("t1", "Local/{number}@sim-pstn", 1, 10)],
    )
    .await;
    let dialer = Dialer::connect(rig.config.clone(), "test-host".into())
        .await
        .unwrap();
    let id = if local {
        rig.sim.inbound_local_call("3001234567")
    } else {
        rig.sim.inbound_call("3001234567")
    }
    .expect("openai-app registered");
    assert_eq!(id.ends_with(";2"), local, "{id}");
    for _ in 0..250 {
        if rig.sim.live_channels() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rig.sim.live_channels(), 0, "inbound channel {id} still up");
    let requests = rig.sim.requests();
    let at = |method: &str, suffix: &str| {
        let want = format!("/ari/channels/{id}{suffix}");
        let found: Vec<std::time::Instant> = requests
            .iter()
            .filter(|r| r.method == method && r.path.replace("%3B", ";") == want)
            .map(|r| r.at)
            .collect();
        assert_eq!(found.len(), 1, "{method} {want}: {requests:?}");
        found[0]
    };
    let played = at("POST", "/play");
    let hung_up = at("DELETE", "");
    // The prompt is 4.38 s at a fiftieth of real time: 88 ms.
    let after = hung_up.duration_since(played);
    assert!(
        after >= Duration::from_millis(80) && after < Duration::from_millis(88 + 1000),
        "hung up {after:?} after the play request"
    );
    dialer.shutdown().await;
}

#[tokio::test]
async fn an_inbound_call_hears_the_fallback_and_is_hung_up() {
    inbound_fallback(false).await;
}

/// A PBX that reaches `Stasis(openai-app)` through a `Local/` channel: the
/// caller's channel id is `<id>;2` (its `;` kept), and its events must reach
/// the inbound call, not be taken for the half of an outbound call.
#[tokio::test]
async fn an_inbound_call_on_a_local_half_is_ended_normally() {
    inbound_fallback(true).await;
}

/// `overdue-dialer once`, as cron or an operator runs it.
fn once(rig: &Rig, extra_env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = common::daemon_command(&rig.db, &rig.sim);
    cmd.env(
        "OVERDUE_TRUNKS",
        r#"[{name="t1",endpoint="Local/{number}@from-voip",max_channels=5,priority=1}]"#,
    )
    .args(["once", "--ignore-window"]);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn once_runs_a_pass_and_says_why_it_cannot() {
    let rig = rig(&clients(&[(1, "3001234560"), (2, "3001234564")]), vec![]).await;
    let out = once(&rig, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One line per call for operators, with the phone masked, and one summary.
    let call_lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("call ended"))
        .collect();
    assert_eq!(call_lines.len(), 2, "{stdout}");
    for l in &call_lines {
        for field in [
            "client_id=",
            "phone=******",
            "trunk=",
            "outcome=",
            "cause=",
            "ring_s=",
            "talk_s=",
        ] {
            assert!(l.contains(field), "{field} missing in {l}");
        }
        assert!(
            !l.contains("3001234560") && !l.contains("3001234564"),
            "full number logged: {l}"
        );
    }
    assert!(
        stdout.lines().any(|l| l.contains("pass summary")
            && l.contains("completed=1")
            && l.contains("busy=1")),
        "{stdout}"
    );
    assert!(!stdout.contains("asterisk:asterisk"));

    let no_mysql = once(&rig, &[("OVERDUE_MYSQL__PORT", "1")]);
    assert!(!no_mysql.status.success());
    assert!(
        String::from_utf8_lossy(&no_mysql.stderr).contains("cannot connect to MySQL"),
        "{}",
        String::from_utf8_lossy(&no_mysql.stderr)
    );

    let bad_password = once(&rig, &[("ASTERISK_PASSWORD", "nope")]);
    assert!(!bad_password.status.success());
    let err = String::from_utf8_lossy(&bad_password.stderr);
    assert!(
        err.contains("refused the credentials") && !err.contains("nope"),
        "{err}"
    );

    let no_ari = once(&rig, &[("OVERDUE_ARI__URL", "http://127.0.0.1:1")]);
    assert!(!no_ari.status.success());
    assert!(String::from_utf8_lossy(&no_ari.stderr).contains("cannot reach Asterisk ARI"));
    assert_eq!(rig.sim.live_channels(), 0);
}

/// A client with a row in `overdue_opt_out` is never dialled, and
/// `preview` says why; deleting the row (what staff do to lift it) makes
/// the client callable again.
#[tokio::test]
async fn an_opted_out_client_is_never_dialled_until_staff_delete_the_row() {
    use overdue_dialer::campaign::preview;
    use overdue_dialer::rules::selection::{Policy, SkipReason};
    let mut data = clients(&[(1, "3001234560"), (2, "3001234561")]);
    data.opt_outs.push(2);
    let rig = rig(&data, vec![trunk("t1", "Local/{number}@sim-pstn", 1, 10)]).await;
    let billing = overdue_dialer::billing::Billing::new(rig.config.mysql.opts());
    let now = overdue_dialer::clock::local_now(rig.config.timezone);
    let facts = billing.flagged_clients().await.unwrap();
    let lines = preview::lines(
        &facts,
        now,
        &Policy::from_config(&rig.config),
        &rig.config.window,
    );
    let two = lines.iter().find(|l| l.id == 2).unwrap();
    assert_eq!(two.reason, Some(SkipReason::OptedOut));
    assert_ne!(
        lines.iter().find(|l| l.id == 1).unwrap().reason,
        Some(SkipReason::OptedOut)
    );

    let summary = rig.pass().await;
    let called: Vec<i64> = summary.calls.iter().map(|c| c.client_id).collect();
    assert_eq!(called, vec![1]);
    assert_eq!(rig.client(2).await, (0, 0, false), "never dialled");

    let mut conn = rig.db.conn().await;
    conn.query_drop("DELETE FROM overdue_opt_out WHERE client_id = 2")
        .await
        .unwrap();
    let summary = rig.pass().await;
    let called: Vec<i64> = summary.calls.iter().map(|c| c.client_id).collect();
    assert_eq!(called, vec![2], "callable again once the row is gone");
    billing.close().await.unwrap();
}

/// Claims are made ahead of a free channel (README "A pass"): while both
/// channels are busy, the next clients are already claimed; when SIGTERM
/// drains the pass, those claims are given back at once — no row, no
/// attempt spent — while the calls in flight finish.
#[tokio::test]
async fn claims_made_ahead_are_given_back_when_the_pass_drains() {
    let phones: Vec<(i64, String)> = (1..=8).map(|i| (i, format!("3{:08}8", i))).collect();
    let refs: Vec<(i64, &str)> = phones.iter().map(|(i, p)| (*i, p.as_str())).collect();
    let mut rig = rig(
        &clients(&refs),
        vec![trunk("t1", "PJSIP/{number}@t", 1, 10)],
    )
    .await;
    rig.endless_prompt();
    rig.config.campaign.max_concurrent_calls = 2;
    rig.config.campaign.call_timeout_secs = 3;
    let (drain_tx, drain) = tokio::sync::watch::channel(false);
    let (_abort_tx, abort) = tokio::sync::watch::channel(false);
    let opts = PassOptions {
        ignore_window: true,
        drain: Some(drain),
        probe: None,
    };
    let pass = one_pass(rig.config.clone(), "test-host".into(), opts, abort);
    let watch = async {
        // Two calls up and, beside them, two clients claimed and waiting.
        async fn open(conn: &mut mysql_async::Conn) -> Result<Option<i64>, mysql_async::Error> {
            conn.query_first("SELECT COUNT(*) FROM overdue_call_log WHERE outcome IS NULL")
                .await
        }
        let mut conn = rig.db.conn().await;
        let began = std::time::Instant::now();
        let mut seen = 0;
        while began.elapsed() < Duration::from_secs(2) {
            seen = open(&mut conn).await.unwrap().unwrap_or(0);
            if seen == 4 && rig.sim.originate_count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(seen, 4, "two calls in flight and two claims made ahead");
        drain_tx.send(true).unwrap();
        // Given back at once, long before the calls in flight end.
        let began = std::time::Instant::now();
        while open(&mut conn).await.unwrap().unwrap_or(0) > 2 {
            assert!(
                began.elapsed() < Duration::from_secs(1),
                "the claims made ahead were not given back"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (summary, ()) = tokio::join!(pass, watch);
    let summary = summary.unwrap();
    assert_eq!(rig.sim.originate_count(), 2);
    let rows = rig.log_rows().await;
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    for id in [1, 2] {
        assert_eq!(rows[&id].outcome.as_deref(), Some("timeout"), "client {id}");
    }
    for id in 3..=8 {
        assert_eq!(rig.client(id).await, (0, 0, false), "client {id} untouched");
    }
    assert_eq!(summary.calls.len(), 2);
    use overdue_dialer::campaign::pass::Skip;
    assert_eq!(
        summary.skipped.get(&Skip::ShuttingDown),
        Some(&6),
        "{:?}",
        summary.skipped
    );
}
