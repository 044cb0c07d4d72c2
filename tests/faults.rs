//! Faults during a pass (README "A pass", "Schema"): the event socket drops, Asterisk
//! restarts, MySQL loses its connections, the daemon is SIGKILLed, two
//! daemons share the database. In every case: no attempt dialled twice,
//! no outcome lost, no channel left alive.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use mysql_async::prelude::*;
use overdue_dialer::billing::demo_data::Data;
use overdue_dialer::campaign::pass::{PassOptions, PassSummary};
use overdue_dialer::config::{Config, Secret, TrunkConfig};
use overdue_dialer::dialer::Dialer;
use overdue_dialer::sim::{Callee, SimConfig, Simulator, SoundSpec};

/// `n` due clients; the last digit of each number cycles through the
/// simulator's callees (answer, busy, no answer, congestion …).
fn clients(n: i64) -> Data {
    let mut data = Data::default();
    for id in 1..=n {
        common::due(
            &mut data,
            id,
            &format!("31{:07}{}", id, id % 10),
            "50000.00",
        );
    }
    data
}

fn config(db: &TestDb, sim: &Simulator) -> Config {
    let mut c = common::config(db, sim);
    c.trunks = vec![common::trunk("t1", "Local/{number}@from-voip", 1, 30)];
    c.campaign.calls_per_second = 200.0;
    c.campaign.max_concurrent_calls = 30;
    c
}

