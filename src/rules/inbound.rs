//! The voice agent's rules (README "The voice agent"): who is calling, what
//! the agent may know about them, when a promise to pay is acceptable, and
//! the words that end up in its instructions.
//!
//! The agent must never read out another client's account, so matching is
//! strict: the caller id must normalise to a mobile, and exactly one client
//! may hold that mobile in any of the numbers of its `telefono` field.

use chrono::{Datelike, Duration, NaiveDate};

use super::cutoff::{days_in_month, valid_corte};
use super::phone::{mobiles, normalize, Mobile};

/// Who the caller is, as far as the billing database can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerMatch {
    /// Exactly one client holds the caller's mobile.
    One(i64),
    /// The caller id is missing or is not a mobile (withheld, a landline …).
    NoMobile(String),
    /// No client holds this mobile.
    Unknown,
    /// Several clients share it: the agent knows nothing about any of them.
    Several(Vec<i64>),
    /// The reminder call to this client handed the callee over (keypad
    /// `agent`): who it is was known before the call.
    Reminder(i64),
}

impl CallerMatch {
    /// The client whose account the agent may talk about.
    pub fn client(&self) -> Option<i64> {
        match self {
            CallerMatch::One(id) | CallerMatch::Reminder(id) => Some(*id),
            _ => None,
        }
    }

