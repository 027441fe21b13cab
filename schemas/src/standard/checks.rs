//! Check-character algorithms of China's national identifiers.
//!
//! - Resident ID number, GB 11643: 17 digits (6-digit region code, birth
//!   date `YYYYMMDD`, 3-digit sequence) and an ISO 7064 MOD 11-2 check
//!   character, `X` standing for ten.
//! - Unified social credit code, GB 32100: 17 characters from the 31-character
//!   alphabet `0-9 A-Z` without `I O Z S V`, and a check character: the sum of
//!   each character's value times `3^i mod 31`, taken from 31.
//!
//! Each check returns the reason it fails as a fixed text: it never repeats
//! the value, so the reason can go into logs and dead-letter headers.

use super::date;

/// Weights of the 17 digits of a resident ID number: `2^(17-i) mod 11`.
const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
/// Check character of a resident ID number by weighted sum mod 11.
const ID_CHECK: [u8; 11] = *b"10X98765432";
/// Earliest birth year a resident ID number is accepted with.
const ID_MIN_BIRTH_YEAR: i32 = 1800;

/// The check character of the first 17 digits of a resident ID number;
/// `None` when they are not 17 ASCII digits.
pub fn resident_id_check_char(first17: &str) -> Option<char> {
    let b = first17.as_bytes();
    if b.len() != 17 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sum: u32 = b
        .iter()
        .zip(ID_WEIGHTS)
        .map(|(c, w)| u32::from(c - b'0') * w)
        .sum();
    Some(char::from(ID_CHECK[(sum % 11) as usize]))
}

/// The birth date (days since 1970-01-01) in a resident ID number, when its
/// digits 7–14 are a real date.
pub fn resident_id_birth_date(id: &str) -> Option<i32> {
    let digits = id.get(6..14)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    date::days_from_ymd(
        digits[0..4].parse().ok()?,
        digits[4..6].parse().ok()?,
        digits[6..8].parse().ok()?,
    )
}

/// Checks an 18-character resident ID number (GB 11643): format, birth date
/// (a real date from 1800 up to `today`, days since 1970-01-01) and check
/// character. The 15-digit numbers issued before 1999 are refused: they
/// have no check character and must be converted at the source.
pub fn check_resident_id(id: &str, today: i32) -> Result<(), &'static str> {
    let b = id.as_bytes();
    if b.len() != 18 {
        return Err("not 18 characters");
    }
    if !b[..17].iter().all(u8::is_ascii_digit) {
        return Err("the first 17 characters must be digits");
    }
    let last = b[17];
    if last == b'x' {
        return Err("the check character X must be upper case");
    }
    if !(last.is_ascii_digit() || last == b'X') {
        return Err("the check character must be a digit or X");
    }
    let birth = resident_id_birth_date(id).ok_or("the birth date (digits 7-14) is not a date")?;
    if birth < date::days_from_ymd(ID_MIN_BIRTH_YEAR, 1, 1).unwrap_or(i32::MIN) {
        return Err("the birth date (digits 7-14) is before 1800");
    }
    if birth > today {
        return Err("the birth date (digits 7-14) is in the future");
    }
    match resident_id_check_char(&id[..17]) {
        Some(c) if c as u8 == last => Ok(()),
        _ => Err("the check character does not match (ISO 7064 MOD 11-2)"),
    }
}

/// The 31 characters of a unified social credit code, in value order.
const USCC_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";

/// Value of a unified-social-credit-code character.
fn uscc_value(c: u8) -> Option<u32> {
    USCC_ALPHABET.iter().position(|a| *a == c).map(|p| p as u32)
}

/// The check character of the first 17 characters of a unified social
/// credit code; `None` when they are not 17 characters of its alphabet.
pub fn uscc_check_char(first17: &str) -> Option<char> {
    let b = first17.as_bytes();
    if b.len() != 17 {
        return None;
    }
    let mut weight = 1u32;
    let mut sum = 0u32;
    for c in b {
        sum += uscc_value(*c)? * weight;
        weight = weight * 3 % 31;
    }
    Some(char::from(USCC_ALPHABET[((31 - sum % 31) % 31) as usize]))
}

