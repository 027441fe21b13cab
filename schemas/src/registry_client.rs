//! A client of any Confluent-compatible Schema Registry (backflow's own, or
//! Confluent's), with caches so the hot path never waits on HTTP for a
//! schema it has seen.
//!
//! Subjects follow the `TopicNameStrategy`: `<topic>-key` and
//! `<topic>-value` ([`subject_for`]).
//!
//! A registry that wants credentials (backflow's always does) gets the
//! token given with [`RegistryClient::with_token`] as
//! `Authorization: Bearer <token>` on every request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::Schema;
use serde::Deserialize;
use serde_json::json;

use crate::wire::SchemaLookup;

/// The media type the registry API speaks.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The subject of a topic's key or value schema (`TopicNameStrategy`).
pub fn subject_for(topic: &str, key: bool) -> String {
    format!("{topic}-{}", if key { "key" } else { "value" })
}

/// An error talking to a schema registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryClientError {
    /// The registry could not be reached or answered garbage.
    #[error("schema registry at {url} did not answer: {reason}")]
    Unreachable { url: String, reason: String },
    /// The registry refused the request, with its error code.
    #[error("schema registry refused {what} (error {code}): {message}")]
    Refused {
        what: String,
        code: u32,
        message: String,
    },
    /// A schema the registry returned does not parse.
    #[error("schema {id} from the registry is not valid Avro: {reason}")]
    BadSchema { id: u32, reason: String },
}

impl RegistryClientError {
    /// The registry's error code, when it refused the request.
    pub fn code(&self) -> Option<u32> {
        match self {
            RegistryClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// One version of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubjectVersion {
    /// Subject name.
    pub subject: String,
    /// Version number.
    pub version: u32,
    /// Global schema id.
    pub id: u32,
    /// Schema text.
    pub schema: String,
}

/// The answer to a compatibility check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CompatibilityReport {
    /// Whether the schema may be registered.
    pub is_compatible: bool,
    /// Why not, when it may not.
    #[serde(default)]
    pub messages: Vec<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error_code: u32,
    message: String,
}

/// A caching registry client. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    base: reqwest::Url,
    http: reqwest::Client,
    /// Sent as a bearer token; never logged.
    token: Option<Arc<str>>,
    by_id: Arc<RwLock<HashMap<u32, Arc<Schema>>>>,
    registered: Arc<RwLock<HashMap<(String, String), u32>>>,
}

