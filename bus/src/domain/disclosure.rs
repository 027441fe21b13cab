//! Grants that reveal, through one field, what another field's mask hides.
//!
//! A mask hides part of a value; another field shared beside it may carry
//! that very part. A citizen identity number (GB 11643, 18 characters) is
//! the address code of its first registration (characters 1-6), the birth
//! date (7-14), a sequence number (15-17) and a check character (18):
//! `masked:keep(6,4)` hides exactly the birth date, so a plain
//! `birth_date` beside it gives back 8 of the 8 hidden characters and
//! leaves two digits to guess. A region code gives back the first six
//! characters of the identity number or of an address code.
//!
//! [`check`] finds such pairs among the fields a dataset or share grants;
//! a field whose owner accepted its disclosure knowingly (`accept_disclosure`,
//! audited by the caller) is let through. Pure: no I/O.

use std::collections::BTreeMap;

use crate::domain::policy::{FieldRule, Mask};

/// Length of a citizen identity number.
const ID_NUMBER_LEN: usize = 18;
/// Length of the division-code prefix of an address code.
const ADDRESS_CODE_REGION_LEN: usize = 6;

/// Fields known to hold an identity number.
const ID_NUMBER_FIELDS: &[&str] = &["id_number", "id_card", "citizen_id"];
/// Fields known to hold a birth date.
const BIRTH_FIELDS: &[&str] = &["birth_date", "birthday", "date_of_birth"];
/// Fields known to hold an administrative division code.
const REGION_FIELDS: &[&str] = &["region_code", "household_region", "registered_region"];
/// Fields known to hold an address code (its first six characters are the
/// division code).
const ADDRESS_CODE_FIELDS: &[&str] = &["address_code"];

/// One field revealing characters another field's mask hides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disclosure {
    /// The field that reveals.
    pub revealing: String,
    /// The masked field.
    pub masked: String,
    /// Characters of the masked field it gives back (1-based, inclusive).
    pub chars: (usize, usize),
}

impl std::fmt::Display for Disclosure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fields.{}: shared beside {}, it reveals characters {}-{} of {}, which {}'s rule hides; withhold {} or mask it too, mask less of {}, or set fields.{}.accept_disclosure = true to share it knowingly (audited)",
            self.revealing,
            self.masked,
            self.chars.0,
            self.chars.1,
            self.masked,
            self.masked,
            self.revealing,
            self.masked,
            self.revealing
        )
    }
}

/// Characters (0-based, end exclusive) a rule hides of a value `len` long;
/// `None` when it hides nothing.
fn hidden(rule: &FieldRule, len: usize) -> Option<(usize, usize)> {
    match rule {
        FieldRule::Plain | FieldRule::Hashed => None,
        FieldRule::Masked(Mask::Keep { first, last }) => {
            let end = len.saturating_sub(*last);
            (*first < end).then_some((*first, end))
        }
        FieldRule::Masked(Mask::Name) => (len > 1).then_some((1, len)),
        FieldRule::Masked(Mask::Fixed(_)) => Some((0, len)),
    }
}

/// Whether a field shared under `rule` gives its value away (in part):
/// plain, or masked keeping some characters. A hashed value is a
/// pseudonym under the subscription's key and reveals none of them.
fn reveals(rule: &FieldRule) -> bool {
    match rule {
        FieldRule::Plain => true,
        FieldRule::Masked(Mask::Keep { first, last }) => first + last > 0,
        FieldRule::Masked(Mask::Name) => true,
        FieldRule::Masked(Mask::Fixed(_)) | FieldRule::Hashed => false,
    }
}

/// What a field holds that may give back a part of another field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// An administrative division code.
    Region,
    /// A birth date.
    Birth,
}

/// The part `field` holds, if it is one another field is made of.
fn part_of(field: &str, region_column: Option<&str>) -> Option<Part> {
    if REGION_FIELDS.contains(&field) || region_column == Some(field) {
        Some(Part::Region)
    } else if BIRTH_FIELDS.contains(&field) {
        Some(Part::Birth)
    } else {
        None
    }
}

