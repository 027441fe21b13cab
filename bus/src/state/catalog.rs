//! The catalog: datasets registered by owner departments and subscriptions
//! requested by lower nodes, with their decisions.
//!
//! State lives in the compacted topic `backflow._catalog`, one record per
//! dataset (`dataset:<id>`) and per subscription (`subscription:<id>`), the
//! latest record of a key being the current state; every node process
//! replays it at start and follows it, so the catalog survives restarts and
//! needs nothing but Kafka. A write waits until this process has applied
//! it, so a reader right after sees it.
//!
//! The topic is not a bearer of trust: the node signs every record it
//! writes (Ed25519, its audit key, header `backflow.sig` over the record's
//! key and value), and the follower applies only records signed by the
//! node's key or a key it signed with before (`audit.previous_public_keys`).
//! Any other record (unsigned, tampered, replayed under another key) is
//! rejected: logged as `catalog record rejected` with its offset, counted
//! in `backflow_catalog_rejected_total`, never applied.

pub use crate::domain::policy::{Onward, RowRule};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, RwLock};
use tokio_util::sync::CancellationToken;

use crate::domain::topics;
use crate::kafka::{Consumer, KafkaError, KafkaSettings, OutgoingRecord, Publisher, Watermarks};

/// The header holding the node's signature of a catalog record.
pub const HEADER_SIGNATURE: &str = "backflow.sig";

/// What a catalog signature starts with, so it is valid for nothing else
/// the key signs (the audit trail's records).
const SIGNATURE_CONTEXT: &[u8] = b"backflow catalog record v2\0";
/// The context of records that name the state they were written over.
const SIGNATURE_CONTEXT_BASED: &[u8] = b"backflow catalog record v3\0";

/// What the node's signature on a catalog record says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Signed {
    /// When it was written (`None`: an unsigned record of the upgrade
    /// window).
    written_ms: Option<i64>,
    /// The latest write time of its key the writer had read (see
    /// [`Catalog::write`]); `None` in records from before there was one.
    base: Option<i64>,
    /// Signed with the node's current key (not a previous one).
    by_current: bool,
}

/// Why a record written over an older state of its key is not applied.
const CONFLICT: &str = "it was decided on an older state of its key than a record before it (two processes of the node wrote the key at once: the later one decides again)";

/// What the sealing key of the subscriptions' HMAC keys is derived for.
const SEALING_PURPOSE: &[u8] = b"backflow catalog sealing key v1";
/// How a sealed HMAC key starts in a catalog record.
const SEALED_PREFIX: &str = "sealed:v1:";

/// The catalog's keys: the node's, which signs each record it writes, and
/// the public keys whose signatures are believed (the node's own and those
/// it signed with before a rotation).
#[derive(Clone)]
pub struct CatalogKeys {
    signing: crate::state::audit::AuditKey,
    trusted: Vec<ed25519_dalek::VerifyingKey>,
    /// Keys sealing the subscriptions' HMAC keys: the node's first, then
    /// those of its previous keys (opening only).
    sealing: Vec<zeroize::Zeroizing<[u8; 32]>>,
    /// Records up to this offset need no signature (written before
    /// records were signed).
    unsigned_until: Option<i64>,
}

impl CatalogKeys {
    /// Keys signing with `signing`, also believing `previous`.
    pub fn new(
        signing: crate::state::audit::AuditKey,
        previous: Vec<ed25519_dalek::VerifyingKey>,
    ) -> Self {
        let mut trusted = vec![signing.verifying_key()];
        trusted.extend(previous);
        let sealing = vec![signing.derive(SEALING_PURPOSE)];
        Self {
            signing,
            trusted,
            sealing,
            unsigned_until: None,
        }
    }

    /// Also believes what `previous` (the node's keys before a rotation)
    /// signed, and opens what they sealed.
    pub fn with_previous_keys(mut self, previous: &[crate::state::audit::AuditKey]) -> Self {
        for key in previous {
            self.trusted.push(key.verifying_key());
            self.sealing.push(key.derive(SEALING_PURPOSE));
        }
        self
    }

    /// `secret` sealed with the node's key (AES-256-GCM, bound to the
    /// subscription `id`): `sealed:v1:<hex of nonce, ciphertext, tag>`.
    fn seal(&self, id: &str, secret: &str) -> String {
        use openssl::symm::{encrypt_aead, Cipher};
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).expect("the operating system's random source");
        let mut tag = [0u8; 16];
        let sealed = encrypt_aead(
            Cipher::aes_256_gcm(),
            self.sealing[0].as_ref(),
            Some(&nonce),
            &Self::sealing_aad(id),
            secret.as_bytes(),
            &mut tag,
        )
        .expect("AES-256-GCM encryption");
        let mut out = Vec::with_capacity(12 + sealed.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out.extend_from_slice(&tag);
        format!("{SEALED_PREFIX}{}", hex::encode(out))
    }

