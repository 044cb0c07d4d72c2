//! Every query the daemon runs against the billing database: selecting
//! debtors, claiming an attempt, and writing its outcome (README "Who is called", "Schema").
//!
//! All values go through bound parameters. "Now" is always computed in Rust
//! in the configured time zone and bound, never `NOW()`, so the database's
//! own time zone cannot shift a decision or a timestamp.

use chrono::{Datelike, NaiveDateTime, Timelike};
use mysql_async::prelude::*;
use mysql_async::{Params, Row, TxOpts, Value};

use super::BillingError;
use crate::rules::cutoff::days_in_month;
use crate::rules::outcome::Outcome;
use crate::rules::selection::{ClientFacts, LastAttempt, Policy};

/// The facts `selection::check_client` needs, for flagged clients.
/// `l` is the client's latest call-log row, if any. The open balance is
/// NULL exactly when the client has no open invoice with a positive
/// balance, so one lookup on `factura` answers both questions.
/// `last_contact` counts reminders marked delivered; a row an older
/// release wrote (`delivered` NULL) counts when it was `completed` or
/// `hung_up_early`, as that release decided.
const FACTS_SELECT: &str = "SELECT a.id, a.telefono, a.corte,
  COALESCE(a.outbound_call_is_sent, 0) <> 0,
  COALESCE(a.outbound_call_attempts, 0),
  (SELECT SUM(f.saldo) FROM factura f
    WHERE f.`id-afiliado` = a.id AND f.cerrado = 0 AND f.saldo > 0) AS open_balance,
  l.attempt_no, l.outcome, l.ended_at, l.phone_raw,
  (SELECT MAX(c.ended_at) FROM overdue_call_log c
    WHERE c.client_id = a.id
      AND COALESCE(c.delivered, c.outcome IN ('completed', 'hung_up_early')) = 1) AS last_contact,
  EXISTS (SELECT 1 FROM overdue_opt_out o WHERE o.client_id = a.id) AS opted_out
FROM afiliados a
LEFT JOIN overdue_call_log l ON l.client_id = a.id
  AND l.attempt_no = (SELECT MAX(m.attempt_no) FROM overdue_call_log m WHERE m.client_id = a.id)
WHERE a.outbound_call = 1";

/// README "Who is called" and the contact limit, exactly as
/// `selection::check_client` states them (a test holds the two together),
/// for one page of clients after a given id.
///
/// The cutoff test is written without subtraction so it cannot overflow on
/// an UNSIGNED `corte` column. The open-invoice and contact tests sit in
/// HAVING on the select list's scalar subqueries: written as `EXISTS` in
/// WHERE, MariaDB turns the invoice test into a semi-join that reads every
/// open invoice of the table for each page; as scalar subqueries they are
/// one index lookup per candidate, and a page stops at its LIMIT.
const ELIGIBLE_WHERE: &str = "
  AND a.id > ?
  AND NOT EXISTS (SELECT 1 FROM overdue_opt_out o WHERE o.client_id = a.id)
  AND COALESCE(a.outbound_call_is_sent, 0) = 0
  AND a.corte BETWEEN 1 AND 31
  AND LEAST(a.corte, ?) <= ?
  AND (l.id IS NULL OR l.outcome IS NOT NULL)
  AND COALESCE(a.outbound_call_attempts, 0) < ?
  AND (l.id IS NULL OR l.outcome <> 'invalid_number'
       OR NOT (CAST(l.phone_raw AS BINARY) <=> CAST(a.telefono AS BINARY)))
  AND (l.id IS NULL OR l.ended_at IS NULL
       OR l.outcome IN ('completed', 'invalid_number', 'transferred', 'opted_out')
       OR (l.outcome = 'hung_up_early' AND l.ended_at < ?)
       OR (l.outcome <> 'hung_up_early' AND l.ended_at <= CASE l.outcome
            WHEN 'busy' THEN ? WHEN 'no_answer' THEN ? WHEN 'rejected' THEN ?
            WHEN 'congestion' THEN ? WHEN 'timeout' THEN ? WHEN 'trunk_error' THEN ?
            WHEN 'aborted' THEN ? WHEN 'voicemail' THEN ? ELSE ? END))
