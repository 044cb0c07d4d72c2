//! The billing layer against a real MariaDB: schema, selection, claims and
//! outcomes (README "Schema", "Who is called"). Each test gets its own database.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Duration, NaiveDateTime};
use common::TestDb;
use mysql_async::prelude::*;
use overdue_dialer::billing::demo_data::{self, Spec};
use overdue_dialer::billing::{schema, Billing, CallRecord, Seen};
use overdue_dialer::config::RetryMinutes;
use overdue_dialer::rules::outcome::Outcome;
use overdue_dialer::rules::selection::{check_client, Policy, SkipReason};

fn at(s: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M"))
        .unwrap()
}

fn policy() -> Policy {
    Policy {
        max_attempts: 3,
        min_days_between_contacts: 7,
        retry: RetryMinutes::default(),
    }
}

const ANCHOR: &str = "2026-03-14 10:00";

/// A placed call that found the line busy, ended 5 s after `now`.
fn busy(claim: &overdue_dialer::billing::Claim, now: NaiveDateTime) -> CallRecord {
    CallRecord {
        outcome: Outcome::Busy,
        dialled: true,
        hangup_cause: Some(17),
        trunk: Some("t1".into()),
        channel_id: Some(claim.channel_id()),
        phone_e164: Some("+573001234567".into()),
        answered_at: None,
        ended_at: now + Duration::seconds(5),
        ring_seconds: Some(5),
        billable_seconds: Some(0),
        detail: None,
        delivered: false,
        heard_seconds: None,
    }
}

async fn snapshot(conn: &mut mysql_async::Conn) -> Vec<(String, String, String, String)> {
    conn.query(
        "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, COALESCE(COLUMN_DEFAULT, 'NULL') FROM information_schema.COLUMNS
         WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, ORDINAL_POSITION",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn schema_apply_adds_what_is_missing_and_is_idempotent() {
    let db = TestDb::empty().await;
    let mut conn = db.conn().await;
    // A billing database as the seed script found it: no outbound columns yet.
    conn.query_drop("CREATE TABLE afiliados (id INT PRIMARY KEY, telefono VARCHAR(40), corte INT, plan VARCHAR(20))").await.unwrap();
    conn.query_drop("CREATE TABLE factura (id INT PRIMARY KEY, `id-afiliado` INT, saldo DECIMAL(10,2), cerrado TINYINT)").await.unwrap();
    conn.query_drop("INSERT INTO afiliados VALUES (1, '3001234567', 15, 'hogar')")
        .await
        .unwrap();
    let factura_before: Vec<(String, String)> = conn
        .query("SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'factura' ORDER BY ORDINAL_POSITION")
        .await
        .unwrap();

    let first = schema::apply(&mut conn).await.unwrap();
    assert_eq!(first.len(), 8, "{first:#?}");
    for table in [
        "overdue_call_log",
        "overdue_inbound_log",
        "overdue_payment_promise",
        "overdue_opt_out",
    ] {
        let n: Option<u64> = conn
            .exec_first(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
                (table,),
            )
            .await
            .unwrap();
        assert_eq!(n, Some(1), "{table} created");
    }
    let after_first = snapshot(&mut conn).await;
    let second = schema::apply(&mut conn).await.unwrap();
    assert!(second.is_empty(), "second apply ran {second:#?}");
    assert_eq!(snapshot(&mut conn).await, after_first);

    let factura_after: Vec<(String, String)> = conn
        .query("SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'factura' ORDER BY ORDINAL_POSITION")
        .await
        .unwrap();
    assert_eq!(factura_before, factura_after, "factura must not be touched");
    let row: Option<(i64, String, i64, i64, i64)> = conn
        .query_first("SELECT id, plan, outbound_call, outbound_call_is_sent, outbound_call_attempts FROM afiliados")
        .await
        .unwrap();
    assert_eq!(
        row,
        Some((1, "hogar".into(), 0, 0, 0)),
        "existing rows keep their data"
    );
    assert!(schema::missing_indexes(&mut conn).await.unwrap().len() == 2);
}

/// A call log made by the previous release gains `delivered` and
/// `heard_seconds`; its old reminders stay delivered, so the contact limit
/// still sees them. The daemon does not start until the migration ran.
#[tokio::test]
async fn schema_apply_migrates_an_older_call_log() {
    let db = TestDb::empty().await;
    let mut conn = db.conn().await;
    conn.query_drop("CREATE TABLE afiliados (id INT PRIMARY KEY, telefono VARCHAR(40), corte INT)")
        .await
        .unwrap();
    conn.query_drop("CREATE TABLE factura (id INT PRIMARY KEY, `id-afiliado` INT, saldo DECIMAL(10,2), cerrado TINYINT)").await.unwrap();
    schema::apply(&mut conn).await.unwrap();
    conn.query_drop(
        "ALTER TABLE overdue_call_log DROP COLUMN delivered, DROP COLUMN heard_seconds",
    )
    .await
    .unwrap();
    conn.query_drop(
        "INSERT INTO overdue_call_log (client_id, attempt_no, claimed_at, claimed_by, outcome, ended_at) VALUES
         (1, 1, '2026-11-02 10:00:00', 'old', 'busy', '2026-11-02 10:01:00'),
         (1, 2, '2026-11-03 10:00:00', 'old', 'hung_up_early', '2026-11-03 10:01:00'),
         (2, 1, '2026-11-03 10:00:00', 'old', 'completed', '2026-11-03 10:01:00'),
         (3, 1, '2026-11-03 10:00:00', 'old', NULL, NULL)",
    )
    .await
    .unwrap();
    let plan = schema::plan(&mut conn).await.unwrap();
    assert_eq!(plan.len(), 3, "{plan:#?}");
    schema::apply(&mut conn).await.unwrap();
    let got: Vec<(i64, u32, Option<i64>)> = conn
        .query("SELECT client_id, attempt_no, delivered FROM overdue_call_log ORDER BY client_id, attempt_no")
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            (1, 1, Some(0)),
            (1, 2, Some(1)),
            (2, 1, Some(1)),
            (3, 1, None)
        ]
    );
    assert!(schema::apply(&mut conn).await.unwrap().is_empty());
}