    /// A sealed secret opened by one of the node's keys; a secret written
    /// before secrets were sealed as it is.
    fn open(&self, id: &str, stored: &str) -> Result<String, &'static str> {
        use openssl::symm::{decrypt_aead, Cipher};
        let Some(text) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_owned());
        };
        let bytes = hex::decode(text).map_err(|_| "its sealed HMAC key is malformed")?;
        if bytes.len() < 12 + 16 {
            return Err("its sealed HMAC key is malformed");
        }
        let (nonce, rest) = bytes.split_at(12);
        let (sealed, tag) = rest.split_at(rest.len() - 16);
        for key in &self.sealing {
            if let Ok(plain) = decrypt_aead(
                Cipher::aes_256_gcm(),
                key.as_ref(),
                Some(nonce),
                &Self::sealing_aad(id),
                sealed,
                tag,
            ) {
                return String::from_utf8(plain).map_err(|_| "its sealed HMAC key is malformed");
            }
        }
        Err("its HMAC key was sealed with a key this node does not hold (audit.previous_key_files)")
    }

    /// Whether `stored` is sealed with the node's current key (not in
    /// clear, not sealed with a previous key): else the record is written
    /// again by [`Catalog::refresh_stale`].
    fn sealed_now(&self, id: &str, stored: &str) -> bool {
        use openssl::symm::{decrypt_aead, Cipher};
        let Some(bytes) = stored
            .strip_prefix(SEALED_PREFIX)
            .and_then(|t| hex::decode(t).ok())
            .filter(|b| b.len() >= 12 + 16)
        else {
            return false;
        };
        let (nonce, rest) = bytes.split_at(12);
        let (sealed, tag) = rest.split_at(rest.len() - 16);
        decrypt_aead(
            Cipher::aes_256_gcm(),
            self.sealing[0].as_ref(),
            Some(nonce),
            &Self::sealing_aad(id),
            sealed,
            tag,
        )
        .is_ok()
    }

    fn sealing_aad(id: &str) -> Vec<u8> {
        let mut aad = b"backflow catalog secret v1\0".to_vec();
        aad.extend_from_slice(id.as_bytes());
        aad
    }

    /// Also believes unsigned records up to `offset` (a catalog written
    /// before records were signed).
    pub fn with_unsigned_until(mut self, offset: Option<i64>) -> Self {
        self.unsigned_until = offset;
        self
    }

    /// What is signed: the context, the key's length, the key, when it
    /// was written (ms since the epoch), the state it was written over
    /// (`base`, see [`Catalog::write`]; records written before there was
    /// one have none and another context), the value.
    fn message(key: &[u8], written_ms: i64, base: Option<i64>, value: &[u8]) -> Vec<u8> {
        let context = match base {
            Some(_) => SIGNATURE_CONTEXT_BASED,
            None => SIGNATURE_CONTEXT,
        };
        let mut m = Vec::with_capacity(context.len() + 24 + key.len() + value.len());
        m.extend_from_slice(context);
        m.extend_from_slice(&(key.len() as u64).to_be_bytes());
        m.extend_from_slice(key);
        m.extend_from_slice(&written_ms.to_be_bytes());
        if let Some(base) = base {
            m.extend_from_slice(&base.to_be_bytes());
        }
        m.extend_from_slice(value);
        m
    }

    /// The signature header's value: when it was written (8 bytes), the
    /// state it was written over (8 bytes), then the signature (64 bytes).
    fn sign(&self, key: &[u8], written_ms: i64, base: i64, value: &[u8]) -> Vec<u8> {
        let mut header = written_ms.to_be_bytes().to_vec();
        header.extend_from_slice(&base.to_be_bytes());
        header.extend_from_slice(&self.signing.sign_message(&Self::message(
            key,
            written_ms,
            Some(base),
            value,
        )));
        header
    }

    /// Why a record read from the topic is not believed, if it is not.
    #[cfg(test)]
    fn refusal(
        &self,
        offset: i64,
        key: &[u8],
        value: &[u8],
        headers: &[(String, Vec<u8>)],
    ) -> Option<&'static str> {
        self.check(offset, key, value, headers).err()
    }

    /// What the node's signature on a record says, or why the record is
    /// not believed.
    fn check(
        &self,
        offset: i64,
        key: &[u8],
        value: &[u8],
        headers: &[(String, Vec<u8>)],
    ) -> Result<Signed, &'static str> {
        let mut signatures = headers.iter().filter(|(k, _)| k == HEADER_SIGNATURE);
        let Some((_, header)) = signatures.next() else {
            if self.unsigned_until.is_some_and(|until| offset <= until) {
                return Ok(Signed::default());
            }
            return Err("it carries no signature");
        };
        if signatures.next().is_some() {
            return Err("it carries several signatures");
        }
        let (written, base, signature) = match header.len() {
            72 => (&header[..8], None, &header[8..]),
            80 => (&header[..8], Some(&header[8..16]), &header[16..]),
            _ => return Err("its signature is malformed"),
        };
        let written_ms = i64::from_be_bytes(written.try_into().expect("8 bytes"));
        let base = base.map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes")));
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return Err("its signature is malformed");
        };
        let message = Self::message(key, written_ms, base, value);
        match self
            .trusted
            .iter()
            .position(|k| k.verify_strict(&message, &signature).is_ok())
        {
            Some(by) => Ok(Signed {
                written_ms: Some(written_ms),
                base,
                by_current: by == 0,
            }),
            None => {
                Err("its signature is not by this node's key (the record was changed, or written by someone else)")
            }
        }
    }
}

/// How a dataset may be shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharingClass {
    /// Any lower node may subscribe; active at once.
    Unconditional,
    /// The owner approves each subscription.
    Conditional,
    /// Not shared; requests are refused with the dataset's reason.
    NotShared,
}

/// How sensitive a field is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    /// Anyone it is shared with may see it.
    #[default]
    Public,
    /// Shared as its rule says.
    Internal,
    /// Shared only masked or hashed.
    Sensitive,
}

/// A field of a dataset and how it is shared by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// Sensitivity.
    #[serde(default)]
    pub sensitivity: Sensitivity,
    /// The rule subscribers get (`plain`, `hashed`, `masked:...`); default
    /// `plain` for public and internal fields, required for sensitive ones.
    #[serde(default)]
    pub rule: Option<String>,
    /// The owner knows that this field, shared as its rule says, gives
    /// back part of what another field's mask hides (a birth date beside
    /// an identity number masked over it; see [`crate::domain::disclosure`]) and
    /// shares it anyway. Without it such a dataset is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub accept_disclosure: bool,
}

/// Bounds on what the API stores: every catalog record is replayed by
/// every node process and returned by every listing.
pub mod limits {
    /// Bytes of a dataset's description.
    pub const DESCRIPTION: usize = 4096;
    /// Bytes of a reason (not shared, rejected, revoked).
    pub const REASON: usize = 1024;
    /// Bytes of a subscription's purpose.
    pub const PURPOSE: usize = 1024;
    /// Fields of a dataset, or requested by a subscription.
    pub const FIELDS: usize = 256;
    /// Bytes of a field or column name.
    pub const FIELD_NAME: usize = 128;
    /// Datasets one department may register.
    pub const DATASETS_PER_DEPARTMENT: usize = 200;
    /// Bytes of a token's label or a node's name.
    pub const LABEL: usize = 256;
}

/// Checks a text the API stores against its limit, naming the key.
pub fn bounded(key: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        Err(format!(
            "{key}: {} bytes, at most {max} are stored",
            text.len()
        ))
    } else {
        Ok(())
    }
}

/// Checks a field or column name: not empty, bounded, no control characters.
pub fn field_name(key: &str, name: &str) -> Result<(), String> {
    bounded(key, name, limits::FIELD_NAME)?;
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(format!("{key}: {name:?} is not a field name"));
    }
    Ok(())
}

/// A dataset registered by its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// `<department>.<name>`.
    pub id: String,
    /// What it holds.
    #[serde(default)]
    pub description: String,
    /// Sharing class.
    pub sharing: SharingClass,
    /// Why it is not shared (shown to refused requesters).
    #[serde(default)]
    pub not_shared_reason: Option<String>,
    /// Column with each row's division code: a subscriber receives the
    /// rows of its own jurisdiction. A shared dataset needs this or
    /// `all_rows`.
    #[serde(default)]
    pub region_column: Option<String>,
    /// Every row goes to every subscriber: declared by the owner, since a
    /// dataset without a row rule shares nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_rows: bool,
    /// Fields that may be shared, with their default rule.
    pub fields: BTreeMap<String, FieldSpec>,
    /// Schema compatibility mode of the dataset's raw topic (registry
    /// subjects `backflow.raw.<id>-key|-value`); the registry's global
    /// level when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility: Option<crate::registry::Level>,
    /// Whether subscribers may share it on to their own divisions, unless
    /// the owner decides otherwise on approval (default: none).
    #[serde(default)]
    pub onward: Onward,
    /// Hours the share topic of an ended subscription (revoked, expired,
    /// rejected, or of a dataset no longer shared) is kept before the node
    /// deletes it, so what was shared stops being held on the cluster;
    /// [`DEFAULT_ENDED_SHARE_GRACE_HOURS`] when absent, 0 for the next
    /// sweep. A subscription re-activated in time keeps its topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_share_grace_hours: Option<u32>,
}

