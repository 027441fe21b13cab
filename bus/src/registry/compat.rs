//! Schema compatibility levels, as the Confluent Schema Registry defines
//! them, checked with the Avro schema-resolution rules.
//!
//! - BACKWARD: the new schema can read data written with the previous one.
//! - FORWARD: data written with the new schema can be read with the previous one.
//! - FULL: both.
//! - `_TRANSITIVE`: against every earlier version, not only the latest.
//! - NONE: no check.
//!
//! Resolution that only works for some data (a reader enum lacking a writer
//! symbol and having no default, a reader union lacking a writer branch) is
//! treated as incompatible, as Confluent's checker does.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

/// A compatibility level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    /// New schema reads data of the latest version.
    #[default]
    Backward,
    /// New schema reads data of every version.
    BackwardTransitive,
    /// Latest version reads data of the new schema.
    Forward,
    /// Every version reads data of the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every version.
    FullTransitive,
    /// No check.
    None,
}

impl Level {
    /// Every level, in the order Confluent documents them.
    pub const ALL: [Level; 7] = [
        Level::Backward,
        Level::BackwardTransitive,
        Level::Forward,
        Level::ForwardTransitive,
        Level::Full,
        Level::FullTransitive,
        Level::None,
    ];

    /// The name used in the API (`BACKWARD_TRANSITIVE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
            Level::None => "NONE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown compatibility level {s:?}; use one of {}",
                    Level::ALL.map(Level::as_str).join(", ")
                )
            })
    }
}