#[tokio::test]
async fn schema_refuses_without_billing_tables() {
    let db = TestDb::empty().await;
    let mut conn = db.conn().await;
    let e = schema::apply(&mut conn).await.unwrap_err().to_string();
    assert!(e.contains("`afiliados` is missing"), "{e}");
    conn.query_drop("CREATE TABLE afiliados (id INT PRIMARY KEY, telefono VARCHAR(40), corte INT)")
        .await
        .unwrap();
    let e = schema::apply(&mut conn).await.unwrap_err().to_string();
    assert!(e.contains("`factura` is missing"), "{e}");
    conn.query_drop("CREATE TABLE factura (`id-afiliado` INT, saldo DECIMAL(10,2))")
        .await
        .unwrap();
    let e = schema::apply(&mut conn).await.unwrap_err().to_string();
    assert!(e.contains("`factura`.`cerrado`"), "{e}");
    let tables: Vec<String> = conn.query("SHOW TABLES").await.unwrap();
    assert_eq!(
        tables,
        ["afiliados", "factura"],
        "a refused apply creates nothing"
    );
}

/// The instants the SQL and the rules are compared at: month ends, 29 Feb
/// 2024, holidays, window edges, and a cluster just after the history's
/// anchor where retry delays and the contact limit expire.
fn instants() -> Vec<NaiveDateTime> {
    let mut v: Vec<NaiveDateTime> = [
        "2024-01-31 10:00",
        "2024-02-01 07:00",
        "2024-02-27 12:00",
        "2024-02-28 12:00",
        "2024-02-29 12:00",
        "2024-03-01 08:00",
        "2024-04-29 09:00",
        "2024-04-30 18:59:59",
        "2024-06-30 10:00",
        "2024-12-31 10:00",
        "2025-01-01 10:00",
        "2025-02-26 10:00",
        "2025-02-27 10:00",
        "2025-02-28 10:00",
        "2025-03-24 10:00",
        "2025-06-30 10:00",
        "2025-09-30 06:59:59",
        "2025-11-30 10:00",
        "2026-01-12 10:00",
        "2026-02-27 07:00:00",
        "2026-02-28 19:00:00",
        "2026-03-01 00:00",
        "2026-03-02 10:00",
        "2026-03-13 23:59:59",
        "2026-03-14 08:00",
        "2026-03-14 14:59:59",
        "2026-03-14 15:00",
        "2026-03-15 10:00",
        "2026-03-16 10:00",
        "2026-03-23 10:00",
        "2026-03-31 10:00",
        "2026-04-02 10:00",
        "2026-04-29 10:00",
        "2026-04-30 10:00",
        "2026-11-16 10:00",
        "2026-12-31 18:00",
        "2027-02-28 10:00",
        "2028-02-29 10:00",
        "2026-11-02 07:00",
    ]
    .iter()
    .map(|s| at(s))
    .collect();
    let anchor = at(ANCHOR);
    for minutes in [
        0, 1, 29, 30, 31, 59, 60, 61, 119, 120, 121, 180, 600, 1440, 2880, 5760, 8640, 10080,
        12000, 14400, 20160,
    ] {
        v.push(anchor + Duration::minutes(minutes));
    }
    v.push(anchor - Duration::days(3));
    v.push(anchor - Duration::minutes(90));
    v
}

