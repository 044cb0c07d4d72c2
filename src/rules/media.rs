//! What a prompt's media list becomes for one client (README "Prompts"):
//! `{saldo}` is the open balance in whole pesos, `{corte}` the cut-off day,
//! `{corte_fecha}` the next cut-off date spoken in Spanish; and which
//! sound files such a list may need (for `check`). Shared by the reminder
//! call and the voice agent's fallback prompt.

use std::collections::BTreeSet;

use chrono::{Datelike, NaiveDate};

use super::inbound::next_cutoff;

/// The media list with `{saldo}` and `{corte}` filled in, and an entry
/// `{corte_fecha}` replaced by the next cut-off date on or after `today`
/// as Asterisk says it in Spanish ("15 de diciembre": `number:15`,
/// `sound:digits/es-de`, `sound:digits/mon-11`). An unknown balance reads
/// as 0, an unknown cut-off day as empty and an unknown date as nothing,
/// so a prompt never carries a placeholder to Asterisk.
pub fn fill(
    media: &[String],
    balance: Option<&str>,
    corte: Option<i64>,
    today: NaiveDate,
) -> Vec<String> {
    let saldo = balance
        .and_then(super::inbound::whole_pesos)
        .unwrap_or(0)
        .to_string();
    let day = corte
        .and_then(|c| u32::try_from(c).ok())
        .filter(|c| (1..=31).contains(c));
    let corte = corte.map_or_else(String::new, |c| c.to_string());
    let mut out = Vec::with_capacity(media.len() + 2);
    for m in media {
        if m == CORTE_FECHA {
            if let Some(day) = day {
                out.extend(spoken_date(next_cutoff(today, day)));
            }
            continue;
        }
        out.push(m.replace("{saldo}", &saldo).replace("{corte}", &corte));
    }
    out
}

/// The placeholder that becomes the spoken next cut-off date.
pub const CORTE_FECHA: &str = "{corte_fecha}";

/// "15 de diciembre" with the Spanish core sounds.
pub fn spoken_date(date: NaiveDate) -> [String; 3] {
    [
        format!("number:{}", date.day()),
        "sound:digits/es-de".to_owned(),
        format!("sound:digits/mon-{}", date.month0()),
    ]
}

/// Every sound file the media may make Asterisk play in a Spanish
/// language (`es`, `es_MX`, …): the `sound:` entries themselves, the
/// files its Spanish number syntax uses for a `number:` entry (any
/// amount, when it holds a placeholder), and those of a spoken date.
pub fn sounds_needed(media: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in media {
        if m == CORTE_FECHA {
            for d in 1..=31 {
                out.extend(spanish_number_sounds(d));
            }
            out.insert("digits/es-de".to_owned());
            out.extend((0..12).map(|m| format!("digits/mon-{m}")));
        } else if let Some(sound) = m.strip_prefix("sound:") {
            out.insert(sound.to_owned());
        } else if let Some(n) = m.strip_prefix("number:") {
            match n.parse::<u64>() {
                Ok(n) => out.extend(spanish_number_sounds(n)),
                // A placeholder: any amount.
                Err(_) => {
                    out.extend(
                        (0..=30)
                            .chain((40..=90).step_by(10))
                            .map(|n| format!("digits/{n}")),
                    );
                    out.extend((100..=900).step_by(100).map(|n| format!("digits/{n}")));
                    for w in ["y", "cien", "mil", "millon", "millones"] {
                        out.insert(format!("digits/{w}"));
                    }
                }
            }
        }
    }
    out
}