/// True when a reader with `reader` can decode everything `writer` wrote.
fn can_read(writer: &Schema, reader: &Schema) -> Result<(), String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => Err(
            "the reader can decode only some of the writer's data (an enum symbol or union branch is missing)"
                .to_owned(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

/// Checks `new` against the existing versions (oldest first) at `level`.
/// Returns the reasons it is incompatible, empty when it is compatible.
pub fn check(level: Level, new: &Schema, existing: &[(u32, &Schema)]) -> Vec<String> {
    let against: &[(u32, &Schema)] = if level == Level::None || existing.is_empty() {
        &[]
    } else if level.transitive() {
        existing
    } else {
        &existing[existing.len() - 1..]
    };
    let mut reasons = Vec::new();
    for (version, old) in against {
        if level.backward() {
            if let Err(e) = can_read(old, new) {
                reasons.push(format!(
                    "new schema cannot read data written with version {version}: {e}"
                ));
            }
        }
        if level.forward() {
            if let Err(e) = can_read(new, old) {
                reasons.push(format!(
                    "version {version} cannot read data written with the new schema: {e}"
                ));
            }
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"Person","namespace":"backflow.test","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    const BASE: &str = r#"{"name":"id","type":"long"},{"name":"name","type":"string"}"#;

    /// (case, old schema fields, new schema fields, [accepted by BACKWARD,
    /// FORWARD, FULL]). The transitive levels agree with the plain ones when
    /// there is a single earlier version; see the transitive test below.
    fn cases() -> Vec<(&'static str, Schema, Schema, [bool; 3])> {
        let enum_of = |symbols: &str, default: &str| {
            record(&format!(
                r#"{{"name":"id","type":"long"}},{{"name":"kind","type":{{"type":"enum","name":"Kind","symbols":[{symbols}]{default}}}}}"#
            ))
        };
        vec![
            (
                "add optional field (with default)",
                record(BASE),
                record(&format!(
                    r#"{BASE},{{"name":"region","type":["null","string"],"default":null}}"#
                )),
                [true, true, true],
            ),
            (
                "add required field (no default)",
                record(BASE),
                record(&format!(r#"{BASE},{{"name":"region","type":"string"}}"#)),
                [false, true, false],
            ),
            (
                "remove field that has a default",
                record(&format!(
                    r#"{BASE},{{"name":"region","type":"string","default":"33"}}"#
                )),
                record(BASE),
                [true, true, true],
            ),
            (
                "remove field without default",
                record(&format!(r#"{BASE},{{"name":"region","type":"string"}}"#)),
                record(BASE),
                [true, false, false],
            ),
            (
                "change type int to long (promotion)",
                record(r#"{"name":"id","type":"int"}"#),
                record(r#"{"name":"id","type":"long"}"#),
                [true, false, false],
            ),
            (
                "change type string to long",
                record(r#"{"name":"id","type":"string"}"#),
                record(r#"{"name":"id","type":"long"}"#),
                [false, false, false],
            ),
            (
                "rename field with alias",
                record(r#"{"name":"id","type":"long"},{"name":"name","type":"string"}"#),
                record(
                    r#"{"name":"id","type":"long"},{"name":"full_name","type":"string","aliases":["name"]}"#,
                ),
                [true, false, false],
            ),
            (
                "rename field without alias",
                record(r#"{"name":"id","type":"long"},{"name":"name","type":"string"}"#),
                record(r#"{"name":"id","type":"long"},{"name":"full_name","type":"string"}"#),
                [false, false, false],
            ),
            (
                "enum symbol added",
                enum_of(r#""A","B""#, ""),
                enum_of(r#""A","B","C""#, ""),
                [true, false, false],
            ),
            (
                "enum symbol removed",
                enum_of(r#""A","B","C""#, ""),
                enum_of(r#""A","B""#, ""),
                [false, true, false],
            ),
            (
                "enum symbol removed, reader enum has a default",
                enum_of(r#""A","B","C""#, r#","default":"A""#),
                enum_of(r#""A","B""#, r#","default":"A""#),
                [true, true, true],
            ),
            (
                "union widened",
                record(r#"{"name":"id","type":["null","int"]}"#),
                record(r#"{"name":"id","type":["null","int","string"]}"#),
                [true, false, false],
            ),
            (
                "union narrowed",
                record(r#"{"name":"id","type":["null","int","string"]}"#),
                record(r#"{"name":"id","type":["null","int"]}"#),
                [false, true, false],
            ),
        ]
    }

    #[test]
    fn compatibility_table_matches_avro_resolution_rules() {
        let mut failures = Vec::new();
        for (case, old, new, expected) in cases() {
            for level in Level::ALL {
                let want = match level {
                    Level::Backward | Level::BackwardTransitive => expected[0],
                    Level::Forward | Level::ForwardTransitive => expected[1],
                    Level::Full | Level::FullTransitive => expected[2],
                    Level::None => true,
                };
                let reasons = check(level, &new, &[(1, &old)]);
                if reasons.is_empty() != want {
                    failures.push(format!(
                        "{case} at {level}: expected {}, got {reasons:?}",
                        if want { "accepted" } else { "rejected" }
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn compatibility_transitive_levels_check_every_version() {
        // v1 has a required `region`; v2 dropped it; v3 adds it back as a
        // required field of another type. v3 reads v2 data (no region) only if
        // region has a default, so: v1 → v2 → v3 where v3 is backward
        // compatible with v2 but not with v1.
        let v1 = record(r#"{"name":"id","type":"long"},{"name":"region","type":"string"}"#);
        let v2 = record(r#"{"name":"id","type":"long"}"#);
        let v3 =
            record(r#"{"name":"id","type":"long"},{"name":"region","type":"long","default":0}"#);
        let history = [(1, &v1), (2, &v2)];
        assert!(check(Level::Backward, &v3, &history).is_empty());
        let reasons = check(Level::BackwardTransitive, &v3, &history);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("version 1"), "{reasons:?}");
        assert!(check(Level::None, &v3, &history).is_empty());
    }

    #[test]
    fn compatibility_level_parses_api_names() {
        for l in Level::ALL {
            assert_eq!(l.as_str().parse::<Level>().unwrap(), l);
            assert_eq!(
                serde_json::to_string(&l).unwrap(),
                format!("\"{}\"", l.as_str())
            );
        }
        assert!("SIDEWAYS"
            .parse::<Level>()
            .unwrap_err()
            .contains("BACKWARD"));
    }
}
