//! Calendar dates as days since 1970-01-01 (the form of [`Datum::Date`]),
//! and the date formats a feed reads text dates with.
//!
//! [`Datum::Date`]: crate::Datum::Date

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// Whether `year` is a Gregorian leap year.
pub fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Number of days of `month` (1–12) in `year`.
pub fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a calendar date; `None` when it is not a real
/// date or the year is outside 1–9999.
pub fn days_from_ymd(year: i32, month: u32, day: u32) -> Option<i32> {
    if !(1..=9999).contains(&year) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    // Count from 0000-03-01 so that the leap day ends the (shifted) year.
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = i64::from((month + 9) % 12);
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    i32::try_from(era * 146_097 + day_of_era - 719_468).ok()
}

/// The calendar date (year, month, day) of days since 1970-01-01.
pub fn ymd_from_days(days: i32) -> (i32, u32, u32) {
    let z = i64::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year as i32, month, day)
}

/// Parses `YYYY-MM-DD` into days since 1970-01-01.
pub fn parse_iso_date(text: &str) -> Option<i32> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = &text[r];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    days_from_ymd(num(0..4)? as i32, num(5..7)?, num(8..10)?)
}

/// `YYYY-MM-DD` of days since 1970-01-01.
pub fn format_iso_date(days: i32) -> String {
    let (y, m, d) = ymd_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Today's date in China Standard Time (UTC+8), as days since 1970-01-01:
/// the date a department's clerk sees when entering a record.
pub fn today() -> i32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ((secs + 8 * 3600) / 86_400) as i32
}

/// One element of a [`DateFormat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Literal(char),
}

impl Item {
    fn is_number(self) -> bool {
        !matches!(self, Item::Literal(_))
    }
}

/// A date format such as `%Y%m%d`, `%Y-%m-%d`, `%Y/%m/%d` or
/// `%Y年%m月%d日`: `%Y` four digits, `%m` `%d` `%H` `%M` `%S` one or two
/// digits (exactly two when another number is directly beside), `%%` a
/// percent sign, anything else itself. It must hold `%Y`, `%m` and `%d`
/// once each; a time of day (`%H:%M:%S`) is checked and dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateFormat {
    spec: String,
    items: Vec<Item>,
}

impl DateFormat {
    /// Parses a format; the error says what is wrong with it.
    pub fn parse(spec: &str) -> Result<DateFormat, String> {
        let mut items = Vec::new();
        let mut chars = spec.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                items.push(Item::Literal(c));
                continue;
            }
            items.push(match chars.next() {
                Some('Y') => Item::Year,
                Some('m') => Item::Month,
                Some('d') => Item::Day,
                Some('H') => Item::Hour,
                Some('M') => Item::Minute,
                Some('S') => Item::Second,
                Some('%') => Item::Literal('%'),
                Some(other) => {
                    return Err(format!(
                        "date format {spec:?}: %{other} is not supported (use %Y, %m, %d, %H, %M, %S, %%)"
                    ))
                }
                None => return Err(format!("date format {spec:?} ends with a lone %")),
            });
        }
        for (item, name) in [(Item::Year, "%Y"), (Item::Month, "%m"), (Item::Day, "%d")] {
            let n = items.iter().filter(|i| **i == item).count();
            if n != 1 {
                return Err(format!(
                    "date format {spec:?} must hold {name} exactly once, it holds it {n} times"
                ));
            }
        }
        for item in [Item::Hour, Item::Minute, Item::Second] {
            if items.iter().filter(|i| **i == item).count() > 1 {
                return Err(format!("date format {spec:?} holds a time part twice"));
            }
        }
        Ok(DateFormat {
            spec: spec.to_owned(),
            items,
        })
    }

    /// The format as written.
    pub fn as_str(&self) -> &str {
        &self.spec
    }

    /// Reads a date written in this format (surrounding whitespace is
    /// ignored); `None` when the text does not match or is no real date.
    pub fn parse_date(&self, text: &str) -> Option<i32> {
        let mut rest = text.trim();
        let (mut year, mut month, mut day) = (None, None, None);
        for (i, item) in self.items.iter().enumerate() {
            if let Item::Literal(c) = item {
                rest = rest.strip_prefix(*c)?;
                continue;
            }
            // Without a separator on either side, only a fixed width tells
            // where the number ends.
            let digit_beside = |j: Option<usize>| match j.and_then(|j| self.items.get(j)) {
                Some(Item::Literal(c)) => c.is_ascii_digit(),
                Some(_) => true,
                None => false,
            };
            let (min, max) = match item {
                Item::Year => (4, 4),
                _ if digit_beside(i.checked_sub(1)) || digit_beside(Some(i + 1)) => (2, 2),
                _ => (1, 2),
            };
            let len = rest
                .bytes()
                .take(max)
                .take_while(|b| b.is_ascii_digit())
                .count();
            if len < min {
                return None;
            }
            let value: u32 = rest[..len].parse().ok()?;
            rest = &rest[len..];
            match item {
                Item::Year => year = Some(value),
                Item::Month => month = Some(value),
                Item::Day => day = Some(value),
                Item::Hour if value > 23 => return None,
                Item::Minute if value > 59 => return None,
                Item::Second if value > 60 => return None,
                _ => debug_assert!(item.is_number()),
            }
        }
        if !rest.is_empty() {
            return None;
        }
        days_from_ymd(year? as i32, month?, day?)
    }
}