/// A simulator where every call takes a while (answered prompts last 0.4 s,
/// ring timeouts 0.6 s), so faults land on calls in flight.
async fn slow_sim() -> Simulator {
    let sim = Simulator::start(
        SimConfig {
            time_scale: 0.02,
            answer_delay: Duration::from_secs(5),
            ..SimConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    sim.configure(|c| {
        c.sounds.insert(
            "morosos_natalia".into(),
            SoundSpec {
                languages: vec!["es_MX".into()],
                duration: Duration::from_secs(20),
            },
        );
    });
    sim
}

async fn pass(dialer: &Dialer) -> PassSummary {
    let (_tx, abort) = tokio::sync::watch::channel(false);
    dialer
        .pass(
            PassOptions {
                ignore_window: true,
                drain: None,
                probe: None,
            },
            abort,
        )
        .await
        .unwrap()
}

/// Every claimed attempt has an outcome; returns (client → attempts).
async fn assert_nothing_lost(db: &TestDb) -> BTreeMap<i64, u32> {
    let mut conn = db.conn().await;
    let open: Vec<(i64, u32)> = conn
        .query("SELECT client_id, attempt_no FROM overdue_call_log WHERE outcome IS NULL")
        .await
        .unwrap();
    assert!(open.is_empty(), "attempts without outcome: {open:?}");
    let rows: Vec<(i64, u32)> = conn
        .query("SELECT client_id, COUNT(*) FROM overdue_call_log GROUP BY client_id")
        .await
        .unwrap();
    rows.into_iter().collect()
}

/// No attempt was originated twice: each channel id appears in at most one originate.
fn assert_no_attempt_dialled_twice(sim: &Simulator) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/ari/channels")
    {
        let id = r
            .query
            .split('&')
            .find_map(|kv| kv.strip_prefix("channelId="))
            .unwrap_or("")
            .to_owned();
        *seen.entry(id).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "attempts originated more than once: {twice:?}"
    );
}

async fn assert_no_channel_left(sim: &Simulator) {
    for _ in 0..100 {
        if sim.live_channels() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} channels left alive", sim.live_channels());
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_dropped_five_times_during_a_100_call_pass() {
    let db = TestDb::with_data(&clients(100)).await;
    let sim = Arc::new(slow_sim().await);
    let dialer = Dialer::connect(config(&db, &sim), "host-a".into())
        .await
        .unwrap();
    let dropper = {
        let sim = sim.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                sim.drop_websockets();
            }
        })
    };
    let summary = pass(&dialer).await;
    dropper.await.unwrap();
    dialer.shutdown().await;
    let attempts = assert_nothing_lost(&db).await;
    assert_eq!(
        attempts.len() + summary.skipped.values().sum::<usize>(),
        100,
        "{summary:?}"
    );
    assert!(attempts.values().all(|n| *n == 1));
    assert_no_attempt_dialled_twice(&sim);
    assert_no_channel_left(&sim).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn asterisk_restarted_mid_pass() {
    let db = TestDb::with_data(&clients(60)).await;
    let sim = Arc::new(slow_sim().await);
    let dialer = Dialer::connect(config(&db, &sim), "host-a".into())
        .await
        .unwrap();
    let restarter = {
        let sim = sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            sim.restart(Duration::from_millis(700)).await.unwrap();
        })
    };
    let summary = pass(&dialer).await;
    restarter.await.unwrap();
    dialer.shutdown().await;
    assert_nothing_lost(&db).await;
    assert_no_attempt_dialled_twice(&sim);
    assert_no_channel_left(&sim).await;
    // Calls cut by the restart are not delivered reminders.
    let lost = summary
        .calls
        .iter()
        .filter(|c| {
            c.detail
                .as_deref()
                .is_some_and(|d| d.contains("socket was down"))
        })
        .count();
    assert!(lost > 0, "the restart hit calls in flight: {summary:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_connections_killed_mid_pass() {
    let db = TestDb::with_data(&clients(60)).await;
    let sim = slow_sim().await;
    let dialer = Dialer::connect(config(&db, &sim), "host-a".into())
        .await
        .unwrap();
    let killer = {
        let name = db.name.clone();
        let mut admin = db.conn().await;
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let ids: Vec<u64> = admin
                    .exec("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()", (name.as_str(),))
                    .await
                    .unwrap();
                for id in ids {
                    let _ = admin.query_drop(format!("KILL CONNECTION {id}")).await;
                }
            }
        })
    };
    let summary = pass(&dialer).await;
    killer.await.unwrap();
    dialer.shutdown().await;
    let attempts = assert_nothing_lost(&db).await;
    assert_eq!(summary.unwritten, 0);
    assert_eq!(
        attempts.len() + summary.skipped.values().sum::<usize>(),
        60,
        "{summary:?}"
    );
    assert_no_attempt_dialled_twice(&sim);
    assert_no_channel_left(&sim).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_share_300_clients_and_dial_each_once() {
    let db = TestDb::with_data(&clients(300)).await;
    let sim = Simulator::start(
        SimConfig {
            time_scale: 0.01,
            ..SimConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    // One Asterisk, two daemons: each holds its own pair of Stasis apps.
    let mut a = config(&db, &sim);
    a.ari.outbound_app = "overdue-a".into();
    a.ari.inbound_app = "agent-a".into();
    let mut b = config(&db, &sim);
    b.ari.outbound_app = "overdue-b".into();
    b.ari.inbound_app = "agent-b".into();
    let (da, db_) = tokio::join!(
        Dialer::connect(a, "pbx-a".into()),
        Dialer::connect(b, "pbx-b".into())
    );
    let (da, db_) = (da.unwrap(), db_.unwrap());
    let (sa, sb) = tokio::join!(pass(&da), pass(&db_));
    da.shutdown().await;
    db_.shutdown().await;
    let attempts = assert_nothing_lost(&db).await;
    assert_eq!(attempts.len(), 300, "every client dialled");
    assert!(attempts.values().all(|n| *n == 1), "each exactly once");
    assert_eq!(sim.originate_count(), 300);
    assert!(
        !sa.calls.is_empty() && !sb.calls.is_empty(),
        "both daemons worked: {} / {}",
        sa.calls.len(),
        sb.calls.len()
    );
    assert_eq!(sa.calls.len() + sb.calls.len(), 300);
    assert_no_channel_left(&sim).await;
}

/// `overdue-dialer run` as systemd starts it, on a calling window open all
/// week, with a 1 s poll so passes follow each other quickly.
fn spawn_run(db: &TestDb, sim: &Simulator, extra_env: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = common::daemon_command(db, sim);
    cmd.env("OVERDUE_WINDOW", common::OPEN_ALL_WEEK)
        .env("OVERDUE_CAMPAIGN__POLL_INTERVAL_SECS", "1")
        .env("OVERDUE_CAMPAIGN__MAX_CONCURRENT_CALLS", "10")
        .env("OVERDUE_CAMPAIGN__CALLS_PER_SECOND", "100")
        .env("OVERDUE_CAMPAIGN__SHUTDOWN_GRACE_SECS", "5")
        .env(
            "OVERDUE_TRUNKS",
            r#"[{name="t1",endpoint="Local/{number}@from-voip",max_channels=10,priority=1}]"#,
        );
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// (client, attempt, outcome, channel id, detail) of every call-log row.
type Row = (i64, u32, Option<String>, Option<String>, Option<String>);

async fn rows(db: &TestDb) -> Vec<Row> {
    db.conn()
        .await
        .query("SELECT client_id, attempt_no, outcome, channel_id, detail FROM overdue_call_log ORDER BY client_id, attempt_no")
        .await
        .unwrap()
}

/// Panics with the daemon's own words if it has exited.
fn still_running(child: &mut std::process::Child) {
    if let Ok(Some(status)) = child.try_wait() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        panic!("the daemon exited ({status}): {err}");
    }
}

async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) {
    let give_up = std::time::Instant::now() + limit;
    while std::time::Instant::now() < give_up {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {limit:?}");
}

/// SIGKILL (an OOM kill, a power cut) while calls are up, then systemd's
/// `Restart=on-failure`: every attempt gets an outcome within the call
/// timeout, answered calls are hung up and recorded `aborted` (not
/// delivered), ringing ones are adopted and end normally, each counted
/// once, and every client is reached again on a later pass.
#[tokio::test(flavor = "multi_thread")]
async fn run_sigkilled_with_calls_up_then_restarted() {
    // Clients 1–5 answer and stay on (last digit 8); 6 rings 2.5 s, then
    // answers, after the restart; 7–8 never answer (5).
    let mut data = clients(8);
    for c in &mut data.clients {
        let digit = if c.id <= 6 { 8 } else { 5 };
        c.telefono = Some(format!("3100000{:02}{digit}", c.id));
    }
    let db = TestDb::with_data(&data).await;
    // A tenth of real time: the ring timeout (30 s) is 3 s, the prompt 60 s.
    let sim = Simulator::start(
        SimConfig {
            time_scale: 0.1,
            ..SimConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    sim.configure(|c| {
        c.sounds.insert(
            "morosos_natalia".into(),
            SoundSpec {
                languages: vec!["es_MX".into()],
                duration: Duration::from_secs(600),
            },
        );
        c.answer_delays
            .insert("3100000068".into(), Duration::from_millis(2500));
    });
    let env = [
        ("OVERDUE_CAMPAIGN__CALL_TIMEOUT_SECS", "40"),
        ("OVERDUE_RETRY_MINUTES__NO_ANSWER", "0"),
    ];
    let mut first = spawn_run(&db, &sim, &env);
    until(
        "5 answered and 3 ringing calls",
        Duration::from_secs(20),
        || async { sim.live_calls() == 8 && sim.stasis_starts().len() == 5 },
    )
    .await;
    still_running(&mut first);
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let open: Vec<Row> = rows(&db).await;
    assert_eq!(open.len(), 8);
    for (client, _, outcome, channel, _) in &open {
        assert_eq!(*outcome, None, "client {client}: killed mid-call");
        assert_eq!(
            channel.as_deref(),
            Some(format!("overdue-{client}-1").as_str()),
            "the channel id is written with the claim"
        );
    }
    assert_eq!(sim.live_calls(), 8, "Asterisk keeps a dead client's calls");

    // The next passes may be quick: the prompt is 1 s now.
    sim.configure(|c| {
        if let Some(s) = c.sounds.get_mut("morosos_natalia") {
            s.duration = Duration::from_secs(10);
        }
    });
    let restarted = std::time::Instant::now();
    let mut second = spawn_run(&db, &sim, &env);
    until(
        "every first attempt has an outcome",
        Duration::from_secs(20),
        || async {
            rows(&db)
                .await
                .iter()
                .filter(|r| r.1 == 1)
                .all(|r| r.2.is_some())
        },
    )
    .await;
    assert!(
        restarted.elapsed() < Duration::from_secs(20),
        "within call_timeout_secs"
    );
    until(
        "every client reached again",
        Duration::from_secs(30),
        || async {
            let rows = rows(&db).await;
            [1, 2, 3, 4, 5, 7, 8]
                .iter()
                .all(|id| rows.iter().any(|r| r.0 == *id && r.1 == 2 && r.2.is_some()))
        },
    )
    .await;
    common::sigterm(&second);
    let out = tokio::task::spawn_blocking(move || {
        let status = second.wait();
        let mut err = String::new();
        if let Some(mut e) = second.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    })
    .await
    .unwrap();
    assert!(out.0.unwrap().success(), "{}", out.1);

    let rows = rows(&db).await;
    for (client, attempt, outcome, channel, detail) in rows.iter().filter(|r| r.1 == 1) {
        let outcome = outcome.as_deref().unwrap_or("");
        if *client <= 5 {
            assert_eq!(
                outcome, "aborted",
                "client {client} attempt {attempt}: {detail:?}"
            );
            assert!(
                detail
                    .as_deref()
                    .unwrap_or("")
                    .contains("answered before the daemon restarted"),
                "{detail:?}"
            );
        } else {
            // Adopted: followed as an ordinary call to its normal outcome.
            let want = if *client == 6 {
                "completed"
            } else {
                "no_answer"
            };
            assert_eq!(outcome, want, "client {client}: adopted: {detail:?}");
            assert!(
                detail.as_deref().unwrap_or("").contains("adopted"),
                "{detail:?}"
            );
        }
        assert_eq!(
            channel.as_deref(),
            Some(format!("overdue-{client}-1").as_str())
        );
    }
    let mut conn = db.conn().await;
    let counters: Vec<(i64, i64, i64)> = conn
        .query("SELECT a.id, a.outbound_call_attempts, (SELECT COUNT(*) FROM overdue_call_log l WHERE l.client_id = a.id AND l.outcome IS NOT NULL) FROM afiliados a ORDER BY a.id")
        .await
        .unwrap();
    for (id, attempts, logged) in counters {
        assert_eq!(
            attempts, logged,
            "client {id}: each attempt counted exactly once"
        );
    }
    let sent: Vec<(i64, i64)> = conn
        .query("SELECT id, outbound_call_is_sent FROM afiliados WHERE id <= 5 ORDER BY id")
        .await
        .unwrap();
    assert!(
        sent.iter().all(|(_, s)| *s == 1),
        "reached and heard on a later pass: {sent:?}"
    );
    assert_no_attempt_dialled_twice(&sim);
    assert_no_channel_left(&sim).await;
}

/// Delivered means heard: a callee who hangs up 1 s into the prompt was
/// reached (`hung_up_early`, with the seconds heard) but not delivered, and
/// is called again the next calling day, not the same day; one who hangs
/// up after 6 s (over `campaign.min_heard_secs` = 5) was delivered.
#[tokio::test(flavor = "multi_thread")]
async fn an_early_hang_up_is_delivered_only_when_heard_long_enough() {
    let mut data = clients(2);
    data.clients[0].telefono = Some("3001110001".into());
    data.clients[1].telefono = Some("3001110002".into());
    let db = TestDb::with_data(&data).await;
    // Real time: the seconds heard are measured on the daemon's clock.
    let sim = Simulator::start(SimConfig::default(), 0).await.unwrap();
    sim.configure(|c| {
        c.sounds.insert(
            "morosos_natalia".into(),
            SoundSpec {
                languages: vec!["es_MX".into()],
                duration: Duration::from_secs(20),
            },
        );
        for (number, secs) in [("3001110001", 1), ("3001110002", 6)] {
            c.callees.insert(
                number.into(),
                Callee::Answers {
                    hangs_up_after: Duration::from_millis(secs * 1000 + 200),
                },
            );
        }
    });
    let dialer = Dialer::connect(config(&db, &sim), "host-a".into())
        .await
        .unwrap();
    let summary = pass(&dialer).await;
    dialer.shutdown().await;
    assert_eq!(
        summary
            .outcomes
            .get(&overdue_dialer::rules::outcome::Outcome::HungUpEarly),
        Some(&2)
    );
    let mut conn = db.conn().await;
    let got: Vec<(i64, String, i64, Option<u32>, i64)> = conn
        .query("SELECT l.client_id, l.outcome, l.delivered, l.heard_seconds, a.outbound_call_is_sent FROM overdue_call_log l JOIN afiliados a ON a.id = l.client_id ORDER BY l.client_id")
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            (1, "hung_up_early".into(), 0, Some(1), 0),
            (2, "hung_up_early".into(), 1, Some(6), 1),
        ]
    );
    // Not twice the same day; the next calling day, yes.
    let billing = overdue_dialer::billing::Billing::new(db.opts.clone());
    let policy = overdue_dialer::rules::selection::Policy::from_config(&config(&db, &sim));
    let today = overdue_dialer::clock::local_now(chrono_tz::America::Bogota);
    let ids = |v: Vec<overdue_dialer::rules::selection::ClientFacts>| {
        v.into_iter().map(|c| c.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(billing.eligible_clients(today, &policy).await.unwrap()),
        Vec::<i64>::new()
    );
    let tomorrow = today + chrono::Duration::days(1);
    assert_eq!(
        ids(billing.eligible_clients(tomorrow, &policy).await.unwrap()),
        vec![1]
    );
    billing.close().await.unwrap();
}

/// Another host's open claim is closed once older than
/// `campaign.orphan_after_mins` (30), not before: that host may still be
/// on the call.
#[tokio::test(flavor = "multi_thread")]
async fn another_hosts_claim_is_closed_only_when_stale() {
    let db = TestDb::with_data(&clients(2)).await;
    let sim = slow_sim().await;
    let cfg = config(&db, &sim);
    let now = overdue_dialer::clock::local_now(cfg.timezone);
    let mut conn = db.conn().await;
    for (client, minutes) in [(1, 31), (2, 29)] {
        conn.exec_drop(
            "INSERT INTO overdue_call_log (client_id, attempt_no, claimed_at, claimed_by, channel_id) VALUES (?, 1, ?, 'pbx-b', ?)",
            (client, now - chrono::Duration::minutes(minutes), format!("overdue-{client}-1")),
        )
        .await
        .unwrap();
    }
    let dialer = Dialer::connect(cfg, "pbx-a".into()).await.unwrap();
    dialer.shutdown().await;
    let got: Vec<(i64, Option<String>)> = conn
        .query("SELECT client_id, outcome FROM overdue_call_log ORDER BY client_id")
        .await
        .unwrap();
    assert_eq!(got, vec![(1, Some("aborted".into())), (2, None)]);
    let attempts: Vec<i64> = conn
        .query("SELECT outbound_call_attempts FROM afiliados ORDER BY id")
        .await
        .unwrap();
    assert_eq!(attempts, vec![1, 0], "the closed orphan counts once");
}

/// A call task that panics (made to, by a test hook) leaves no open claim
/// and no live channel: its channel is hung up, its attempt recorded
/// `failed` with the panic's message, and the other calls go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_call_task_leaves_nothing_behind() {
    let mut data = clients(3);
    for c in &mut data.clients {
        c.telefono = Some(format!("30022200{}8", c.id)); // answers, stays on
    }
    let db = TestDb::with_data(&data).await;
    let sim = slow_sim().await;
    let dialer = Dialer::connect(config(&db, &sim), "host-a".into())
        .await
        .unwrap();
    if let Ok(mut set) = dialer.campaign.hooks.panic_on_answer.lock() {
        set.insert(2);
    }
    let summary = pass(&dialer).await;
    dialer.shutdown().await;
    assert_eq!(summary.unwritten, 0);
    let got = rows(&db).await;
    let outcome = |id: i64| got.iter().find(|r| r.0 == id).and_then(|r| r.2.clone());
    assert_eq!(outcome(2).as_deref(), Some("failed"));
    let detail = got
        .iter()
        .find(|r| r.0 == 2)
        .and_then(|r| r.4.clone())
        .unwrap_or_default();
    assert!(
        detail.contains("panicked") && detail.contains("test hook"),
        "{detail}"
    );
    assert_eq!(outcome(1).as_deref(), Some("completed"));
    assert_eq!(outcome(3).as_deref(), Some("completed"));
    assert_nothing_lost(&db).await;
    assert_no_channel_left(&sim).await;
}

/// `n` clients who answer and stay on, a slow simulator playing a prompt
/// of `prompt` (unscaled), and trunks that cool down for 600 s.
async fn stayers(n: i64, prefix: &str, prompt: Duration) -> (TestDb, Arc<Simulator>, Config) {
    let mut data = clients(n);
    for c in &mut data.clients {
        c.telefono = Some(format!("{prefix}{}8", c.id));
    }
    let db = TestDb::with_data(&data).await;
    let sim = Arc::new(slow_sim().await);
    sim.configure(|c| {
        if let Some(s) = c.sounds.get_mut("morosos_natalia") {
            s.duration = prompt;
        }
    });
    let mut cfg = config(&db, &sim);
    cfg.campaign.trunk_cooldown_secs = 600;
    (db, sim, cfg)
}

/// `core stop now` while six answered calls are in the prompt: nobody hung
/// up and nobody heard it, so each is `aborted`, not delivered; after the
/// restart every client is reached, and the first calls are not held back
/// by a trunk cool-down (600 s here).
#[tokio::test(flavor = "multi_thread")]
async fn asterisk_stopped_mid_prompt_then_restarted() {
    // A cool-down, were one to happen, would hold the pass for 10 minutes.
    let (db, sim, cfg) = stayers(6, "30033300", Duration::from_secs(600)).await; // 12 s here
    let dialer = Dialer::connect(cfg, "host-a".into()).await.unwrap();
    let stopper = {
        let sim = sim.clone();
        tokio::spawn(async move {
            until(
                "six calls in the prompt",
                Duration::from_secs(10),
                || async { sim.stasis_starts().len() == 6 },
            )
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            sim.stop_now(Duration::from_millis(500)).await.unwrap();
        })
    };
    let first = pass(&dialer).await;
    stopper.await.unwrap();
    let got = rows(&db).await;
    assert_eq!(got.len(), 6, "{first:?}");
    for (client, _, outcome, _, detail) in &got {
        assert_eq!(
            outcome.as_deref(),
            Some("aborted"),
            "client {client}: {detail:?}"
        );
        assert!(
            detail.as_deref().unwrap_or("").contains("Asterisk"),
            "{detail:?}"
        );
    }
    let mut conn = db.conn().await;
    let sent: Vec<(i64, i64)> = conn
        .query("SELECT outbound_call_is_sent, outbound_call_attempts FROM afiliados")
        .await
        .unwrap();
    assert!(
        sent.iter().all(|s| *s == (0, 1)),
        "not delivered, counted once: {sent:?}"
    );

    sim.configure(|c| {
        if let Some(s) = c.sounds.get_mut("morosos_natalia") {
            s.duration = Duration::from_secs(10);
        }
    });
    let began = std::time::Instant::now();
    let second = pass(&dialer).await;
    dialer.shutdown().await;
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "held back after the restart: {:?}",
        began.elapsed()
    );
    assert_eq!(
        second
            .outcomes
            .get(&overdue_dialer::rules::outcome::Outcome::Completed),
        Some(&6),
        "{second:?}"
    );
    assert_nothing_lost(&db).await;
    assert_no_channel_left(&sim).await;
}

/// `core stop gracefully` waits for the calls and answers every originate
/// meanwhile with the same 500 `Allocation failed` as a broken trunk: that
/// cools no trunk down and spends no attempt; once Asterisk is back every
/// client is called.
#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_asterisk_stop_cools_no_trunk_and_spends_no_attempt() {
    let (db, sim, mut cfg) = stayers(4, "30044400", Duration::from_secs(60)).await; // 1.2 s here
    cfg.campaign.calls_per_second = 2.0;
    let dialer = Dialer::connect(cfg, "host-a".into()).await.unwrap();
    let stopper = {
        let sim = sim.clone();
        tokio::spawn(async move {
            until(
                "the first call answered",
                Duration::from_secs(10),
                || async { !sim.stasis_starts().is_empty() },
            )
            .await;
            sim.stop_gracefully(Duration::from_millis(500))
                .await
                .unwrap();
        })
    };
    let began = std::time::Instant::now();
    let summary = pass(&dialer).await;
    stopper.await.unwrap();
    dialer.shutdown().await;
    assert!(
        began.elapsed() < Duration::from_secs(60),
        "a trunk was cooled down: {:?}",
        began.elapsed()
    );
    assert_eq!(
        summary
            .outcomes
            .get(&overdue_dialer::rules::outcome::Outcome::Completed),
        Some(&4),
        "{summary:?}"
    );
    let refused = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/ari/channels")
        .count();
    assert!(
        refused > 4,
        "originates were refused during the stop: {refused}"
    );
    let t1 = &summary.trunks[0];
    assert_eq!(t1.1.failed, 0, "no trunk was blamed: {t1:?}");
    let mut conn = db.conn().await;
    let attempts: Vec<i64> = conn
        .query("SELECT outbound_call_attempts FROM afiliados ORDER BY id")
        .await
        .unwrap();
    assert_eq!(attempts, vec![1, 1, 1, 1], "refusals spent no attempt");
    assert_nothing_lost(&db).await;
    assert_no_channel_left(&sim).await;
}