HAVING open_balance IS NOT NULL";

const CONTACT_HAVING: &str = " AND (last_contact IS NULL OR last_contact < ?)";

/// A claimed attempt: ours to dial, nobody else's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claim {
    pub client_id: i64,
    pub attempt_no: u32,
}

impl Claim {
    /// The attempt a channel id of ours belongs to (`overdue-<client>-<attempt>`,
    /// with `-<try>` on a retry through another trunk); `None` for any other id.
    pub(crate) fn from_channel_id(id: &str) -> Option<Claim> {
        let rest = id.strip_prefix("overdue-")?;
        let mut parts = rest.split('-');
        let client_id = parts.next()?.parse().ok()?;
        let attempt_no = parts.next()?.parse().ok()?;
        match (parts.next(), parts.next()) {
            (None, _) => {}
            (Some(try_no), None) if try_no.parse::<u32>().is_ok() => {}
            _ => return None,
        }
        Some(Claim {
            client_id,
            attempt_no,
        })
    }

    /// Deterministic ARI `channelId`: a retried originate for the same
    /// attempt answers 409 instead of dialling twice, and reconciliation
    /// after a restart can find the call.
    pub fn channel_id(&self) -> String {
        format!("overdue-{}-{}", self.client_id, self.attempt_no)
    }
}

/// Everything written about a finished attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub outcome: Outcome,
    /// Asterisk placed the call. Only placed calls count in
    /// `outbound_call_attempts`: a refused trunk or a malformed number
    /// spends no attempt (README "A pass").
    pub dialled: bool,
    pub hangup_cause: Option<i32>,
    pub trunk: Option<String>,
    pub channel_id: Option<String>,
    pub phone_e164: Option<String>,
    pub answered_at: Option<NaiveDateTime>,
    pub ended_at: NaiveDateTime,
    pub ring_seconds: Option<u32>,
    pub billable_seconds: Option<u32>,
    pub detail: Option<String>,
    /// The callee heard the reminder (`campaign::outcome::is_delivered`):
    /// sets `outbound_call_is_sent`.
    pub delivered: bool,
    /// Seconds of the prompt the callee heard before hanging up early.
    pub heard_seconds: Option<u32>,
}

impl CallRecord {
    /// An attempt Asterisk never placed (refused by every trunk, the
    /// pass ended first, an invalid number): no attempt is spent.
    pub(crate) fn not_dialled(outcome: Outcome, at: NaiveDateTime, detail: String) -> CallRecord {
        CallRecord {
            outcome,
            dialled: false,
            hangup_cause: None,
            trunk: None,
            channel_id: None,
            phone_e164: None,
            answered_at: None,
            ended_at: at,
            ring_seconds: None,
            billable_seconds: None,
            detail: Some(detail),
            delivered: false,
            heard_seconds: None,
        }
    }

    /// An attempt closed without knowing what the callee heard (an orphan
    /// after a crash, a call that panicked): counted, never delivered.
    pub fn closed(
        outcome: Outcome,
        channel_id: Option<String>,
        at: NaiveDateTime,
        detail: String,
    ) -> CallRecord {
        CallRecord {
            dialled: true,
            channel_id,
            ..CallRecord::not_dialled(outcome, at, detail)
        }
    }
}

/// The billing database, behind a connection pool.
#[derive(Clone)]
pub struct Billing {
    pool: mysql_async::Pool,
    tally: std::sync::Arc<super::tally::Tally>,
}

pub(super) fn seconds(t: NaiveDateTime) -> NaiveDateTime {
    t.with_nanosecond(0).unwrap_or(t)
}

impl Billing {
    pub fn new(opts: mysql_async::Opts) -> Billing {
        // Every statement reads what is committed when it starts, and a
        // claim's INSERT … SELECT locks nothing but the row it adds
        // (`try_claim`). Set once per connection, whatever built `opts`.
        let mut setup = opts.setup().to_vec();
        setup.push("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".to_owned());
        let opts = mysql_async::OptsBuilder::from_opts(opts).setup(setup);
        Billing {
            pool: mysql_async::Pool::new(opts),
            tally: Default::default(),
        }
    }

