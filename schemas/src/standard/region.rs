//! The GB/T 2260 administrative division codes backflow ships
//! (`schemas/standards/gbt2260.txt`): province, prefecture and county
//! levels, 6 digits each. Its header names the source and licence.

use std::sync::OnceLock;

/// The shipped code list: `code<TAB>name` lines, `#` comments.
pub const GBT2260_TXT: &str = include_str!("../../standards/gbt2260.txt");

/// A list of 6-digit administrative division codes and their names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionCodes {
    /// Sorted by code.
    entries: Vec<(u32, String)>,
}

impl RegionCodes {
    /// Reads `code<TAB>name` lines (blank lines and `#` comments skipped);
    /// the error names the line.
    pub fn parse(text: &str) -> Result<RegionCodes, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (code, name) = line
                .split_once('\t')
                .ok_or_else(|| format!("line {}: expected code<TAB>name", n + 1))?;
            let code = parse_code(code)
                .ok_or_else(|| format!("line {}: the code is not 6 digits", n + 1))?;
            entries.push((code, name.trim().to_owned()));
        }
        entries.sort_by_key(|(code, _)| *code);
        if let Some(w) = entries.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("code {:06} appears twice", w[0].0));
        }
        Ok(RegionCodes { entries })
    }

    /// The list shipped with backflow.
    pub fn builtin() -> &'static RegionCodes {
        static CODES: OnceLock<RegionCodes> = OnceLock::new();
        CODES.get_or_init(|| RegionCodes::parse(GBT2260_TXT).expect("gbt2260.txt is well formed"))
    }

    /// The division's name, when `code` is a listed 6-digit code.
    pub fn name(&self, code: &str) -> Option<&str> {
        let code = parse_code(code)?;
        self.entries
            .binary_search_by_key(&code, |(c, _)| *c)
            .ok()
            .map(|i| self.entries[i].1.as_str())
    }

    /// Whether `code` is a listed 6-digit code.
    pub fn contains(&self, code: &str) -> bool {
        self.name(code).is_some()
    }

    /// Number of codes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_code(text: &str) -> Option<u32> {
    (text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_builtin_list_holds_the_three_levels() {
        let codes = RegionCodes::builtin();
        assert!(codes.len() > 3000, "{}", codes.len());
        assert_eq!(codes.name("330000"), Some("浙江省"));
        assert_eq!(codes.name("330100"), Some("杭州市"));
        assert_eq!(codes.name("330106"), Some("西湖区"));
        assert_eq!(codes.name("110105"), Some("朝阳区"));
        assert_eq!(codes.name("810000"), Some("香港特别行政区"));
        for unknown in [
            "330199", "999999", "000000", "33010", "3301060", "33o106", "",
        ] {
            assert!(!codes.contains(unknown), "{unknown}");
        }
    }

    #[test]
    fn region_parse_names_the_bad_line() {
        let err = RegionCodes::parse("# header\n110000\t北京市\n11000\tx\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        let err = RegionCodes::parse("110000\t北京市\n110000\t北京\n").unwrap_err();
        assert!(err.contains("110000 appears twice"), "{err}");
    }
}
