//! Trunk health (README "Trunk health") end to end: the simulator's
//! endpoints go offline and online, and the dialer's trunks follow.

mod common;

use std::time::{Duration, Instant};

use common::TestDb;
use mysql_async::prelude::*;
use overdue_dialer::billing::demo_data::Data;
use overdue_dialer::campaign::pass::{PassOptions, PassSummary};
use overdue_dialer::config::Config;
use overdue_dialer::dialer::Dialer;
use overdue_dialer::rules::trunks::TrunkState;
use overdue_dialer::sim::{SimConfig, Simulator};

const ISSABEL: &str = "PJSIP/voip_issabel";

/// `n` clients whose callees answer and listen.
fn clients(n: i64) -> Data {
    let mut data = Data::default();
    for i in 1..=n {
        common::due(&mut data, i, &format!("300123{i:03}0"), "125000.00");
    }
    data
}

async fn rig(n: i64, time_scale: f64) -> (TestDb, Simulator, Config) {
    let db = TestDb::with_data(&clients(n)).await;
    let sim = Simulator::start(
        SimConfig {
            time_scale,
            ..SimConfig::default()
        },
        0,
    )
    .await
    .unwrap();
    let mut config = common::config(&db, &sim);
    config.trunks = vec![
        common::trunk("issabel", "PJSIP/{number}@voip_issabel", 1, 2),
        common::trunk("local", "Local/{number}@from-voip", 2, 2),
    ];
    config.campaign.calls_per_second = 1000.0;
    config.campaign.max_concurrent_calls = 4;
    (db, sim, config)
}

fn opts() -> PassOptions {
    PassOptions {
        ignore_window: true,
        drain: None,
        probe: None,
    }
}

/// Originates the simulator received on the issabel trunk (after `since`).
fn issabel_originates(sim: &Simulator, since: Option<Instant>) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/ari/channels")
        .filter(|r| r.query.contains("voip_issabel"))
        .filter(|r| since.is_none_or(|s| r.at >= s))
        .count()
}