/// The grace of an ended subscription's share topic when the owner set
/// none: a day, for a revocation by mistake to be undone without a new
/// backfill.
pub const DEFAULT_ENDED_SHARE_GRACE_HOURS: u32 = 24;
/// The longest grace an owner may set: a year.
pub const MAX_ENDED_SHARE_GRACE_HOURS: u32 = 8760;

impl Dataset {
    /// How long an ended subscription's share topic is kept, in ms.
    pub fn ended_share_grace_ms(&self) -> i64 {
        i64::from(
            self.ended_share_grace_hours
                .unwrap_or(DEFAULT_ENDED_SHARE_GRACE_HOURS),
        ) * 3_600_000
    }

    /// The owning department (`gongan` of `gongan.population`).
    pub fn owner(&self) -> &str {
        self.id.split_once('.').map_or(self.id.as_str(), |(d, _)| d)
    }

    /// The rule a field is shared under.
    pub fn rule(&self, field: &str) -> Option<String> {
        let spec = self.fields.get(field)?;
        Some(spec.rule.clone().unwrap_or_else(|| "plain".to_owned()))
    }

    /// The rows subscribers receive; `None` when the dataset has no row
    /// rule, and then nothing of it is delivered.
    pub fn row_rule(&self) -> Option<RowRule> {
        match (&self.region_column, self.all_rows) {
            (Some(c), false) => Some(RowRule::Jurisdiction(c.clone())),
            (None, true) => Some(RowRule::All),
            _ => None,
        }
    }

    /// Fields whose owner accepted that they reveal part of a masked one.
    pub fn accepted_disclosures(&self) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(_, f)| f.accept_disclosure)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Checks the dataset's own consistency, its bounds, and, when it is
    /// bound to a standard, that the standard's sensitive and secret
    /// fields are not shared plain.
    pub fn validate(
        &self,
        standard: Option<&backflow_schemas::standard::Standard>,
    ) -> Result<(), String> {
        if !self.id.contains('.') || self.id.starts_with('.') || self.id.ends_with('.') {
            return Err(format!(
                "dataset id {:?} must be <department>.<name>",
                self.id
            ));
        }
        bounded("description", &self.description, limits::DESCRIPTION)?;
        if let Some(r) = &self.not_shared_reason {
            bounded("not_shared_reason", r, limits::REASON)?;
        }
        if let Some(h) = self.ended_share_grace_hours {
            if h > MAX_ENDED_SHARE_GRACE_HOURS {
                return Err(format!(
                    "ended_share_grace_hours: {h} is over {MAX_ENDED_SHARE_GRACE_HOURS} (a year); the share topic of an ended subscription is deleted after at most that"
                ));
            }
        }
        if self.fields.is_empty() {
            return Err("a dataset needs at least one field".to_owned());
        }
        if self.fields.len() > limits::FIELDS {
            return Err(format!(
                "fields: {} fields, at most {} are accepted",
                self.fields.len(),
                limits::FIELDS
            ));
        }
        if let Some(c) = &self.region_column {
            field_name("region_column", c)?;
        }
        if self.sharing != SharingClass::NotShared && self.row_rule().is_none() {
            return Err(if self.all_rows {
                "region_column and all_rows = true exclude each other: keep one".to_owned()
            } else {
                "region_column: a shared dataset needs a row rule: region_column (the column holding each row's division code; a subscriber receives its jurisdiction's rows) or all_rows = true (every row to every subscriber)".to_owned()
            });
        }
        let mut rules = BTreeMap::new();
        for (name, spec) in &self.fields {
            field_name(&format!("fields.{name}"), name)?;
            let rule = spec.rule.as_deref().unwrap_or("plain");
            let parsed = crate::domain::policy::FieldRule::parse(rule)
                .map_err(|e| format!("fields.{name}.rule: {e}"))?;
            if spec.sensitivity == Sensitivity::Sensitive && rule == "plain" {
                return Err(format!(
                    "fields.{name}: a sensitive field needs a masked or hashed rule"
                ));
            }
            if let Some(std_field) =
                standard.and_then(|s| s.fields().iter().find(|f| f.name == *name))
            {
                use backflow_schemas::standard::Sensitivity as Std;
                if matches!(std_field.sensitivity, Std::Sensitive | Std::Secret) && rule == "plain"
                {
                    return Err(format!(
                        "fields.{name}: the standard {} marks it {}: share it masked or hashed",
                        standard.map(|s| s.name()).unwrap_or_default(),
                        std_field.sensitivity.as_str()
                    ));
                }
            }
            rules.insert(name.clone(), parsed);
        }
        if let Some(d) = crate::domain::disclosure::check(
            &rules,
            self.region_column.as_deref(),
            &self.accepted_disclosures(),
        )
        .first()
        {
            return Err(d.to_string());
        }
        Ok(())
    }
}

/// Where a subscription is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SubscriptionState {
    /// Waiting for the owner.
    Pending,
    /// Delivering.
    Active,
    /// Refused by the owner or by the dataset's class.
    Rejected { reason: String },
    /// Ended by the owner.
    Revoked { reason: String },
    /// Past its validity.
    Expired,
    /// The distributor could not deliver to it (a share schema the
    /// registry refused, a record over the brokers' size limit): it alone
    /// stopped, every other subscription goes on. The owner re-activates
    /// it once the cause is fixed.
    Failed { reason: String },
}

/// A lower node's subscription to a dataset.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// `<subscriber>:<dataset>`.
    pub id: String,
    /// Subscriber node code.
    pub subscriber: String,
    /// Dataset id.
    pub dataset: String,
    /// Why the data is needed.
    pub purpose: String,
    /// Fields requested.
    pub requested: Vec<String>,
    /// Fields granted with their rules (set when active).
    pub granted: BTreeMap<String, String>,
    /// End of validity, ms since the epoch.
    pub valid_until_ms: Option<i64>,
    /// State.
    #[serde(flatten)]
    pub state: SubscriptionState,
    /// Policy version; grows with every change of the granted fields.
    pub policy_version: u32,
    /// HMAC key of hashed fields (hex); never shown by the API.
    pub secret: String,
    /// Last change, ms since the epoch.
    pub updated_ms: i64,
    /// Whether the distributor has delivered the dataset's current state
    /// to the share topic since the subscription became active.
    #[serde(default)]
    pub backfilled: bool,
    /// Version of the request (purpose, fields, validity): an owner
    /// approves the version it reviewed, and a reviewed request is never
    /// changed in place.
    #[serde(default = "first_version")]
    pub request_version: u32,
    /// Whether the subscriber may share on what it receives.
    #[serde(default)]
    pub onward: Onward,
}

/// Every field but the HMAC key, which a log line or a panic message must
/// never hold (it would make the hashed fields reversible).
impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("subscriber", &self.subscriber)
            .field("dataset", &self.dataset)
            .field("purpose", &self.purpose)
            .field("requested", &self.requested)
            .field("granted", &self.granted)
            .field("valid_until_ms", &self.valid_until_ms)
            .field("state", &self.state)
            .field("policy_version", &self.policy_version)
            .field("secret", &"<redacted>")
            .field("updated_ms", &self.updated_ms)
            .field("backfilled", &self.backfilled)
            .field("request_version", &self.request_version)
            .field("onward", &self.onward)
            .finish()
    }
}

