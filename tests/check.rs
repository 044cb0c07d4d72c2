//! `overdue-dialer check` against a healthy setup and each broken one.

mod common;

use common::TestDb;
use mysql_async::prelude::Queryable;
use overdue_dialer::ari::{AriClient, Backoff, EventConnection};
use overdue_dialer::billing::demo_data::Data;
use overdue_dialer::config::Secret;
use overdue_dialer::sim::{SimConfig, Simulator};

async fn healthy() -> (TestDb, Simulator) {
    let db = TestDb::with_data(&Data::default()).await;
    let mut conn = db.conn().await;
    for (_, _, ddl) in overdue_dialer::billing::schema::RECOMMENDED_INDEXES {
        conn.query_drop(*ddl).await.unwrap();
    }
    let sim = Simulator::start(SimConfig::default(), 0).await.unwrap();
    (db, sim)
}

fn check(db: &TestDb, sim: &Simulator, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = common::daemon_command(db, sim);
    cmd.arg("check");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn failed_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with('✗')).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_setup_is_all_ticks() {
    let (db, sim) = healthy().await;
    let (ok, text) = check(&db, &sim, &[]);
    assert!(ok, "{text}");
    assert!(failed_lines(&text).is_empty(), "{text}");
    for what in [
        "configuration is valid",
        "MySQL reachable",
        "tables and columns present",
        "indexes",
        "ARI reachable",
        "overdue-app free",
        "openai-app free",
        "sound morosos_natalia present for language es_MX",
        "trunk from-voip",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with('✓') && l.contains(what)),
            "no ✓ for {what}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_broken_setup_gets_its_cross() {
    let (db, sim) = healthy().await;

    let (ok, text) = check(&db, &sim, &[("ASTERISK_PASSWORD", "wrong")]);
    assert!(!ok);
    let fails = failed_lines(&text);
    assert!(
        fails.len() == 1 && fails[0].contains("credentials refused"),
        "{text}"
    );
    assert!(!text.contains("wrong"), "password echoed: {text}");

    let (ok, text) = check(
        &db,
        &sim,
        &[(
            "OVERDUE_CAMPAIGN__MEDIA",
            r#"["sound:morosos_natalia","sound:saludo_faltante"]"#,
        )],
    );
    assert!(!ok);
    let fails = failed_lines(&text);
    assert!(
        fails.len() == 1 && fails[0].contains("sound saludo_faltante missing"),
        "{text}"
    );

    let (ok, text) = check(&db, &sim, &[("OVERDUE_CAMPAIGN__LANG", "es")]);
    assert!(
        !ok && failed_lines(&text)[0].contains("no es version"),
        "{text}"
    );

    // Another client holds the outbound app.
    let ari = AriClient::new(
        &sim.url(),
        "asterisk",
        Secret::new("asterisk"),
        std::time::Duration::from_secs(2),
    )
    .unwrap();
    let mut other = EventConnection::spawn(&ari, &["overdue-app"], 16, Backoff::default());
    assert!(
        other
            .wait_connected(std::time::Duration::from_secs(5))
            .await
    );
    let (ok, text) = check(&db, &sim, &[]);
    assert!(!ok);
    let fails = failed_lines(&text);
    assert!(
        fails.len() == 1 && fails[0].contains("overdue-app is held by another client"),
        "{text}"
    );
    other.shutdown().await;

    let mut conn = db.conn().await;
    conn.query_drop("DROP INDEX ix_factura_open_debt ON factura")
        .await
        .unwrap();
    let (ok, text) = check(&db, &sim, &[]);
    assert!(!ok);
    assert!(
        failed_lines(&text)[0].contains("CREATE INDEX ix_factura_open_debt"),
        "{text}"
    );

    conn.query_drop("DROP TABLE overdue_call_log")
        .await
        .unwrap();
    let (ok, text) = check(&db, &sim, &[]);
    assert!(!ok);
    assert!(
        text.lines().any(|l| l.starts_with('✗')
            && l.contains("schema incomplete")
            && l.contains("schema apply")),
        "{text}"
    );

    let (ok, text) = check(&db, &sim, &[("OVERDUE_MYSQL__PORT", "1")]);
    assert!(
        !ok && failed_lines(&text)[0].contains("cannot connect"),
        "{text}"
    );
}

/// Every sound the configured media may need, in `campaign.lang`: the
/// menu's prompts when the menu is on, and Asterisk's Spanish number and
/// date files for `number:{saldo}` and `{corte_fecha}`.
#[tokio::test(flavor = "multi_thread")]
async fn check_finds_every_sound_a_spoken_amount_date_or_menu_needs() {
    let (db, sim) = healthy().await;
    let spoken = [(
        "OVERDUE_CAMPAIGN__MEDIA",
        r#"["sound:morosos_natalia","number:{saldo}","{corte_fecha}"]"#,
    )];
    let (ok, text) = check(&db, &sim, &spoken);
    assert!(ok, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with('✓')
            && l.contains("sounds for spoken amounts and dates present for language es_MX")),
        "{text}"
    );

    // One month name missing on this Asterisk: named.
    sim.configure(|c| {
        c.sounds.remove("digits/mon-3");
    });
    let (ok, text) = check(&db, &sim, &spoken);
    assert!(!ok);
    let fails = failed_lines(&text);
    assert!(
        fails.len() == 1 && fails[0].contains("missing in es_MX: digits/mon-3"),
        "{text}"
    );

    // The menu on: its prompts are needed too (and missing here).
    let (ok, text) = check(
        &db,
        &sim,
        &[("OVERDUE_MENU__ACTIONS", r#"{"2"="repeat","9"="opt_out"}"#)],
    );
    assert!(!ok);
    let fails = failed_lines(&text);
    assert!(
        fails.len() == 2
            && fails[0].contains("sound overdue-menu missing")
            && fails[1].contains("sound overdue-opt-out missing"),
        "{text}"
    );
}
