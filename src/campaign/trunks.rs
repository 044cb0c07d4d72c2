//! Trunks (SPEC §8): endpoint templates and how a number becomes a dial string.

/// Checks an ARI endpoint template such as `PJSIP/{number}@voip_issabel`,
/// `SIP/voip_issabel/{number}` or `Local/{number}@from-voip`.
/// On failure, says what was expected (for the config error).
pub fn check_endpoint_template(template: &str) -> Result<(), String> {
    let expected = "a template like \"PJSIP/{number}@trunk\" with {number} exactly once";
    let Some((tech, resource)) = template.split_once('/') else {
        return Err(format!(
            "{expected}, found {template:?} (no technology/ prefix)"
        ));
    };
    if tech.is_empty() || !tech.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{expected}, found {template:?} (bad technology {tech:?})"
        ));
    }
    if resource.matches("{number}").count() != 1 {
        return Err(format!("{expected}, found {template:?}"));
    }
    if template
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{expected}, found {template:?} (contains whitespace)"
        ));
    }
    let rest = resource.replace("{number}", "");
    if rest.contains('{') || rest.contains('}') {
        return Err(format!(
            "{expected}, found {template:?} (unknown placeholder)"
        ));
    }
    Ok(())
}

/// The endpoint to originate to for these national digits.
pub fn dial_string(template: &str, national: &str) -> String {
    template.replace("{number}", national)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        for ok in [
            "PJSIP/{number}@voip_issabel",
            "SIP/voip_issabel/{number}",
            "Local/{number}@from-voip",
            "PJSIP/57{number}@t",
        ] {
            assert_eq!(check_endpoint_template(ok), Ok(()), "{ok}");
        }
        for bad in [
            "PJSIP/voip_issabel",
            "{number}",
            "PJSIP/{number}@{trunk}",
            "PJ SIP/{number}",
            "/{number}",
            "PJSIP/{number}{number}",
            "PJSIP/{number} @x",
        ] {
            assert!(check_endpoint_template(bad).is_err(), "{bad}");
        }
        assert_eq!(
            dial_string("SIP/voip_issabel/{number}", "3001234567"),
            "SIP/voip_issabel/3001234567"
        );
    }
}
