//! `overdue-dialer report` (README "Commands"): what the dialer did over a
//! range of days, for operators and billing staff — outcome counts per day
//! and trunk, delivered reminders and the attempts each one took, inbound
//! calls by how they ended, promises to pay and opt-outs — as a table, CSV
//! or JSON.
//!
//! Every figure is a count of rows, so the CSV sums back to the tables: the
//! `outcome` rows of a day add up to the call-log rows that ended that day.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{Duration, NaiveDate};
use mysql_async::prelude::*;
use serde::Serialize;

use super::{Billing, BillingError};

/// One day and trunk of the call log. Attempts never dialled have trunk "-".
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrunkDay {
    pub outcomes: BTreeMap<String, u64>,
    pub delivered: u64,
}

/// One day of inbound activity.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct InboundDay {
    /// How the calls ended; a call still open (or cut by a crash before
    /// the next start) is `in_progress`.
    pub calls: BTreeMap<String, u64>,
    pub promises: u64,
    pub opt_outs: u64,
}

/// Everything `report` shows, for `from..=to` (local dates).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub outcomes: BTreeMap<NaiveDate, BTreeMap<String, TrunkDay>>,
    pub inbound: BTreeMap<NaiveDate, InboundDay>,
}

impl Report {
    /// Finished attempts of a day, all trunks.
    pub fn attempts(&self, day: &NaiveDate) -> u64 {
        self.outcomes
            .get(day)
            .map_or(0, |t| t.values().flat_map(|d| d.outcomes.values()).sum())
    }

    pub fn delivered(&self, day: &NaiveDate) -> u64 {
        self.outcomes
            .get(day)
            .map_or(0, |t| t.values().map(|d| d.delivered).sum())
    }

    fn days(&self) -> Vec<NaiveDate> {
        let mut days: Vec<NaiveDate> = self
            .outcomes
            .keys()
            .chain(self.inbound.keys())
            .copied()
            .collect();
        days.sort();
        days.dedup();
        days
    }
}

/// Day, trunk, outcome, attempts, delivered.
type OutcomeRow = (NaiveDate, Option<String>, String, u64, Option<u64>);

/// Attempts per delivered reminder (`None` when nothing was delivered).
pub fn attempts_per_delivered(attempts: u64, delivered: u64) -> Option<f64> {
    (delivered > 0).then(|| attempts as f64 / delivered as f64)
}

impl Billing {
    /// The report for `from..=to`. The inbound part is empty, not an
    /// error, on a database whose schema predates the voice agent.
    pub async fn report(&self, from: NaiveDate, to: NaiveDate) -> Result<Report, BillingError> {
        let start = from.and_time(chrono::NaiveTime::MIN);
        let end = (to + Duration::days(1)).and_time(chrono::NaiveTime::MIN);
        let mut conn = self.conn().await?;
        let rows: Vec<OutcomeRow> = conn
            .exec(
                "SELECT DATE(ended_at), trunk, outcome, COUNT(*), SUM(COALESCE(delivered, 0) <> 0)
                 FROM overdue_call_log
                 WHERE outcome IS NOT NULL AND ended_at >= ? AND ended_at < ?
                 GROUP BY DATE(ended_at), trunk, outcome",
                (start, end),
            )
            .await?;
        let mut report = Report {
            from,
            to,
            ..Report::default()
        };
        for (day, trunk, outcome, n, delivered) in rows {
            let td = report
                .outcomes
                .entry(day)
                .or_default()
                .entry(trunk.unwrap_or_else(|| "-".into()))
                .or_default();
            *td.outcomes.entry(outcome).or_insert(0) += n;
            td.delivered += delivered.unwrap_or(0);
        }
        let calls: Result<Vec<(NaiveDate, Option<String>, u64)>, _> = conn
            .exec(
                "SELECT DATE(started_at), how, COUNT(*) FROM overdue_inbound_log
                 WHERE started_at >= ? AND started_at < ? GROUP BY DATE(started_at), how",
                (start, end),
            )
            .await;
        let Ok(calls) = calls else {
            tracing::warn!("no inbound tables yet (run `schema apply`): inbound part left empty");
            return Ok(report);
        };
        for (day, how, n) in calls {
            let how = how.unwrap_or_else(|| "in_progress".into());
            *report
                .inbound
                .entry(day)
                .or_default()
                .calls
                .entry(how)
                .or_insert(0) += n;
        }
        for (day, n) in per_day(
            &mut conn,
            "overdue_payment_promise",
            "created_at",
            start,
            end,
        )
        .await?
        {
            report.inbound.entry(day).or_default().promises += n;
        }
        for (day, n) in per_day(&mut conn, "overdue_opt_out", "opted_out_at", start, end).await? {
            report.inbound.entry(day).or_default().opt_outs += n;
        }
        Ok(report)
    }
}