/// (outcome, trunk) counts of the call log.
async fn log(db: &TestDb) -> Vec<(String, Option<String>, u64)> {
    let mut conn = db.conn().await;
    conn.query("SELECT outcome, trunk, COUNT(*) FROM overdue_call_log GROUP BY 1, 2 ORDER BY 1, 2")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_going_offline_mid_pass_takes_no_new_calls() {
    let (db, sim, config) = rig(24, 0.05).await;
    let dialer = Dialer::connect(config, "test-host".into()).await.unwrap();
    assert_eq!(
        sim.endpoint_subscribers(ISSABEL),
        ["overdue-app"],
        "the outbound app hears the endpoint's state changes"
    );
    let (_tx, abort) = tokio::sync::watch::channel(false);
    let pass = dialer.pass(opts(), abort);
    let control = async {
        // Once the trunk has carried a few calls, its endpoint goes offline.
        while issabel_originates(&sim, None) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sim.set_endpoint_state(ISSABEL, "offline");
        let until = Instant::now() + Duration::from_secs(5);
        while dialer.campaign.trunks.view()[0].state != TrunkState::Offline {
            assert!(Instant::now() < until, "EndpointStateChange not followed");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // A call given the trunk just before the event may still be on
        // its way to Asterisk: it is not a new call.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Instant::now()
    };
    let (summary, offline_at) = tokio::join!(pass, control);
    let summary: PassSummary = summary.unwrap();
    assert_eq!(
        issabel_originates(&sim, Some(offline_at)),
        0,
        "an offline trunk takes no new calls"
    );
    assert!(issabel_originates(&sim, None) >= 3);
    // Everyone was called: the rest on the other trunk.
    assert_eq!(summary.calls.len(), 24, "{summary:?}");
    let rows = log(&db).await;
    let on = |t: &str| -> u64 {
        rows.iter()
            .filter(|(_, tr, _)| tr.as_deref() == Some(t))
            .map(|(_, _, n)| n)
            .sum()
    };
    assert_eq!(on("issabel") + on("local"), 24, "{rows:?}");
    assert!(on("local") >= 10, "{rows:?}");
    assert_eq!(summary.trunks[0].1.state, TrunkState::Offline);
    assert_eq!(summary.trunks[1].1.state, TrunkState::Up);
    dialer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_trunk_at_pass_start_takes_none_until_online() {
    let (db, sim, mut config) = rig(6, 0.02).await;
    sim.set_endpoint_state(ISSABEL, "offline");
    config.campaign.max_attempts = 5;
    let dialer = Dialer::connect(config.clone(), "test-host".into())
        .await
        .unwrap();
    let (_tx, abort) = tokio::sync::watch::channel(false);
    let summary = dialer.pass(opts(), abort.clone()).await.unwrap();
    assert_eq!(summary.calls.len(), 6);
    assert_eq!(issabel_originates(&sim, None), 0);
    assert_eq!(summary.trunks[0].1.state, TrunkState::Offline);

    // Online again (as an event): the first trunk is used again.
    sim.set_endpoint_state(ISSABEL, "online");
    let until = Instant::now() + Duration::from_secs(5);
    while dialer.campaign.trunks.view()[0].state != TrunkState::Up {
        assert!(Instant::now() < until, "EndpointStateChange not followed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut conn = db.conn().await;
    // Due again at once: the retry delays are not under test here.
    conn.query_drop("UPDATE overdue_call_log SET ended_at = ended_at - INTERVAL 30 DAY, claimed_at = claimed_at - INTERVAL 30 DAY")
        .await
        .unwrap();
    conn.query_drop(
        "UPDATE afiliados SET outbound_call_is_sent = 0, outbound_call_completed_at = NULL",
    )
    .await
    .unwrap();
    drop(conn);
    let summary = dialer.pass(opts(), abort).await.unwrap();
    assert!(!summary.calls.is_empty(), "{summary:?}");
    assert!(issabel_originates(&sim, None) > 0);
    dialer.shutdown().await;
}

/// With every trunk offline nobody is claimed: no attempt is recorded
/// as not dialled, the clients simply wait for the next pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_trunk_offline_means_no_pass() {
    let (db, sim, mut config) = rig(3, 0.02).await;
    config.trunks.truncate(1);
    sim.set_endpoint_state(ISSABEL, "offline");
    let dialer = Dialer::connect(config, "test-host".into()).await.unwrap();
    let (_tx, abort) = tokio::sync::watch::channel(false);
    let summary = dialer.pass(opts(), abort).await.unwrap();
    assert!(summary.all_trunks_offline);
    assert!(summary.calls.is_empty());
    assert_eq!(sim.originate_count(), 0);
    assert!(log(&db).await.is_empty());
    dialer.shutdown().await;
}

/// `check` shows each trunk's endpoint state; offline and unknown
/// endpoints are failures with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_shows_each_trunks_state() {
    let db = TestDb::with_data(&Data::default()).await;
    let sim = Simulator::start(SimConfig::default(), 0).await.unwrap();
    sim.set_endpoint_state("PJSIP/down", "offline");
    sim.set_endpoint_state("SIP/quiet", "unknown");
    let dir = std::env::temp_dir().join(format!("overdue-trunk-health-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        r#"
[metrics]
listen = ""

[[trunks]]
name = "issabel"
endpoint = "PJSIP/{number}@voip_issabel"
priority = 1

[[trunks]]
name = "down"
endpoint = "PJSIP/{number}@down"
priority = 2

[[trunks]]
name = "quiet"
endpoint = "SIP/quiet/{number}"
priority = 3

[[trunks]]
name = "typo"
endpoint = "Local/{number}@from-voip"
health_endpoint = "PJSIP/no_such"
priority = 4

[[trunks]]
name = "local"
endpoint = "Local/{number}@from-voip"
priority = 5
"#,
    )
    .unwrap();
    let out = common::daemon_command(&db, &sim)
        .arg("--config")
        .arg(&file)
        .arg("check")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    let line = |needle: &str| -> &str {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?}:\n{text}"))
    };
    assert!(line("trunk issabel").starts_with('✓'));
    assert!(line("trunk issabel").contains("PJSIP/voip_issabel online"));
    assert!(line("trunk down").starts_with('✗'));
    assert!(line("trunk down").contains("PJSIP/down offline"));
    assert!(line("trunk quiet").starts_with('✓'));
    assert!(line("trunk quiet").contains("SIP/quiet unknown"));
    assert!(line("trunk typo").starts_with('✗'));
    assert!(line("trunk typo").contains("PJSIP/no_such not found"));
    assert!(line("trunk local").starts_with('✓'));
    assert!(line("metrics off").starts_with('✓'));
}
