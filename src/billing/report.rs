//! `overdue-dialer report`: outcome counts per day and trunk from the call
//! log (README "Commands"), for operators and billing staff.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{NaiveDate, NaiveDateTime};
use mysql_async::prelude::*;

use super::{Billing, BillingError};

/// (day, trunk) → outcome → count. Attempts never dialled have trunk "-".
pub type Counts = BTreeMap<(NaiveDate, String), BTreeMap<String, u64>>;

impl Billing {
    /// Finished attempts since `since` (local time).
    pub async fn outcome_counts(&self, since: NaiveDateTime) -> Result<Counts, BillingError> {
        let rows: Vec<(NaiveDate, Option<String>, String, u64)> = self
            .conn()
            .await?
            .exec(
                "SELECT DATE(ended_at), trunk, outcome, COUNT(*) FROM overdue_call_log
                 WHERE outcome IS NOT NULL AND ended_at >= ? GROUP BY DATE(ended_at), trunk, outcome",
                (since,),
            )
            .await?;
        let mut counts = Counts::new();
        for (day, trunk, outcome, n) in rows {
            *counts
                .entry((day, trunk.unwrap_or_else(|| "-".into())))
                .or_default()
                .entry(outcome)
                .or_insert(0) += n;
        }
        Ok(counts)
    }

    /// Inbound calls since `since` per day and how they ended, with the
    /// promises to pay taken per day (README "The voice agent").
    pub async fn inbound_counts(
        &self,
        since: NaiveDateTime,
    ) -> Result<InboundCounts, BillingError> {
        let mut conn = self.conn().await?;
        let calls: Vec<(NaiveDate, Option<String>, u64)> = conn
            .exec(
                "SELECT DATE(started_at), how, COUNT(*) FROM overdue_inbound_log
                 WHERE started_at >= ? GROUP BY DATE(started_at), how",
                (since,),
            )
            .await?;
        let promises: Vec<(NaiveDate, u64)> = conn
            .exec(
                "SELECT DATE(created_at), COUNT(*) FROM overdue_payment_promise
                 WHERE created_at >= ? GROUP BY DATE(created_at)",
                (since,),
            )
            .await?;
        let opt_outs: Vec<(NaiveDate, u64)> = conn
            .exec(
                "SELECT DATE(opted_out_at), COUNT(*) FROM overdue_opt_out
                 WHERE opted_out_at >= ? GROUP BY DATE(opted_out_at)",
                (since,),
            )
            .await?;
        let mut counts = InboundCounts::new();
        for (day, n) in opt_outs {
            counts.entry(day).or_default().2 += n;
        }
        for (day, how, n) in calls {
            // A call still in progress (or cut by a crash) has no `how` yet.
            let how = how.unwrap_or_else(|| "in_progress".into());
            *counts.entry(day).or_default().0.entry(how).or_insert(0) += n;
        }
        for (day, n) in promises {
            counts.entry(day).or_default().1 += n;
        }
        Ok(counts)
    }
}

/// day → (how the inbound calls ended → count, promises to pay taken,
/// clients who opted out).
pub type InboundCounts = BTreeMap<NaiveDate, (BTreeMap<String, u64>, u64, u64)>;

/// One line per day: inbound calls by how they ended, and promises.
pub fn render_inbound(counts: &InboundCounts) -> String {
    let mut out = String::from("INBOUND CALLS (how they ended), PROMISES TO PAY, OPT-OUTS\n");
    if counts.is_empty() {
        out.push_str("(none)\n");
    }
    for (day, (hows, promises, opt_outs)) in counts {
        let total: u64 = hows.values().sum();
        let detail: Vec<String> = hows.iter().map(|(h, n)| format!("{h} {n}")).collect();
        let _ = writeln!(
            out,
            "{day}  calls {total:>5}  promises {promises:>4}  opt-outs {opt_outs:>4}  ({})",
            detail.join(", ")
        );
    }
    out
}

/// A table: one row per day and trunk, one column per outcome seen.
pub fn render(counts: &Counts) -> String {
    let mut outcomes: Vec<&String> = counts.values().flat_map(|m| m.keys()).collect();
    outcomes.sort();
    outcomes.dedup();
    let mut out = String::new();
    let _ = write!(out, "{:<10}  {:<14}", "DAY", "TRUNK");
    for o in &outcomes {
        let _ = write!(out, "  {o:>14}");
    }
    let _ = writeln!(out, "  {:>7}", "TOTAL");
    let mut totals: BTreeMap<&String, u64> = BTreeMap::new();
    for ((day, trunk), by_outcome) in counts {
        let _ = write!(out, "{:<10}  {:<14}", day.to_string(), trunk);
        for o in &outcomes {
            let n = by_outcome.get(*o).copied().unwrap_or(0);
            *totals.entry(o).or_insert(0) += n;
            let _ = write!(out, "  {n:>14}");
        }
        let _ = writeln!(out, "  {:>7}", by_outcome.values().sum::<u64>());
    }
    let _ = write!(out, "{:<10}  {:<14}", "all", "");
    for o in &outcomes {
        let _ = write!(out, "  {:>14}", totals.get(o).copied().unwrap_or(0));
    }
    let _ = writeln!(out, "  {:>7}", totals.values().sum::<u64>());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_day_and_trunk_and_totals() {
        let d = |s| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let mut c = Counts::new();
        c.entry((d("2026-11-20"), "t1".into()))
            .or_default()
            .insert("completed".into(), 3);
        c.entry((d("2026-11-20"), "t1".into()))
            .or_default()
            .insert("busy".into(), 1);
        c.entry((d("2026-11-21"), "-".into()))
            .or_default()
            .insert("invalid_number".into(), 2);
        let t = render(&c);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].contains("busy")
                && lines[0].contains("completed")
                && lines[0].contains("invalid_number")
        );
        assert!(lines[1].starts_with("2026-11-20") && lines[1].trim_end().ends_with('4'));
        assert!(lines[3].starts_with("all") && lines[3].trim_end().ends_with('6'));
    }
}
