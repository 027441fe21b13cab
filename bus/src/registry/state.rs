//! The registry's state, rebuilt by applying the `backflow._schemas` log in
//! order. Applying is deterministic: every node that reads the same log
//! reaches the same state, which is how nodes agree on ids (see the module
//! documentation of [`super`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use super::compat::Level;

/// One record of the `backflow._schemas` log (the Kafka value, JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogRecord {
    /// Proposes `schema` as `version` of `subject` with global id `id`.
    Register {
        subject: String,
        version: u32,
        id: u32,
        /// The schema in normalized JSON form.
        schema: String,
    },
    /// Deletes one version (soft: hidden but kept; permanent: gone).
    DeleteVersion {
        subject: String,
        version: u32,
        permanent: bool,
    },
    /// Deletes every version of a subject.
    DeleteSubject { subject: String, permanent: bool },
    /// Sets (or with `None`, clears) the compatibility level of a subject,
    /// or the global one when `subject` is `None`.
    Config {
        subject: Option<String>,
        compatibility: Option<Level>,
    },
}

/// A registered schema.
#[derive(Debug, Clone)]
pub struct SchemaEntry {
    /// Global id, the one in the Confluent wire format.
    pub id: u32,
    /// Normalized JSON text.
    pub text: String,
    /// Parsed form.
    pub schema: Arc<Schema>,
}

#[derive(Debug, Clone, Copy)]
struct VersionEntry {
    id: u32,
    deleted: bool,
}

#[derive(Debug, Clone, Default)]
struct SubjectEntry {
    versions: BTreeMap<u32, VersionEntry>,
    /// Versions are never reused, even after a permanent delete.
    next_version: u32,
    level: Option<Level>,
}

/// Selects a version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSel {
    /// A version number.
    Number(u32),
    /// The newest live version.
    Latest,
}

/// Why a lookup found nothing; maps to Confluent error codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    /// No such subject (40401).
    Subject,
    /// The subject has no such version (40402).
    Version,
}

/// The whole registry state.
#[derive(Debug, Default)]
pub struct RegistryState {
    schemas: BTreeMap<u32, SchemaEntry>,
    ids: HashMap<String, u32>,
    subjects: BTreeMap<String, SubjectEntry>,
    global: Level,
}

/// The normalized text of a schema: its JSON with attribute order and
/// whitespace fixed, so two texts that differ only there are one schema.
/// Field order is kept: it is the binary layout.
pub fn normalize(schema: &Schema) -> String {
    serde_json::to_string(schema).expect("an Avro schema serializes to JSON")
}

impl RegistryState {
    /// Applies one log record. A proposal that conflicts with what the log
    /// already holds is rejected with the reason and changes nothing.
    pub fn apply(&mut self, record: &LogRecord) -> Result<(), String> {
        match record {
            LogRecord::Register {
                subject,
                version,
                id,
                schema,
            } => {
                let parsed =
                    Schema::parse_str(schema).map_err(|e| format!("invalid schema: {e}"))?;
                let text = normalize(&parsed);
                if let Some(existing) = self.ids.get(&text) {
                    if existing != id {
                        return Err(format!("schema already registered with id {existing}"));
                    }
                } else if self.schemas.contains_key(id) {
                    return Err(format!("id {id} already belongs to another schema"));
                }
                let entry = self.subjects.entry(subject.clone()).or_default();
                let expected = entry.next_version.max(1);
                if *version != expected {
                    return Err(format!(
                        "version {version} of {subject} proposed, next is {expected}"
                    ));
                }
                entry.versions.insert(
                    *version,
                    VersionEntry {
                        id: *id,
                        deleted: false,
                    },
                );
                entry.next_version = version + 1;
                self.ids.insert(text.clone(), *id);
                self.schemas.entry(*id).or_insert_with(|| SchemaEntry {
                    id: *id,
                    text,
                    schema: Arc::new(parsed),
                });
                Ok(())
            }
            LogRecord::DeleteVersion {
                subject,
                version,
                permanent,
            } => {
                let entry = self
                    .subjects
                    .get_mut(subject)
                    .ok_or_else(|| format!("no subject {subject}"))?;
                if *permanent {
                    entry.versions.remove(version);
                } else if let Some(v) = entry.versions.get_mut(version) {
                    v.deleted = true;
                }
                Ok(())
            }
            LogRecord::DeleteSubject { subject, permanent } => {
                let entry = self
                    .subjects
                    .get_mut(subject)
                    .ok_or_else(|| format!("no subject {subject}"))?;
                if *permanent {
                    entry.versions.clear();
                    entry.level = None;
                } else {
                    entry.versions.values_mut().for_each(|v| v.deleted = true);
                }
                Ok(())
            }
            LogRecord::Config {
                subject,
                compatibility,
            } => {
                match subject {
                    None => self.global = compatibility.unwrap_or_default(),
                    Some(s) => self.subjects.entry(s.clone()).or_default().level = *compatibility,
                }
                Ok(())
            }
        }
    }

