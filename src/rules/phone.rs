//! Colombian mobile numbers (README "Who is called"): turning whatever billing staff typed
//! into `telefono` into a number we may dial, or a clear refusal.
//!
//! A mobile is 10 national digits starting with `3` (Resolución CRC 5826 de
//! 2019). Fixed lines (`60x…`), 7-digit numbers, letters and two numbers run
//! together are refused; several numbers separated by `/`, `,` or `;` are
//! tried in order and the first mobile wins.

use std::fmt;

/// A valid Colombian mobile number, stored as its 10 national digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mobile(String);

impl Mobile {
    /// The 10 national digits, for the dial string.
    pub fn national(&self) -> &str {
        &self.0
    }

    /// E.164 form (`+573XXXXXXXXX`), for logs and the call log.
    pub fn e164(&self) -> String {
        format!("+57{}", self.0)
    }

    /// All but the last 4 digits hidden, for operator logs.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

impl fmt::Display for Mobile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Why a `telefono` value cannot be dialled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhoneError {
    Empty,
    /// Something other than digits and the usual separators.
    Letters,
    /// A fixed line (10 digits starting with 60).
    Landline,
    /// Right characters, wrong shape (7 digits, 11 digits, two numbers run together …).
    NotAMobile {
        digits: usize,
    },
}

impl fmt::Display for PhoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhoneError::Empty => f.write_str("empty phone number"),
            PhoneError::Letters => f.write_str("phone number contains letters or symbols"),
            PhoneError::Landline => f.write_str("fixed line (60x), not a mobile"),
            PhoneError::NotAMobile { digits } => {
                write!(f, "{digits} digits: not a 10-digit mobile starting with 3")
            }
        }
    }
}

impl std::error::Error for PhoneError {}

