//! `overdue-dialer preview`: who would be called now, and why each other
//! flagged client would not. Reads only; never dials.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::NaiveDateTime;
use serde::Serialize;

use crate::rules::selection::{decide, ClientFacts, Decision, Policy, SkipReason};
use crate::rules::window::CallingWindow;

/// One flagged client's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub id: i64,
    /// `call` or `skip`.
    pub decision: &'static str,
    pub reason: Option<SkipReason>,
    /// E.164 when the number is a valid mobile, otherwise null.
    pub phone: Option<String>,
    /// What `telefono` holds, for staff fixing bad numbers.
    pub telefono: Option<String>,
    pub corte: Option<i64>,
}

pub fn lines(
    clients: &[ClientFacts],
    now: NaiveDateTime,
    policy: &Policy,
    window: &CallingWindow,
) -> Vec<Line> {
    clients
        .iter()
        .map(|c| {
            let phone = crate::rules::phone::normalize(c.telefono.as_deref().unwrap_or(""))
                .ok()
                .map(|m| m.e164());
            let (decision, reason) = match decide(c, now, policy, window) {
                Decision::Call(_) => ("call", None),
                Decision::Skip(r) => ("skip", Some(r)),
            };
            Line {
                id: c.id,
                decision,
                reason,
                phone,
                telefono: c.telefono.clone(),
                corte: c.corte,
            }
        })
        .collect()
}

/// Counts per reason, in the order the checks run.
pub fn counts(lines: &[Line]) -> (usize, BTreeMap<SkipReason, usize>) {
    let mut skipped = BTreeMap::new();
    let mut calls = 0;
    for l in lines {
        match l.reason {
            None => calls += 1,
            Some(r) => *skipped.entry(r).or_insert(0) += 1,
        }
    }
    (calls, skipped)
}

/// One JSON object per line, per client (`jq`-friendly, streamable).
pub fn render_json(lines: &[Line]) -> String {
    let mut out = String::new();
    for l in lines {
        // Serialising plain data into a String cannot fail.
        out.push_str(&serde_json::to_string(l).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// A table for billing staff, then the counts.
pub fn render_table(lines: &[Line], header: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    let _ = writeln!(
        out,
        "{:>8}  {:<9}  {:<24}  {:<15}  {:>5}  TELEFONO",
        "ID", "DECISION", "REASON", "PHONE", "CORTE"
    );
    for l in lines {
        let decision = if l.reason.is_none() {
            "will call"
        } else {
            "skipped"
        };
        let reason = l.reason.map_or("", SkipReason::as_str);
        let corte = l.corte.map_or_else(|| "NULL".to_owned(), |c| c.to_string());
        let telefono = l
            .telefono
            .as_deref()
            .map_or_else(|| "NULL".to_owned(), |t| format!("{t:?}"));
        let _ = writeln!(
            out,
            "{:>8}  {:<9}  {:<24}  {:<15}  {:>5}  {}",
            l.id,
            decision,
            reason,
            l.phone.as_deref().unwrap_or("-"),
            corte,
            telefono
        );
    }
    let (calls, skipped) = counts(lines);
    let _ = writeln!(
        out,
        "\n{} flagged: {} will be called, {} skipped",
        lines.len(),
        calls,
        lines.len() - calls
    );
    for reason in SkipReason::ALL {
        if let Some(n) = skipped.get(&reason) {
            let _ = writeln!(out, "  {:<26}{n:>6}", reason.as_str());
        }
    }
    out
}

/// The first line of `preview`: when, where, and whether the window is open.
pub fn header(config: &crate::config::Config, now: NaiveDateTime) -> String {
    let window = match config.window.check_local(now) {
        Ok(()) => "calling window open".to_owned(),
        Err(why) => format!("calling window closed ({why})"),
    };
    format!(
        "Preview at {} {} ({}) — {window}",
        now.format("%Y-%m-%d %H:%M"),
        config.timezone,
        now.format("%A")
    )
}