fn first_version() -> u32 {
    1
}

/// A subscription re-derived from a changed dataset, and what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rederived {
    /// The subscription as it is now.
    pub subscription: Subscription,
    /// Granted fields no longer shared.
    pub removed: Vec<String>,
    /// Granted fields whose rule changed (old rule → new rule).
    pub changed: BTreeMap<String, (String, String)>,
    /// Whether the dataset's row rule changed.
    pub rows_changed: bool,
    /// Set when the subscription ended with the dataset.
    pub ended: Option<String>,
}

impl Subscription {
    /// This subscription under a changed `dataset` (whose previous
    /// definition was `before`); `None` when nothing of it changes.
    ///
    /// A dataset that is no longer shared ends pending and active
    /// subscriptions with its reason. An active one keeps only the granted
    /// fields the dataset still shares, each under the dataset's new rule,
    /// except that a rule relaxed to `plain` is not extended to grants made
    /// under a stricter one (the owner re-approves for that). The dataset's
    /// `onward` applies to every subscription when the owner changes it.
    /// Any change of what is delivered, rows and onward sharing included,
    /// is a new policy version.
    pub fn under(&self, dataset: &Dataset, before: Option<&Dataset>) -> Option<Rederived> {
        let mut sub = self.clone();
        let mut out = Rederived {
            subscription: sub.clone(),
            removed: Vec::new(),
            changed: BTreeMap::new(),
            rows_changed: false,
            ended: None,
        };
        let live = matches!(
            self.state,
            SubscriptionState::Active
                | SubscriptionState::Pending
                | SubscriptionState::Failed { .. }
        );
        if live && dataset.sharing == SharingClass::NotShared {
            let reason = format!(
                "dataset {} is no longer shared: {}",
                dataset.id,
                dataset
                    .not_shared_reason
                    .as_deref()
                    .unwrap_or("the owner stopped sharing it")
            );
            sub.state = SubscriptionState::Revoked {
                reason: reason.clone(),
            };
            out.ended = Some(reason);
            out.subscription = sub;
            return Some(out);
        }
        if self.state != SubscriptionState::Active {
            return None;
        }
        let mut granted = BTreeMap::new();
        for (field, old) in &self.granted {
            match dataset.rule(field) {
                None => out.removed.push(field.clone()),
                Some(new) if new == *old || new == "plain" => {
                    granted.insert(field.clone(), old.clone());
                }
                Some(new) => {
                    out.changed
                        .insert(field.clone(), (old.clone(), new.clone()));
                    granted.insert(field.clone(), new);
                }
            }
        }
        out.rows_changed = before.is_some_and(|b| b.row_rule() != dataset.row_rule());
        let onward_changed = before.is_some_and(|b| b.onward != dataset.onward);
        if out.removed.is_empty() && out.changed.is_empty() && !out.rows_changed && !onward_changed
        {
            return None;
        }
        if onward_changed {
            sub.onward = dataset.onward;
        }
        sub.granted = granted;
        sub.policy_version += 1;
        out.subscription = sub;
        Some(out)
    }
}

/// A feed registered through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedRecord {
    /// Feed name.
    pub name: String,
    /// Who registered it (`owner:<department>` or `admin`): only it or an
    /// admin changes it. Absent on records written before feeds had
    /// owners; those only an admin may change, and they do not start until
    /// registered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The feed's settings as in a `[[feeds]]` entry (with `type`; the
    /// password only as a secret bound by an admin: `password_secret`).
    pub config: serde_json::Value,
    /// Stopped on request until resumed.
    pub paused: bool,
    /// Bumped by each restart request.
    pub restarts: u64,
    /// Removed.
    pub deleted: bool,
    /// Last change, ms since the epoch.
    pub updated_ms: i64,
}

impl FeedRecord {
    /// The feed's configuration, or what is wrong with it (naming the key).
    pub fn parse(&self) -> Result<crate::source::config::FeedConfig, String> {
        let mut v = self.config.clone();
        if let Some(o) = v.as_object_mut() {
            // Not connector settings: see `standards`, and `admission` for
            // the bound secret.
            o.remove("standards");
            o.remove(crate::source::config::SECRET_KEY);
            o.insert(
                "name".to_owned(),
                serde_json::Value::String(self.name.clone()),
            );
        }
        let feed = serde_path_to_error::deserialize::<_, crate::source::config::FeedConfig>(v)
            .map_err(|e| {
                let path = e.path().to_string();
                if path == "." || path.is_empty() {
                    e.inner().to_string()
                } else {
                    format!("{path}: {}", e.inner())
                }
            })?;
        feed.validate("config").map_err(|(_, reason)| reason)?;
        Ok(feed)
    }

    /// The standards of the feed's datasets registered with it (key
    /// `standards`, the form of `[[standards]]`), checked.
    pub fn standards(&self) -> Result<Vec<crate::standards::StandardConfig>, String> {
        let Some(v) = self.config.get("standards") else {
            return Ok(Vec::new());
        };
        let standards: Vec<crate::standards::StandardConfig> =
            serde_path_to_error::deserialize(v.clone())
                .map_err(|e| format!("standards.{}: {}", e.path(), e.inner()))?;
        let feed = self.parse()?;
        let datasets = feed.datasets();
        for (i, s) in standards.iter().enumerate() {
            if !datasets.contains(&s.dataset.as_str()) {
                return Err(format!(
                    "standards[{i}].dataset: {} is not a dataset of this feed (it fills: {})",
                    s.dataset,
                    datasets.join(", ")
                ));
            }
            crate::standards::DatasetStandard::new(s)
                .map_err(|(key, reason)| format!("standards[{i}].{key}: {reason}"))?;
        }
        Ok(standards)
    }

    /// Changes when the feed must be restarted.
    pub fn signature(&self) -> String {
        format!("{}|{}", self.config, self.restarts)
    }
}

/// One catalog record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CatalogRecord {
    /// A dataset's current definition.
    Dataset(Dataset),
    /// A subscription's current state.
    Subscription(Subscription),
    /// A feed registered through the API.
    Feed(FeedRecord),
    /// An API token issued by an admin (its SHA-256 only).
    Token(TokenRecord),
    /// A lower-level node registered with this one.
    Node(NodeRecord),
}

/// A child node (a lower level of government) registered with this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its administrative division code.
    pub code: String,
    /// Its name, e.g. 西湖区数据资源中心.
    pub name: String,
    /// When it was registered or last changed, ms since the Unix epoch.
    pub updated_ms: i64,
    /// Removed from the registry.
    #[serde(default)]
    pub deleted: bool,
    /// Its principal on this node's Kafka cluster (`User:<name>`), whose
    /// ACLs the node keeps equal to its grants (see [`crate::acls`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_principal: Option<String>,
}

/// An API token issued through the API. Only its SHA-256 is stored; the
/// token itself is shown once, to the admin who issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// `admin`, `owner:<department>` or `subscriber:<node>`.
    pub principal: String,
    /// What it is for (free text, e.g. who holds it).
    #[serde(default)]
    pub label: String,
    /// When it was issued, ms since the Unix epoch.
    pub issued_ms: i64,
    /// Revoked tokens are refused.
    #[serde(default)]
    pub revoked: bool,
}