    /// The outcomes this process wrote, and the writes still waiting.
    pub fn tally(&self) -> &super::tally::Tally {
        &self.tally
    }

    pub async fn conn(&self) -> Result<mysql_async::Conn, BillingError> {
        Ok(self.pool.get_conn().await?)
    }

    /// Closes the pool's connections (call before the runtime ends).
    pub async fn close(self) -> Result<(), BillingError> {
        Ok(self.pool.disconnect().await?)
    }

    /// Every flagged client with the facts needed to explain its decision
    /// (`preview`). Rows whose id cannot be read are logged and skipped.
    pub async fn flagged_clients(&self) -> Result<Vec<ClientFacts>, BillingError> {
        let rows: Vec<Row> = self
            .conn()
            .await?
            .query(format!("{FACTS_SELECT} ORDER BY a.id"))
            .await?;
        Ok(rows.into_iter().filter_map(facts_from_row).collect())
    }

    /// Every client passing README "Who is called" and the contact limit at
    /// local time `now`, page after page. Phone numbers and the calling
    /// window are judged by the caller. A pass reads one page at a time
    /// instead (`eligible_page`); this is for `preview`-like callers and tests.
    pub async fn eligible_clients(
        &self,
        now: NaiveDateTime,
        policy: &Policy,
    ) -> Result<Vec<ClientFacts>, BillingError> {
        const PAGE: usize = 5_000;
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let (page, last) = self.eligible_page(now, policy, after, PAGE).await?;
            all.extend(page);
            match last {
                Some(id) => after = id,
                None => return Ok(all),
            }
        }
    }

    /// Up to `limit` eligible clients with ids above `after`, in id order,
    /// and the id to continue after (`None` when this was the last page).
    ///
    /// Keyset pages let a pass fetch work as channels free up, the way a
    /// dialer's hopper does: the first call does not wait for the whole
    /// table, and a client who pays mid-pass is not dialled from a stale list.
    pub async fn eligible_page(
        &self,
        now: NaiveDateTime,
        policy: &Policy,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<ClientFacts>, Option<i64>), BillingError> {
        let now = seconds(now);
        let limit = limit.max(1);
        let before = |o: Outcome| Value::from(now - policy.retry_delay(o));
        let mut params: Vec<Value> = vec![
            Value::from(after),
            Value::from(days_in_month(now.date())),
            Value::from(now.day() + 1),
            Value::from(policy.max_attempts),
            // An early hang-up waits for the next calling day (Ley 2300).
            Value::from(now.date().and_time(chrono::NaiveTime::MIN)),
            before(Outcome::Busy),
            before(Outcome::NoAnswer),
            before(Outcome::Rejected),
            before(Outcome::Congestion),
            before(Outcome::Timeout),
            before(Outcome::TrunkError),
            before(Outcome::Aborted),
            before(Outcome::Voicemail),
            before(Outcome::Failed),
        ];
        let mut sql = format!("{FACTS_SELECT}{ELIGIBLE_WHERE}");
        if let Some(threshold) = policy.contact_threshold(now) {
            sql.push_str(CONTACT_HAVING);
            params.push(Value::from(threshold));
        }
        sql.push_str(" ORDER BY a.id LIMIT ?");
        params.push(Value::from(limit as u64));
        let rows: Vec<Row> = self
            .conn()
            .await?
            .exec(sql, Params::Positional(params))
            .await?;
        let full = rows.len() == limit;
        // The last row's id, even when the row itself cannot be decoded:
        // otherwise an unreadable row at a page's end would end the pass.
        let last = rows
            .last()
            .and_then(|r| r.get_opt::<i64, _>(0))
            .and_then(Result::ok);
        let page: Vec<ClientFacts> = rows.into_iter().filter_map(facts_from_row).collect();
        let next = match last.or_else(|| page.last().map(|c| c.id)) {
            Some(id) if full && id > after => Some(id),
            _ => None,
        };
        Ok((page, next))
    }

    /// Atomically claims the next attempt for a client as it was `seen`
    /// when selected. `None` when someone else got there first, or the
    /// client changed since it was selected (flag cleared, reminder
    /// delivered, another attempt written or in flight).
    ///
    /// One INSERT … SELECT whose conditions are what the selection saw; the
    /// unique key on (client, attempt) settles two claimers of the same
    /// attempt (`try_claim`).
    pub async fn claim(
        &self,
        client_id: i64,
        seen: Seen,
        phone_raw: Option<&str>,
        claimed_by: &str,
        now: NaiveDateTime,
    ) -> Result<Option<Claim>, BillingError> {
        // Boxed: inline, this future would sit in every call task's state
        // for the call's whole life (BENCHMARKS.md "How cost grows").
        Box::pin(async move {
            let mut tries: u64 = 0;
            loop {
                tries += 1;
                match self
                    .try_claim(client_id, seen, phone_raw, claimed_by, seconds(now))
                    .await
                {
                    // Refused after a lost answer: the row in the way (a
                    // duplicate key, or an attempt now open) may be our own
                    // earlier try's. On a first try it cannot be.
                    Ok(None) if tries > 1 => {
                        return self.own_claim(client_id, claimed_by, seconds(now)).await;
                    }
                    Err(BillingError::Mysql(mysql_async::Error::Server(e))) if e.code == 1062 => {
                        if tries > 1 {
                            return self.own_claim(client_id, claimed_by, seconds(now)).await;
                        }
                        return Ok(None);
                    }
                    Err(e) if e.is_transient() && tries < 5 => {
                        // The connection may have died after the insert but before its
                        // answer: then the claim is ours, and retrying would see it
                        // as someone else's call in flight.
                        if let Ok(Some(claim)) =
                            self.own_claim(client_id, claimed_by, seconds(now)).await
                        {
                            return Ok(Some(claim));
                        }
                        tracing::debug!(client_id, error = %e, "claim failed, retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
                    }
                    other => return other,
                }
            }
        })
        .await
    }

    /// Our own unfinished claim of this client made at `at`, if it exists.
    async fn own_claim(
        &self,
        client_id: i64,
        claimed_by: &str,
        at: NaiveDateTime,
    ) -> Result<Option<Claim>, BillingError> {
        let n: Option<u32> = self
            .conn()
            .await?
            .exec_first(
                "SELECT attempt_no FROM overdue_call_log WHERE client_id = ? AND claimed_by = ? AND claimed_at = ? AND outcome IS NULL",
                (client_id, claimed_by, at),
            )
            .await?;
        Ok(n.map(|attempt_no| Claim {
            client_id,
            attempt_no,
        }))
    }

    /// One statement, no transaction: the row goes in only if the client
    /// is still as the caller read it — flagged, not yet reached, the same
    /// attempt count, the same latest attempt, none open. Reads are
    /// consistent (READ COMMITTED, set in `Billing::new`), and two claimers
    /// of one attempt collide on its unique key (1062: claimed elsewhere).
    /// The old five round trips (begin, lock, read, insert, commit) cost a
    /// freed channel ~20 ms and the daemon CPU per call (BENCHMARKS.md).
    async fn try_claim(
        &self,
        client_id: i64,
        seen: Seen,
        phone_raw: Option<&str>,
        claimed_by: &str,
        now: NaiveDateTime,
    ) -> Result<Option<Claim>, BillingError> {
        let claim = Claim {
            client_id,
            attempt_no: seen.last_attempt_no + 1,
        };
        let mut conn = self.conn().await?;
        // The channel id goes in with the claim, before any originate: after
        // a crash, reconciliation asks Asterisk for exactly this channel.
        conn.exec_drop(
            "INSERT INTO overdue_call_log (client_id, attempt_no, claimed_at, claimed_by, phone_raw, channel_id)
             SELECT a.id, ?, ?, ?, ?, ? FROM afiliados a
             WHERE a.id = ? AND COALESCE(a.outbound_call, 0) = 1 AND COALESCE(a.outbound_call_is_sent, 0) = 0
               AND COALESCE(a.outbound_call_attempts, 0) = ?
               AND (SELECT COALESCE(MAX(l.attempt_no), 0) FROM overdue_call_log l WHERE l.client_id = a.id) = ?
               AND NOT EXISTS (SELECT 1 FROM overdue_call_log o WHERE o.client_id = a.id AND o.outcome IS NULL)",
            (
                claim.attempt_no,
                now,
                claimed_by,
                phone_raw,
                claim.channel_id(),
                client_id,
                seen.attempts,
                seen.last_attempt_no,
            ),
        )
        .await?;
        // Refused: the client changed, or someone claimed it (`claim`
        // looks for our own earlier try when this was a retry).
        Ok((conn.affected_rows() == 1).then_some(claim))
    }

    /// Writes an outcome, retrying with backoff for as long as MySQL is
    /// unreachable (no new calls start meanwhile: claims fail too). The
    /// full record is logged at the first failure, so it survives even if
    /// the process is killed before MySQL comes back. `false` only for an
    /// error retrying cannot fix.
    pub(crate) async fn write_outcome(&self, claim: &Claim, record: &CallRecord) -> bool {
        // Boxed, as in `claim`.
        Box::pin(async move {
            let _waiting = self.tally.waiting();
            let (result, attempts) = super::retry::until_written(
                None,
                || self.record_outcome(claim, record),
                |attempt, e| {
                    if attempt == 1 {
                        tracing::warn!(client_id = claim.client_id, attempt_no = claim.attempt_no, ?record, error = %e, "MySQL unreachable: outcome kept, retrying until written");
                    } else {
                        tracing::warn!(client_id = claim.client_id, attempt, error = %e, "outcome still not written; retrying");
                    }
                },
            )
            .await;
            match result {
                Ok(wrote) => {
                    if wrote {
                        self.tally
                            .written(record.outcome, record.trunk.as_deref(), record.delivered);
                    }
                    if attempts > 1 {
                        tracing::info!(
                            client_id = claim.client_id,
                            attempt = attempts,
                            "outcome written after MySQL came back"
                        );
                    }
                    true
                }
                Err(e) => {
                    tracing::error!(client_id = claim.client_id, attempt_no = claim.attempt_no, ?record, error = %e, "OUTCOME NOT WRITTEN");
                    false
                }
            }
        })
        .await
    }

    /// Gives back a claim that was made ahead of a free channel and is no
    /// longer needed (the pass ended, the daemon is stopping, the window
    /// closed): nothing was dialled, so its row goes as if it had never
    /// been claimed — no attempt spent, no call in the log that was not
    /// made. Should MySQL refuse, the attempt is closed `aborted`, not
    /// dialled, instead (retried until written, like any outcome).
    pub(crate) async fn withdraw(&self, claim: &Claim, now: NaiveDateTime, why: &str) {
        // Boxed, as in `claim`.
        Box::pin(async move {
            let deleted = async {
                self.conn()
                    .await?
                    .exec_drop(
                        "DELETE FROM overdue_call_log WHERE client_id = ? AND attempt_no = ? AND outcome IS NULL",
                        (claim.client_id, claim.attempt_no),
                    )
                    .await?;
                Ok::<_, BillingError>(())
            }
            .await;
            if let Err(e) = deleted {
                tracing::warn!(client_id = claim.client_id, error = %e, "cannot withdraw an unused claim; closing it as not dialled");
                let record =
                    CallRecord::not_dialled(Outcome::Aborted, now, format!("not dialled: {why}"));
                self.write_outcome(claim, &record).await;
            }
        })
        .await
    }

    /// Records the channel id of a retry on another trunk before its
    /// originate (the first try's id is written with the claim).
    pub(crate) async fn set_channel(
        &self,
        claim: &Claim,
        channel_id: &str,
    ) -> Result<(), BillingError> {
        // Boxed, as in `claim`.
        Box::pin(async move {
            self.conn()
                .await?
                .exec_drop(
                    "UPDATE overdue_call_log SET channel_id = ? WHERE client_id = ? AND attempt_no = ? AND outcome IS NULL",
                    (channel_id, claim.client_id, claim.attempt_no),
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Writes the outcome of a claimed attempt and updates the client's
    /// counters and flags, in one transaction. Idempotent: writing the same
    /// attempt twice (a retry after a lost connection) changes nothing the
    /// second time. Returns whether this call wrote it.
    pub async fn record_outcome(
        &self,
        claim: &Claim,
        r: &CallRecord,
    ) -> Result<bool, BillingError> {
        let counted = u32::from(r.dialled);
        // The attempt and the client's counters in one statement (one round
        // trip, atomic without a transaction); the LEFT JOIN writes the
        // attempt even if the client row is gone. Nothing matches once the
        // outcome is written: a retried write changes nothing.
        let params = Params::Positional(vec![
            r.outcome.as_str().into(),
            r.hangup_cause.into(),
            r.trunk.clone().into(),
            r.channel_id.clone().into(),
            r.phone_e164.clone().into(),
            r.answered_at.map(seconds).into(),
            seconds(r.ended_at).into(),
            r.ring_seconds.into(),
            r.billable_seconds.into(),
            r.detail.as_deref().map(|d| truncate(d, 255)).into(),
            r.delivered.into(),
            r.heard_seconds.into(),
            counted.into(),
            r.delivered.into(),
            r.delivered.into(),
            seconds(r.ended_at).into(),
            claim.client_id.into(),
            claim.attempt_no.into(),
        ]);
        const UPDATE: &str = "UPDATE overdue_call_log l LEFT JOIN afiliados a ON a.id = l.client_id
             SET l.outcome = ?, l.hangup_cause = ?, l.trunk = ?, l.channel_id = ?, l.phone_e164 = ?,
               l.answered_at = ?, l.ended_at = ?, l.ring_seconds = ?, l.billable_seconds = ?, l.detail = ?,
               l.delivered = ?, l.heard_seconds = ?,
               a.outbound_call_attempts = COALESCE(a.outbound_call_attempts, 0) + ?,
               a.outbound_call_is_sent = IF(?, 1, a.outbound_call_is_sent),
               a.outbound_call_completed_at = IF(?, ?, a.outbound_call_completed_at)
             WHERE l.client_id = ? AND l.attempt_no = ? AND l.outcome IS NULL";
        let mut conn = self.conn().await?;
        if r.outcome != Outcome::OptedOut {
            conn.exec_drop(UPDATE, params).await?;
            return Ok(conn.affected_rows() > 0);
        }
        // An opt-out goes in the outcome's transaction: never lost to a
        // crash between the two, nor written twice by a retried write.
        let mut tx = conn.start_transaction(TxOpts::default()).await?;
        tx.exec_drop(UPDATE, params).await?;
        if tx.affected_rows() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.exec_drop(
            "INSERT INTO overdue_opt_out (client_id, phone_e164, opted_out_at, channel_id)
             SELECT ?, ?, ?, ? FROM DUAL
             WHERE NOT EXISTS (SELECT 1 FROM overdue_opt_out WHERE client_id = ?)",
            (
                claim.client_id,
                r.phone_e164.clone(),
                seconds(r.ended_at),
                r.channel_id.clone(),
                claim.client_id,
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

/// What a claimer read of a client before claiming it: the claim goes in
/// only if neither has changed since (`Billing::claim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    /// `afiliados.outbound_call_attempts`.
    pub attempts: u32,
    /// The latest attempt's number in the call log (0: none).
    pub last_attempt_no: u32,
}

impl Seen {
    pub fn of(client: &ClientFacts) -> Seen {
        Seen {
            attempts: client.attempts,
            last_attempt_no: client.last_attempt.as_ref().map_or(0, |l| l.attempt_no),
        }
    }
}

/// A claimed attempt with no outcome, left by a daemon that stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub claim: Claim,
    pub channel_id: Option<String>,
    pub claimed_at: NaiveDateTime,
}

impl Billing {
    /// One flagged client's facts, for a call adopted after a restart
    /// (its prompt may speak the balance). `None` when not flagged.
    pub(crate) async fn client_facts(
        &self,
        client_id: i64,
    ) -> Result<Option<ClientFacts>, BillingError> {
        let row: Option<Row> = self
            .conn()
            .await?
            .exec_first(format!("{FACTS_SELECT} AND a.id = ?"), (client_id,))
            .await?;
        Ok(row.and_then(facts_from_row))
    }

    /// The attempt's claim when it is still open (claimed, no outcome).
    pub(crate) async fn open_claim(&self, claim: &Claim) -> Result<Option<Orphan>, BillingError> {
        let row: Option<(Option<String>, NaiveDateTime)> = self
            .conn()
            .await?
            .exec_first(
                "SELECT channel_id, claimed_at FROM overdue_call_log WHERE client_id = ? AND attempt_no = ? AND outcome IS NULL",
                (claim.client_id, claim.attempt_no),
            )
            .await?;
        Ok(row.map(|(channel_id, claimed_at)| Orphan {
            claim: claim.clone(),
            channel_id,
            claimed_at,
        }))
    }

    /// Attempts claimed by `host` (or by anyone before `stale_before`)
    /// that never got an outcome.
    pub(crate) async fn orphans(
        &self,
        host: &str,
        stale_before: NaiveDateTime,
    ) -> Result<Vec<Orphan>, BillingError> {
        let rows: Vec<(i64, u32, Option<String>, NaiveDateTime)> = self
            .conn()
            .await?
            .exec(
                "SELECT client_id, attempt_no, channel_id, claimed_at FROM overdue_call_log
                 WHERE outcome IS NULL AND (claimed_by = ? OR claimed_at < ?) ORDER BY id",
                (host, seconds(stale_before)),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(client_id, attempt_no, channel_id, claimed_at)| Orphan {
                claim: Claim {
                    client_id,
                    attempt_no,
                },
                channel_id,
                claimed_at,
            })
            .collect())
    }
}

// Lenient readers: billing data is typed by people and columns vary
// between installations, so a surprising value reads as "absent" rather
// than failing the whole query.

pub(super) fn as_i64(v: Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(i),
        Value::UInt(u) => i64::try_from(u).ok(),
        Value::Bytes(b) => std::str::from_utf8(&b).ok()?.trim().parse().ok(),
        _ => None,
    }
}

pub(super) fn as_string(v: Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        other => Some(other.as_sql(true)),
    }
}

fn as_datetime(v: Value) -> Option<NaiveDateTime> {
    match v {
        Value::NULL => None,
        other => mysql_async::from_value_opt::<NaiveDateTime>(other).ok(),
    }
}

fn facts_from_row(row: Row) -> Option<ClientFacts> {
    let mut cols = row.unwrap_raw().into_iter();
    let mut next = move || cols.next().flatten().unwrap_or(Value::NULL);
    let raw_id = next();
    let Some(id) = as_i64(raw_id.clone()) else {
        tracing::warn!(id = %raw_id.as_sql(true), "afiliados row with an unreadable id skipped");
        return None;
    };
    let telefono = as_string(next());
    let corte = as_i64(next());
    let is_sent = as_i64(next()).unwrap_or(0) != 0;
    let attempts = as_i64(next()).map_or(0, |n| u32::try_from(n).unwrap_or(0));
    let open_balance = as_string(next());
    let has_open_invoice = open_balance.is_some();
    let attempt_no = as_i64(next());
    let outcome = as_string(next());
    let ended_at = as_datetime(next());
    let phone_raw = as_string(next());
    let last_contact = as_datetime(next());
    let opted_out = as_i64(next()).unwrap_or(0) != 0;
    let last_attempt = attempt_no.map(|n| LastAttempt {
        attempt_no: u32::try_from(n).unwrap_or(0),
        outcome: outcome.map(|o| o.parse().unwrap_or(Outcome::Failed)),
        ended_at,
        phone_raw,
    });
    Some(ClientFacts {
        id,
        telefono,
        corte,
        is_sent,
        attempts,
        has_open_invoice,
        open_balance,
        last_attempt,
        last_contact,
        opted_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_ids_map_back_to_their_attempt() {
        let claim = Claim {
            client_id: 42,
            attempt_no: 3,
        };
        assert_eq!(
            Claim::from_channel_id(&claim.channel_id()),
            Some(claim.clone())
        );
        assert_eq!(Claim::from_channel_id("overdue-42-3-2"), Some(claim));
        for other in [
            "overdue-42",
            "overdue-x-3",
            "overdue-42-3-2-1",
            "overdue-42-3-a",
            "1795264373.12",
            "overdue-42-3;2",
            "",
        ] {
            assert_eq!(Claim::from_channel_id(other), None, "{other}");
        }
    }
}