/// Rows of `table` per local day of `column`, in `[start, end)`. The names
/// are this module's constants, never input.
async fn per_day(
    conn: &mut mysql_async::Conn,
    table: &str,
    column: &str,
    start: chrono::NaiveDateTime,
    end: chrono::NaiveDateTime,
) -> Result<Vec<(NaiveDate, u64)>, BillingError> {
    let sql = format!(
        "SELECT DATE({column}), COUNT(*) FROM {table}
         WHERE {column} >= ? AND {column} < ? GROUP BY DATE({column})"
    );
    Ok(conn.exec(sql, (start, end)).await?)
}

/// The table for a terminal: outcomes per day and trunk, then one line per
/// day of delivered reminders and inbound activity.
pub fn render_table(r: &Report) -> String {
    let mut outcomes: Vec<&String> = r
        .outcomes
        .values()
        .flat_map(|t| t.values().flat_map(|d| d.outcomes.keys()))
        .collect();
    outcomes.sort();
    outcomes.dedup();
    let mut out = String::new();
    let _ = writeln!(out, "From {} to {}\n", r.from, r.to);
    let _ = write!(out, "{:<10}  {:<14}", "DAY", "TRUNK");
    for o in &outcomes {
        let _ = write!(out, "  {o:>14}");
    }
    let _ = writeln!(out, "  {:>7}  {:>9}", "TOTAL", "DELIVERED");
    let mut totals: BTreeMap<&String, u64> = BTreeMap::new();
    let mut delivered_total = 0;
    for (day, trunks) in &r.outcomes {
        for (trunk, d) in trunks {
            let _ = write!(out, "{:<10}  {:<14}", day.to_string(), trunk);
            for o in &outcomes {
                let n = d.outcomes.get(*o).copied().unwrap_or(0);
                *totals.entry(o).or_insert(0) += n;
                let _ = write!(out, "  {n:>14}");
            }
            delivered_total += d.delivered;
            let _ = writeln!(
                out,
                "  {:>7}  {:>9}",
                d.outcomes.values().sum::<u64>(),
                d.delivered
            );
        }
    }
    let _ = write!(out, "{:<10}  {:<14}", "all", "");
    for o in &outcomes {
        let _ = write!(out, "  {:>14}", totals.get(o).copied().unwrap_or(0));
    }
    let attempts: u64 = totals.values().sum();
    let _ = writeln!(out, "  {attempts:>7}  {delivered_total:>9}");
    match attempts_per_delivered(attempts, delivered_total) {
        Some(a) => {
            let _ = writeln!(out, "\nAttempts per delivered reminder: {a:.2}");
        }
        None => {
            let _ = writeln!(out, "\nAttempts per delivered reminder: - (none delivered)");
        }
    }
    let _ = writeln!(
        out,
        "\nINBOUND CALLS (how they ended), PROMISES TO PAY, OPT-OUTS"
    );
    if r.inbound.is_empty() {
        out.push_str("(none)\n");
    }
    for (day, d) in &r.inbound {
        let total: u64 = d.calls.values().sum();
        let detail: Vec<String> = d.calls.iter().map(|(h, n)| format!("{h} {n}")).collect();
        let _ = writeln!(
            out,
            "{day}  calls {total:>5}  promises {:>4}  opt-outs {:>4}  ({})",
            d.promises,
            d.opt_outs,
            detail.join(", ")
        );
    }
    out
}