/// The catalog's current state.
#[derive(Debug, Clone, Default)]
pub struct CatalogState {
    /// Datasets by id.
    pub datasets: BTreeMap<String, Dataset>,
    /// Subscriptions by id.
    pub subscriptions: BTreeMap<String, Subscription>,
    /// Feeds registered through the API, by name.
    pub feeds: BTreeMap<String, FeedRecord>,
    /// Tokens issued through the API, by SHA-256.
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Registered child nodes, by code.
    pub nodes: BTreeMap<String, NodeRecord>,
}

impl CatalogState {
    fn apply(&mut self, r: CatalogRecord) {
        match r {
            CatalogRecord::Dataset(d) => {
                self.datasets.insert(d.id.clone(), d);
            }
            CatalogRecord::Subscription(s) => {
                self.subscriptions.insert(s.id.clone(), s);
            }
            CatalogRecord::Feed(f) => {
                self.feeds.insert(f.name.clone(), f);
            }
            CatalogRecord::Token(t) => {
                self.tokens.insert(t.sha256.clone(), t);
            }
            CatalogRecord::Node(n) => {
                self.nodes.insert(n.code.clone(), n);
            }
        }
    }
}

/// The catalog of a node. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<CatalogState>,
    applied: crate::kafka::follow::Applied,
    /// Bumped after every applied record: the distributor restarts on it.
    changed: watch::Sender<u64>,
    publisher: Publisher,
    watermarks: Watermarks,
    writer: tokio::sync::Mutex<()>,
    keys: CatalogKeys,
    /// `backflow_catalog_rejected_total`.
    rejected: prometheus::IntCounter,
    /// When each key's record applied last was written: a record of the
    /// key written before it is a replay, and this process writes the key
    /// only later than it (whatever the clocks of the node's other
    /// processes say).
    written: std::sync::Mutex<std::collections::HashMap<Vec<u8>, i64>>,
    /// The latest write time of each key's believed records, applied or
    /// not: a record written over an older state loses (see
    /// [`Catalog::write`]).
    seen: std::sync::Mutex<std::collections::HashMap<Vec<u8>, i64>>,
    /// The offset of each key's applied record: a writer learns from it
    /// whether its record won.
    won: std::sync::Mutex<std::collections::HashMap<Vec<u8>, i64>>,
    /// Keys with a record that names its base: records without one come
    /// from processes of an earlier version and no longer apply to them.
    based: std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
    /// When the node last wrote each key again after a rejected record.
    reasserted: std::sync::Mutex<std::collections::HashMap<Vec<u8>, tokio::time::Instant>>,
    /// Keys whose applied record is not signed (or its HMAC key not
    /// sealed) with the node's current key: written again by
    /// [`Catalog::refresh_stale`] after a key rotation or an upgrade.
    stale: std::sync::Mutex<std::collections::BTreeSet<Vec<u8>>>,
}