#[tokio::test]
async fn eligibility_sql_agrees_with_the_rules() {
    let data = demo_data::generate(&Spec {
        clients: 800,
        seed: 2026,
        anchor: at(ANCHOR),
        clean: false,
        invoices_max: 4,
    });
    let db = TestDb::with_data(&data).await;
    let billing = Billing::new(db.opts.clone());
    let facts = billing.flagged_clients().await.unwrap();
    assert!(facts.len() > 600);

    let policies = [
        policy(),
        Policy {
            max_attempts: 2,
            min_days_between_contacts: 0,
            retry: RetryMinutes {
                busy: 0,
                ..RetryMinutes::default()
            },
        },
    ];
    let mut seen: BTreeSet<Option<SkipReason>> = BTreeSet::new();
    let mut compared = 0;
    let mut paged_checks = 0;
    let mut instants = instants();
    // Moments between the retry delays of real last attempts (busy 30 min <
    // 45 < no_answer 60 < 90 < 120), so a mix-up of delays shows.
    let mut last_ended: BTreeMap<i64, NaiveDateTime> = BTreeMap::new();
    for h in data.history.iter().filter(|h| h.outcome.is_some()) {
        last_ended.insert(h.client_id, h.ended_at);
    }
    for ended in last_ended.values().take(12) {
        instants.push(*ended + Duration::minutes(45));
        instants.push(*ended + Duration::minutes(90));
        // Past every retry delay but the same day: an early hang-up still waits.
        instants.push(*ended + Duration::minutes(150));
    }
    assert!(instants.len() >= 60);
    for p in &policies {
        for now in &instants {
            let by_sql: BTreeSet<i64> = billing
                .eligible_clients(*now, p)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect();
            if paged_checks < 24 {
                // A pass reads the same clients in small pages: in id order,
                // none twice, none missed at a page boundary.
                paged_checks += 1;
                let mut paged = Vec::new();
                let mut after = 0;
                loop {
                    let (page, next) = billing.eligible_page(*now, p, after, 17).await.unwrap();
                    assert!(page.len() <= 17);
                    paged.extend(page.into_iter().map(|c| c.id));
                    match next {
                        Some(id) => after = id,
                        None => break,
                    }
                }
                assert!(
                    paged.windows(2).all(|w| w[0] < w[1]),
                    "pages out of order at {now}"
                );
                assert_eq!(
                    paged.into_iter().collect::<BTreeSet<_>>(),
                    by_sql,
                    "pages at {now}"
                );
            }
            let mut by_rules = BTreeSet::new();
            for c in &facts {
                let verdict = check_client(c, *now, p);
                seen.insert(verdict.err());
                if verdict.is_ok() {
                    by_rules.insert(c.id);
                }
            }
            let only_sql: Vec<_> = by_sql.difference(&by_rules).collect();
            let only_rules: Vec<_> = by_rules.difference(&by_sql).collect();
            assert!(
                only_sql.is_empty() && only_rules.is_empty(),
                "at {now}: only SQL {only_sql:?}, only rules {only_rules:?}"
            );
            compared += facts.len();
        }
    }
    // The data must exercise every rule, or the comparison proves little.
    for reason in [
        SkipReason::AlreadySent,
        SkipReason::NoOpenInvoice,
        SkipReason::BadCorte,
        SkipReason::BeforeCutoffWindow,
        SkipReason::CallInProgress,
        SkipReason::MaxAttempts,
        SkipReason::InvalidPhone,
        SkipReason::RetryNotDue,
        SkipReason::ContactedRecently,
    ] {
        assert!(
            seen.contains(&Some(reason)),
            "no client ever skipped for {reason}"
        );
    }
    assert!(seen.contains(&None));
    assert!(compared > 60 * 600);
    billing.close().await.unwrap();
}