    /// `overdue_inbound_log.match_detail`: why a client was or was not matched.
    pub fn detail(&self) -> String {
        match self {
            CallerMatch::One(_) => "one client".into(),
            CallerMatch::Reminder(_) => "handed over by the reminder call".into(),
            CallerMatch::NoMobile(why) => format!("caller id not a mobile: {why}"),
            CallerMatch::Unknown => "no client has this number".into(),
            CallerMatch::Several(ids) => format!(
                "{} clients share this number ({})",
                ids.len(),
                ids.iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The caller's mobile, or why there is none to look up.
pub fn caller_mobile(caller_number: &str) -> Result<Mobile, String> {
    normalize(caller_number).map_err(|e| e.to_string())
}

/// Matches the caller against candidate `(client id, telefono)` rows (a
/// superset found by the database; each is checked here, number by number).
pub fn match_caller(caller: &Mobile, candidates: &[(i64, Option<String>)]) -> CallerMatch {
    let mut ids: Vec<i64> = candidates
        .iter()
        .filter(|(_, tel)| {
            tel.as_deref()
                .is_some_and(|t| mobiles(t).iter().any(|m| m == caller))
        })
        .map(|(id, _)| *id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    match ids.as_slice() {
        [] => CallerMatch::Unknown,
        [one] => CallerMatch::One(*one),
        _ => CallerMatch::Several(ids),
    }
}

/// A SQL `LIKE` pattern that every spelling of this mobile matches (its
/// digits in order, anything between): the database narrows the clients
/// down, [`match_caller`] decides.
pub fn like_pattern(caller: &Mobile) -> String {
    let mut p = String::from("%");
    for c in caller.national().chars() {
        p.push(c);
        p.push('%');
    }
    p
}

/// What the agent knows about a matched client (README "The voice agent").
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub client_id: i64,
    /// Sum of open balances in whole pesos.
    pub balance_pesos: i64,
    pub open_invoices: u32,
    /// The raw `corte`; `None` when it is not a day of the month.
    pub corte: Option<u32>,
    /// A reminder call reached this client and was heard.
    pub reminder_delivered: bool,
}

/// The next cut-off date on or after `today` for cut-off day `corte`
/// (clamped to short months, as the cut-off rule does).
pub fn next_cutoff(today: NaiveDate, corte: u32) -> NaiveDate {
    let this_month = corte.min(days_in_month(today));
    if today.day() <= this_month {
        return today.with_day(this_month).unwrap_or(today);
    }
    let (y, m) = if today.month() == 12 {
        (today.year() + 1, 1)
    } else {
        (today.year(), today.month() + 1)
    };
    let first = NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(today);
    first
        .with_day(corte.min(days_in_month(first)))
        .unwrap_or(first)
}

const MESES: [&str; 12] = [
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    "septiembre",
    "octubre",
    "noviembre",
    "diciembre",
];

/// "15 de diciembre".
pub fn fecha_es(date: NaiveDate) -> String {
    format!("{} de {}", date.day(), MESES[date.month0() as usize])
}

/// A balance as MySQL printed it (`"85000.00"`) in whole pesos; anything
/// unreadable is `None`, never a guess.
pub fn whole_pesos(balance: &str) -> Option<i64> {
    let whole = balance.trim().split('.').next()?;
    whole.parse().ok()
}

/// The account part of the agent's instructions: the matched client's
/// facts, or a plain statement that it knows nothing. Nothing else about
/// the database ever reaches the model.
pub fn account_facts(account: Option<&Account>, today: NaiveDate) -> String {
    let Some(a) = account else {
        return "No se pudo identificar al cliente por su número: no conoces ningún dato de \
                ninguna cuenta. Si pregunta por su saldo, explícale que no puedes consultarlo \
                por esta línea y ofrécele hablar con un asesor."
            .into();
    };
    let corte = match a.corte {
        Some(day) => format!(
            "Su día de corte es el {day} de cada mes; el próximo corte es el {}.",
            fecha_es(next_cutoff(today, day))
        ),
        None => "No se conoce su día de corte.".into(),
    };
    let reminder = if a.reminder_delivered {
        "Ya recibió una llamada de recordatorio."
    } else {
        "No ha recibido llamada de recordatorio."
    };
    format!(
        "Cliente identificado. Saldo pendiente: {} pesos en {} factura(s) abierta(s). {corte} {reminder}",
        a.balance_pesos, a.open_invoices
    )
}

/// Fills the instruction template: `{cuenta}` becomes [`account_facts`];
/// without `{cuenta}` the facts are appended, so a template edit cannot
/// leave the agent without them.
pub fn instructions(template: &str, account: Option<&Account>, today: NaiveDate) -> String {
    let facts = account_facts(account, today);
    if template.contains("{cuenta}") {
        template.replace("{cuenta}", &facts)
    } else {
        format!("{template}\n\n{facts}")
    }
}

/// The longest a promise to pay may reach ahead.
pub const PROMISE_MAX_DAYS: i64 = 60;

/// A promise the agent may record.
#[derive(Debug, Clone, PartialEq)]
pub struct Promise {
    pub date: NaiveDate,
    /// Whole pesos; `None` when the caller named no amount.
    pub amount: Option<i64>,
}

/// Checks `registrar_promesa_de_pago`'s arguments (JSON text from the
/// model). The error is a sentence the model can relay to the caller.
pub fn check_promise(arguments: &str, today: NaiveDate) -> Result<Promise, String> {
    let v: serde_json::Value =
        serde_json::from_str(arguments).map_err(|_| "argumentos no son JSON válido".to_owned())?;
    let fecha = v
        .get("fecha")
        .and_then(|f| f.as_str())
        .ok_or_else(|| "falta la fecha (AAAA-MM-DD)".to_owned())?;
    let date = NaiveDate::parse_from_str(fecha.trim(), "%Y-%m-%d")
        .map_err(|_| format!("fecha {fecha:?} no tiene el formato AAAA-MM-DD"))?;
    if date < today {
        return Err(format!("la fecha {date} ya pasó; pide una fecha desde hoy"));
    }
    if date > today + Duration::days(PROMISE_MAX_DAYS) {
        return Err(format!(
            "la fecha {date} está a más de {PROMISE_MAX_DAYS} días; pide una fecha más cercana"
        ));
    }
    let amount = match v.get("monto") {
        None | Some(serde_json::Value::Null) => None,
        Some(m) => {
            let n = m
                .as_f64()
                .or_else(|| m.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| format!("monto {m} no es un número"))?;
            if !(n > 0.0 && n < 1e12) {
                return Err(format!("monto {m} debe ser mayor que cero"));
            }
            Some(n.round() as i64)
        }
    };
    Ok(Promise { date, amount })
}

/// How an inbound call ended (`overdue_inbound_log.how`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// The agent ended the call (`finalizar_llamada`).
    Agent,
    Transferred,
    CallerHungUp,
    MaxLength,
    FallbackNoKey,
    FallbackUnreachable,
    FallbackRefused,
    FallbackBusy,
    Error,
}

impl How {
    pub fn as_str(self) -> &'static str {
        match self {
            How::Agent => "agent",
            How::Transferred => "transferred",
            How::CallerHungUp => "caller_hung_up",
            How::MaxLength => "max_length",
            How::FallbackNoKey => "fallback_no_key",
            How::FallbackUnreachable => "fallback_unreachable",
            How::FallbackRefused => "fallback_refused",
            How::FallbackBusy => "fallback_busy",
            How::Error => "error",
        }
    }

    pub const ALL: [How; 9] = [
        How::Agent,
        How::Transferred,
        How::CallerHungUp,
        How::MaxLength,
        How::FallbackNoKey,
        How::FallbackUnreachable,
        How::FallbackRefused,
        How::FallbackBusy,
        How::Error,
    ];
}

impl std::fmt::Display for How {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `corte` column's value as the agent may use it.
pub fn corte_day(raw: Option<i64>) -> Option<u32> {
    valid_corte(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn mobile(s: &str) -> Mobile {
        normalize(s).unwrap()
    }

    #[test]
    fn exactly_one_client_is_a_match() {
        let caller = mobile("3001234567");
        let rows = vec![
            (7, Some("604 444 1234 / 300 123 4567".to_owned())),
            (8, Some("3001234568".to_owned())),
            // The LIKE pattern lets this through; it is a different number.
            (9, Some("3 0 0 1 2 3 4 5 6 7 8".to_owned())),
            (10, None),
        ];
        assert_eq!(match_caller(&caller, &rows), CallerMatch::One(7));
        assert_eq!(match_caller(&caller, &rows[1..]), CallerMatch::Unknown);
        let shared = vec![
            (3, Some("+57 300 123 4567".to_owned())),
            (2, Some("3001234567".to_owned())),
        ];
        let m = match_caller(&caller, &shared);
        assert_eq!(m, CallerMatch::Several(vec![2, 3]));
        assert_eq!(m.client(), None);
        assert!(m.detail().contains("2 clients"));
    }

    #[test]
    fn the_like_pattern_finds_every_spelling() {
        let p = like_pattern(&mobile("3001234567"));
        assert_eq!(p, "%3%0%0%1%2%3%4%5%6%7%");
    }

    #[test]
    fn caller_ids_that_are_not_mobiles() {
        assert!(caller_mobile("").is_err());
        assert!(caller_mobile("6044441234").is_err());
        assert!(caller_mobile("anonymous").is_err());
        assert_eq!(
            caller_mobile("+573001234567").unwrap().national(),
            "3001234567"
        );
    }

    #[test]
    fn next_cutoff_dates() {
        assert_eq!(next_cutoff(d(2026, 11, 23), 15), d(2026, 12, 15));
        assert_eq!(next_cutoff(d(2026, 11, 15), 15), d(2026, 11, 15));
        assert_eq!(next_cutoff(d(2026, 12, 20), 5), d(2027, 1, 5));
        assert_eq!(next_cutoff(d(2027, 2, 10), 31), d(2027, 2, 28));
        assert_eq!(next_cutoff(d(2027, 1, 31), 30), d(2027, 2, 28));
        assert_eq!(fecha_es(d(2026, 12, 15)), "15 de diciembre");
    }

    #[test]
    fn balances_in_whole_pesos() {
        assert_eq!(whole_pesos("85000.00"), Some(85000));
        assert_eq!(whole_pesos(" 12 "), Some(12));
        assert_eq!(whole_pesos("abc"), None);
    }

    #[test]
    fn instructions_hold_only_the_matched_account() {
        let a = Account {
            client_id: 7,
            balance_pesos: 85000,
            open_invoices: 2,
            corte: Some(15),
            reminder_delivered: true,
        };
        let today = d(2026, 11, 23);
        let known = instructions("Eres un agente. {cuenta} Sé breve.", Some(&a), today);
        assert!(known.contains("85000 pesos en 2 factura"));
        assert!(known.contains("15 de diciembre"));
        assert!(known.starts_with("Eres un agente. Cliente identificado"));
        let unknown = instructions("Eres un agente.", None, today);
        assert!(unknown.contains("no conoces ningún dato"));
        assert!(!unknown.chars().any(|c| c.is_ascii_digit()));
    }

    #[test]
    fn promises_between_today_and_sixty_days() {
        let today = d(2026, 11, 23);
        let ok = check_promise(r#"{"fecha":"2026-11-30","monto":85000}"#, today).unwrap();
        assert_eq!(ok.date, d(2026, 11, 30));
        assert_eq!(ok.amount, Some(85000));
        let no_amount = check_promise(r#"{"fecha":"2026-11-23"}"#, today).unwrap();
        assert_eq!(no_amount.amount, None);
        assert_eq!(
            check_promise(r#"{"fecha":"2027-01-22","monto":"50000"}"#, today)
                .unwrap()
                .amount,
            Some(50000)
        );
        for bad in [
            r#"{"fecha":"2026-11-22"}"#,
            r#"{"fecha":"2027-01-23"}"#,
            r#"{"fecha":"30/11/2026"}"#,
            r#"{"monto":5}"#,
            r#"{"fecha":"2026-11-30","monto":-5}"#,
            r#"{"fecha":"2026-11-30","monto":"mucho"}"#,
            "not json",
        ] {
            assert!(check_promise(bad, today).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_how_has_its_column_value() {
        let names: Vec<&str> = How::ALL.iter().map(|h| h.as_str()).collect();
        assert_eq!(
            names,
            [
                "agent",
                "transferred",
                "caller_hung_up",
                "max_length",
                "fallback_no_key",
                "fallback_unreachable",
                "fallback_refused",
                "fallback_busy",
                "error"
            ]
        );
    }
}