impl Inner {
    /// An empty catalog writing through `publisher`.
    fn new(
        settings: &KafkaSettings,
        publisher: Publisher,
        keys: CatalogKeys,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, KafkaError> {
        Ok(Inner {
            state: RwLock::new(CatalogState::default()),
            applied: Default::default(),
            changed: watch::channel(0).0,
            publisher,
            watermarks: Watermarks::new(settings)?,
            writer: tokio::sync::Mutex::new(()),
            keys,
            rejected: metrics.catalog_rejected.clone(),
            written: Default::default(),
            seen: Default::default(),
            won: Default::default(),
            based: Default::default(),
            reasserted: Default::default(),
            stale: Default::default(),
        })
    }
}

/// 32 random bytes, hex (an HMAC key per subscription).
pub(crate) fn random_secret() -> String {
    use std::io::Read;
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom is readable");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Catalog {
    /// Starts following `backflow._catalog` (which must exist), signing
    /// and checking records with `keys`.
    pub fn start(
        settings: &KafkaSettings,
        publisher: Publisher,
        keys: CatalogKeys,
        metrics: &crate::metrics::Metrics,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), KafkaError> {
        let consumer = Consumer::follow(settings, topics::catalog(), 0)?;
        let inner = Arc::new(Inner::new(settings, publisher, keys, metrics)?);
        let follower = tokio::spawn(follow(inner.clone(), consumer, shutdown));
        Ok((Self { inner }, follower))
    }

    /// A catalog that is not read: for a process that runs only configured
    /// feeds (`backflow source`). Such a process holds no key of the node's
    /// (a department may run it), so it can neither check the node's
    /// records nor write any; its state stays empty (only configured tokens
    /// are known to it).
    pub fn unread(
        settings: &KafkaSettings,
        publisher: Publisher,
        keys: CatalogKeys,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            inner: Arc::new(Inner::new(settings, publisher, keys, metrics)?),
        })
    }

    /// The current state.
    pub async fn state(&self) -> tokio::sync::RwLockReadGuard<'_, CatalogState> {
        self.inner.state.read().await
    }

    /// Changes whenever a record was applied.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Waits until everything written before the call is applied.
    pub async fn caught_up(&self) -> Result<(), KafkaError> {
        let end = crate::kafka::follow::Applied::end_of(&self.inner.watermarks, topics::catalog())
            .await?;
        self.wait_applied(end).await
    }

    /// Runs `round` every `every` until `shutdown`, the first time once
    /// the catalog has been read to its end (before, the state may lack
    /// records written earlier); `every` also spaces the tries to read it.
    /// For the loops that keep something equal to the catalog's state.
    pub async fn every<F, Fut>(&self, every: Duration, shutdown: &CancellationToken, mut round: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.caught_up() => if r.is_ok() { break },
            }
            tokio::time::sleep(every).await;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = round() => {}
            }
        }
    }

    async fn wait_applied(&self, offset: i64) -> Result<(), KafkaError> {
        use crate::kafka::follow::NotApplied;
        self.inner
            .applied
            .wait_for(offset, Duration::from_secs(30))
            .await
            .map_err(|e| KafkaError::Admin {
                topic: topics::catalog().to_owned(),
                reason: match e {
                    NotApplied::TimedOut => "not applied within 30 s",
                    NotApplied::Stopped => "the catalog follower stopped",
                }
                .to_owned(),
            })
    }

    /// Writes a record and waits until it is applied here (written again
    /// over a concurrent write of another process of the node that came
    /// first: a plain write does not depend on the state).
    pub async fn put(&self, record: CatalogRecord) -> Result<(), KafkaError> {
        let _w = self.inner.writer.lock().await;
        self.write_until_applied(record).await
    }

    /// Writes a record only if `unchanged` holds of the state when it is
    /// written (e.g. the subscription is still the one the caller decided
    /// on), so a decision taken on what was read cannot overwrite one made
    /// meanwhile (a revocation undone by a stale write), by this process
    /// or another of the node's. `Ok(false)`: not written, the state
    /// changed.
    pub async fn put_if(
        &self,
        record: CatalogRecord,
        mut unchanged: impl FnMut(&CatalogState) -> bool,
    ) -> Result<bool, KafkaError> {
        let _w = self.inner.writer.lock().await;
        let key = record_key(&record);
        let mut lost = false;
        for _ in 0..WRITE_ATTEMPTS {
            if !unchanged(&*self.inner.state.read().await) {
                if lost {
                    self.heal(&key).await?;
                }
                return Ok(false);
            }
            if self.write(record.clone()).await? {
                return Ok(true);
            }
            lost = true;
        }
        Err(kept_losing())
    }

    /// Reads the state and writes what `decide` makes of it, as one step:
    /// a decision is always taken on the state it is written over. When
    /// another process of the node wrote the key first, `decide` runs
    /// again on the state with that write (a revocation cannot be lost to
    /// a write decided on an older copy). `decide` returns the record to
    /// write with a value for the caller, or why nothing is written.
    pub async fn update<T, E>(
        &self,
        mut decide: impl FnMut(&CatalogState) -> Result<(CatalogRecord, T), E>,
    ) -> Result<Result<T, E>, KafkaError> {
        let _w = self.inner.writer.lock().await;
        let mut lost: Option<String> = None;
        for _ in 0..WRITE_ATTEMPTS {
            let decided = {
                let st = self.inner.state.read().await;
                decide(&st)
            };
            match decided {
                Ok((record, out)) => {
                    let key = record_key(&record);
                    if self.write(record).await? {
                        return Ok(Ok(out));
                    }
                    lost = Some(key);
                }
                Err(e) => {
                    if let Some(key) = lost {
                        self.heal(&key).await?;
                    }
                    return Ok(Err(e));
                }
            }
        }
        Err(kept_losing())
    }

    /// Writes `record` until a write of it applies (the caller holds the
    /// writer lock).
    async fn write_until_applied(&self, record: CatalogRecord) -> Result<(), KafkaError> {
        for _ in 0..WRITE_ATTEMPTS {
            if self.write(record.clone()).await? {
                return Ok(());
            }
        }
        Err(kept_losing())
    }

    /// After this process's record of `key` lost and it decided to write
    /// nothing else, its losing record may be the key's last, which is
    /// what compaction keeps: the key's applied record is written again
    /// after it.
    async fn heal(&self, key: &str) -> Result<(), KafkaError> {
        let current = current_record(&*self.inner.state.read().await, key);
        match current {
            Some(record) => self.write_until_applied(record).await,
            None => Ok(()),
        }
    }

    /// Sends a record and waits until it is applied here or lost; the
    /// caller holds the writer lock. Returns whether it applied.
    ///
    /// Two processes of the node may write one key at the same moment,
    /// each deciding on the state it read. The record names that state:
    /// `base`, the latest write time of the key among the records this
    /// process has read (applied or not), and is written later than it.
    /// Every process applies a record only if its base is not older than
    /// the latest write time of the key's records before it, so of two
    /// writes over the same state the first in the topic applies and the
    /// other loses, in every process alike; its writer decides again.
    /// The key's last record is always one that applied (a loser's writer
    /// writes again after it), so a compacted topic, which keeps only that
    /// one, reads to the same state.
    async fn write(&self, record: CatalogRecord) -> Result<bool, KafkaError> {
        let key = record_key(&record);
        // Subscriptions' HMAC keys are written sealed: what the topic holds
        // gives them to no one without the node's key.
        let record = match record {
            CatalogRecord::Subscription(mut s) => {
                s.secret = self.inner.keys.seal(&s.id, &s.secret);
                CatalogRecord::Subscription(s)
            }
            other => other,
        };
        let value = serde_json::to_vec(&record).expect("catalog records serialize");
        let base = self
            .inner
            .seen
            .lock()
            .expect("not poisoned")
            .get(key.as_bytes())
            .copied()
            .unwrap_or(i64::MIN);
        let written_ms = {
            let written = self.inner.written.lock().expect("not poisoned");
            let last = written.get(key.as_bytes()).copied().unwrap_or(i64::MIN);
            backflow_connectors::now_ms()
                .max(last.saturating_add(1))
                .max(base.saturating_add(1))
        };
        let signature = self
            .inner
            .keys
            .sign(key.as_bytes(), written_ms, base, &value);
        let delivered = self
            .inner
            .publisher
            .send(OutgoingRecord {
                topic: topics::catalog(),
                key: Some(key.as_bytes()),
                payload: Some(&value),
                headers: &[(HEADER_SIGNATURE, signature.as_slice())],
            })
            .await?;
        self.wait_applied(delivered.offset).await?;
        let won = self
            .inner
            .won
            .lock()
            .expect("not poisoned")
            .get(key.as_bytes())
            .copied();
        Ok(won == Some(delivered.offset))
    }
}

/// How many times a write is tried while other processes of the node
/// keep writing the same key first.
const WRITE_ATTEMPTS: usize = 20;

fn kept_losing() -> KafkaError {
    KafkaError::Admin {
        topic: topics::catalog().to_owned(),
        reason: format!(
            "other processes of the node wrote the same catalog key first {WRITE_ATTEMPTS} times in a row; try again"
        ),
    }
}

/// The topic key of a catalog record.
fn record_key(record: &CatalogRecord) -> String {
    match record {
        CatalogRecord::Dataset(d) => format!("dataset:{}", d.id),
        CatalogRecord::Subscription(s) => format!("subscription:{}", s.id),
        CatalogRecord::Feed(f) => format!("feed:{}", f.name),
        CatalogRecord::Token(t) => format!("token:{}", t.sha256),
        CatalogRecord::Node(n) => format!("node:{}", n.code),
    }
}

