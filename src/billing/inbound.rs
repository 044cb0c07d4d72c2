//! The voice agent's queries (README "The voice agent"): who is calling,
//! the matched client's account, the inbound call log and promises to pay.
//!
//! Billing columns are read leniently (a `corte` typed as text reads as
//! unknown, not as a failed call); timestamps are computed in Rust in the
//! configured time zone and bound, as everywhere in `billing`.

use chrono::{NaiveDate, NaiveDateTime};
use mysql_async::prelude::*;
use mysql_async::{Row, Value};

use super::store::{as_i64, as_string, seconds};
use super::{Billing, BillingError};
use crate::rules::inbound::{corte_day, like_pattern, whole_pesos, Account, Promise};
use crate::rules::phone::Mobile;

/// More candidates than this for one mobile means the `LIKE` superset
/// caught unrelated rows; they are still checked one by one.
const CANDIDATE_LIMIT: usize = 200;

/// An inbound call's row, as it is completed at the end of the call.
#[derive(Debug, Clone, Default)]
pub struct InboundEnd {
    pub ended_at: Option<NaiveDateTime>,
    pub seconds: u32,
    pub how: String,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub transcript: Option<String>,
}

impl Billing {
    /// Clients whose `telefono` may hold `caller` (a superset: every
    /// spelling of the number matches the pattern; `rules::inbound::
    /// match_caller` decides).
    pub async fn caller_candidates(
        &self,
        caller: &Mobile,
    ) -> Result<Vec<(i64, Option<String>)>, BillingError> {
        let rows: Vec<Row> = self
            .conn()
            .await?
            .exec(
                format!("SELECT id, telefono FROM afiliados WHERE telefono LIKE ? LIMIT {CANDIDATE_LIMIT}"),
                (like_pattern(caller),),
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let mut cols = row.unwrap_raw().into_iter();
                let id = as_i64(cols.next().flatten().unwrap_or(Value::NULL))?;
                let tel = as_string(cols.next().flatten().unwrap_or(Value::NULL));
                Some((id, tel))
            })
            .collect())
    }

    /// The matched client's account: open balance and invoices, cut-off
    /// day, and whether a reminder reached them since `since`.
    pub async fn account(
        &self,
        client_id: i64,
        since: NaiveDateTime,
    ) -> Result<Option<Account>, BillingError> {
        let row: Option<Row> = self
            .conn()
            .await?
            .exec_first(
                "SELECT a.corte,
                   (SELECT SUM(f.saldo) FROM factura f
                     WHERE f.`id-afiliado` = a.id AND f.cerrado = 0 AND f.saldo > 0),
                   (SELECT COUNT(*) FROM factura f
                     WHERE f.`id-afiliado` = a.id AND f.cerrado = 0 AND f.saldo > 0),
                   EXISTS (SELECT 1 FROM overdue_call_log c WHERE c.client_id = a.id
                     AND c.ended_at >= ?
                     AND COALESCE(c.delivered, c.outcome IN ('completed', 'hung_up_early')) = 1)
                 FROM afiliados a WHERE a.id = ?",
                (seconds(since), client_id),
            )
            .await?;
        Ok(row.map(|row| {
            let mut cols = row.unwrap_raw().into_iter();
            let mut next = move || cols.next().flatten().unwrap_or(Value::NULL);
            let corte = corte_day(as_i64(next()));
            let balance = as_string(next()).and_then(|b| whole_pesos(&b)).unwrap_or(0);
            let invoices = as_i64(next()).unwrap_or(0);
            let delivered = as_i64(next()).unwrap_or(0) != 0;
            Account {
                client_id,
                balance_pesos: balance,
                open_invoices: u32::try_from(invoices).unwrap_or(0),
                corte,
                reminder_delivered: delivered,
            }
        }))
    }

    /// Starts an inbound call's row; its id links promises to the call.
    pub async fn open_inbound(
        &self,
        started_at: NaiveDateTime,
        caller_e164: Option<&str>,
        client_id: Option<i64>,
        match_detail: &str,
        channel_id: &str,
    ) -> Result<u64, BillingError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "INSERT INTO overdue_inbound_log (started_at, caller_e164, client_id, match_detail, channel_id)
             VALUES (?, ?, ?, ?, ?)",
            (seconds(started_at), caller_e164, client_id, match_detail, channel_id),
        )
        .await?;
        Ok(conn.last_insert_id().unwrap_or(0))
    }

    /// Completes an inbound call's row, retrying while MySQL is away (the
    /// call is over; nothing else is waiting on this). Gives up after
    /// about two minutes with the row logged in full.
    pub async fn close_inbound(&self, id: u64, end: &InboundEnd) -> bool {
        let write = || async {
            self.conn()
                .await?
                .exec_drop(
                    "UPDATE overdue_inbound_log SET ended_at = ?, seconds = ?, how = ?,
                       tokens_in = ?, tokens_out = ?, transcript = ? WHERE id = ?",
                    (
                        end.ended_at.map(seconds),
                        end.seconds,
                        &end.how,
                        end.tokens_in,
                        end.tokens_out,
                        end.transcript.as_deref(),
                        id,
                    ),
                )
                .await
                .map_err(BillingError::from)
        };
        let (result, _) = super::retry::until_written(Some(10), write, |attempt, e| {
            tracing::warn!(inbound_id = id, attempt, error = %e, "inbound call row not completed yet; retrying");
        })
        .await;
        if let Err(e) = &result {
            tracing::error!(inbound_id = id, ?end, error = %e, "INBOUND CALL ROW NOT COMPLETED");
        }
        result.is_ok()
    }

    /// Inbound rows a killed run left open (the call died with it):
    /// closed as `error` at start-up, so none stays "in progress" forever.
    pub async fn close_interrupted_inbound(&self, now: NaiveDateTime) -> Result<u64, BillingError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "UPDATE overdue_inbound_log SET how = 'error', ended_at = ? WHERE how IS NULL",
            (seconds(now),),
        )
        .await?;
        Ok(conn.affected_rows())
    }

    /// Records a promise to pay the agent took (already checked by
    /// `rules::inbound::check_promise`).
    pub async fn insert_promise(
        &self,
        client_id: i64,
        promise: &Promise,
        inbound_id: Option<u64>,
        created_at: NaiveDateTime,
    ) -> Result<u64, BillingError> {
        let mut conn = self.conn().await?;
        conn.exec_drop(
            "INSERT INTO overdue_payment_promise (client_id, promised_date, amount, inbound_call_id, created_at)
             VALUES (?, ?, ?, ?, ?)",
            (
                client_id,
                promise.date,
                promise.amount,
                inbound_id,
                seconds(created_at),
            ),
        )
        .await?;
        Ok(conn.last_insert_id().unwrap_or(0))
    }

    /// Promises recorded for a client, oldest first (for tests and `report`).
    pub async fn promises(
        &self,
        client_id: i64,
    ) -> Result<Vec<(NaiveDate, Option<i64>)>, BillingError> {
        Ok(self
            .conn()
            .await?
            .exec(
                "SELECT promised_date, amount FROM overdue_payment_promise WHERE client_id = ? ORDER BY id",
                (client_id,),
            )
            .await?)
    }
}
