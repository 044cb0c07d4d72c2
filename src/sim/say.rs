//! How long Asterisk takes to say `number:` and `digits:` media. A test
//! that checks how long a prompt with the balance in it lasts needs a
//! length that grows as the spoken number does, not per character:
//! 125000 is three words in Spanish ("ciento veinticinco mil") but six
//! characters. Every language has these (they are built from the core
//! `digits/` sounds), so they play whatever the `lang`.
//!
//! Each word is one core sound file, `SPOKEN_WORD` long: about what
//! Asterisk's `digits/` files last. The words are counted as Asterisk's
//! `ast_say_number_full_es` (any `es…` language) and
//! `ast_say_number_full_en` (everything else) pick files.

use std::time::Duration;

/// One spoken word (one `digits/…` file).
pub const SPOKEN_WORD: Duration = Duration::from_millis(600);

/// Words spoken for `number:<arg>`, or `None` when Asterisk fails it.
/// Asterisk reads the number with `sscanf("%d")`: an optional sign and
/// leading digits, anything after them ignored (`12.5` says 12).
pub fn number_words(arg: &str, lang: &str) -> Option<usize> {
    let (negative, rest) = match arg.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, arg.strip_prefix('+').unwrap_or(arg)),
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    // More than an i32 holds: `%30d` overflows; treat it as unplayable.
    let n: u64 = digits.parse().ok().filter(|n| *n <= i32::MAX as u64)?;
    let words = if lang.starts_with("es") {
        spanish(n)
    } else {
        english(n)
    };
    Some(words + usize::from(negative && n > 0))
}

/// Words spoken for `digits:<arg>`: one per digit, `*` or `#`; `None` for
/// nothing to say.
pub fn digit_words(arg: &str) -> Option<usize> {
    let words = arg
        .chars()
        .filter(|c| c.is_ascii_digit() || matches!(c, '*' | '#'))
        .count();
    (words > 0).then_some(words)
}

fn english(n: u64) -> usize {
    match n {
        0..=19 => 1,
        20..=99 => 1 + usize::from(n % 10 != 0),
        100..=999 => 2 + if n % 100 == 0 { 0 } else { english(n % 100) },
        1_000..=999_999 => english(n / 1_000) + 1 + rest(n % 1_000, english),
        _ => english(n / 1_000_000) + 1 + rest(n % 1_000_000, english),
    }
}

/// Spanish: a file per number up to 30, "treinta y uno" as three, one
/// file per hundred ("doscientos"), "mil", "un millón" / "N millones".
fn spanish(n: u64) -> usize {
    match n {
        0..=30 => 1,
        31..=99 => 1 + if n % 10 == 0 { 0 } else { 2 },
        100..=999 => 1 + rest(n % 100, spanish),
        1_000..=1_999 => 1 + rest(n % 1_000, spanish),
        2_000..=999_999 => spanish(n / 1_000) + 1 + rest(n % 1_000, spanish),
        1_000_000..=1_999_999 => 2 + rest(n % 1_000_000, spanish),
        _ => spanish(n / 1_000_000) + 1 + rest(n % 1_000_000, spanish),
    }
}

/// The words for what is left after a group, none for zero.
fn rest(n: u64, say: fn(u64) -> usize) -> usize {
    if n == 0 {
        0
    } else {
        say(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spanish_words() {
        for (n, words) in [
            ("0", 1),
            ("15", 1),
            ("30", 1),
            ("31", 3),
            ("40", 1),
            ("100", 1),
            ("125", 2),
            ("1000", 1),
            ("2000", 2),
            ("125000", 3),
            ("85000", 4),
            ("1000000", 2),
            ("-5", 2),
        ] {
            assert_eq!(number_words(n, "es_MX"), Some(words), "{n}");
        }
    }

    #[test]
    fn english_words() {
        for (n, words) in [
            ("0", 1),
            ("19", 1),
            ("25", 2),
            ("125000", 5),
            ("2000000", 2),
        ] {
            assert_eq!(number_words(n, "en"), Some(words), "{n}");
        }
    }

    #[test]
    fn what_asterisk_cannot_say() {
        assert_eq!(number_words("", "es"), None);
        assert_eq!(number_words("abc", "es"), None);
        assert_eq!(number_words("99999999999", "es"), None);
        assert_eq!(number_words("12.5", "es"), Some(1), "read as 12");
        assert_eq!(digit_words(""), None);
        assert_eq!(digit_words("12#"), Some(3));
    }
}
