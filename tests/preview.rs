//! `overdue-dialer preview` and `schema` as billing staff and scripts run
//! them: the real binary against a real MariaDB.

mod common;

use std::process::Command;

use chrono::NaiveDateTime;
use common::TestDb;
use overdue_dialer::billing::demo_data::{self, Spec};
use serde_json::Value;

fn dialer(db: &TestDb) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_overdue-dialer"));
    let opts = &db.opts;
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("OVERDUE_MYSQL__HOST", opts.ip_or_hostname())
        .env("OVERDUE_MYSQL__PORT", opts.tcp_port().to_string())
        .env("OVERDUE_MYSQL__USER", opts.user().unwrap_or("root"))
        .env("OVERDUE_MYSQL__PASSWORD", opts.pass().unwrap_or(""))
        .env("OVERDUE_MYSQL__DATABASE", &db.name);
    cmd
}

async fn demo_db() -> (TestDb, demo_data::Data) {
    let anchor = NaiveDateTime::parse_from_str("2026-03-14 10:00", "%Y-%m-%d %H:%M").unwrap();
    let data = demo_data::generate(&Spec {
        clients: 300,
        seed: 99,
        anchor,
        clean: false,
        invoices_max: 4,
    });
    (TestDb::with_data(&data).await, data)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn json_lists_every_flagged_client_once() {
    let (db, data) = demo_db().await;
    let out = run(dialer(&db).args(["preview", "--at", "2026-03-14 10:00", "--json"]));
    let objects: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let flagged = data.clients.iter().filter(|c| c.outbound_call).count();
    assert_eq!(objects.len(), flagged);
    for o in &objects {
        let id = o["id"].as_i64().unwrap();
        let client = data.clients.iter().find(|c| c.id == id).unwrap();
        match o["decision"].as_str().unwrap() {
            "call" => {
                assert!(o["reason"].is_null());
                let phone = o["phone"].as_str().unwrap();
                assert!(phone.starts_with("+573") && phone.len() == 13, "{phone}");
            }
            "skip" => {
                let reason = o["reason"].as_str().unwrap();
                if reason == "bad_corte" {
                    assert!(!matches!(client.corte, Some(1..=31)), "{o}");
                }
                if reason == "already_sent" {
                    assert!(client.is_sent);
                }
            }
            other => panic!("unknown decision {other}"),
        }
    }
    assert!(objects.iter().any(|o| o["decision"] == "call"));
}

#[tokio::test]
async fn table_counts_every_reason_and_outside_the_window_nobody_is_called() {
    let (db, _) = demo_db().await;
    let open = run(dialer(&db).args(["preview", "--at", "2026-03-14 10:00"]));
    assert!(open.contains("calling window open"), "{open}");
    assert!(open.contains("will call"));
    for reason in [
        "already sent",
        "no open invoice",
        "bad corte",
        "before the cutoff window",
        "invalid phone",
        "max attempts",
    ] {
        assert!(open.contains(reason), "no {reason:?} in\n{open}");
    }
    let summary = open.lines().find(|l| l.contains(" flagged: ")).unwrap();
    assert!(summary.contains("will be called"), "{summary}");

    // Sunday: every client that would be called is skipped for the window.
    let sunday = run(dialer(&db).args(["preview", "--at", "2026-03-15 10:00", "--json"]));
    assert!(!sunday.contains("\"decision\":\"call\""));
    assert!(sunday.contains("outside_calling_window"));
}

#[tokio::test]
async fn host_time_zone_changes_nothing() {
    let (db, _) = demo_db().await;
    let at = ["preview", "--at", "2026-03-14 14:59", "--json"];
    let bogota = run(dialer(&db).env("TZ", "America/Bogota").args(at));
    let tokyo = run(dialer(&db).env("TZ", "Asia/Tokyo").args(at));
    assert_eq!(bogota, tokyo);
}

#[tokio::test]
async fn unreachable_mysql_is_a_clear_error() {
    let db = TestDb::empty().await;
    let out = dialer(&db)
        .env("OVERDUE_MYSQL__PORT", "1")
        .args(["preview"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read clients from MySQL at"), "{err}");
}

#[tokio::test]
async fn bad_config_names_the_key() {
    let db = TestDb::empty().await;
    let out = dialer(&db)
        .env("OVERDUE_CAMPAIGN__MAX_ATTEMPTS", "many")
        .args(["preview"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.to_lowercase().contains("campaign.max_attempts"),
        "{err}"
    );
    assert!(
        err.contains("OVERDUE_"),
        "says where the bad value came from: {err}"
    );
}

#[test]
fn schema_print_needs_no_database() {
    let out = Command::new(env!("CARGO_BIN_EXE_overdue-dialer"))
        .args(["schema", "print"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ddl = String::from_utf8_lossy(&out.stdout);
    assert!(ddl.contains("CREATE TABLE IF NOT EXISTS overdue_call_log"));
    assert!(ddl.contains("ADD COLUMN outbound_call_attempts"));
}

#[tokio::test]
async fn schema_apply_from_the_command_line() {
    let db = TestDb::empty().await;
    let mut conn = db.conn().await;
    use mysql_async::prelude::Queryable;
    conn.query_drop("CREATE TABLE afiliados (id INT PRIMARY KEY, telefono VARCHAR(40), corte INT)")
        .await
        .unwrap();
    conn.query_drop(
        "CREATE TABLE factura (`id-afiliado` INT, saldo DECIMAL(10,2), cerrado TINYINT)",
    )
    .await
    .unwrap();
    let first = run(dialer(&db).args(["schema", "apply"]));
    assert!(
        first.contains("CREATE TABLE IF NOT EXISTS overdue_call_log"),
        "{first}"
    );
    let second = run(dialer(&db).args(["schema", "apply"]));
    assert!(second.contains("nothing to do"), "{second}");
}

#[tokio::test]
async fn report_counts_outcomes_per_day_and_trunk() {
    let db = TestDb::empty().await;
    let mut conn = db.conn().await;
    use mysql_async::prelude::Queryable;
    conn.query_drop("CREATE TABLE afiliados (id INT PRIMARY KEY, telefono VARCHAR(40), corte INT)")
        .await
        .unwrap();
    conn.query_drop(
        "CREATE TABLE factura (`id-afiliado` INT, saldo DECIMAL(10,2), cerrado TINYINT)",
    )
    .await
    .unwrap();
    overdue_dialer::billing::schema::apply(&mut conn)
        .await
        .unwrap();
    // Today in Bogotá, whatever the host's zone.
    let today = overdue_dialer::clock::local_now(chrono_tz::America::Bogota).date();
    let at = today.and_hms_opt(0, 0, 1).unwrap();
    for (client, trunk, outcome) in [
        (1, Some("t1"), "completed"),
        (2, Some("t1"), "completed"),
        (3, Some("t2"), "busy"),
        (4, None, "invalid_number"),
    ] {
        conn.exec_drop(
            "INSERT INTO overdue_call_log (client_id, attempt_no, claimed_at, claimed_by, trunk, outcome, ended_at) VALUES (?, 1, ?, 'h', ?, ?, ?)",
            (client, at, trunk, outcome, at),
        )
        .await
        .unwrap();
    }
    for (how, channel) in [("agent", "a"), ("fallback_no_key", "b"), ("agent", "c")] {
        conn.exec_drop(
            "INSERT INTO overdue_inbound_log (started_at, ended_at, how, channel_id) VALUES (?, ?, ?, ?)",
            (at, at, how, channel),
        )
        .await
        .unwrap();
    }
    conn.exec_drop(
        "INSERT INTO overdue_payment_promise (client_id, promised_date, created_at) VALUES (1, ?, ?)",
        (today, at),
    )
    .await
    .unwrap();
    conn.exec_drop(
        "INSERT INTO overdue_opt_out (client_id, phone_e164, opted_out_at) VALUES (4, '+573001234567', ?)",
        (at,),
    )
    .await
    .unwrap();
    let out = run(dialer(&db).args(["report", "--days", "1"]));
    let inbound_line = out
        .lines()
        .find(|l| l.starts_with(&today.to_string()) && l.contains("calls"))
        .unwrap_or("");
    assert!(
        inbound_line.contains("calls     3")
            && inbound_line.contains("promises    1")
            && inbound_line.contains("opt-outs    1")
            && inbound_line.contains("agent 2")
            && inbound_line.contains("fallback_no_key 1"),
        "{out}"
    );
    let t1 = out.lines().find(|l| l.contains(" t1 ")).unwrap();
    assert!(t1.split_whitespace().rev().nth(1) == Some("2"), "{out}");
    let all = out.lines().find(|l| l.starts_with("all")).unwrap();
    assert!(all.split_whitespace().rev().nth(1) == Some("4"), "{out}");

    // CSV for a spreadsheet: parses, and its outcome rows sum to the call log.
    let csv = run(dialer(&db).args([
        "report",
        "--format",
        "csv",
        "--from",
        &today.to_string(),
        "--to",
        &today.to_string(),
    ]));
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    let sum = |section: &str| -> u64 {
        rows.iter()
            .filter(|r| &r[0] == section)
            .map(|r| r[4].parse::<u64>().unwrap())
            .sum()
    };
    let logged: Option<u64> = conn
        .query_first("SELECT COUNT(*) FROM overdue_call_log WHERE outcome IS NOT NULL")
        .await
        .unwrap();
    assert_eq!(Some(sum("outcome")), logged, "{csv}");
    assert_eq!(sum("inbound"), 3);
    assert_eq!(sum("promises"), 1);
    assert_eq!(sum("opt_outs"), 1);

    let json = run(dialer(&db).args(["report", "--format", "json", "--days", "1"]));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["days"][0]["attempts"], 4, "{json}");
    assert_eq!(v["days"][0]["inbound"]["promises"], 1, "{json}");
}