impl fmt::Display for DateFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_days_round_trip_over_four_centuries() {
        assert_eq!(days_from_ymd(1970, 1, 1), Some(0));
        assert_eq!(days_from_ymd(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_ymd(1969, 12, 31), Some(-1));
        let start = days_from_ymd(1800, 1, 1).unwrap();
        let end = days_from_ymd(2200, 12, 31).unwrap();
        let mut expected = (1800, 1, 1);
        for days in start..=end {
            let ymd = ymd_from_days(days);
            assert_eq!(ymd, expected, "day {days}");
            assert_eq!(days_from_ymd(ymd.0, ymd.1, ymd.2), Some(days));
            expected = if ymd.2 < days_in_month(ymd.0, ymd.1) {
                (ymd.0, ymd.1, ymd.2 + 1)
            } else if ymd.1 < 12 {
                (ymd.0, ymd.1 + 1, 1)
            } else {
                (ymd.0 + 1, 1, 1)
            };
        }
    }

    #[test]
    fn date_invalid_calendar_dates_are_refused() {
        for (y, m, d) in [
            (1900, 2, 29),
            (2023, 2, 29),
            (2023, 4, 31),
            (2023, 13, 1),
            (2023, 0, 1),
            (2023, 1, 0),
            (0, 1, 1),
        ] {
            assert_eq!(days_from_ymd(y, m, d), None, "{y}-{m}-{d}");
        }
        assert!(days_from_ymd(2000, 2, 29).is_some());
        assert!(days_from_ymd(2024, 2, 29).is_some());
    }

    #[test]
    fn date_iso_parse_and_format() {
        let d = parse_iso_date("1949-10-01").unwrap();
        assert_eq!(format_iso_date(d), "1949-10-01");
        for bad in [
            "1949-1-01",
            "1949/10/01",
            "19491001",
            "1949-02-30",
            "abcd-10-01",
        ] {
            assert_eq!(parse_iso_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn date_formats_read_department_spellings() {
        let want = days_from_ymd(1990, 3, 7);
        let cases = [
            ("%Y%m%d", "19900307"),
            ("%Y-%m-%d", "1990-03-07"),
            ("%Y-%m-%d", "1990-3-7"),
            ("%Y/%m/%d", "1990/03/07"),
            ("%Y.%m.%d", " 1990.3.07 "),
            ("%Y年%m月%d日", "1990年3月7日"),
            ("%Y-%m-%d %H:%M:%S", "1990-03-07 23:59:60"),
            ("%d/%m/%Y", "07/03/1990"),
        ];
        for (spec, text) in cases {
            let f = DateFormat::parse(spec).unwrap();
            assert_eq!(f.parse_date(text), want, "{spec} {text}");
        }
        let compact = DateFormat::parse("%Y%m%d").unwrap();
        for bad in [
            "1990037",
            "199003071",
            "19900230",
            "1990-03-07",
            "",
            "19900307x",
        ] {
            assert_eq!(compact.parse_date(bad), None, "{bad}");
        }
        let dashed = DateFormat::parse("%Y-%m-%d %H:%M:%S").unwrap();
        assert_eq!(dashed.parse_date("1990-03-07 24:00:00"), None);
    }

    #[test]
    fn date_format_spec_errors_name_the_problem() {
        for (spec, needle) in [
            ("%Y%m", "%d exactly once"),
            ("%Y%m%d%d", "%d exactly once"),
            ("%Y%m%d%q", "%q is not supported"),
            ("%Y%m%d%", "lone %"),
            ("%Y%m%d %H %H", "time part twice"),
        ] {
            let err = DateFormat::parse(spec).unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }
}