impl Catalog {
    /// Writes again, signed (and its HMAC key sealed) with the node's
    /// current key, every record of the catalog that is not: those signed
    /// with a previous key (`audit.previous_key_files`,
    /// `audit.previous_public_keys`) or not signed at all (the upgrade
    /// window, `audit.unsigned_catalog_until_offset`), and HMAC keys in
    /// clear or sealed with a previous key. Once it returned, the previous
    /// keys and the upgrade window may be removed from the configuration.
    /// Returns how many records were written.
    pub async fn refresh_stale(&self) -> Result<usize, KafkaError> {
        self.caught_up().await?;
        let keys: Vec<Vec<u8>> = self
            .inner
            .stale
            .lock()
            .expect("not poisoned")
            .iter()
            .cloned()
            .collect();
        let mut written = 0;
        for key in keys {
            let Ok(key) = String::from_utf8(key) else {
                continue;
            };
            let _w = self.inner.writer.lock().await;
            // Written meanwhile (by this or another process): nothing to do.
            if !self
                .inner
                .stale
                .lock()
                .expect("not poisoned")
                .contains(key.as_bytes())
            {
                continue;
            }
            let record = current_record(&*self.inner.state.read().await, &key);
            if let Some(record) = record {
                self.write_until_applied(record).await?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// How many applied records are not signed with the node's current key.
    pub fn stale_records(&self) -> usize {
        self.inner.stale.lock().expect("not poisoned").len()
    }
}

/// The node's current record of a catalog key, to write again.
fn current_record(st: &CatalogState, key: &str) -> Option<CatalogRecord> {
    let (kind, id) = key.split_once(':')?;
    Some(match kind {
        "dataset" => CatalogRecord::Dataset(st.datasets.get(id)?.clone()),
        "subscription" => CatalogRecord::Subscription(st.subscriptions.get(id)?.clone()),
        "feed" => CatalogRecord::Feed(st.feeds.get(id)?.clone()),
        "token" => CatalogRecord::Token(st.tokens.get(id)?.clone()),
        "node" => CatalogRecord::Node(st.nodes.get(id)?.clone()),
        _ => return None,
    })
}

/// How long a record that lost to a concurrent write may stay its key's
/// last before it is reported and the key written again.
const CONFLICT_SETTLES: Duration = Duration::from_secs(5);

/// How soon the node writes one key's record again after a record it
/// rejected landed on that key.
const REASSERT_EVERY: Duration = Duration::from_secs(10);

/// The catalog's side of following its topic: each record checked
/// (signature, replay, sealed key) and applied or rejected.
struct Follower {
    inner: Arc<Inner>,
    /// Records rejected while reading what the topic held at start, by key:
    /// reported once the topic is read, unless a record of the node's own
    /// came later on the same key (then compaction drops them, and they
    /// were reported when they were new; e.g. records signed with a key the
    /// node has since dropped, written again under its current one).
    held_back: std::collections::BTreeMap<Vec<u8>, (i64, &'static str)>,
    /// The offset of the topic's last record when following began.
    history_end: i64,
}

async fn follow(inner: Arc<Inner>, consumer: Consumer, shutdown: CancellationToken) {
    let history_end = crate::kafka::follow::Applied::end_of(&inner.watermarks, topics::catalog())
        .await
        .unwrap_or(-1);
    let follower = Follower {
        inner: inner.clone(),
        held_back: Default::default(),
        history_end,
    };
    crate::kafka::follow::follow(
        consumer,
        topics::catalog(),
        &inner.applied,
        follower,
        shutdown,
    )
    .await;
}

impl crate::kafka::follow::Apply for Follower {
    async fn apply(&mut self, record: crate::kafka::ConsumedRecord) {
        let inner = &self.inner;
        let key = record.key.clone().unwrap_or_default();
        let verdict = match &record.payload {
            // The node never deletes a catalog key.
            None => Err("it is a tombstone, which would delete the key's record at compaction"),
            Some(payload) => inner
                .keys
                .check(record.offset, &key, payload, &record.headers)
                .and_then(|signed| {
                    // Believed records count towards the key's latest
                    // write whether they apply or not.
                    let seen = {
                        let mut seen = inner.seen.lock().expect("not poisoned");
                        let before = seen.get(&key).copied();
                        if let Some(at) = signed.written_ms {
                            seen.insert(key.clone(), before.map_or(at, |b| b.max(at)));
                        }
                        before
                    };
                    match (signed.base, seen) {
                        (Some(base), Some(seen)) if base < seen => return Err(CONFLICT),
                        (Some(_), _) => {
                            inner
                                .based
                                .lock()
                                .expect("not poisoned")
                                .insert(key.clone());
                        }
                        // A record without a base after one with: written by
                        // a process of an earlier version (during an
                        // upgrade), which decided without knowing what this
                        // version's processes wrote.
                        (None, _) if inner.based.lock().expect("not poisoned").contains(&key) => {
                            return Err(CONFLICT)
                        }
                        (None, _) => {}
                    }
                    let written = inner.written.lock().expect("not poisoned");
                    match (signed.written_ms, written.get(&key)) {
                        (Some(at), Some(last)) if at < *last => {
                            Err("it is older than the key's record already applied (a replay)")
                        }
                        _ => Ok((signed.written_ms, signed.by_current)),
                    }
                })
                .and_then(|(at, by_current)| {
                    let parsed = serde_json::from_slice::<CatalogRecord>(payload)
                        .map_err(|_| "it is not a catalog record")?;
                    let mut current = by_current;
                    let opened = match parsed {
                        CatalogRecord::Subscription(mut s) => {
                            current &= inner.keys.sealed_now(&s.id, &s.secret);
                            s.secret = inner.keys.open(&s.id, &s.secret)?;
                            CatalogRecord::Subscription(s)
                        }
                        other => other,
                    };
                    Ok((at, current, opened))
                }),
        };
        match verdict {
            Ok((at, current, r)) => {
                self.held_back.remove(&key);
                {
                    let mut stale = inner.stale.lock().expect("not poisoned");
                    if current {
                        stale.remove(&key);
                    } else {
                        stale.insert(key.clone());
                    }
                }
                if let Some(at) = at {
                    inner
                        .written
                        .lock()
                        .expect("not poisoned")
                        .insert(key.clone(), at);
                }
                inner
                    .won
                    .lock()
                    .expect("not poisoned")
                    .insert(key, record.offset);
                inner.state.write().await.apply(r);
                inner.changed.send_modify(|n| *n += 1);
            }
            // A concurrent write that lost: its writer decides again and
            // writes after it at once. Still the key's last record a moment
            // later, it is not that (a writer that died, or someone
            // replaying an old record of the node's): rejected as any other.
            Err(CONFLICT) if record.offset >= self.history_end => {
                tracing::info!(
                    offset = record.offset,
                    "catalog record not applied: {CONFLICT}"
                );
                let (inner, offset) = (inner.clone(), record.offset);
                tokio::spawn(async move {
                    tokio::time::sleep(CONFLICT_SETTLES).await;
                    let superseded = inner
                        .won
                        .lock()
                        .expect("not poisoned")
                        .get(&key)
                        .is_some_and(|won| *won > offset);
                    if !superseded {
                        reject(&inner, key, offset, CONFLICT);
                    }
                });
            }
            Err(why) if record.offset < self.history_end => {
                self.held_back.insert(key, (record.offset, why));
            }
            Err(why) => reject(inner, key, record.offset, why),
        }
        if record.offset >= self.history_end {
            for (key, (offset, why)) in std::mem::take(&mut self.held_back) {
                reject(inner, key, offset, why);
            }
        }
    }
}

/// Reports a rejected record (metric, log) and has the node write its own
/// record of the key again, so the rejected one is not the last of its key
/// when the topic is compacted (once the whole topic has been read, and at
/// most every 10 s per key).
fn reject(inner: &Arc<Inner>, key: Vec<u8>, offset: i64, why: &'static str) {
    inner.rejected.inc();
    tracing::error!(
        offset,
        reason = why,
        "catalog record rejected: not applied; someone other than this node wrote to the catalog topic (only the node's principal may: see the Kafka ACLs in README, Security model)"
    );
    {
        let mut reasserted = inner.reasserted.lock().expect("not poisoned");
        let due = reasserted
            .get(&key)
            .is_none_or(|t| t.elapsed() >= REASSERT_EVERY);
        if !due {
            return;
        }
        reasserted.insert(key.clone(), tokio::time::Instant::now());
    }
    let catalog = Catalog {
        inner: inner.clone(),
    };
    tokio::spawn(async move {
        if catalog.caught_up().await.is_err() {
            return;
        }
        let Ok(key) = String::from_utf8(key) else {
            return;
        };
        let current = current_record(&*catalog.state().await, &key);
        if let Some(record) = current {
            if let Err(e) = catalog.put(record).await {
                tracing::warn!(error = %e, "writing the node's record again after a rejected one failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::audit::AuditKey;

    #[test]
    fn a_subscription_debug_print_holds_no_hmac_key() {
        let sub: Subscription = serde_json::from_value(serde_json::json!({
            "id": "330106:ga.people", "subscriber": "330106", "dataset": "ga.people",
            "purpose": "p", "requested": ["phone"], "granted": {"phone": "hashed"},
            "valid_until_ms": null, "state": "active", "policy_version": 1,
            "secret": "5ec7e75ec7e75ec7e75ec7e7", "updated_ms": 1,
        }))
        .unwrap();
        let printed = format!("{sub:?} {sub:#?}");
        assert!(!printed.contains("5ec7e7"), "{printed}");
        assert!(printed.contains("330106:ga.people") && printed.contains("<redacted>"));
    }

    fn signed(keys: &CatalogKeys, key: &[u8], value: &[u8]) -> Vec<(String, Vec<u8>)> {
        vec![(
            HEADER_SIGNATURE.to_owned(),
            keys.sign(key, 1_000, 900, value),
        )]
    }

    #[test]
    fn only_records_the_node_signed_are_believed() {
        let node = CatalogKeys::new(AuditKey::generate().unwrap(), Vec::new());
        let (key, value) = (b"token:ab".as_slice(), br#"{"type":"token"}"#.as_slice());
        let headers = signed(&node, key, value);
        assert_eq!(node.refusal(5, key, value, &headers), None);
        assert!(
            node.refusal(5, key, b"{}", &headers).is_some(),
            "value changed"
        );
        assert!(
            node.refusal(5, b"token:cd", value, &headers).is_some(),
            "key changed"
        );
        assert!(node.refusal(5, key, value, &[]).is_some(), "unsigned");
        let mut twice = headers.clone();
        twice.extend(headers.clone());
        assert!(node.refusal(5, key, value, &twice).is_some());
        let other = CatalogKeys::new(AuditKey::generate().unwrap(), Vec::new());
        assert!(
            other.refusal(5, key, value, &headers).is_some(),
            "another node's key"
        );
        // Moving key and value bytes across the boundary changes what is
        // signed: the key's length is part of it.
        let moved = signed(&node, b"token:a", b"b{\"type\":\"token\"}");
        assert!(node
            .refusal(5, b"token:ab", b"{\"type\":\"token\"}", &moved)
            .is_some());
    }

    #[test]
    fn hmac_keys_are_sealed_for_the_node_and_their_subscription_only() {
        let key = AuditKey::generate().unwrap();
        let node = CatalogKeys::new(key.clone(), Vec::new());
        let secret = random_secret();
        let sealed = node.seal("330106:ga.people", &secret);
        assert!(sealed.starts_with(SEALED_PREFIX) && !sealed.contains(&secret));
        assert_ne!(
            sealed,
            node.seal("330106:ga.people", &secret),
            "a fresh nonce each time"
        );
        assert_eq!(node.open("330106:ga.people", &sealed).unwrap(), secret);
        assert!(
            node.open("330108:ga.people", &sealed).is_err(),
            "bound to its subscription"
        );
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert!(node
            .open("330106:ga.people", std::str::from_utf8(&flipped).unwrap())
            .is_err());
        let other = CatalogKeys::new(AuditKey::generate().unwrap(), Vec::new());
        assert!(other.open("330106:ga.people", &sealed).is_err());
        let rotated = other.with_previous_keys(&[key]);
        assert_eq!(rotated.open("330106:ga.people", &sealed).unwrap(), secret);
        assert_eq!(
            node.open("330106:ga.people", &secret).unwrap(),
            secret,
            "a key written before sealing is read as it is"
        );
    }

    /// The state a record was written over is signed with it: a record
    /// whose base is moved forward (to win over a concurrent write) is not
    /// believed. Records from before bases existed still are.
    #[test]
    fn the_base_a_record_was_written_over_is_signed() {
        let keys = CatalogKeys::new(AuditKey::generate().unwrap(), Vec::new());
        let (key, value) = (
            b"subscription:330106:ga.people".as_slice(),
            b"{}".as_slice(),
        );
        let mut headers = signed(&keys, key, value);
        assert_eq!(
            keys.check(5, key, value, &headers).map(|s| s.base),
            Ok(Some(900))
        );
        headers[0].1[8..16].copy_from_slice(&i64::MAX.to_be_bytes());
        assert!(
            keys.refusal(5, key, value, &headers).is_some(),
            "base changed"
        );
        // A record signed before bases: the written time, then the
        // signature of the older message.
        let mut legacy = 1_000i64.to_be_bytes().to_vec();
        legacy.extend_from_slice(
            &keys
                .signing
                .sign_message(&CatalogKeys::message(key, 1_000, None, value)),
        );
        let legacy = vec![(HEADER_SIGNATURE.to_owned(), legacy)];
        assert_eq!(
            keys.check(5, key, value, &legacy),
            Ok(Signed {
                written_ms: Some(1_000),
                base: None,
                by_current: true
            })
        );
    }

    #[test]
    fn records_of_a_previous_key_are_told_apart_to_be_written_again() {
        let old = AuditKey::generate().unwrap();
        let old_keys = CatalogKeys::new(old.clone(), Vec::new());
        let new = CatalogKeys::new(AuditKey::generate().unwrap(), Vec::new())
            .with_previous_keys(&[old])
            .with_unsigned_until(Some(3));
        let by_old = signed(&old_keys, b"k", b"v");
        let by_new = signed(&new, b"k", b"v");
        let signed_by = |by_current| Signed {
            written_ms: Some(1_000),
            base: Some(900),
            by_current,
        };
        assert_eq!(new.check(9, b"k", b"v", &by_old), Ok(signed_by(false)));
        assert_eq!(new.check(9, b"k", b"v", &by_new), Ok(signed_by(true)));
        assert_eq!(new.check(2, b"k", b"v", &[]), Ok(Signed::default()));
        let secret = random_secret();
        let id = "330106:ga.people";
        assert!(new.sealed_now(id, &new.seal(id, &secret)));
        assert!(!new.sealed_now(id, &old_keys.seal(id, &secret)));
        assert!(!new.sealed_now(id, &secret), "in clear");
    }

    #[test]
    fn a_rotated_key_and_an_upgraded_catalog_are_believed_as_configured() {
        let old = AuditKey::generate().unwrap();
        let old_keys = CatalogKeys::new(old.clone(), Vec::new());
        let headers = signed(&old_keys, b"k", b"v");
        let rotated = CatalogKeys::new(AuditKey::generate().unwrap(), vec![old.verifying_key()]);
        assert_eq!(rotated.refusal(1, b"k", b"v", &headers), None);
        let upgraded = rotated.with_unsigned_until(Some(10));
        assert_eq!(upgraded.refusal(10, b"k", b"v", &[]), None);
        assert!(
            upgraded.refusal(11, b"k", b"v", &[]).is_some(),
            "unsigned after the upgrade"
        );
    }
}
