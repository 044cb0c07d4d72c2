//! What a prompt's media list becomes for one client (README "Prompts"):
//! `{saldo}` is the open balance in whole pesos, `{corte}` the cut-off day.
//! Shared by the reminder call and the voice agent's fallback prompt.

/// The media list with `{saldo}` and `{corte}` filled in. An unknown
/// balance reads as 0 and an unknown cut-off day as empty, so a prompt
/// never carries a placeholder to Asterisk.
pub fn fill(media: &[String], balance: Option<&str>, corte: Option<i64>) -> Vec<String> {
    let saldo = balance
        .and_then(super::inbound::whole_pesos)
        .unwrap_or(0)
        .to_string();
    let corte = corte.map_or_else(String::new, |c| c.to_string());
    media
        .iter()
        .map(|m| m.replace("{saldo}", &saldo).replace("{corte}", &corte))
        .collect()
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
        assert_eq!(
            fill(&media, Some("85000.00"), Some(15)),
            ["sound:saldo", "number:85000", "number:15"]
        );
        assert_eq!(
            fill(&media, None, None),
            ["sound:saldo", "number:0", "number:"]
        );
        assert_eq!(fill(&media, Some("n/a"), None)[1], "number:0");
    }
}