impl RegistryClient {
    /// A client of the registry at `base_url` (e.g. `http://127.0.0.1:8480`).
    pub fn new(base_url: &str) -> Result<Self, RegistryClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| RegistryClientError::Unreachable {
                url: base_url.to_owned(),
                reason: e.to_string(),
            })?;
        Self::with_http(base_url, http)
    }

    /// A client of the registry at `base_url` making its requests with
    /// `http` (e.g. one trusting a CA of the caller's own).
    pub fn with_http(base_url: &str, http: reqwest::Client) -> Result<Self, RegistryClientError> {
        let base = reqwest::Url::parse(base_url)
            .ok()
            .filter(|u| !u.cannot_be_a_base())
            .ok_or_else(|| RegistryClientError::Unreachable {
                url: base_url.to_owned(),
                reason: "not a base URL such as http://127.0.0.1:8480".to_owned(),
            })?;
        Ok(Self {
            base,
            http,
            token: None,
            by_id: Arc::default(),
            registered: Arc::default(),
        })
    }

    /// The same client, sending `token` as `Authorization: Bearer` (the
    /// token the registry's node issued to this caller).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Arc::from(token.into()));
        self
    }

    /// The registry's base URL.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// The URL of a path below the base; each segment is percent-encoded.
    fn at(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in new: a base URL")
            .pop_if_empty()
            .extend(segments);
        url
    }

    async fn call(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<serde_json::Value, RegistryClientError> {
        let unreachable = |e: reqwest::Error| RegistryClientError::Unreachable {
            url: self.base.to_string(),
            reason: e.to_string(),
        };
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| RegistryClientError::Unreachable {
                url: self.base.to_string(),
                reason: format!("answer to {what} is not JSON: {e}"),
            });
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => (b.error_code, b.message),
            Err(_) => (
                u32::from(status.as_u16()),
                String::from_utf8_lossy(&bytes).into_owned(),
            ),
        };
        Err(RegistryClientError::Refused {
            what: what.to_owned(),
            code,
            message,
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        v: serde_json::Value,
    ) -> Result<T, RegistryClientError> {
        serde_json::from_value(v).map_err(|e| RegistryClientError::Unreachable {
            url: self.base.to_string(),
            reason: format!("unexpected answer to {what}: {e}"),
        })
    }

    /// Registers a schema under a subject (idempotent) and returns its id.
    /// Cached: registering the same schema again asks nothing.
    pub async fn register(
        &self,
        subject: &str,
        schema: &Schema,
    ) -> Result<u32, RegistryClientError> {
        let full = serde_json::to_string(schema).expect("an Avro schema serializes");
        let cache_key = (subject.to_owned(), full.clone());
        if let Some(id) = self.registered.read().expect("lock").get(&cache_key) {
            return Ok(*id);
        }
        let what = format!("registering a schema under {subject}");
        let v = self
            .call(
                &what,
                self.http
                    .post(self.at(&["subjects", subject, "versions"]))
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                    .body(json!({ "schema": full }).to_string()),
            )
            .await?;
        #[derive(Deserialize)]
        struct Id {
            id: u32,
        }
        let id = self.decode::<Id>(&what, v)?.id;
        self.registered.write().expect("lock").insert(cache_key, id);
        self.by_id
            .write()
            .expect("lock")
            .insert(id, Arc::new(schema.clone()));
        Ok(id)
    }

    /// The schema with a global id; cached after the first fetch.
    pub async fn fetch_schema(&self, id: u32) -> Result<Arc<Schema>, RegistryClientError> {
        if let Some(s) = self.by_id.read().expect("lock").get(&id) {
            return Ok(s.clone());
        }
        let what = format!("fetching schema {id}");
        let v = self
            .call(
                &what,
                self.http.get(self.at(&["schemas", "ids", &id.to_string()])),
            )
            .await?;
        #[derive(Deserialize)]
        struct Text {
            schema: String,
        }
        let text = self.decode::<Text>(&what, v)?.schema;
        let schema =
            Arc::new(
                Schema::parse_str(&text).map_err(|e| RegistryClientError::BadSchema {
                    id,
                    reason: e.to_string(),
                })?,
            );
        self.by_id.write().expect("lock").insert(id, schema.clone());
        Ok(schema)
    }

    /// One version of a subject (`None`: the latest).
    pub async fn version(
        &self,
        subject: &str,
        version: Option<u32>,
    ) -> Result<SubjectVersion, RegistryClientError> {
        let v = version.map_or_else(|| "latest".to_owned(), |n| n.to_string());
        let what = format!("reading version {v} of {subject}");
        let body = self
            .call(
                &what,
                self.http
                    .get(self.at(&["subjects", subject, "versions", &v])),
            )
            .await?;
        self.decode(&what, body)
    }

    /// Whether `schema` could be registered as the next version of
    /// `subject`, with the registry's reasons when not.
    pub async fn check(
        &self,
        subject: &str,
        schema: &Schema,
    ) -> Result<CompatibilityReport, RegistryClientError> {
        let what = format!("checking compatibility with {subject}");
        let full = serde_json::to_string(schema).expect("an Avro schema serializes");
        let body = self
            .call(
                &what,
                self.http
                    .post(self.at(&["compatibility", "subjects", subject, "versions", "latest"]))
                    .query(&[("verbose", "true")])
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                    .body(json!({ "schema": full }).to_string()),
            )
            .await?;
        self.decode(&what, body)
    }
}

impl SchemaLookup for RegistryClient {
    /// The cached schema; call [`RegistryClient::fetch_schema`] first for
    /// ids not seen yet.
    fn schema_by_id(&self, id: u32) -> Option<Arc<Schema>> {
        self.by_id.read().expect("lock").get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_for_follows_topic_name_strategy() {
        assert_eq!(
            subject_for("backflow.raw.gongan.population", true),
            "backflow.raw.gongan.population-key"
        );
        assert_eq!(subject_for("t", false), "t-value");
    }

    #[test]
    fn subjects_are_percent_encoded_in_paths() {
        let c = RegistryClient::new("http://127.0.0.1:8480/").unwrap();
        assert_eq!(
            c.at(&["subjects", "a b/c-value", "versions"]).as_str(),
            "http://127.0.0.1:8480/subjects/a%20b%2Fc-value/versions"
        );
        assert!(RegistryClient::new("not a url").is_err());
    }
}