#[tokio::test]
async fn eight_claimers_race_for_500_attempts() {
    let data = demo_data::generate(&Spec {
        clients: 500,
        seed: 1,
        anchor: at(ANCHOR),
        clean: true,
        invoices_max: 4,
    });
    let db = TestDb::with_data(&data).await;
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let billing = Billing::new(db.opts.clone());
        tasks.push(tokio::spawn(async move {
            // Each worker walks the clients in its own order.
            let mut ids: Vec<i64> = (1..=500).collect();
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            ids.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(worker));
            let mut won = Vec::new();
            for id in ids {
                if let Some(claim) = billing
                    .claim(
                        id,
                        Seen::default(),
                        Some("3001234567"),
                        &format!("worker-{worker}"),
                        at(ANCHOR),
                    )
                    .await
                    .unwrap()
                {
                    won.push((claim.client_id, claim.attempt_no));
                }
            }
            billing.close().await.unwrap();
            won
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!(all.len(), 500, "every attempt claimed exactly once");
    assert_eq!(unique.len(), 500);
    assert!(unique.iter().all(|&(_, n)| n == 1));
    let mut conn = db.conn().await;
    let rows: Option<(i64, i64)> = conn
        .query_first("SELECT COUNT(*), COUNT(DISTINCT client_id) FROM overdue_call_log")
        .await
        .unwrap();
    assert_eq!(rows, Some((500, 500)));
}

#[tokio::test]
async fn outcomes_update_the_client_once() {
    let data = demo_data::generate(&Spec {
        clients: 3,
        seed: 3,
        anchor: at(ANCHOR),
        clean: true,
        invoices_max: 4,
    });
    let db = TestDb::with_data(&data).await;
    let billing = Billing::new(db.opts.clone());
    let now = at("2026-03-31 10:00:00");

    // Client 1: busy, then not eligible for 30 minutes, then claimed as attempt 2.
    let claim = billing
        .claim(1, Seen::default(), Some("x"), "host-a", now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.channel_id(), "overdue-1-1");
    assert_eq!(
        billing
            .claim(1, Seen::default(), Some("x"), "host-b", now)
            .await
            .unwrap(),
        None,
        "in flight"
    );
    let ids = |v: Vec<overdue_dialer::rules::selection::ClientFacts>| {
        v.into_iter().map(|c| c.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(billing.eligible_clients(now, &policy()).await.unwrap()),
        [2, 3],
        "a client in flight is not selected"
    );
    let busy = busy(&claim, now);
    assert!(billing.record_outcome(&claim, &busy).await.unwrap());
    assert!(
        !billing.record_outcome(&claim, &busy).await.unwrap(),
        "second write is a no-op"
    );
    let mut conn = db.conn().await;
    let state = |id: i64| {
        format!("SELECT outbound_call_attempts, outbound_call_is_sent, outbound_call_completed_at IS NOT NULL FROM afiliados WHERE id = {id}")
    };
    let s: Option<(i64, i64, i64)> = conn.query_first(state(1)).await.unwrap();
    assert_eq!(s, Some((1, 0, 0)));
    assert_eq!(
        ids(billing
            .eligible_clients(now + Duration::minutes(30), &policy())
            .await
            .unwrap()),
        [2, 3]
    );
    assert_eq!(
        ids(billing
            .eligible_clients(now + Duration::minutes(31), &policy())
            .await
            .unwrap()),
        [1, 2, 3]
    );
    assert_eq!(
        billing
            .claim(
                1,
                Seen {
                    attempts: 0,
                    last_attempt_no: 1
                },
                None,
                "host-a",
                now
            )
            .await
            .unwrap(),
        None,
        "stale attempt count"
    );
    assert_eq!(
        billing
            .claim(
                1,
                Seen {
                    attempts: 1,
                    last_attempt_no: 0
                },
                None,
                "host-a",
                now
            )
            .await
            .unwrap(),
        None,
        "an attempt written since the client was read"
    );
    let second = billing
        .claim(
            1,
            Seen {
                attempts: 1,
                last_attempt_no: 1,
            },
            Some("x"),
            "host-a",
            now + Duration::minutes(31),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.attempt_no, 2);

    // Client 2: completed sets the flags and the completion time.
    let claim2 = billing
        .claim(2, Seen::default(), Some("y"), "host-a", now)
        .await
        .unwrap()
        .unwrap();
    let done = CallRecord {
        outcome: Outcome::Completed,
        answered_at: Some(now + Duration::seconds(8)),
        billable_seconds: Some(5),
        hangup_cause: Some(16),
        delivered: true,
        ..busy.clone()
    };
    assert!(billing.record_outcome(&claim2, &done).await.unwrap());
    let s: Option<(i64, i64, i64)> = conn.query_first(state(2)).await.unwrap();
    assert_eq!(s, Some((1, 1, 1)));
    let row: Option<(String, i64, String, Option<NaiveDateTime>, NaiveDateTime)> = conn
        .query_first("SELECT outcome, hangup_cause, trunk, answered_at, ended_at FROM overdue_call_log WHERE client_id = 2")
        .await
        .unwrap();
    assert_eq!(
        row,
        Some((
            "completed".into(),
            16,
            "t1".into(),
            Some(now + Duration::seconds(8)),
            now + Duration::seconds(5)
        ))
    );
    // Re-flagged by staff the next day: still within the contact limit.
    conn.query_drop("UPDATE afiliados SET outbound_call_is_sent = 0 WHERE id = 2")
        .await
        .unwrap();
    let facts = billing.flagged_clients().await.unwrap();
    let c2 = facts.iter().find(|c| c.id == 2).unwrap();
    assert_eq!(
        check_client(c2, now + Duration::days(1), &policy()),
        Err(SkipReason::ContactedRecently)
    );
    assert_eq!(check_client(c2, now + Duration::days(7), &policy()), Ok(()));
    billing.close().await.unwrap();
}

#[tokio::test]
async fn odd_column_values_are_read_not_fatal() {
    let db = TestDb::empty().await;
    let mut conn = db.conn().await;
    // An installation where corte is text and flags are nullable.
    conn.query_drop("CREATE TABLE afiliados (id INT PRIMARY KEY, telefono VARCHAR(40) NULL, corte VARCHAR(10) NULL, outbound_call INT NULL, outbound_call_is_sent INT NULL, outbound_call_attempts INT NULL, outbound_call_completed_at DATETIME NULL)").await.unwrap();
    conn.query_drop(
        "CREATE TABLE factura (`id-afiliado` INT, saldo DECIMAL(10,2), cerrado TINYINT)",
    )
    .await
    .unwrap();
    schema::apply(&mut conn).await.unwrap();
    conn.query_drop("INSERT INTO afiliados VALUES (1, '3001234567', '15', 1, NULL, NULL, NULL), (2, NULL, 'quince', 1, 0, 0, NULL), (3, '3001234567', ' 31 ', 1, 0, 0, NULL)").await.unwrap();
    conn.query_drop("INSERT INTO factura VALUES (1, 100, 0), (2, 100, 0), (3, 100, 0)")
        .await
        .unwrap();
    let billing = Billing::new(db.opts.clone());
    let facts: BTreeMap<i64, _> = billing
        .flagged_clients()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    assert_eq!(facts[&1].corte, Some(15));
    assert_eq!(facts[&1].attempts, 0);
    assert_eq!(facts[&2].corte, None, "text corte reads as bad data");
    assert_eq!(facts[&2].telefono, None);
    assert_eq!(facts[&3].corte, Some(31));
    let now = at("2026-03-31 10:00");
    assert_eq!(
        check_client(&facts[&2], now, &policy()),
        Err(SkipReason::BadCorte)
    );
    billing.close().await.unwrap();
}

/// The daemon's pool, as `MysqlConfig` builds it, for a test database.
fn daemon_pool(db: &TestDb, max_connections: usize) -> Billing {
    let config = overdue_dialer::config::MysqlConfig {
        host: db.opts.ip_or_hostname().to_string(),
        port: db.opts.tcp_port(),
        user: db.opts.user().unwrap_or("root").to_owned(),
        password: overdue_dialer::config::Secret::new(db.opts.pass().unwrap_or("")),
        database: db.name.clone(),
        max_connections,
    };
    Billing::new(config.opts())
}

#[tokio::test]
async fn the_pool_keeps_its_connections_and_their_prepared_statements() {
    // Under load every call checks connections out and back in. A pool that
    // closes what it gets back, or resets it, makes each query a new login or
    // a new prepare: that was most of the daemon's CPU per call.
    let db = TestDb::empty().await;
    let billing = daemon_pool(&db, 4);
    let ids = || async {
        let conns: Vec<_> = futures_util::future::try_join_all((0..4).map(|_| billing.conn()))
            .await
            .unwrap();
        let mut ids = BTreeSet::new();
        for mut c in conns {
            let id: Option<u64> = c.query_first("SELECT CONNECTION_ID()").await.unwrap();
            ids.insert(id.unwrap());
        }
        ids
    };
    let first = ids().await;
    assert_eq!(first.len(), 4);
    // The pool takes connections back in the background.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        ids().await,
        first,
        "connections were closed and opened anew"
    );
    billing.close().await.unwrap();

    let billing = daemon_pool(&db, 1);
    for _ in 0..3 {
        let mut c = billing.conn().await.unwrap();
        let two: Option<i64> = c.exec_first("SELECT ? + 1", (1,)).await.unwrap();
        assert_eq!(two, Some(2));
    }
    let mut c = billing.conn().await.unwrap();
    let prepared: Option<(String, u64)> = c
        .query_first("SHOW SESSION STATUS LIKE 'Com_stmt_prepare'")
        .await
        .unwrap();
    assert_eq!(
        prepared.map(|p| p.1),
        Some(1),
        "the statement was prepared again on each checkout"
    );
    drop(c);
    billing.close().await.unwrap();
}

/// A short listen (`hung_up_early`, not delivered) waits for the next day
/// in SQL as in the rules: not 2½ hours later the same day, when every
/// per-outcome retry delay has long passed.
#[tokio::test]
async fn an_early_hang_up_waits_for_the_next_day_in_sql_too() {
    let mut data = demo_data::Data::default();
    common::due(&mut data, 1, "3001234567", "50000.00");
    data.clients[0].attempts = 1;
    data.history.push(demo_data::History {
        client_id: 1,
        attempt_no: 1,
        outcome: Some(Outcome::HungUpEarly),
        ended_at: at("2026-03-12 09:00"),
        phone_raw: Some("3001234567".into()),
    });
    let db = TestDb::with_data(&data).await;
    let mut conn = db.conn().await;
    conn.query_drop("UPDATE overdue_call_log SET delivered = 0, heard_seconds = 1")
        .await
        .unwrap();
    let billing = Billing::new(db.opts.clone());
    let facts = billing.flagged_clients().await.unwrap();
    for (now, due) in [("2026-03-12 11:30", false), ("2026-03-13 08:00", true)] {
        let by_sql = !billing
            .eligible_clients(at(now), &policy())
            .await
            .unwrap()
            .is_empty();
        let by_rules = check_client(&facts[0], at(now), &policy()).is_ok();
        assert_eq!((by_sql, by_rules), (due, due), "at {now}");
    }
    billing.close().await.unwrap();
}

/// The voice agent's lookup: every spelling of the caller's mobile among
/// the numbers of `telefono` is found; only an exact mobile matches; the
/// account holds open invoices only, and a `corte` typed as text reads as
/// unknown rather than failing.
#[tokio::test]
async fn the_caller_is_found_by_every_spelling_of_the_number() {
    use overdue_dialer::billing::demo_data::{Client, Data, Invoice};
    use overdue_dialer::rules::inbound::{match_caller, CallerMatch};
    use overdue_dialer::rules::phone::normalize;
    let client = |id: i64, tel: &str| Client {
        id,
        nombre: format!("c{id}"),
        telefono: Some(tel.to_owned()),
        corte: Some(15),
        outbound_call: false,
        is_sent: false,
        attempts: 0,
        completed_at: None,
    };
    let inv = |client_id: i64, saldo: &str, cerrado: bool| Invoice {
        client_id,
        saldo: saldo.into(),
        cerrado,
    };
    let data = Data {
        clients: vec![
            client(1, "604 444 1234 / (300) 123-4567"),
            client(2, "+57 310 000 0001"),
            client(3, "30012345678"),
            client(4, "3100000001"),
        ],
        invoices: vec![
            inv(1, "50000.00", false),
            inv(1, "35000.50", false),
            inv(1, "99999.00", true),
        ],
        history: vec![],
        opt_outs: vec![],
    };
    let db = TestDb::with_data(&data).await;
    let billing = Billing::new(db.opts.clone());
    let caller = normalize("3001234567").unwrap();
    let candidates = billing.caller_candidates(&caller).await.unwrap();
    assert!(
        candidates.iter().any(|(id, _)| *id == 3),
        "the LIKE superset"
    );
    assert_eq!(match_caller(&caller, &candidates), CallerMatch::One(1));
    let shared = normalize("3100000001").unwrap();
    let candidates = billing.caller_candidates(&shared).await.unwrap();
    assert_eq!(
        match_caller(&shared, &candidates),
        CallerMatch::Several(vec![2, 4])
    );

    let since = NaiveDateTime::parse_from_str("2026-01-01 00:00:00", "%Y-%m-%d %H:%M:%S").unwrap();
    let a = billing.account(1, since).await.unwrap().unwrap();
    assert_eq!(
        (a.balance_pesos, a.open_invoices, a.corte),
        (85000, 2, Some(15))
    );
    assert!(!a.reminder_delivered);
    let mut conn = db.conn().await;
    conn.query_drop("ALTER TABLE afiliados MODIFY corte VARCHAR(10)")
        .await
        .unwrap();
    conn.query_drop("UPDATE afiliados SET corte = 'quince' WHERE id = 1")
        .await
        .unwrap();
    let a = billing.account(1, since).await.unwrap().unwrap();
    assert_eq!(a.corte, None);
    assert_eq!(billing.account(99, since).await.unwrap(), None);
    conn.disconnect().await.unwrap();
    billing.close().await.unwrap();
}

/// The outcome is written even if the client's row went away while the
/// call was up (staff deleted it): the attempt is never lost, and nothing
/// else is touched.
#[tokio::test]
async fn an_outcome_is_written_when_the_client_row_is_gone() {
    let data = demo_data::generate(&Spec {
        clients: 2,
        seed: 3,
        anchor: at(ANCHOR),
        clean: true,
        invoices_max: 2,
    });
    let db = TestDb::with_data(&data).await;
    let billing = Billing::new(db.opts.clone());
    let now = at("2026-03-31 10:00:00");
    let claim = billing
        .claim(1, Seen::default(), Some("x"), "host-a", now)
        .await
        .unwrap()
        .unwrap();
    let mut conn = db.conn().await;
    conn.query_drop("DELETE FROM afiliados WHERE id = 1")
        .await
        .unwrap();
    let busy = busy(&claim, now);
    assert!(billing.record_outcome(&claim, &busy).await.unwrap());
    assert!(!billing.record_outcome(&claim, &busy).await.unwrap());
    let outcome: Option<String> = conn
        .query_first("SELECT outcome FROM overdue_call_log WHERE client_id = 1 AND attempt_no = 1")
        .await
        .unwrap();
    assert_eq!(outcome.as_deref(), Some("busy"));
    let other: Option<(i64, i64)> = conn
        .query_first("SELECT COALESCE(outbound_call_attempts, 0), COALESCE(outbound_call_is_sent, 0) FROM afiliados WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(other, Some((0, 0)), "another client's counters untouched");
    billing.close().await.unwrap();
}
