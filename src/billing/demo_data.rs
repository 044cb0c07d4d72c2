//! A generator of realistic billing data: clients with several invoices,
//! paid and unpaid, every `corte` and the bad ones, phone numbers as staff
//! really type them (and badly), and a call history. Seeded and
//! deterministic, so tests, the demo and the benchmarks see the same data.
//!
//! Valid numbers end in every digit 0–9, which the simulator maps to callee
//! behaviour (answer, busy, no answer, congestion, unallocated …).

use chrono::{Duration, NaiveDateTime};
use mysql_async::prelude::*;
use mysql_async::{Params, Value};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::BillingError;
use crate::rules::outcome::Outcome;

/// The two billing tables as the billing system has them (only the
/// columns the daemon reads, plus a name), with the four `outbound_call*`
/// columns already present.
pub const BILLING_TABLES_DDL: &[&str] = &[
    "CREATE TABLE afiliados (
      id INT NOT NULL PRIMARY KEY,
      nombre VARCHAR(120) NULL,
      telefono VARCHAR(64) NULL,
      corte INT NULL,
      outbound_call TINYINT(1) NOT NULL DEFAULT 0,
      outbound_call_is_sent TINYINT(1) NOT NULL DEFAULT 0,
      outbound_call_attempts INT NOT NULL DEFAULT 0,
      outbound_call_completed_at DATETIME NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    "CREATE TABLE factura (
      id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
      `id-afiliado` INT NOT NULL,
      saldo DECIMAL(12,2) NOT NULL DEFAULT 0,
      cerrado TINYINT(1) NOT NULL DEFAULT 0,
      KEY ix_factura_afiliado (`id-afiliado`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
];

#[derive(Debug, Clone)]
pub struct Spec {
    pub clients: usize,
    pub seed: u64,
    /// Call history is placed in the ten days before this local time.
    pub anchor: NaiveDateTime,
    /// Leave out history, bad cortes and bad phones: every flagged client
    /// with a debt is callable (benchmarks and load tests).
    pub clean: bool,
    /// Each client has 1 to this many invoices (4 is realistic; benchmarks go higher).
    pub invoices_max: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub id: i64,
    pub nombre: String,
    pub telefono: Option<String>,
    pub corte: Option<i64>,
    pub outbound_call: bool,
    pub is_sent: bool,
    pub attempts: u32,
    pub completed_at: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Invoice {
    pub client_id: i64,
    pub saldo: String,
    pub cerrado: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub client_id: i64,
    pub attempt_no: u32,
    pub outcome: Option<Outcome>,
    pub ended_at: NaiveDateTime,
    pub phone_raw: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Data {
    pub clients: Vec<Client>,
    pub invoices: Vec<Invoice>,
    pub history: Vec<History>,
    /// Clients with a row in `overdue_opt_out`.
    pub opt_outs: Vec<i64>,
}

const FIRST: &[&str] = &[
    "Ana", "Luis", "María", "Carlos", "Diana", "Jorge", "Paola", "Andrés", "Lucía", "Felipe",
    "Sandra", "Óscar",
];
const LAST: &[&str] = &[
    "Gómez",
    "Rodríguez",
    "Martínez",
    "López",
    "Hernández",
    "Díaz",
    "Moreno",
    "Rojas",
    "Vargas",
    "Castro",
];

fn mobile(rng: &mut ChaCha8Rng) -> String {
    // Real operator prefixes 300–324 and 350–351.
    let prefix = *[
        300, 301, 302, 304, 305, 310, 311, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321, 322,
        323, 324, 350, 351,
    ]
    .choose(rng)
    .unwrap_or(&300);
    format!("{prefix}{:07}", rng.gen_range(0..10_000_000))
}

/// The many ways staff write a valid mobile.
fn spell(rng: &mut ChaCha8Rng, n: &str) -> String {
    let (a, b, c) = (&n[..3], &n[3..6], &n[6..]);
    match rng.gen_range(0..10) {
        0 => format!("+57{n}"),
        1 => format!("+57 {a} {b} {c}"),
        2 => format!("57{n}"),
        3 => format!("0057 {a} {b}{c}"),
        4 => format!("{a}-{b}-{c}"),
        5 => format!("({a}) {b} {c}"),
        6 => format!("{a}.{b}.{c}"),
        7 => format!("6012345678 / {n}"),
        _ => n.to_owned(),
    }
}

fn bad_phone(rng: &mut ChaCha8Rng) -> Option<String> {
    let m = mobile(rng);
    match rng.gen_range(0..8) {
        0 => None,
        1 => Some(String::new()),
        2 => Some(format!("60{}", rng.gen_range(10_000_000..99_999_999))),
        3 => Some(format!("{}", rng.gen_range(2_000_000..9_999_999))),
        4 => Some("no tiene".into()),
        5 => Some(format!("{m} {}", mobile(rng))),
        6 => Some(format!("{m} ext 2")),
        _ => Some(m[..9].to_owned()),
    }
}

/// Builds the data in memory; the same spec always gives the same data.
pub fn generate(spec: &Spec) -> Data {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let mut data = Data::default();
    // Every other outcome the log can hold, so the selection SQL meets
    // each of its branches (retry delays, never again after a key).
    let others = [
        Outcome::Busy,
        Outcome::NoAnswer,
        Outcome::Congestion,
        Outcome::Failed,
        Outcome::Timeout,
        Outcome::Rejected,
        Outcome::Aborted,
        Outcome::Voicemail,
        Outcome::Transferred,
        Outcome::OptedOut,
    ];
    for i in 0..spec.clients {
        let id = i as i64 + 1;
        let nombre = format!(
            "{} {}",
            FIRST.choose(&mut rng).unwrap_or(&"Ana"),
            LAST.choose(&mut rng).unwrap_or(&"Gómez")
        );
        // Every corte 1..=31 cycles through the ids, so even small data sets
        // cover all of them; ~8 % carry the bad values seen in real data.
        let corte = if spec.clean {
            Some(1) // due every day of the month
        } else if rng.gen_bool(0.08) {
            *[None, Some(0), Some(40), Some(-1), Some(32)]
                .choose(&mut rng)
                .unwrap_or(&None)
        } else {
            Some((i % 31) as i64 + 1)
        };
        let valid = mobile(&mut rng);
        let telefono = if !spec.clean && rng.gen_bool(0.1) {
            bad_phone(&mut rng)
        } else {
            Some(spell(&mut rng, &valid))
        };
        let outbound_call = spec.clean || rng.gen_bool(0.9);
        let mut client = Client {
            id,
            nombre,
            telefono,
            corte,
            outbound_call,
            is_sent: false,
            attempts: 0,
            completed_at: None,
        };

        // 1–4 invoices; most flagged clients owe something.
        let owes = spec.clean || rng.gen_bool(0.8);
        let n_invoices = rng.gen_range(1..=spec.invoices_max.max(1));
        for k in 0..n_invoices {
            let open = owes && (k == 0 || rng.gen_bool(0.5));
            let saldo = if open {
                rng.gen_range(20..400) * 500
            } else if rng.gen_bool(0.3) {
                0
            } else {
                rng.gen_range(20..400) * 500
            };
            data.invoices.push(Invoice {
                client_id: id,
                saldo: format!("{saldo}.00"),
                cerrado: !open && saldo > 0,
            });
        }

        // A few clients asked not to be called (no random draw: the rest
        // of the generated data stays as it was).
        if !spec.clean && id % 37 == 5 {
            data.opt_outs.push(id);
        }
        if !spec.clean && rng.gen_bool(0.35) {
            // Earlier attempts, oldest first, within ten days of the anchor.
            let n = rng.gen_range(1..=3u32);
            let mut when = spec.anchor - Duration::minutes(rng.gen_range(60..=14_400));
            for attempt_no in 1..=n {
                let last = attempt_no == n;
                let outcome = match rng.gen_range(0..20) {
                    0 if last => None, // still in flight
                    1 | 2 => Some(Outcome::Completed),
                    3 => Some(Outcome::HungUpEarly),
                    4 => Some(Outcome::InvalidNumber),
                    _ => Some(*others.choose(&mut rng).unwrap_or(&Outcome::Busy)),
                };
                // Staff fixed some numbers after an invalid_number.
                let phone_raw = if outcome == Some(Outcome::InvalidNumber) && rng.gen_bool(0.3) {
                    Some("601 555 0000".to_owned())
                } else {
                    client.telefono.clone()
                };
                data.history.push(History {
                    client_id: id,
                    attempt_no,
                    outcome,
                    ended_at: when,
                    phone_raw,
                });
                if matches!(
                    outcome,
                    Some(
                        Outcome::Completed
                            | Outcome::HungUpEarly
                            | Outcome::Transferred
                            | Outcome::OptedOut
                    )
                ) {
                    // Most stay sent; some were re-flagged by staff since.
                    client.is_sent = rng.gen_bool(0.6);
                    client.completed_at = Some(when);
                }
                when += Duration::minutes(rng.gen_range(5..=2_000));
                if when >= spec.anchor {
                    when = spec.anchor - Duration::minutes(1);
                }
            }
            // Usually the counter matches the log; sometimes staff reset it.
            client.attempts = if rng.gen_bool(0.9) { n } else { 0 };
        } else if !spec.clean && rng.gen_bool(0.05) {
            client.is_sent = true;
            client.completed_at = Some(spec.anchor - Duration::days(20));
        }
        data.clients.push(client);
    }
    data
}

/// Inserts rows in batches: one statement per `chunk` rows, all values bound.
async fn insert_batched(
    conn: &mut mysql_async::Conn,
    head: &str,
    width: usize,
    rows: impl Iterator<Item = Vec<Value>>,
) -> Result<(), BillingError> {
    let chunk = 1000;
    let placeholder = format!("({})", vec!["?"; width].join(","));
    let mut batch: Vec<Value> = Vec::with_capacity(chunk * width);
    let mut n = 0;
    let flush = |batch: &mut Vec<Value>, n: usize| {
        let sql = format!("{head} VALUES {}", vec![placeholder.as_str(); n].join(","));
        (sql, Params::Positional(std::mem::take(batch)))
    };
    for row in rows {
        batch.extend(row);
        n += 1;
        if n == chunk {
            let (sql, params) = flush(&mut batch, n);
            conn.exec_drop(sql, params).await?;
            n = 0;
        }
    }
    if n > 0 {
        let (sql, params) = flush(&mut batch, n);
        conn.exec_drop(sql, params).await?;
    }
    Ok(())
}

/// Creates the billing tables and the daemon's schema in the (empty)
/// database `conn` is using, and loads `data` into them.
/// When the demo's opt-outs were taken (any past time will do).
const OPTED_OUT_AT: &str = "2026-01-05 09:00:00";

pub async fn load(conn: &mut mysql_async::Conn, data: &Data) -> Result<(), BillingError> {
    for ddl in BILLING_TABLES_DDL {
        conn.query_drop(*ddl).await?;
    }
    super::schema::apply(conn).await?;
    insert_batched(
        conn,
        "INSERT INTO afiliados (id, nombre, telefono, corte, outbound_call, outbound_call_is_sent, outbound_call_attempts, outbound_call_completed_at)",
        8,
        data.clients.iter().map(|c| {
            vec![
                c.id.into(),
                c.nombre.clone().into(),
                c.telefono.clone().into(),
                c.corte.into(),
                c.outbound_call.into(),
                c.is_sent.into(),
                c.attempts.into(),
                c.completed_at.into(),
            ]
        }),
    )
    .await?;
    insert_batched(
        conn,
        "INSERT INTO factura (`id-afiliado`, saldo, cerrado)",
        3,
        data.invoices
            .iter()
            .map(|f| vec![f.client_id.into(), f.saldo.clone().into(), f.cerrado.into()]),
    )
    .await?;
    insert_batched(
        conn,
        "INSERT INTO overdue_call_log (client_id, attempt_no, claimed_at, claimed_by, phone_raw, outcome, ended_at, delivered)",
        8,
        data.history.iter().map(|h| {
            vec![
                h.client_id.into(),
                h.attempt_no.into(),
                (h.ended_at - Duration::minutes(1)).into(),
                "demo-history".into(),
                h.phone_raw.clone().into(),
                h.outcome.map(|o| o.as_str()).into(),
                h.outcome.map(|_| h.ended_at).into(),
                // History is generated with whole prompts heard.
                h.outcome
                    .map(|o| matches!(o, Outcome::Completed | Outcome::HungUpEarly))
                    .into(),
            ]
        }),
    )
    .await?;
    insert_batched(
        conn,
        "INSERT INTO overdue_opt_out (client_id, opted_out_at)",
        2,
        data.opt_outs
            .iter()
            .map(|id| vec![(*id).into(), OPTED_OUT_AT.into()]),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> Spec {
        Spec {
            clients: 500,
            seed,
            anchor: NaiveDateTime::parse_from_str("2026-03-14 10:00", "%Y-%m-%d %H:%M").unwrap(),
            clean: false,
            invoices_max: 4,
        }
    }

    #[test]
    fn deterministic_and_varied() {
        let a = generate(&spec(7));
        assert_eq!(a, generate(&spec(7)));
        assert_ne!(a, generate(&spec(8)));
        let cortes: std::collections::BTreeSet<_> = a.clients.iter().map(|c| c.corte).collect();
        for day in 1..=31 {
            assert!(cortes.contains(&Some(day)), "corte {day} missing");
        }
        assert!(cortes.contains(&None) && cortes.contains(&Some(0)) && cortes.contains(&Some(40)));
        let bad = a
            .clients
            .iter()
            .filter(|c| {
                crate::rules::phone::normalize(c.telefono.as_deref().unwrap_or("")).is_err()
            })
            .count();
        assert!(bad > 10 && bad < 100, "{bad} bad phones");
        let last_digits: std::collections::BTreeSet<_> = a
            .clients
            .iter()
            .filter_map(|c| crate::rules::phone::normalize(c.telefono.as_deref()?).ok())
            .map(|m| m.national().as_bytes()[9])
            .collect();
        assert_eq!(
            last_digits.len(),
            10,
            "every simulator behaviour is exercised"
        );
        assert!(a.invoices.iter().any(|f| f.cerrado) && a.invoices.iter().any(|f| !f.cerrado));
        assert!(a.history.iter().any(|h| h.outcome.is_none()));
    }
}
