//! The Prometheus endpoint (README "Metrics") after a real pass against
//! the simulator and MariaDB: its counters say what the call log says.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestDb;
use mysql_async::prelude::*;
use overdue_dialer::billing::demo_data::Data;
use overdue_dialer::campaign::pass::PassOptions;
use overdue_dialer::dialer::Dialer;
use overdue_dialer::metrics::MetricsServer;
use overdue_dialer::sim::{SimConfig, Simulator};

/// `name{labels} value` lines of a scrape, by `name{labels}`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(server: &MetricsServer) -> (String, BTreeMap<String, f64>) {
    let resp = reqwest::get(format!("http://{}/metrics", server.addr()))
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = resp.text().await.unwrap();
    let m = parse(&text);
    (text, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_a_pass_matches_the_call_log() {
    // Every callee behaviour (last digit 0–9), twice, and one bad number.
    let mut data = Data::default();
    for i in 0..20 {
        common::due(&mut data, i + 1, &format!("30012340{i:02}"), "125000.00");
    }
    common::due(&mut data, 21, "12345", "125000.00");
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
    let mut config = common::config(&db, &sim);
    // A small first trunk, so both trunks carry calls.
    config.trunks = vec![
        common::trunk("pjsip", "PJSIP/{number}@voip_issabel", 1, 3),
        common::trunk("local", "Local/{number}@from-voip", 2, 20),
    ];
    config.campaign.calls_per_second = 1000.0;
    config.campaign.max_concurrent_calls = 20;
    let dialer = Dialer::connect(config, "test-host".into()).await.unwrap();
    let server = MetricsServer::start(
        ([127, 0, 0, 1], 0).into(),
        dialer.metrics_sources().registry(),
    )
    .await
    .unwrap();

    let (_, before) = scrape(&server).await;
    assert_eq!(before["overdue_ari_connected"], 1.0);
    assert_eq!(before["overdue_passes_total"], 0.0);
    assert_eq!(
        before[r#"overdue_trunk_state{trunk="pjsip",state="up"}"#], 1.0,
        "PJSIP/voip_issabel is online in the simulator"
    );

    let (_tx, abort) = tokio::sync::watch::channel(false);
    let summary = dialer
        .pass(
            PassOptions {
                ignore_window: true,
                drain: None,
                probe: None,
            },
            abort,
        )
        .await
        .unwrap();
    let (text, m) = scrape(&server).await;

    // Outcomes by outcome and trunk, and delivered reminders by trunk, as
    // the call log has them.
    let mut conn = db.conn().await;
    let log: Vec<(String, String, u64, u64)> = conn
        .query("SELECT outcome, COALESCE(trunk, 'none'), COUNT(*), CAST(SUM(delivered) AS UNSIGNED) FROM overdue_call_log GROUP BY 1, 2")
        .await
        .unwrap();
    assert!(log.len() >= 5, "a varied pass: {log:?}");
    let mut outcomes = 0.0;
    let mut delivered: BTreeMap<String, u64> = BTreeMap::new();
    for (outcome, trunk, n, d) in &log {
        let key = format!(r#"overdue_outcomes_total{{outcome="{outcome}",trunk="{trunk}"}}"#);
        assert_eq!(m.get(&key), Some(&(*n as f64)), "{key}\n{text}");
        outcomes += *n as f64;
        *delivered.entry(trunk.clone()).or_default() += d;
    }
    let scraped: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("overdue_outcomes_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(scraped, outcomes, "no outcome the call log lacks");
    assert_eq!(outcomes, 21.0);
    for (trunk, d) in delivered.iter().filter(|(_, d)| **d > 0) {
        let key = format!(r#"overdue_delivered_total{{trunk="{trunk}"}}"#);
        assert_eq!(m.get(&key), Some(&(*d as f64)), "{key}\n{text}");
    }
    assert!(
        delivered.values().sum::<u64>() > 0,
        "digits 0–3 hear the reminder"
    );

    // Originates, per trunk, as the simulator received them.
    let originates: f64 = ["pjsip", "local"]
        .iter()
        .map(|t| m[&format!(r#"overdue_originates_total{{trunk="{t}"}}"#)])
        .sum();
    assert_eq!(originates, sim.originate_count() as f64);
    assert!(m[r#"overdue_originates_total{trunk="pjsip"}"#] > 0.0);
    assert!(m[r#"overdue_originates_total{trunk="local"}"#] > 0.0);

    // The pass, and nothing left in flight.
    assert_eq!(m["overdue_passes_total"], 1.0);
    assert_eq!(
        m["overdue_last_pass_selected_clients"],
        summary.selected as f64
    );
    assert!(m["overdue_last_pass_duration_seconds"] > 0.0);
    for t in ["pjsip", "local"] {
        assert_eq!(
            m[&format!(r#"overdue_trunk_calls_in_flight{{trunk="{t}"}}"#)],
            0.0
        );
        let states: f64 = ["up", "cooling", "offline"]
            .iter()
            .map(|s| m[&format!(r#"overdue_trunk_state{{trunk="{t}",state="{s}"}}"#)])
            .sum();
        assert_eq!(states, 1.0, "exactly one state per trunk");
    }
    assert_eq!(m["overdue_outcome_writes_waiting"], 0.0);
    assert_eq!(m["overdue_ari_reconnects_total"], 0.0);
    assert_eq!(m["overdue_agent_calls_in_flight"], 0.0);
    assert_eq!(m[r#"overdue_inbound_calls_total{how="agent"}"#], 0.0);
    assert_eq!(m[r#"overdue_openai_tokens_total{direction="in"}"#], 0.0);
    assert_eq!(m["overdue_late_rtp_packets_total"], 0.0);
    assert!(
        text.ends_with("# EOF\n"),
        "a complete OpenMetrics exposition"
    );

    // A reconnect is counted, and the gauge follows the socket.
    sim.drop_websockets();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = scrape(&server).await;
        if m["overdue_ari_reconnects_total"] == 1.0 && m["overdue_ari_connected"] == 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "no reconnect seen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `check` finds the running daemon's endpoint.
    let dir = std::env::temp_dir().join(format!("overdue-metrics-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        format!("[metrics]\nlisten = \"{}\"\n", server.addr()),
    )
    .unwrap();
    let out = common::daemon_command(&db, &sim)
        .arg("--config")
        .arg(&file)
        .arg("check")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("metrics endpoint"))
        .unwrap_or_else(|| panic!("no metrics line:\n{text}"));
    assert!(line.starts_with('✓') && line.contains("answers"), "{line}");

    drop(server);
    dialer.shutdown().await;
}

/// `check` with nobody on the address: fine (the daemon is not running);
/// with another program answering there: a failure saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tells_free_from_foreign_metrics_addresses() {
    let db = TestDb::with_data(&Data::default()).await;
    let sim = Simulator::start(SimConfig::default(), 0).await.unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free_addr = free.local_addr().unwrap();
    drop(free);
    // The simulator (an ARI server, not ours) answers 401 there.
    let foreign_addr = sim.addr();
    for (addr, ok, says) in [
        (free_addr, true, "no daemon running"),
        (foreign_addr, false, "without overdue metrics"),
    ] {
        let out = common::daemon_command(&db, &sim)
            .env("OVERDUE_METRICS__LISTEN", addr.to_string())
            .arg("check")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains("metrics endpoint"))
            .unwrap_or_else(|| panic!("no metrics line:\n{text}"));
        assert_eq!(line.starts_with('✓'), ok, "{line}");
        assert!(line.contains(says), "{line}");
    }
}