/// CSV, one count per row: `section,day,trunk,name,count`. Sections:
/// `outcome` (name = outcome, per trunk), `delivered` (per trunk),
/// `inbound` (name = how the call ended), `promises`, `opt_outs`.
pub fn render_csv(r: &Report) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["section", "day", "trunk", "name", "count"])?;
    for (day, trunks) in &r.outcomes {
        for (trunk, d) in trunks {
            for (outcome, n) in &d.outcomes {
                w.write_record(["outcome", &day.to_string(), trunk, outcome, &n.to_string()])?;
            }
            w.write_record([
                "delivered",
                &day.to_string(),
                trunk,
                "",
                &d.delivered.to_string(),
            ])?;
        }
    }
    for (day, d) in &r.inbound {
        for (how, n) in &d.calls {
            w.write_record(["inbound", &day.to_string(), "", how, &n.to_string()])?;
        }
        w.write_record([
            "promises",
            &day.to_string(),
            "",
            "",
            &d.promises.to_string(),
        ])?;
        w.write_record([
            "opt_outs",
            &day.to_string(),
            "",
            "",
            &d.opt_outs.to_string(),
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// JSON: the report as one object, with per-day totals and attempts per
/// delivered reminder added.
pub fn render_json(r: &Report) -> String {
    let days: Vec<serde_json::Value> = r
        .days()
        .iter()
        .map(|day| {
            let attempts = r.attempts(day);
            let delivered = r.delivered(day);
            serde_json::json!({
                "day": day,
                "trunks": r.outcomes.get(day).cloned().unwrap_or_default(),
                "attempts": attempts,
                "delivered": delivered,
                "attempts_per_delivered": attempts_per_delivered(attempts, delivered),
                "inbound": r.inbound.get(day).cloned().unwrap_or_default(),
            })
        })
        .collect();
    serde_json::json!({"from": r.from, "to": r.to, "days": days}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let mut r = Report {
            from: d("2026-11-20"),
            to: d("2026-11-21"),
            ..Report::default()
        };
        let t1 = r
            .outcomes
            .entry(d("2026-11-20"))
            .or_default()
            .entry("t1".into())
            .or_default();
        t1.outcomes.insert("completed".into(), 3);
        t1.outcomes.insert("busy".into(), 1);
        t1.delivered = 3;
        r.outcomes
            .entry(d("2026-11-21"))
            .or_default()
            .entry("-".into())
            .or_default()
            .outcomes
            .insert("invalid_number".into(), 2);
        let day = r.inbound.entry(d("2026-11-21")).or_default();
        day.calls.insert("agent".into(), 2);
        day.promises = 1;
        r
    }

    #[test]
    fn table_has_a_row_per_day_and_trunk_and_totals() {
        let t = render_table(&sample());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[2].contains("busy") && lines[2].contains("invalid_number"));
        assert!(
            lines[3].starts_with("2026-11-20") && lines[3].trim_end().ends_with(" 4          3")
        );
        assert!(lines[5].starts_with("all") && lines[5].trim_end().ends_with(" 6          3"));
        assert!(t.contains("Attempts per delivered reminder: 2.00"));
        assert!(t.contains("calls     2  promises    1"));
    }

    #[test]
    fn csv_and_json_carry_the_same_counts() {
        let r = sample();
        let csv = render_csv(&r).unwrap();
        let mut rd = csv::Reader::from_reader(csv.as_bytes());
        let outcome_sum: u64 = rd
            .records()
            .map(|rec| rec.unwrap())
            .filter(|rec| &rec[0] == "outcome")
            .map(|rec| rec[4].parse::<u64>().unwrap())
            .sum();
        assert_eq!(outcome_sum, 6);
        let json: serde_json::Value = serde_json::from_str(&render_json(&r)).unwrap();
        assert_eq!(json["days"][0]["attempts"], 4);
        assert_eq!(json["days"][0]["delivered"], 3);
        assert_eq!(json["days"][1]["inbound"]["promises"], 1);
        assert_eq!(
            json["days"][1]["attempts_per_delivered"],
            serde_json::Value::Null
        );
    }
}