/// An originate whose HTTP answer comes after `ari.request_timeout_secs`
/// was placed all the same: the call is followed to its normal outcome,
/// counted once, never hung up as an unknown channel. One that never
/// reached Asterisk is recorded as not placed.
#[tokio::test(flavor = "multi_thread")]
async fn an_originate_without_an_answer_is_followed_or_found_not_placed() {
    let mut data = clients(3);
    let phones = ["3005550018", "3005550028", "3005550038"];
    for (c, p) in data.clients.iter_mut().zip(phones) {
        c.telefono = Some(p.into());
    }
    let db = TestDb::with_data(&data).await;
    let sim = slow_sim().await;
    sim.configure(|c| {
        c.late_originate_answers
            .insert(phones[0].into(), Duration::from_secs(3));
        c.lost_originates.insert(phones[1].into());
        if let Some(s) = c.sounds.get_mut("morosos_natalia") {
            s.duration = Duration::from_secs(50); // 1 s at this scale
        }
    });
    let mut cfg = config(&db, &sim);
    cfg.ari.request_timeout_secs = 1;
    let dialer = Dialer::connect(cfg, "host-a".into()).await.unwrap();
    let summary = pass(&dialer).await;
    dialer.shutdown().await;
    let got = rows(&db).await;
    let row = |id: i64| got.iter().find(|r| r.0 == id).cloned().unwrap();
    assert_eq!(row(1).2.as_deref(), Some("completed"), "{:?}", row(1));
    assert_eq!(row(3).2.as_deref(), Some("completed"), "{:?}", row(3));
    assert_eq!(row(2).2.as_deref(), Some("aborted"), "{:?}", row(2));
    assert!(
        row(2).4.as_deref().unwrap_or("").contains("not dialled"),
        "{:?}",
        row(2)
    );
    let mut conn = db.conn().await;
    let attempts: Vec<i64> = conn
        .query("SELECT outbound_call_attempts FROM afiliados ORDER BY id")
        .await
        .unwrap();
    assert_eq!(attempts, vec![1, 0, 1], "{summary:?}");
    // The late one was hung up once: by us, after its prompt.
    let deletes = sim
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE" && r.path == "/ari/channels/overdue-1-1")
        .count();
    assert_eq!(deletes, 1);
    assert_nothing_lost(&db).await;
    assert_no_channel_left(&sim).await;
}