/// Where a part sits in a value: characters from, to (0-based, end
/// exclusive).
type Placed = (Part, (usize, usize));

/// A value's length and where each part sits in it, for the fields whose
/// make-up is known.
fn anatomy(field: &str) -> Option<(usize, &'static [Placed])> {
    if ID_NUMBER_FIELDS.contains(&field) {
        Some((
            ID_NUMBER_LEN,
            &[(Part::Region, (0, 6)), (Part::Birth, (6, 14))],
        ))
    } else if ADDRESS_CODE_FIELDS.contains(&field) {
        Some((
            ADDRESS_CODE_REGION_LEN,
            &[(Part::Region, (0, ADDRESS_CODE_REGION_LEN))],
        ))
    } else {
        None
    }
}

/// The disclosures among `granted` (field → rule), leaving out revealing
/// fields listed in `accepted`. `region_column` counts as a region field.
pub fn check(
    granted: &BTreeMap<String, FieldRule>,
    region_column: Option<&str>,
    accepted: &[String],
) -> Vec<Disclosure> {
    let mut out = Vec::new();
    for (masked, rule) in granted {
        let Some((len, parts)) = anatomy(masked) else {
            continue;
        };
        let Some((h0, h1)) = hidden(rule, len) else {
            continue;
        };
        for (revealing, r_rule) in granted {
            if revealing == masked || !reveals(r_rule) || accepted.contains(revealing) {
                continue;
            }
            let Some(part) = part_of(revealing, region_column) else {
                continue;
            };
            for (_, (p0, p1)) in parts.iter().filter(|(p, _)| *p == part) {
                let (a, b) = (h0.max(*p0), h1.min(*p1));
                if a < b {
                    out.push(Disclosure {
                        revealing: revealing.clone(),
                        masked: masked.clone(),
                        chars: (a + 1, b),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(pairs: &[(&str, &str)]) -> BTreeMap<String, FieldRule> {
        pairs
            .iter()
            .map(|(f, r)| (f.to_string(), FieldRule::parse(r).unwrap()))
            .collect()
    }

    #[test]
    fn a_birth_date_beside_an_identity_number_masked_over_it_is_a_disclosure() {
        let found = check(
            &grants(&[("id_number", "masked:keep(6,4)"), ("birth_date", "plain")]),
            None,
            &[],
        );
        assert_eq!(
            found,
            [Disclosure {
                revealing: "birth_date".into(),
                masked: "id_number".into(),
                chars: (7, 14)
            }]
        );
        let text = found[0].to_string();
        assert!(text.contains("accept_disclosure"), "{text}");
    }

    #[test]
    fn masks_that_keep_the_revealed_part_or_hide_the_revealer_are_not_disclosures() {
        // keep(14,0) shows the birth date anyway; a hashed or fixed birth date
        // gives nothing back; a hashed identity number hides no characters.
        for pairs in [
            [("id_number", "masked:keep(14,2)"), ("birth_date", "plain")],
            [("id_number", "masked:keep(6,4)"), ("birth_date", "hashed")],
            [
                ("id_number", "masked:keep(6,4)"),
                ("birth_date", "masked:fixed(-)"),
            ],
            [("id_number", "hashed"), ("birth_date", "plain")],
            [("id_number", "masked:keep(6,4)"), ("region_code", "plain")],
        ] {
            assert_eq!(check(&grants(&pairs), None, &[]), [], "{pairs:?}");
        }
    }

    #[test]
    fn a_region_code_reveals_the_first_six_characters_it_was_hidden_in() {
        let found = check(
            &grants(&[("id_number", "masked:keep(0,4)"), ("region", "plain")]),
            Some("region"),
            &[],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].chars, (1, 6));
        let found = check(
            &grants(&[
                ("address_code", "masked:fixed(*)"),
                ("region_code", "plain"),
            ]),
            None,
            &[],
        );
        assert_eq!(found[0].masked, "address_code");
    }

    #[test]
    fn an_accepted_disclosure_is_let_through() {
        let g = grants(&[("id_number", "masked:keep(6,4)"), ("birth_date", "plain")]);
        assert_eq!(check(&g, None, &["birth_date".into()]), []);
    }
}