/// Normalises a raw `telefono` field. Tries each `/`, `,` or `;`-separated
/// part in order and returns the first mobile; otherwise the error of the
/// first non-empty part, which is the one staff most likely meant.
pub fn normalize(raw: &str) -> Result<Mobile, PhoneError> {
    let mut first_error = None;
    for part in raw.split(['/', ',', ';']) {
        match normalize_one(part) {
            Ok(mobile) => return Ok(mobile),
            Err(PhoneError::Empty) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(PhoneError::Empty))
}

/// Every mobile in a raw `telefono` field, in order, without repeats: an
/// inbound caller is matched against all of them (README "The voice
/// agent"), not only the one the campaign dials.
pub fn mobiles(raw: &str) -> Vec<Mobile> {
    let mut out: Vec<Mobile> = Vec::new();
    for part in raw.split(['/', ',', ';']) {
        if let Ok(m) = normalize_one(part) {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    }
    out
}

fn normalize_one(part: &str) -> Result<Mobile, PhoneError> {
    let mut digits = String::with_capacity(16);
    let mut plus = false;
    for c in part.chars() {
        match c {
            '0'..='9' => digits.push(c),
            // A '+' only makes sense before any digit (`+57 …`).
            '+' if digits.is_empty() && !plus => plus = true,
            ' ' | '\t' | '.' | '-' | '(' | ')' | '\u{a0}' => {}
            _ => return Err(PhoneError::Letters),
        }
    }
    if digits.is_empty() {
        return if plus {
            Err(PhoneError::Letters)
        } else {
            Err(PhoneError::Empty)
        };
    }
    let national = if plus {
        // With a '+', the country code must be Colombia's.
        match digits.strip_prefix("57") {
            Some(rest) => rest,
            None => {
                return Err(PhoneError::NotAMobile {
                    digits: digits.len(),
                })
            }
        }
    } else if digits.len() == 14 && digits.starts_with("0057") {
        &digits[4..]
    } else if digits.len() == 12 && digits.starts_with("57") {
        &digits[2..]
    } else {
        &digits[..]
    };
    if national.len() == 10 && national.starts_with('3') {
        Ok(Mobile(national.to_owned()))
    } else if national.len() == 10 && national.starts_with("60") {
        Err(PhoneError::Landline)
    } else {
        Err(PhoneError::NotAMobile {
            digits: national.len(),
        })
    }
}

/// Hides all but the last 4 characters of a raw value, for logs about
/// numbers that did not even normalise. The length is not shown either.
pub fn mask(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().filter(|c| !c.is_whitespace()).collect();
    if chars.is_empty() {
        return "(empty)".into();
    }
    let keep = chars.len().min(4);
    let mut out = String::from("******");
    out.extend(&chars[chars.len() - keep..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Real-world spellings seen in billing data, and what they must become.
    const VALID: &[(&str, &str)] = &[
        ("3001234567", "3001234567"),
        ("300 123 4567", "3001234567"),
        ("300-123-4567", "3001234567"),
        ("300.123.4567", "3001234567"),
        ("(300) 123 4567", "3001234567"),
        ("(300)1234567", "3001234567"),
        ("+573001234567", "3001234567"),
        ("+57 300 123 4567", "3001234567"),
        ("+57-300-123-4567", "3001234567"),
        ("+57 (300) 123-4567", "3001234567"),
        ("(+57) 3001234567", "3001234567"),
        ("573001234567", "3001234567"),
        ("57 300 1234567", "3001234567"),
        ("00573001234567", "3001234567"),
        ("0057 300 123 4567", "3001234567"),
        ("  3157654321  ", "3157654321"),
        ("3157654321\t", "3157654321"),
        ("321\u{a0}456\u{a0}7890", "3214567890"),
        ("3501112233", "3501112233"),
        ("3001234567 / 3109876543", "3001234567"),
        ("6012345678 / 3109876543", "3109876543"),
        ("3109876543, 3001234567", "3109876543"),
        ("1234567; 3209876543", "3209876543"),
        ("; 3001234567", "3001234567"),
        ("3001234567/", "3001234567"),
        ("+57 311 222 3344; +57 601 234 5678", "3112223344"),
    ];

    const INVALID: &[(&str, PhoneError)] = &[
        ("", PhoneError::Empty),
        ("   ", PhoneError::Empty),
        ("/", PhoneError::Empty),
        ("6012345678", PhoneError::Landline),
        ("601 234 5678", PhoneError::Landline),
        ("+57 604 444 5566", PhoneError::Landline),
        ("2345678", PhoneError::NotAMobile { digits: 7 }),
        ("234-5678", PhoneError::NotAMobile { digits: 7 }),
        ("300123456", PhoneError::NotAMobile { digits: 9 }),
        ("30012345678", PhoneError::NotAMobile { digits: 11 }),
        ("03001234567", PhoneError::NotAMobile { digits: 11 }),
        (
            "3001234567 3109876543",
            PhoneError::NotAMobile { digits: 20 },
        ),
        (
            "30012345673109876543",
            PhoneError::NotAMobile { digits: 20 },
        ),
        ("+1 305 123 4567", PhoneError::NotAMobile { digits: 11 }),
        ("+58 412 1234567", PhoneError::NotAMobile { digits: 12 }),
        ("5730012345", PhoneError::NotAMobile { digits: 10 }),
        ("N/A", PhoneError::Letters),
        ("no tiene", PhoneError::Letters),
        ("300123456a", PhoneError::Letters),
        ("tel 3001234567", PhoneError::Letters),
        ("3001234567 ext 12", PhoneError::Letters),
        ("+", PhoneError::Letters),
        ("++573001234567", PhoneError::Letters),
        ("300#1234567", PhoneError::Letters),
        ("１２３", PhoneError::Letters),
        ("4001234567", PhoneError::NotAMobile { digits: 10 }),
        ("0000000000", PhoneError::NotAMobile { digits: 10 }),
    ];

    #[test]
    fn real_world_spellings() {
        assert!(VALID.len() + INVALID.len() >= 40);
        for (raw, want) in VALID {
            let got = normalize(raw).unwrap_or_else(|e| panic!("{raw:?} refused: {e}"));
            assert_eq!(got.national(), *want, "{raw:?}");
            assert_eq!(got.e164(), format!("+57{want}"));
        }
        for (raw, want) in INVALID {
            assert_eq!(normalize(raw).as_ref(), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn every_mobile_of_a_field() {
        let all = mobiles("604 444 1234 / 300 123 4567; +57 310-000-0001, 3001234567");
        let national: Vec<&str> = all.iter().map(Mobile::national).collect();
        assert_eq!(national, ["3001234567", "3100000001"]);
        assert!(mobiles("6044441234").is_empty());
        assert!(mobiles("").is_empty());
    }

    #[test]
    fn masking_keeps_last_four() {
        let m = normalize("+57 300 123 4567").unwrap();
        assert_eq!(m.masked(), "******4567");
        assert_eq!(m.to_string(), "******4567");
        assert_eq!(mask("12"), "******12");
        assert_eq!(mask("N/A 12345"), "******2345");
        assert_eq!(mask(" "), "(empty)");
    }

    proptest! {
        #[test]
        fn never_panics_and_valid_means_ten_digits(raw in ".{0,64}") {
            if let Ok(m) = normalize(&raw) {
                prop_assert_eq!(m.national().len(), 10);
                prop_assert!(m.national().starts_with('3'));
            }
            let _ = mask(&raw);
        }

        #[test]
        fn any_spelling_of_a_mobile_normalises(
            n in "3[0-9]{9}",
            prefix in prop::sample::select(vec!["", "+57", "57", "0057", "+57 ", "(+57) "]),
            sep in prop::sample::select(vec!["", " ", "-", "."]),
        ) {
            let spelled = format!("{prefix}{}{sep}{}{sep}{}", &n[..3], &n[3..6], &n[6..]);
            prop_assert_eq!(normalize(&spelled).map(|m| m.national().to_owned()), Ok(n));
        }
    }
}