/// A trunk cooled down for a refusal of its own is usable again at once
/// when Asterisk comes back from a restart (a new `startup_time`): the
/// refusal may have been the old Asterisk's.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_asterisk_clears_trunk_cooldowns() {
    let data = clients(2);
    let db = TestDb::with_data(&data).await;
    let sim = slow_sim().await;
    sim.configure(|c| {
        c.failing_technologies.insert("PJSIP".into());
    });
    let mut cfg = config(&db, &sim);
    cfg.campaign.trunk_cooldown_secs = 600;
    cfg.campaign.max_concurrent_calls = 1;
    cfg.trunks = vec![
        TrunkConfig {
            name: "pjsip".into(),
            endpoint: "PJSIP/{number}@voip".into(),
            max_channels: 5,
            priority: 1,
            caller_id: None,
            health_endpoint: None,
        },
        TrunkConfig {
            name: "local".into(),
            endpoint: "Local/{number}@from-voip".into(),
            max_channels: 5,
            priority: 2,
            caller_id: None,
            health_endpoint: None,
        },
    ];
    // Only client 1 is due now; client 2 waits for the second pass.
    let mut conn = db.conn().await;
    conn.query_drop("UPDATE afiliados SET outbound_call = 0 WHERE id = 2")
        .await
        .unwrap();
    let dialer = Dialer::connect(cfg, "host-a".into()).await.unwrap();
    let first = pass(&dialer).await;
    assert_eq!(first.trunks[0].1.failed, 1, "pjsip refused: {first:?}");
    assert!(dialer.campaign.trunks.is_cooling(0));
    sim.configure(|c| c.failing_technologies.clear());
    sim.restart(Duration::from_millis(300)).await.unwrap();
    until("the cool-down cleared", Duration::from_secs(10), || async {
        !dialer.campaign.trunks.is_cooling(0)
    })
    .await;
    conn.query_drop("UPDATE afiliados SET outbound_call = 1 WHERE id = 2")
        .await
        .unwrap();
    pass(&dialer).await;
    dialer.shutdown().await;
    let got: Vec<(i64, Option<String>)> = conn
        .query("SELECT client_id, trunk FROM overdue_call_log WHERE outcome IS NOT NULL AND client_id = 2")
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![(2, Some("pjsip".into()))],
        "the first trunk again"
    );
}

