//! The daemon's own tables and columns (README "Schema"), and `schema print|apply`.
//!
//! The billing tables belong to the billing system. We only ever add the
//! four `outbound_call*` columns to `afiliados` when they are missing and
//! create our call log; nothing else is altered or dropped. Every statement
//! runs on MySQL 5.7, MySQL 8 and MariaDB 10.3+.

use mysql_async::prelude::*;

use super::BillingError;

/// Our per-attempt call log. One row per claimed attempt, keyed by
/// (client, attempt number): the unique key is what stops two daemons, or
/// one restarted daemon, from dialling the same attempt twice.
pub const CALL_LOG_DDL: &str = "CREATE TABLE IF NOT EXISTS overdue_call_log (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  client_id BIGINT NOT NULL,
  attempt_no INT UNSIGNED NOT NULL,
  claimed_at DATETIME NOT NULL,
  claimed_by VARCHAR(128) NOT NULL,
  phone_raw VARCHAR(255) NULL,
  phone_e164 VARCHAR(16) NULL,
  channel_id VARCHAR(128) NULL,
  trunk VARCHAR(64) NULL,
  answered_at DATETIME NULL,
  ended_at DATETIME NULL,
  ring_seconds INT UNSIGNED NULL,
  billable_seconds INT UNSIGNED NULL,
  outcome VARCHAR(20) NULL,
  hangup_cause SMALLINT NULL,
  detail VARCHAR(255) NULL,
  delivered TINYINT(1) NULL,
  heard_seconds INT UNSIGNED NULL,
  PRIMARY KEY (id),
  UNIQUE KEY uq_overdue_call_log_attempt (client_id, attempt_no),
  KEY ix_overdue_call_log_outcome (outcome, ended_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// One row per inbound call on the agent app (README "The voice agent"):
/// written when the call starts, completed when it ends, so a call cut by
/// a crash still shows who called and when.
pub const INBOUND_LOG_DDL: &str = "CREATE TABLE IF NOT EXISTS overdue_inbound_log (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  started_at DATETIME NOT NULL,
  ended_at DATETIME NULL,
  caller_e164 VARCHAR(32) NULL,
  client_id BIGINT NULL,
  match_detail VARCHAR(255) NULL,
  seconds INT UNSIGNED NULL,
  how VARCHAR(24) NULL,
  tokens_in INT UNSIGNED NULL,
  tokens_out INT UNSIGNED NULL,
  channel_id VARCHAR(128) NOT NULL,
  transcript MEDIUMTEXT NULL,
  PRIMARY KEY (id),
  KEY ix_overdue_inbound_log_started (started_at),
  KEY ix_overdue_inbound_log_client (client_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// Promises to pay the agent took, for billing staff to read.
pub const PAYMENT_PROMISE_DDL: &str = "CREATE TABLE IF NOT EXISTS overdue_payment_promise (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  client_id BIGINT NOT NULL,
  promised_date DATE NOT NULL,
  amount BIGINT NULL,
  inbound_call_id BIGINT UNSIGNED NULL,
  created_at DATETIME NOT NULL,
  PRIMARY KEY (id),
  KEY ix_overdue_payment_promise_client (client_id, promised_date)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// Clients who asked not to be called by this product (Ley 2300 lets the
/// debtor choose how to be contacted). A client with a row here is never
/// selected; billing staff lift it by deleting the row.
pub const OPT_OUT_DDL: &str = "CREATE TABLE IF NOT EXISTS overdue_opt_out (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  client_id BIGINT NOT NULL,
  phone_e164 VARCHAR(32) NULL,
  opted_out_at DATETIME NOT NULL,
  channel_id VARCHAR(128) NULL,
  PRIMARY KEY (id),
  KEY ix_overdue_opt_out_client (client_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// Our own tables, created whole when missing.
const OWN_TABLES: &[(&str, &str)] = &[
    ("overdue_inbound_log", INBOUND_LOG_DDL),
    ("overdue_payment_promise", PAYMENT_PROMISE_DDL),
    ("overdue_opt_out", OPT_OUT_DDL),
];

/// The columns the daemon may add to `afiliados`, with their definitions.
pub const AFILIADOS_COLUMNS: &[(&str, &str)] = &[
    ("outbound_call", "TINYINT(1) NOT NULL DEFAULT 0"),
    ("outbound_call_is_sent", "TINYINT(1) NOT NULL DEFAULT 0"),
    ("outbound_call_attempts", "INT NOT NULL DEFAULT 0"),
    ("outbound_call_completed_at", "DATETIME NULL"),
];

/// Columns added to the call log after its first release, each with the
/// statements that bring older rows in line. `delivered` is stored rather
/// than derived from the outcome, because a `hung_up_early` is delivered
/// only when enough of the prompt was heard (`campaign.min_heard_secs` at
/// the time of the call).
pub const CALL_LOG_COLUMNS: &[(&str, &str, &[&str])] = &[
    (
        "delivered",
        "TINYINT(1) NULL",
        &["UPDATE overdue_call_log SET delivered = (outcome IN ('completed', 'hung_up_early')) WHERE outcome IS NOT NULL AND delivered IS NULL"],
    ),
    ("heard_seconds", "INT UNSIGNED NULL", &[]),
];

/// Columns of the billing tables the daemon reads and cannot create.
const REQUIRED: &[(&str, &[&str])] = &[
    ("afiliados", &["id", "telefono", "corte"]),
    ("factura", &["id-afiliado", "saldo", "cerrado"]),
];

/// Indexes the eligibility query needs to stay fast on a large database.
/// `check` recommends them; they live on billing tables, so the daemon never
/// creates them itself.
pub const RECOMMENDED_INDEXES: &[(&str, &[&str], &str)] = &[
    (
        "factura",
        &["id-afiliado", "cerrado", "saldo"],
        "CREATE INDEX ix_factura_open_debt ON factura (`id-afiliado`, cerrado, saldo)",
    ),
    (
        "afiliados",
        &["outbound_call", "outbound_call_is_sent"],
        "CREATE INDEX ix_afiliados_outbound ON afiliados (outbound_call, outbound_call_is_sent)",
    ),
];

/// Everything `schema apply` may run, for a DBA to read (`schema print`).
pub fn reference_ddl() -> String {
    let mut out =
        String::from("-- overdue-dialer schema. `schema apply` runs only what is missing.\n\n");
    out.push_str("-- Columns added to afiliados when missing:\n");
    for (name, def) in AFILIADOS_COLUMNS {
        out.push_str(&format!("ALTER TABLE afiliados ADD COLUMN {name} {def};\n"));
    }
    out.push_str("\n-- The daemon's call log:\n");
    out.push_str(CALL_LOG_DDL);
    out.push_str(";\n\n-- Columns added to a call log created by an older release:\n");
    for (name, def, then) in CALL_LOG_COLUMNS {
        out.push_str(&format!(
            "ALTER TABLE overdue_call_log ADD COLUMN {name} {def};\n"
        ));
        for t in *then {
            out.push_str(&format!("{t};\n"));
        }
    }
    for (table, ddl) in OWN_TABLES {
        out.push_str(&format!("\n-- {table}:\n{ddl};\n"));
    }
    out.push_str(
        "\n-- Recommended indexes on billing tables (run by a DBA; `check` reports them):\n",
    );
    for (_, _, ddl) in RECOMMENDED_INDEXES {
        out.push_str(&format!("-- {ddl};\n"));
    }
    out
}

async fn table_exists(conn: &mut mysql_async::Conn, table: &str) -> Result<bool, BillingError> {
    let n: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (table,),
        )
        .await?;
    Ok(n.unwrap_or(0) > 0)
}

async fn columns(conn: &mut mysql_async::Conn, table: &str) -> Result<Vec<String>, BillingError> {
    Ok(conn
        .exec(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (table,),
        )
        .await?)
}

/// The statements needed to bring this database up to date; empty when it is.
/// Refuses, naming what is missing, when the billing tables are not there.
pub async fn plan(conn: &mut mysql_async::Conn) -> Result<Vec<String>, BillingError> {
    for (table, needed) in REQUIRED {
        if !table_exists(conn, table).await? {
            return Err(BillingError::Schema(format!(
                "table `{table}` is missing: is mysql.database the billing database? (the daemon never creates billing tables)"
            )));
        }
        let have = columns(conn, table).await?;
        for col in *needed {
            if !have.iter().any(|c| c.eq_ignore_ascii_case(col)) {
                return Err(BillingError::Schema(format!(
                    "column `{table}`.`{col}` is missing"
                )));
            }
        }
    }
    let mut todo = Vec::new();
    let have = columns(conn, "afiliados").await?;
    for (name, def) in AFILIADOS_COLUMNS {
        if !have.iter().any(|c| c.eq_ignore_ascii_case(name)) {
            todo.push(format!("ALTER TABLE afiliados ADD COLUMN {name} {def}"));
        }
    }
    if !table_exists(conn, "overdue_call_log").await? {
        todo.push(CALL_LOG_DDL.to_owned());
    } else {
        let have = columns(conn, "overdue_call_log").await?;
        for (name, def, then) in CALL_LOG_COLUMNS {
            if !have.iter().any(|c| c.eq_ignore_ascii_case(name)) {
                todo.push(format!(
                    "ALTER TABLE overdue_call_log ADD COLUMN {name} {def}"
                ));
                todo.extend(then.iter().map(|t| (*t).to_owned()));
            }
        }
    }
    for (table, ddl) in OWN_TABLES {
        if !table_exists(conn, table).await? {
            todo.push((*ddl).to_owned());
        }
    }
    Ok(todo)
}

/// Runs the plan; returns what was run (empty: nothing to do).
pub async fn apply(conn: &mut mysql_async::Conn) -> Result<Vec<String>, BillingError> {
    let todo = plan(conn).await?;
    for stmt in &todo {
        conn.query_drop(stmt).await?;
    }
    Ok(todo)
}

/// Recommended indexes that are missing, as the statements to run.
pub async fn missing_indexes(
    conn: &mut mysql_async::Conn,
) -> Result<Vec<&'static str>, BillingError> {
    let mut missing = Vec::new();
    for (table, cols, ddl) in RECOMMENDED_INDEXES {
        // An index serves when its leading columns are ours, in order.
        let rows: Vec<(String, u32, String)> = conn
            .exec(
                "SELECT INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME FROM information_schema.STATISTICS
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                (table,),
            )
            .await?;
        let mut by_index: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (index, _, col) in rows {
            by_index.entry(index).or_default().push(col);
        }
        let covered = by_index.values().any(|have| {
            have.len() >= cols.len()
                && have
                    .iter()
                    .zip(cols.iter())
                    .all(|(h, w)| h.eq_ignore_ascii_case(w))
        });
        if !covered {
            missing.push(*ddl);
        }
    }
    Ok(missing)
}