/// Checks an 18-character unified social credit code (GB 32100): its
/// alphabet, that characters 3–8 are digits (a region code), and the check
/// character.
pub fn check_uscc(code: &str) -> Result<(), &'static str> {
    let b = code.as_bytes();
    if b.len() != 18 {
        return Err("not 18 characters");
    }
    if b.iter().any(|c| c.is_ascii_lowercase()) {
        return Err("letters must be upper case");
    }
    if !b.iter().all(|c| uscc_value(*c).is_some()) {
        return Err("characters must be digits or upper-case letters other than I, O, Z, S, V");
    }
    if !b[2..8].iter().all(u8::is_ascii_digit) {
        return Err("characters 3-8 must be a 6-digit region code");
    }
    match uscc_check_char(&code[..17]) {
        Some(c) if c as u8 == b[17] => Ok(()),
        _ => Err("the check character does not match (GB 32100 MOD 31)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> i32 {
        date::days_from_ymd(2024, 6, 1).unwrap()
    }

    #[test]
    fn resident_id_accepts_numbers_with_their_computed_check_character() {
        // The two examples printed in GB 11643-1999, one ending in X.
        for id in ["11010519491231002X", "440524188001010014"] {
            assert_eq!(check_resident_id(id, today()), Ok(()), "{id}");
        }
        // 330106 (Hangzhou Xihu), born 1990-03-07, sequence 123: the sum
        // of digit times weight is 226, 226 mod 11 = 6, and position 6 of
        // "10X98765432" is 6.
        assert_eq!(resident_id_check_char("33010619900307123"), Some('6'));
        assert_eq!(check_resident_id("330106199003071236", today()), Ok(()));
        assert_eq!(
            resident_id_birth_date("330106199003071236"),
            date::days_from_ymd(1990, 3, 7)
        );
    }

    #[test]
    fn resident_id_refuses_each_kind_of_bad_number_with_its_reason() {
        let cases = [
            ("330106199003071235", "check character does not match"),
            ("110105194912310021", "check character does not match"),
            ("11010519491231002x", "upper case"),
            ("33010619900307123", "not 18 characters"),
            ("330106900307123", "not 18 characters"),
            ("33010619900307A236", "first 17 characters must be digits"),
            ("33010619900307123Y", "digit or X"),
            ("330106199002301230", "not a date"),
            ("330106179901011230", "before 1800"),
            ("330106203001011230", "in the future"),
        ];
        for (id, reason) in cases {
            let err = check_resident_id(id, today()).unwrap_err();
            assert!(err.contains(reason), "{id}: {err}");
        }
    }

    #[test]
    fn uscc_accepts_codes_with_their_computed_check_character() {
        // Codes of registered companies, and the check characters the
        // algorithm computes for their first 17 characters.
        for (code, check) in [
            ("914403001922038216", '6'),
            ("91330100716105852F", 'F'),
            ("91350100M000100Y43", '3'),
        ] {
            assert_eq!(uscc_check_char(&code[..17]), Some(check), "{code}");
            assert_eq!(check_uscc(code), Ok(()), "{code}");
        }
    }

    #[test]
    fn uscc_refuses_each_kind_of_bad_code_with_its_reason() {
        let cases = [
            ("914403001922038217", "check character does not match"),
            ("91330100716105852G", "check character does not match"),
            ("91330100716105852f", "upper case"),
            ("9144030019220382", "not 18 characters"),
            ("9144030019220382I6", "other than I, O, Z, S, V"),
            ("91A403001922038216", "region code"),
        ];
        for (code, reason) in cases {
            let err = check_uscc(code).unwrap_err();
            assert!(err.contains(reason), "{code}: {err}");
        }
    }
}