/// A channel of one of our attempts enters Stasis while nobody follows it
/// (placed by a run that died, answered now): it is never hung up as an
/// unknown channel while its claim is open; it is adopted, hears the
/// prompt, and its attempt gets its outcome, counted once. Once the claim
/// is closed, such a channel is a leftover and is hung up.
#[tokio::test(flavor = "multi_thread")]
async fn an_unfollowed_channel_of_an_open_attempt_is_adopted_not_hung_up() {
    let db = TestDb::with_data(&clients(2)).await;
    let sim = slow_sim().await;
    let cfg = config(&db, &sim);
    let now = overdue_dialer::clock::local_now(cfg.timezone);
    let mut conn = db.conn().await;
    // A fresh claim of another run: no orphan check touches it yet.
    conn.exec_drop(
        "INSERT INTO overdue_call_log (client_id, attempt_no, claimed_at, claimed_by, channel_id) VALUES (1, 1, ?, 'pbx-b', 'overdue-1-1'), (2, 1, ?, 'pbx-b', 'overdue-2-1')",
        (now, now),
    )
    .await
    .unwrap();
    conn.query_drop(
        "UPDATE overdue_call_log SET outcome = 'busy', ended_at = claimed_at WHERE client_id = 2",
    )
    .await
    .unwrap();
    let dialer = Dialer::connect(cfg, "pbx-a".into()).await.unwrap();
    let ari = overdue_dialer::ari::AriClient::new(
        &sim.url(),
        "asterisk",
        Secret::new("asterisk"),
        Duration::from_secs(5),
    )
    .unwrap();
    for (client, number) in [(1, "3006660018"), (2, "3006660028")] {
        ari.originate(&overdue_dialer::ari::Originate {
            endpoint: format!("Local/{number}@sim-pstn"),
            app: "overdue-app".into(),
            channel_id: Some(format!("overdue-{client}-1")),
            timeout_secs: Some(30),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    until("the adopted call ends", Duration::from_secs(10), || async {
        rows(&db).await.iter().all(|r| r.2.is_some()) && sim.live_channels() == 0
    })
    .await;
    dialer.shutdown().await;
    let got = rows(&db).await;
    assert_eq!(got[0].2.as_deref(), Some("completed"), "{:?}", got[0]);
    let plays = |id: &str| {
        sim.requests()
            .iter()
            .filter(|r| r.path == format!("/ari/channels/{id}/play"))
            .count()
    };
    assert_eq!(
        plays("overdue-1-1"),
        1,
        "the open attempt's callee heard the prompt"
    );
    assert_eq!(
        plays("overdue-2-1"),
        0,
        "the closed attempt's leftover was hung up"
    );
    let attempts: Vec<i64> = conn
        .query("SELECT outbound_call_attempts FROM afiliados ORDER BY id")
        .await
        .unwrap();
    assert_eq!(attempts[0], 1);
    assert_no_channel_left(&sim).await;
}