    /// The schema with this global id.
    pub fn schema(&self, id: u32) -> Option<&SchemaEntry> {
        self.schemas.get(&id)
    }

    /// The id a schema with this normalized text has, if registered.
    pub fn id_of(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// The id the next new schema gets.
    pub fn next_id(&self) -> u32 {
        self.schemas.keys().next_back().map_or(1, |id| id + 1)
    }

    /// Subjects with at least one version (live, or any with `deleted`).
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, s)| s.versions.values().any(|v| deleted || !v.deleted))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn subject(&self, subject: &str, deleted: bool) -> Result<&SubjectEntry, Missing> {
        self.subjects
            .get(subject)
            .filter(|s| s.versions.values().any(|v| deleted || !v.deleted))
            .ok_or(Missing::Subject)
    }

    /// Version numbers of a subject, oldest first.
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, Missing> {
        Ok(self
            .subject(subject, deleted)?
            .versions
            .iter()
            .filter(|(_, v)| deleted || !v.deleted)
            .map(|(n, _)| *n)
            .collect())
    }

    /// One version of a subject and its schema.
    pub fn version(
        &self,
        subject: &str,
        sel: VersionSel,
        deleted: bool,
    ) -> Result<(u32, &SchemaEntry), Missing> {
        let s = self.subject(subject, deleted)?;
        let found = match sel {
            VersionSel::Latest => s.versions.iter().rev().find(|(_, v)| !v.deleted),
            VersionSel::Number(n) => s
                .versions
                .get_key_value(&n)
                .filter(|(_, v)| deleted || !v.deleted),
        };
        let (n, v) = found.ok_or(Missing::Version)?;
        Ok((*n, &self.schemas[&v.id]))
    }

    /// Whether a version exists and is soft-deleted.
    pub fn is_soft_deleted(&self, subject: &str, version: u32) -> Option<bool> {
        self.subjects
            .get(subject)?
            .versions
            .get(&version)
            .map(|v| v.deleted)
    }

    /// The live version of `subject` holding the schema with this text.
    pub fn find(&self, subject: &str, text: &str) -> Option<(u32, u32)> {
        let id = self.id_of(text)?;
        let s = self.subjects.get(subject)?;
        s.versions
            .iter()
            .find(|(_, v)| v.id == id && !v.deleted)
            .map(|(n, v)| (*n, v.id))
    }

    /// Live schemas of a subject, oldest first, for compatibility checks.
    pub fn history(&self, subject: &str) -> Vec<(u32, Arc<Schema>)> {
        self.subjects
            .get(subject)
            .map(|s| {
                s.versions
                    .iter()
                    .filter(|(_, v)| !v.deleted)
                    .map(|(n, v)| (*n, self.schemas[&v.id].schema.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every (subject, version) that uses a schema id.
    pub fn usages(&self, id: u32) -> Vec<(String, u32)> {
        self.subjects
            .iter()
            .flat_map(|(name, s)| {
                s.versions
                    .iter()
                    .filter(move |(_, v)| v.id == id && !v.deleted)
                    .map(move |(n, _)| (name.clone(), *n))
            })
            .collect()
    }

    /// The next version a subject gets.
    pub fn next_version(&self, subject: &str) -> u32 {
        self.subjects
            .get(subject)
            .map_or(1, |s| s.next_version.max(1))
    }

    /// The level that applies to a subject (its own, else the global one).
    pub fn level(&self, subject: Option<&str>) -> Level {
        subject
            .and_then(|s| self.subjects.get(s))
            .and_then(|s| s.level)
            .unwrap_or(self.global)
    }

    /// The level set on a subject itself, if any.
    pub fn subject_level(&self, subject: &str) -> Option<Level> {
        self.subjects.get(subject).and_then(|s| s.level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &str = r#"{"type":"record","name":"P","fields":[{"name":"id","type":"long"}]}"#;
    const S2: &str = r#"{"type":"record","name":"P","fields":[{"name":"id","type":"long"},{"name":"n","type":["null","string"],"default":null}]}"#;

    fn reg(subject: &str, version: u32, id: u32, schema: &str) -> LogRecord {
        LogRecord::Register {
            subject: subject.into(),
            version,
            id,
            schema: schema.into(),
        }
    }

    #[test]
    fn registry_state_rejects_conflicting_proposals_deterministically() {
        let mut s = RegistryState::default();
        s.apply(&reg("a-value", 1, 1, S1)).unwrap();
        // Another node proposed the same id for a different schema: loses.
        assert!(s.apply(&reg("b-value", 1, 1, S2)).is_err());
        // Same version of the same subject twice: the second loses.
        assert!(s.apply(&reg("a-value", 1, 2, S2)).is_err());
        // The same schema under another id: loses.
        assert!(s.apply(&reg("c-value", 1, 7, S1)).is_err());
        // Same schema in another subject shares the id.
        s.apply(&reg("c-value", 1, 1, S1)).unwrap();
        s.apply(&reg("a-value", 2, 2, S2)).unwrap();
        assert_eq!(s.versions("a-value", false).unwrap(), vec![1, 2]);
        assert_eq!(s.usages(1).len(), 2);
        assert_eq!(s.next_id(), 3);
    }

    #[test]
    fn registry_state_identity_ignores_whitespace_and_attribute_order() {
        let mut s = RegistryState::default();
        s.apply(&reg("a", 1, 1, S1)).unwrap();
        let reordered =
            r#"{ "fields" : [ {"type":"long", "name":"id"} ], "name":"P", "type":"record" }"#;
        let text = normalize(&Schema::parse_str(reordered).unwrap());
        assert_eq!(s.find("a", &text), Some((1, 1)));
    }

    #[test]
    fn registry_state_soft_and_permanent_deletes() {
        let mut s = RegistryState::default();
        s.apply(&reg("a", 1, 1, S1)).unwrap();
        s.apply(&reg("a", 2, 2, S2)).unwrap();
        s.apply(&LogRecord::DeleteVersion {
            subject: "a".into(),
            version: 2,
            permanent: false,
        })
        .unwrap();
        assert_eq!(s.versions("a", false).unwrap(), vec![1]);
        assert_eq!(s.versions("a", true).unwrap(), vec![1, 2]);
        assert_eq!(s.version("a", VersionSel::Latest, false).unwrap().0, 1);
        s.apply(&LogRecord::DeleteSubject {
            subject: "a".into(),
            permanent: true,
        })
        .unwrap();
        assert_eq!(s.versions("a", true), Err(Missing::Subject));
        // Ids stay taken and versions are not reused.
        assert!(s.schema(2).is_some());
        assert_eq!(s.next_version("a"), 3);
    }
}
