//! Faults during a pass (SPEC §5, §6): the event socket drops, Asterisk
//! restarts, MySQL loses its connections, the daemon is SIGKILLed, two
//! daemons share the database. In every case: no attempt dialled twice,
//! no outcome lost, no channel left alive.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use mysql_async::prelude::*;
use overdue_dialer::billing::demo_data::{Client, Data, Invoice};
use overdue_dialer::campaign::pass::{PassOptions, PassSummary};
use overdue_dialer::config::{Config, MysqlConfig, Secret, TrunkConfig};
use overdue_dialer::dialer::Dialer;
use overdue_dialer::sim::{SimConfig, Simulator, SoundSpec};

/// `n` due clients; the last digit of each number cycles through the
/// simulator's callees (answer, busy, no answer, congestion …).
fn clients(n: i64) -> Data {
    let mut data = Data::default();
    for id in 1..=n {
        data.clients.push(Client {
            id,
            nombre: format!("Cliente {id}"),
            telefono: Some(format!("31{:07}{}", id, id % 10)),
            corte: Some(1),
            outbound_call: true,
            is_sent: false,
            attempts: 0,
            completed_at: None,
        });
        data.invoices.push(Invoice {
            client_id: id,
            saldo: "50000.00".into(),
            cerrado: false,
        });
    }
    data
}

fn config(db: &TestDb, sim: &Simulator) -> Config {
    let opts = &db.opts;
    let mut c = Config {
        mysql: MysqlConfig {
            host: opts.ip_or_hostname().to_string(),
            port: opts.tcp_port(),
            user: opts.user().unwrap_or("root").to_owned(),
            password: Secret::new(opts.pass().unwrap_or("")),
            database: db.name.clone(),
            ..Default::default()
        },
        trunks: vec![TrunkConfig {
            name: "t1".into(),
            endpoint: "Local/{number}@from-voip".into(),
            max_channels: 30,
            priority: 1,
            caller_id: None,
        }],
        ..Default::default()
    };
    c.ari.url = sim.url();
    c.ari.password = Secret::new("asterisk");
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

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_pass_then_restart_closes_every_attempt() {
    let db = TestDb::with_data(&clients(40)).await;
    // Calls long enough that SIGKILL finds some up (digit 8 stays 6 s).
    let sim = Simulator::start(
        SimConfig {
            time_scale: 0.02,
            ..SimConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    let once = || {
        let opts = &db.opts;
        Command::new(env!("CARGO_BIN_EXE_overdue-dialer"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MYSQL_SERVER", opts.ip_or_hostname())
            .env("OVERDUE_MYSQL__PORT", opts.tcp_port().to_string())
            .env("MYSQL_USER", opts.user().unwrap_or("root"))
            .env("MYSQL_PASSWORD", opts.pass().unwrap_or(""))
            .env("MYSQL_DATABASE", &db.name)
            .env("OVERDUE_ARI__URL", sim.url())
            .env("ASTERISK_PASSWORD", "asterisk")
            .env("OVERDUE_CAMPAIGN__MAX_CONCURRENT_CALLS", "10")
            .env("OVERDUE_CAMPAIGN__CALLS_PER_SECOND", "100")
            .env(
                "OVERDUE_TRUNKS",
                r#"[{name="t1",endpoint="Local/{number}@from-voip",max_channels=10,priority=1}]"#,
            )
            .args(["once", "--ignore-window"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = once();
    for _ in 0..500 {
        if sim.live_calls() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if sim.live_calls() < 5 {
        first.kill().unwrap();
        let out = first.wait_with_output().unwrap();
        panic!(
            "calls never came up (originates {}, peak {}): {}",
            sim.originate_count(),
            sim.peak_calls(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let mut conn = db.conn().await;
    let open: Vec<i64> = conn
        .query("SELECT client_id FROM overdue_call_log WHERE outcome IS NULL")
        .await
        .unwrap();
    assert!(!open.is_empty(), "the kill left attempts open");
    let second = once();
    let out = tokio::task::spawn_blocking(move || second.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let attempts = assert_nothing_lost(&db).await;
    // The open attempts were closed as aborted, not dialled again under the same attempt.
    let aborted: Vec<i64> = conn.query("SELECT client_id FROM overdue_call_log WHERE outcome = 'aborted' AND detail LIKE 'daemon%'").await.unwrap();
    let mut a = aborted.clone();
    a.sort();
    let mut o = open.clone();
    o.sort();
    assert_eq!(a, o);
    assert_eq!(attempts.len(), 40);
    assert_no_attempt_dialled_twice(&sim);
    assert_no_channel_left(&sim).await;
}