/// The files Asterisk's Spanish number syntax plays for `n`
/// (`ast_say_number_full_es`): 1–30 whole, tens "y" units, "cien" for
/// 100 exactly, hundreds, "mil", "millón"/"millones".
pub fn spanish_number_sounds(n: u64) -> Vec<String> {
    let mut out = Vec::new();
    if n == 0 {
        out.push("digits/0".to_owned());
        return out;
    }
    let mut n = n;
    while n > 0 {
        if n < 31 {
            out.push(format!("digits/{n}"));
            n = 0;
        } else if n < 100 {
            out.push(format!("digits/{}", n / 10 * 10));
            n %= 10;
            if n > 0 {
                out.push("digits/y".to_owned());
            }
        } else if n == 100 {
            out.push("digits/cien".to_owned());
            n = 0;
        } else if n < 1_000 {
            out.push(format!("digits/{}", n / 100 * 100));
            n %= 100;
        } else if n < 1_000_000 {
            out.extend(spanish_number_sounds(n / 1_000));
            out.push("digits/mil".to_owned());
            n %= 1_000;
        } else {
            let millions = n / 1_000_000;
            out.extend(spanish_number_sounds(millions));
            out.push(
                if millions == 1 {
                    "digits/millon"
                } else {
                    "digits/millones"
                }
                .to_owned(),
            );
            n %= 1_000_000;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled() {
        let media = vec![
            "sound:saldo".to_owned(),
            "number:{saldo}".to_owned(),
            "number:{corte}".to_owned(),
        ];
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        assert_eq!(
            fill(&media, Some("85000.00"), Some(15), today),
            ["sound:saldo", "number:85000", "number:15"]
        );
        assert_eq!(
            fill(&media, None, None, today),
            ["sound:saldo", "number:0", "number:"]
        );
        assert_eq!(fill(&media, Some("n/a"), None, today)[1], "number:0");
    }

    #[test]
    fn the_cut_off_date_is_spoken_as_day_de_month() {
        let media = vec!["sound:corte".to_owned(), "{corte_fecha}".to_owned()];
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        // Day 15 has passed this month: the next one is in December.
        assert_eq!(
            fill(&media, None, Some(15), today),
            [
                "sound:corte",
                "number:15",
                "sound:digits/es-de",
                "sound:digits/mon-11"
            ]
        );
        // Day 30 is still to come in November.
        assert_eq!(
            fill(&media, None, Some(30), today)[1..],
            ["number:30", "sound:digits/es-de", "sound:digits/mon-10"]
        );
        // 31 in a 30-day month is its last day (the cut-off rule).
        assert_eq!(fill(&media, None, Some(31), today)[1], "number:30");
        // Unknown or bad cut-off day: the date is left out, nothing else.
        assert_eq!(fill(&media, None, None, today), ["sound:corte"]);
        assert_eq!(fill(&media, None, Some(0), today), ["sound:corte"]);
    }

    #[test]
    fn spanish_numbers_use_asterisks_files() {
        let s = |n| spanish_number_sounds(n).join(" ");
        assert_eq!(s(0), "digits/0");
        assert_eq!(s(15), "digits/15");
        assert_eq!(s(31), "digits/30 digits/y digits/1");
        assert_eq!(s(100), "digits/cien");
        assert_eq!(s(125), "digits/100 digits/25");
        assert_eq!(s(145), "digits/100 digits/40 digits/y digits/5");
        assert_eq!(s(125_000), "digits/100 digits/25 digits/mil");
        assert_eq!(
            s(1_250_300),
            "digits/1 digits/millon digits/200 digits/50 digits/mil digits/300"
        );
        assert_eq!(s(2_000_000), "digits/2 digits/millones");
    }

    #[test]
    fn sounds_needed_cover_every_amount_and_date() {
        let media = [
            "sound:morosos_natalia".to_owned(),
            "number:{saldo}".to_owned(),
            "{corte_fecha}".to_owned(),
        ];
        let need = sounds_needed(&media);
        assert!(need.contains("morosos_natalia"));
        for n in [0, 7, 31, 99, 100, 555, 48_000, 1_000_000, 23_456_789] {
            for f in spanish_number_sounds(n) {
                assert!(need.contains(&f), "{f} for {n}");
            }
        }
        for m in 0..12 {
            assert!(need.contains(&format!("digits/mon-{m}")));
        }
        assert!(need.contains("digits/es-de"));
        assert_eq!(
            sounds_needed(&["number:15".to_owned()])
                .into_iter()
                .collect::<Vec<_>>(),
            ["digits/15"]
        );
    }
}
