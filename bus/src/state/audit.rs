//! The audit trail: every sharing decision and every delivered batch,
//! appended to `backflow._audit` as a hash chain that the node signs.
//!
//! Each node writes its own chain (records keyed by its division code; a
//! process that is one of several serving a node, `kafka.replica` set,
//! writes a chain of its own, `<code>/<replica>`, signed with the node's
//! key, so each chain has one writer). The brokers enforce that: a process
//! registers the chain's transactional id (`backflow.audit.<chain>`)
//! before it reads where the chain ends, and writes its own records in
//! transactions under it (delivery records go in the distributor's), so a
//! second process writing the chain fences the first instead of forking
//! it, and records a killed writer left undecided are aborted, never
//! visible after its successor read the end. With `kafka.transactions =
//! false` records are written as they are, and a writer killed while the
//! brokers replicate its last records may leave a fork (`audit verify`
//! names it). A record is one JSON object:
//!
//! ```json
//! {"node":"330100","seq":7,"ts_ms":1764990000000,"kind":"decision",
//!  "details":{"action":"subscription approved"},"prev":"<hash of seq 6>",
//!  "key_id":"<16 hex>","hash":"<64 hex>","sig":"<128 hex>"}
//! ```
//!
//! - `hash` is SHA-256 over the record's canonical JSON without `hash` and
//!   `sig`: object keys sorted by their bytes, no white space, strings and
//!   numbers as serde_json writes them. It covers `prev`, the hash of the
//!   record before (or 64 zeros before the first), so a change to any
//!   record breaks the link from the next one.
//! - `sig` is the node's Ed25519 signature (RFC 8032) of the ASCII text
//!   [`SIGNATURE_CONTEXT`] followed by `hash` in lower-case hex; `key_id`
//!   names the key (the first 8 bytes of SHA-256 of the public key, hex).
//! - `kind` is `decision`, `delivery` or `checkpoint`. Each node process
//!   writes a checkpoint before its first record, and another whenever
//!   `seq` reaches a multiple of `audit.checkpoint_every`: a signed record
//!   whose `prev` is the chain head at that point and whose details name
//!   the public key.
//!
//! What it proves: with the node's public key, [`verify`] tells records
//! the node signed from records anybody else appended (forged), and names
//! by topic offset every record changed after it was written (altered),
//! put in a chain out of sequence (inserted), every gap in a sequence
//! (missing) and every broken link (prev-hash mismatch), going on past
//! each problem. The topic keeps records forever (`retention.ms=-1`); when
//! an operator drops old ones anyway, a chain that starts mid-way and
//! still has a checkpoint is reported as expired up to its first record,
//! not as tampered; one without a checkpoint as missing records.
//!
//! What it does not prove: without the public key only the hash chain is
//! checked, and anybody who can write to the topic can append records that
//! pass; a node whose key leaked, or whose operator holds the key, can
//! sign what it likes; records deleted from the end of a trail leave a
//! shorter trail that verifies (an auditor who noted the head, the last
//! `seq` and `hash` verify printed, sees it). Records written before the
//! trail was signed carry no signature and verify reports them as forged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backflow_connectors::now_ms;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::domain::topics;
use crate::kafka::{Consumer, KafkaError, KafkaSettings, OutgoingRecord, Publisher, Watermarks};

/// The key that signs this node's audit trail, and its checkpoints.
///
/// ```toml
/// [audit]
/// signing_key_file = "/etc/backflow/audit.key"  # written by `backflow audit keygen --out FILE`
/// # signing_key_env = "BACKFLOW_AUDIT_KEY"      # or: a variable holding the key
/// checkpoint_every = 1000
/// ```
///
/// The key is an Ed25519 secret key: its 32-byte seed as 64 hex digits.
/// Owners and auditors check the trail with its public half (`backflow
/// audit verify --public-key`). With neither setting, a node on the
/// embedded broker signs with a key made for that run; a node on a real
/// cluster refuses to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// File holding the secret key (hex seed); readable by the node's
    /// user only.
    pub signing_key_file: Option<PathBuf>,
    /// Environment variable holding the secret key (hex seed), instead of
    /// a file.
    pub signing_key_env: Option<String>,
    /// A signed checkpoint record is written when the chain's sequence
    /// number reaches a multiple of this (and when a node process writes
    /// its first record), so a trail whose oldest records expired is
    /// checked from the first checkpoint still there.
    pub checkpoint_every: u64,
    /// Public keys (hex) the node signed with before its key was rotated:
    /// catalog records they signed are still believed until rewritten.
    pub previous_public_keys: Vec<String>,
    /// Files of secret keys (hex seed) the node used before its key was
    /// rotated: catalog records they signed are believed, and the HMAC
    /// keys they sealed are opened, until the records are rewritten.
    pub previous_key_files: Vec<PathBuf>,
    /// Upgrading a catalog written before records were signed: its records
    /// at offsets up to this one (the catalog topic's last offset before
    /// the upgrade) are believed without a signature. Records after it
    /// are checked as any other.
    pub unsigned_catalog_until_offset: Option<i64>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            signing_key_file: None,
            signing_key_env: None,
            checkpoint_every: 1000,
            previous_public_keys: Vec::new(),
            previous_key_files: Vec::new(),
            unsigned_catalog_until_offset: None,
        }
    }
}

impl AuditConfig {
    /// The first setting that cannot be used: (key, reason).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.signing_key_file.is_some() && self.signing_key_env.is_some() {
            return Err((
                "audit.signing_key_env",
                "set either audit.signing_key_file or audit.signing_key_env, not both".to_owned(),
            ));
        }
        if self.checkpoint_every == 0 {
            return Err((
                "audit.checkpoint_every",
                "must be at least 1 (1000 is the default)".to_owned(),
            ));
        }
        self.previous_keys()?;
        Ok(())
    }

    /// [`AuditConfig::previous_public_keys`], parsed.
    pub fn previous_keys(
        &self,
    ) -> Result<Vec<ed25519_dalek::VerifyingKey>, (&'static str, String)> {
        self.previous_public_keys
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut bytes)
                    .ok()
                    .and_then(|()| ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok())
                    .ok_or_else(|| {
                        (
                            "audit.previous_public_keys",
                            format!("entry {i} is not an Ed25519 public key: 64 hex digits, as GET /api/node shows audit_public_key"),
                        )
                    })
            })
            .collect()
    }
}

/// The hash before a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a signature signs, before the record's hash in hex: the key signs
/// nothing but audit records of this format.
pub const SIGNATURE_CONTEXT: &str = "backflow.audit.v1:";

/// Most problems a report lists; the rest are only counted.
const MAX_PROBLEMS: usize = 10_000;

/// How long a read of the trail waits for a record it knows is there.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key configured, and the node runs on a real cluster.
    #[error("invalid configuration: audit.signing_key_file is not set: a node on a Kafka cluster (kafka.brokers) signs its audit trail with its own Ed25519 key so that owners and auditors can check who wrote it; create a key with `backflow audit keygen --out /etc/backflow/audit.key`, set audit.signing_key_file (BACKFLOW_AUDIT__SIGNING_KEY_FILE) to that file, or audit.signing_key_env to a variable holding it, and give the public key it prints to the owners")]
    Missing,
    /// The key file cannot be read.
    #[error("invalid configuration: audit.signing_key_file: cannot read {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    /// The key variable is not set.
    #[error("invalid configuration: audit.signing_key_env: environment variable {var} is not set")]
    EnvNotSet { var: String },
    /// The text is not a key. Never holds the text.
    #[error("invalid configuration: {setting}: {reason}")]
    Malformed { setting: String, reason: String },
    /// A new key file could not be written.
    #[error("cannot write the key to {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    /// The operating system gave no randomness.
    #[error("cannot make a new key: the operating system's random source failed: {0}")]
    Random(String),
}

/// The node's Ed25519 signing key. Its `Debug` shows the public half only;
/// the secret is wiped from memory when dropped.
#[derive(Clone)]
pub struct AuditKey {
    signing: SigningKey,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey(public {})", self.public_key_hex())
    }
}

impl AuditKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// A key from its seed in hex (64 digits, white space around ignored);
    /// `setting` names where the text came from in errors, which never
    /// quote the text.
    pub fn from_seed_hex(text: &str, setting: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text, seed.as_mut()).map_err(|_| KeyError::Malformed {
            setting: setting.to_owned(),
            reason: format!(
                "not an Ed25519 secret key: expected its 32-byte seed as 64 hex digits (as `backflow audit keygen` writes), found {} characters{}",
                text.len(),
                if text.len() == 64 { " that are not all hex digits" } else { "" }
            ),
        })?;
        Ok(Self {
            signing: SigningKey::from_bytes(&seed),
        })
    }

    /// The key `[audit]` names (`None` when it names none).
    pub fn from_config(config: &AuditConfig) -> Result<Option<Self>, KeyError> {
        if let Some(path) = &config.signing_key_file {
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                KeyError::Unreadable {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?);
            warn_if_readable_by_others(path);
            let key = Self::from_seed_hex(
                &text,
                &format!("audit.signing_key_file ({})", path.display()),
            )?;
            tracing::info!(file = %path.display(), public_key = %key.public_key_hex(), "audit trail signing key loaded");
            return Ok(Some(key));
        }
        if let Some(var) = &config.signing_key_env {
            let text = Zeroizing::new(
                std::env::var(var).map_err(|_| KeyError::EnvNotSet { var: var.clone() })?,
            );
            let key =
                Self::from_seed_hex(&text, &format!("audit.signing_key_env (variable {var})"))?;
            tracing::info!(variable = %var, public_key = %key.public_key_hex(), "audit trail signing key loaded");
            return Ok(Some(key));
        }
        Ok(None)
    }

    /// The key a node signs with: the configured one; with none, on the
    /// embedded broker a key made for this run (said loudly), on a real
    /// cluster [`KeyError::Missing`].
    pub fn for_node(config: &AuditConfig, embedded: bool) -> Result<Self, KeyError> {
        if let Some(key) = Self::from_config(config)? {
            return Ok(key);
        }
        if !embedded {
            return Err(KeyError::Missing);
        }
        let key = Self::generate()?;
        tracing::warn!(
            public_key = %key.public_key_hex(),
            "NO AUDIT SIGNING KEY: the audit trail is signed with a key made for this run only, \
             which nobody can check afterwards. This is for trying backflow only; create a key \
             with `backflow audit keygen --out FILE` and set audit.signing_key_file \
             (BACKFLOW_AUDIT__SIGNING_KEY_FILE)."
        );
        Ok(key)
    }

    /// Makes a new key and writes its seed (hex) to `path`, which must not
    /// exist yet, readable by its owner only (mode 0600).
    pub fn write_new(path: &Path) -> Result<Self, KeyError> {
        use std::io::Write as _;
        let key = Self::generate()?;
        let seed_bytes = Zeroizing::new(key.signing.to_bytes());
        let seed = Zeroizing::new(hex::encode(seed_bytes.as_ref()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let write = |reason: std::io::Error| KeyError::Write {
            path: path.to_owned(),
            reason: if reason.kind() == std::io::ErrorKind::AlreadyExists {
                "the file exists; a key is never overwritten (remove it first if you mean to replace the key)".to_owned()
            } else {
                reason.to_string()
            },
        };
        let mut file = options.open(path).map_err(write)?;
        file.write_all(format!("{}\n", seed.as_str()).as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(write)?;
        Ok(key)
    }

    /// The public key, 64 hex digits: what owners and auditors pass to
    /// `backflow audit verify --public-key`.
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The key's short name carried in each record.
    pub fn key_id(&self) -> String {
        key_id(&self.signing.verifying_key())
    }

    /// A 32-byte key for `purpose`, derived from this key's secret half
    /// (HMAC-SHA256 keyed by the seed): the catalog seals its secrets with
    /// one, so they are readable only where the node's key is.
    pub fn derive(&self, purpose: &[u8]) -> Zeroizing<[u8; 32]> {
        use hmac::Mac as _;
        let seed = Zeroizing::new(self.signing.to_bytes());
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(seed.as_ref())
            .expect("HMAC takes a key of any length");
        mac.update(purpose);
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// The signature of `message`; callers put a context of their own at
    /// its start, so no signature is valid for two purposes.
    pub fn sign_message(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The signature (hex) of a record whose hash is `hash`.
    fn sign_hash(&self, hash: &str) -> String {
        hex::encode(
            self.signing
                .sign(format!("{SIGNATURE_CONTEXT}{hash}").as_bytes())
                .to_bytes(),
        )
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = %format!("{mode:o}"), "the audit signing key file is readable by other users: `chmod 600` it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// A public key's short name: the first 8 bytes of its SHA-256, in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Reads a public key from 64 hex digits.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let text = text.trim();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| {
        format!("{text:?} is not an Ed25519 public key: expected 64 hex digits, as `backflow audit keygen` prints")
    })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| format!("{text} is not a valid Ed25519 public key"))
}

/// The public keys a verification trusts: some for any chain, some for
/// one node's chain only. A record is signed when its signature verifies
/// with one of the keys its chain may use.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    any_node: Vec<VerifyingKey>,
    per_node: BTreeMap<String, Vec<VerifyingKey>>,
}

impl TrustedKeys {
    /// No key: only the hash chains are checked.
    pub fn none() -> Self {
        Self::default()
    }

    /// Trusts `key` for `node`'s chain (`None`: for every chain).
    pub fn trust(&mut self, node: Option<&str>, key: VerifyingKey) {
        match node {
            Some(n) => self.per_node.entry(n.to_owned()).or_default().push(key),
            None => self.any_node.push(key),
        }
    }

    /// Adds a key written `HEX` or `NODE=HEX`.
    pub fn trust_spec(&mut self, spec: &str) -> Result<(), String> {
        match spec.trim().split_once('=') {
            Some((node, hex)) => self.trust(Some(node.trim()), parse_public_key(hex)?),
            None => self.trust(None, parse_public_key(spec)?),
        }
        Ok(())
    }

    /// Whether no key is trusted at all.
    pub fn is_empty(&self) -> bool {
        self.any_node.is_empty() && self.per_node.is_empty()
    }

    /// The keys `node`'s chain may be signed with (`None`: none, its
    /// signatures are not checked).
    fn for_node(&self, chain: &str) -> Option<Vec<VerifyingKey>> {
        // A chain of one of several processes serving a node is named
        // `<node>/<replica>` and signed with the node's key.
        let node = chain.split('/').next().unwrap_or(chain);
        let mut keys = self.any_node.clone();
        if let Some(k) = self.per_node.get(node) {
            keys.extend(k.iter().copied());
        }
        (!keys.is_empty()).then_some(keys)
    }
}

/// The hash of a record body (everything but `hash` and `sig`), hex.
fn digest(body: &Value) -> String {
    // serde_json's maps are sorted by key (the workspace does not enable
    // its `preserve_order`): the text is canonical.
    hex::encode(Sha256::digest(body.to_string().as_bytes()))
}

/// A record as written: the body with its hash and signature.
fn signed_record(
    key: &AuditKey,
    node: &str,
    seq: u64,
    prev: &str,
    kind: &str,
    details: Value,
    ts_ms: i64,
) -> (Value, String) {
    let mut record = json!({
        "node": node,
        "seq": seq,
        "ts_ms": ts_ms,
        "kind": kind,
        "details": details,
        "prev": prev,
        "key_id": key.key_id(),
    });
    let hash = digest(&record);
    record["sig"] = Value::String(key.sign_hash(&hash));
    record["hash"] = Value::String(hash.clone());
    (record, hash)
}

/// A record read back: its body (without `hash` and `sig`) and those two.
struct ReadRecord {
    body: Map<String, Value>,
    hash: String,
    sig: Option<String>,
}

impl ReadRecord {
    fn parse(payload: &[u8]) -> Option<Self> {
        let Value::Object(mut body) = serde_json::from_slice::<Value>(payload).ok()? else {
            return None;
        };
        let hash = match body.remove("hash") {
            Some(Value::String(h)) => h,
            _ => String::new(),
        };
        let sig = match body.remove("sig") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        Some(Self { body, hash, sig })
    }

    fn str(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(Value::as_str)
    }

    fn seq(&self) -> Option<u64> {
        self.body.get("seq").and_then(Value::as_u64)
    }

    fn hash_matches(&self) -> bool {
        digest(&Value::Object(self.body.clone())) == self.hash
    }
}

/// A record's signature, checked against the keys its chain may use.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SigCheck {
    Valid,
    Unchecked,
    Missing,
    Invalid(String),
}

fn check_sig(keys: Option<&[VerifyingKey]>, hash: &str, sig: Option<&str>) -> SigCheck {
    let Some(keys) = keys else {
        return SigCheck::Unchecked;
    };
    let Some(sig) = sig else {
        return SigCheck::Missing;
    };
    let mut bytes = [0u8; 64];
    if hex::decode_to_slice(sig, &mut bytes).is_err() {
        return SigCheck::Invalid("the signature is not 128 hex digits".to_owned());
    }
    let sig = Signature::from_bytes(&bytes);
    let message = format!("{SIGNATURE_CONTEXT}{hash}");
    if keys
        .iter()
        .any(|k| k.verify_strict(message.as_bytes(), &sig).is_ok())
    {
        SigCheck::Valid
    } else {
        SigCheck::Invalid(format!(
            "the signature does not verify with the trusted key{} ({})",
            if keys.len() == 1 { "" } else { "s" },
            keys.iter().map(key_id).collect::<Vec<_>>().join(", ")
        ))
    }
}

/// What is wrong with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Its signature is missing or does not verify with a trusted key:
    /// the node did not write it.
    Forged,
    /// Its hash does not match its content: changed after it was written.
    Altered,
    /// Its sequence number repeats or goes back, or it sits in another
    /// node's chain.
    Inserted,
    /// Sequence numbers before it are missing.
    Missing,
    /// Its `prev` is not the hash of the record before it.
    PrevMismatch,
    /// Not an audit record (not JSON, no sequence number).
    Unreadable,
}

impl ProblemKind {
    /// The word verify prints.
    pub fn label(self) -> &'static str {
        match self {
            ProblemKind::Forged => "forged",
            ProblemKind::Altered => "altered",
            ProblemKind::Inserted => "inserted",
            ProblemKind::Missing => "missing",
            ProblemKind::PrevMismatch => "prev-hash mismatch",
            ProblemKind::Unreadable => "unreadable",
        }
    }
}

/// One problem, where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Offset of the record in `backflow._audit` (partition 0).
    pub offset: i64,
    /// The chain (node code, the record's Kafka key).
    pub node: String,
    /// The record's sequence number, when it has one.
    pub seq: Option<u64>,
    /// What is wrong.
    pub kind: ProblemKind,
    /// The details, for a person.
    pub detail: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "offset {} (chain {}", self.offset, self.node)?;
        if let Some(s) = self.seq {
            write!(f, ", seq {s}")?;
        }
        write!(f, "): {}: {}", self.kind.label(), self.detail)
    }
}

/// The start of a chain whose oldest records are gone while a checkpoint
/// is still there: expired, not tampered with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expired {
    /// Records seq 0 up to this one (excluded) are gone.
    pub before_seq: u64,
    /// Offset of the first record left.
    pub first_offset: i64,
    /// When the first record left was written (ms since the epoch).
    pub first_ts_ms: Option<i64>,
    /// Offset of the first checkpoint left.
    pub checkpoint_offset: i64,
}

/// What verify found in one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainSummary {
    /// Records of the chain in the topic.
    pub records: u64,
    /// Whether signatures were checked (a trusted key applies to it).
    pub signatures_checked: bool,
    /// Valid checkpoints.
    pub checkpoints: u64,
    /// The last record accepted into the chain: (seq, hash). An auditor
    /// who notes it sees a later trail that lost its end.
    pub head: Option<(u64, String)>,
    /// The expired start, when the oldest records are gone.
    pub expired: Option<Expired>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Per chain (node code).
    pub chains: BTreeMap<String, ChainSummary>,
    /// Every problem found, by offset (at most 10,000).
    pub problems: Vec<Problem>,
    /// Problems beyond those listed.
    pub problems_omitted: u64,
}

impl VerifyReport {
    /// No problem found.
    pub fn intact(&self) -> bool {
        self.problems.is_empty() && self.problems_omitted == 0
    }

    /// Whether every chain's signatures were checked.
    pub fn signatures_checked(&self) -> bool {
        self.chains.values().all(|c| c.signatures_checked)
    }
}

/// One chain's state while records are checked.
struct ChainCheck {
    summary: ChainSummary,
    keys: Option<Vec<VerifyingKey>>,
    /// The sequence number and `prev` the next record should have.
    next: u64,
    prev: String,
    /// After a forged record: the state of a chain that continues from
    /// it (the node itself links to whatever record ended the chain).
    after_forged: Option<(u64, String)>,
    /// The first record: (offset, seq, ts_ms).
    first: Option<(i64, u64, Option<i64>)>,
    first_checkpoint: Option<i64>,
}

/// Checks records one by one, in topic order, and reports every problem:
/// the state a verification keeps (see [`verify`]).
pub struct Verifier {
    keys: TrustedKeys,
    chains: BTreeMap<String, ChainCheck>,
    problems: Vec<Problem>,
    omitted: u64,
}

impl Verifier {
    /// A verification trusting `keys` (none: hash chains only).
    pub fn new(keys: TrustedKeys) -> Self {
        Self {
            keys,
            chains: BTreeMap::new(),
            problems: Vec::new(),
            omitted: 0,
        }
    }

    /// Checks the record at `offset` with Kafka key `key`.
    pub fn check(&mut self, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let node = key
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let keys = &self.keys;
        let chain = self
            .chains
            .entry(node.clone())
            .or_insert_with(|| ChainCheck {
                summary: ChainSummary {
                    records: 0,
                    signatures_checked: keys.for_node(&node).is_some(),
                    checkpoints: 0,
                    head: None,
                    expired: None,
                },
                keys: keys.for_node(&node),
                next: 0,
                prev: GENESIS.to_owned(),
                after_forged: None,
                first: None,
                first_checkpoint: None,
            });
        chain.summary.records += 1;
        let mut found: Vec<(Option<u64>, ProblemKind, String)> = Vec::new();
        Self::check_in(chain, &node, offset, payload, &mut found);
        for (seq, kind, detail) in found {
            if self.problems.len() < MAX_PROBLEMS {
                self.problems.push(Problem {
                    offset,
                    node: node.clone(),
                    seq,
                    kind,
                    detail,
                });
            } else {
                self.omitted += 1;
            }
        }
    }

    fn check_in(
        chain: &mut ChainCheck,
        node: &str,
        offset: i64,
        payload: Option<&[u8]>,
        found: &mut Vec<(Option<u64>, ProblemKind, String)>,
    ) {
        let Some(record) = payload.and_then(ReadRecord::parse) else {
            found.push((
                None,
                ProblemKind::Unreadable,
                "not an audit record: empty or not a JSON object".to_owned(),
            ));
            return;
        };
        let seq = record.seq();
        if record.str("node") != Some(node) {
            found.push((
                seq,
                ProblemKind::Inserted,
                format!(
                    "a record of node {:?} in chain {node:?}",
                    record.str("node").unwrap_or("")
                ),
            ));
            return;
        }
        let Some(seq) = seq else {
            found.push((
                None,
                ProblemKind::Unreadable,
                "no sequence number".to_owned(),
            ));
            return;
        };
        let prev = record.str("prev").unwrap_or("");
        if chain.first.is_none() {
            let ts = record.body.get("ts_ms").and_then(Value::as_i64);
            chain.first = Some((offset, seq, ts));
            if seq > 0 {
                // The start is gone: judged in `finish`; the chain is
                // checked from here.
                (chain.next, chain.prev) = (seq, prev.to_owned());
            }
        }
        // After a forged record, the record in the slot after it is
        // checked against it: the node links to whatever ended the chain,
        // and a forged record that replaced the node's own breaks the link.
        if let Some((next, after)) = &chain.after_forged {
            if seq == *next {
                (chain.next, chain.prev) = (*next, after.clone());
            }
        }
        let hash_ok = record.hash_matches();
        if !hash_ok {
            found.push((
                Some(seq),
                ProblemKind::Altered,
                "the hash does not match the record's content: it was changed after it was written"
                    .to_owned(),
            ));
        }
        let sig = check_sig(chain.keys.as_deref(), &record.hash, record.sig.as_deref());
        let forged = match sig {
            SigCheck::Valid | SigCheck::Unchecked => None,
            SigCheck::Missing => Some("no signature".to_owned()),
            SigCheck::Invalid(why) => Some(why),
        };
        if let Some(why) = forged {
            found.push((
                Some(seq),
                ProblemKind::Forged,
                format!("{why}: the node did not write this record"),
            ));
            // Not part of the node's chain (so its place in it is not
            // judged), unless the node's next record links to it.
            chain.after_forged = Some((seq + 1, record.hash));
            return;
        }
        if seq < chain.next {
            found.push((
                Some(seq),
                ProblemKind::Inserted,
                format!(
                    "sequence {seq} repeats or goes back (the chain is at {}): the record was inserted",
                    chain.next
                ),
            ));
            return;
        }
        if seq > chain.next {
            let gap = seq - chain.next;
            found.push((
                Some(seq),
                ProblemKind::Missing,
                format!(
                    "sequence jumps from {} to {seq}: {gap} record{} missing before this one",
                    chain.next as i64 - 1,
                    if gap == 1 { " is" } else { "s are" }
                ),
            ));
        } else if prev != chain.prev {
            found.push((
                Some(seq),
                ProblemKind::PrevMismatch,
                format!(
                    "prev is not the hash of seq {}: that record or this one was changed",
                    seq as i64 - 1
                ),
            ));
        }
        if hash_ok && record.str("kind") == Some("checkpoint") {
            chain.summary.checkpoints += 1;
            chain.first_checkpoint.get_or_insert(offset);
        }
        (chain.next, chain.prev) = (seq + 1, record.hash.clone());
        chain.after_forged = None;
        chain.summary.head = Some((seq, record.hash));
    }

    /// The report: problems by offset, and each chain's start judged.
    pub fn finish(mut self) -> VerifyReport {
        for (node, chain) in &mut self.chains {
            let Some((offset, seq, ts)) = chain.first else {
                continue;
            };
            if seq == 0 {
                continue;
            }
            match chain.first_checkpoint {
                Some(checkpoint_offset) => {
                    chain.summary.expired = Some(Expired {
                        before_seq: seq,
                        first_offset: offset,
                        first_ts_ms: ts,
                        checkpoint_offset,
                    })
                }
                None => {
                    let problem = Problem {
                        offset,
                        node: node.clone(),
                        seq: Some(seq),
                        kind: ProblemKind::Missing,
                        detail: format!(
                            "the chain starts at seq {seq}: records 0 to {} are missing, and no checkpoint is left to show that retention dropped them",
                            seq - 1
                        ),
                    };
                    if self.problems.len() < MAX_PROBLEMS {
                        self.problems.push(problem);
                    } else {
                        self.omitted += 1;
                    }
                }
            }
        }
        self.problems.sort_by_key(|p| (p.offset, p.kind));
        VerifyReport {
            chains: self
                .chains
                .into_iter()
                .map(|(n, c)| (n, c.summary))
                .collect(),
            problems: self.problems,
            problems_omitted: self.omitted,
        }
    }
}

/// Reads the audit topic from `from` (`None`: its first record) up to its
/// end when called, or `limit` records, handing each to `take`.
async fn read_records(
    settings: &KafkaSettings,
    from: Option<i64>,
    limit: Option<usize>,
    mut take: impl FnMut(i64, Option<&[u8]>, Option<&[u8]>),
) -> Result<(), KafkaError> {
    // Distributors append their delivery records in transactions: the end
    // may be a commit marker, or wait for a transaction still open.
    let high = Watermarks::new(settings)?
        .settled_high(settings, topics::audit(), 0, crate::kafka::SETTLE_WITHIN)
        .await?;
    let from = from.unwrap_or(0).max(0);
    if high <= from || limit == Some(0) {
        return Ok(());
    }
    let consumer = Consumer::replay_from(settings, topics::audit(), 0, from)?;
    let mut ends = std::collections::HashMap::from([(0, high)]);
    let mut taken = 0;
    while let Some(r) = tokio::time::timeout(READ_TIMEOUT, consumer.recv_to(&mut ends))
        .await
        .map_err(|_| KafkaError::Admin {
            topic: topics::audit().to_owned(),
            reason: format!(
                "no record within {READ_TIMEOUT:?} while reading up to offset {}",
                high - 1
            ),
        })??
    {
        take(r.offset, r.key.as_deref(), r.payload.as_deref());
        taken += 1;
        if limit.is_some_and(|l| taken >= l) {
            break;
        }
    }
    Ok(())
}

/// Replays `backflow._audit` and checks every chain, trusting `keys`.
pub async fn verify(
    settings: &KafkaSettings,
    keys: &TrustedKeys,
) -> Result<VerifyReport, KafkaError> {
    let mut verifier = Verifier::new(keys.clone());
    read_records(settings, None, None, |offset, key, payload| {
        verifier.check(offset, key, payload)
    })
    .await?;
    Ok(verifier.finish())
}

/// One record of the trail, as an auditor reads it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Offset in `backflow._audit`.
    pub offset: i64,
    /// The chain (the record's Kafka key).
    pub node: String,
    /// Sequence number in the chain.
    pub seq: Option<u64>,
    /// When it was written (ms since the epoch).
    pub ts_ms: Option<i64>,
    /// `decision`, `delivery` or `checkpoint`.
    pub kind: Option<String>,
    /// What was decided or delivered (no row values).
    pub details: Value,
    /// The hash matches the content and the signature verifies with a
    /// trusted key of its chain. False for anything else, including a
    /// chain no key was given for. Says nothing of the record's place in
    /// the chain: [`verify`] does.
    pub signature_ok: bool,
}

/// Reads up to `limit` records of the trail from offset `from_offset` on
/// (records before the topic's first offset are gone: it starts there),
/// checking each one's signature with `keys`.
pub async fn read(
    settings: &KafkaSettings,
    keys: &TrustedKeys,
    from_offset: i64,
    limit: usize,
) -> Result<Vec<AuditEntry>, KafkaError> {
    let mut out = Vec::new();
    read_records(
        settings,
        Some(from_offset.max(0)),
        Some(limit),
        |offset, key, payload| {
            let node = key
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let Some(record) = payload.and_then(ReadRecord::parse) else {
                out.push(AuditEntry {
                    offset,
                    node,
                    seq: None,
                    ts_ms: None,
                    kind: None,
                    details: Value::Null,
                    signature_ok: false,
                });
                return;
            };
            let signature_ok = record.str("node") == Some(node.as_str())
                && record.hash_matches()
                && check_sig(
                    keys.for_node(&node).as_deref(),
                    &record.hash,
                    record.sig.as_deref(),
                ) == SigCheck::Valid;
            out.push(AuditEntry {
                offset,
                seq: record.seq(),
                ts_ms: record.body.get("ts_ms").and_then(Value::as_i64),
                kind: record.str("kind").map(str::to_owned),
                details: record.body.get("details").cloned().unwrap_or(Value::Null),
                node,
                signature_ok,
            });
        },
    )
    .await?;
    Ok(out)
}

/// Appends to this node's audit chain, signing every record. Cheap to
/// clone.
#[derive(Clone)]
pub struct Auditor {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    node: String,
    publisher: Publisher,
    settings: KafkaSettings,
    key: AuditKey,
    checkpoint_every: u64,
    /// The transactional id this process claims the chain with, and the
    /// metrics of its producer ([`Auditor::in_transactions`]); `None`:
    /// records go through `publisher` as they are.
    transactional: Option<(String, Option<crate::metrics::Metrics>)>,
    chain: std::sync::Arc<Mutex<ChainEnd>>,
}

/// Where this process appends.
struct ChainEnd {
    /// (next sequence number, last hash), read from the topic on first
    /// use; held across a send so records reach the topic in chain order.
    end: Option<(u64, String)>,
    /// Whether this process wrote its start checkpoint.
    started: bool,
    /// The producer registered under the chain's transactional id, which
    /// writes this process's own records; registered before the chain's
    /// end is read, and again after any failure.
    claim: Option<Publisher>,
    /// Another process registered the chain's transactional id: this one
    /// writes nothing more.
    fenced: bool,
}

/// How long one of the auditor's own transactions may stay open before
/// the brokers abort it, and how long one of its steps may wait: short, as
/// a distributor's (readers of the trail wait for an open one).
const TRANSACTION_LIFETIME: Duration = crate::kafka::DISTRIBUTOR_TRANSACTION_TIMEOUT;
const TRANSACTION_STEP: Duration = crate::kafka::DISTRIBUTOR_TRANSACTION_STEP;

impl Auditor {
    /// An auditor continuing chain `node` (the node's code, or
    /// `<code>/<replica>` for one of several processes serving it), signing
    /// with `key`, with a checkpoint every `checkpoint_every` records; the
    /// chain's end is read from the topic on the first append. One writer
    /// per chain: two would fork it, so each process serving a node with
    /// others writes a chain of its own.
    pub fn new(
        settings: &KafkaSettings,
        publisher: Publisher,
        node: &str,
        key: AuditKey,
        checkpoint_every: u64,
    ) -> Self {
        Self {
            inner: std::sync::Arc::new(Inner {
                node: node.to_owned(),
                publisher,
                settings: settings.clone(),
                key,
                checkpoint_every: checkpoint_every.max(1),
                transactional: None,
                chain: std::sync::Arc::new(Mutex::new(ChainEnd {
                    end: None,
                    started: false,
                    claim: None,
                    fenced: false,
                })),
            }),
        }
    }

    /// This process claims its chain before it reads the chain's end, by
    /// registering the chain's transactional id
    /// ([`topics::audit_transaction`]), and writes its own records
    /// ([`Auditor::append_all`]) in transactions under it. So the chain has
    /// one writer by construction:
    /// - a second process writing the same chain (two processes given the
    ///   same `kafka.replica`, or none) fences this one, whose next record
    ///   is refused ([`KafkaError::Fenced`]) instead of forking the chain;
    /// - records whose delivery failed never become visible later (their
    ///   transaction is aborted, by this process or by its next
    ///   registration), so the chain's end read again after a failure is
    ///   the end for good.
    ///
    /// Call it on a new auditor, before any clone is made.
    pub fn in_transactions(mut self, metrics: Option<crate::metrics::Metrics>) -> Self {
        let inner = std::sync::Arc::get_mut(&mut self.inner)
            .expect("in_transactions is called on a new auditor");
        inner.transactional = Some((topics::audit_transaction(&inner.node), metrics));
        self
    }

    /// The public key the trail is signed with, 64 hex digits.
    pub fn public_key_hex(&self) -> String {
        self.inner.key.public_key_hex()
    }

    /// The short name of that key, carried in each record (`key_id`).
    pub fn key_id(&self) -> String {
        self.inner.key.key_id()
    }

    /// The keys a check of this node's trail trusts: its own, for its
    /// own chain.
    pub fn trusted_keys(&self) -> TrustedKeys {
        let mut keys = TrustedKeys::none();
        let node = self.inner.node.split('/').next().unwrap_or_default();
        keys.trust(Some(node), self.inner.key.verifying_key());
        keys
    }

    /// Up to `limit` records from `from_offset` on, their signatures
    /// checked with this node's key (see [`read`]).
    pub async fn read(
        &self,
        from_offset: i64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, KafkaError> {
        read(
            &self.inner.settings,
            &self.trusted_keys(),
            from_offset,
            limit,
        )
        .await
    }

    /// Checks the whole topic, this node's chain with its own key (see
    /// [`verify`]).
    pub async fn verify(&self) -> Result<VerifyReport, KafkaError> {
        verify(&self.inner.settings, &self.trusted_keys()).await
    }

    /// Where the chain goes on: after the last record signed with this
    /// node's key; with none, after the last record (a trail from before
    /// signing, or a new key), said in the log.
    async fn chain_end(&self) -> Result<(u64, String), KafkaError> {
        let node = self.inner.node.as_str();
        let keys = [self.inner.key.verifying_key()];
        let mut last_own: Option<(i64, u64, String)> = None;
        let mut last_any: Option<(i64, u64, String)> = None;
        read_records(&self.inner.settings, None, None, |offset, key, payload| {
            if key != Some(node.as_bytes()) {
                return;
            }
            let Some(record) = payload.and_then(ReadRecord::parse) else {
                return;
            };
            let Some(seq) = record.seq() else {
                return;
            };
            let own = record.hash_matches()
                && check_sig(Some(&keys), &record.hash, record.sig.as_deref()) == SigCheck::Valid;
            if own {
                last_own = Some((offset, seq, record.hash.clone()));
            }
            last_any = Some((offset, seq, record.hash));
        })
        .await?;
        let next = match (&last_own, &last_any) {
            (Some((own_offset, seq, hash)), Some((any_offset, _, _))) => {
                if any_offset > own_offset {
                    tracing::warn!(node, after_offset = own_offset, "records at the end of this node's audit chain are not signed with its key: somebody else wrote them; the chain goes on after the node's own last record, and `backflow audit verify --public-key` reports them");
                }
                (seq + 1, hash.clone())
            }
            (None, Some((offset, seq, hash))) => {
                tracing::warn!(node, last_offset = offset, "no record of this node's audit chain is signed with its key (records from before signing, or the key changed): the chain goes on after its last record");
                (seq + 1, hash.clone())
            }
            _ => (0, GENESIS.to_owned()),
        };
        tracing::info!(node, next_seq = next.0, "audit chain continues");
        Ok(next)
    }

    /// Appends a record of `kind` (`decision`, `delivery`) and waits for
    /// Kafka's acknowledgement; returns its sequence number. `details`
    /// must not hold row values.
    pub async fn append(&self, kind: &str, details: Value) -> Result<u64, KafkaError> {
        let appended = self.append_all(vec![(kind, details)]).await?;
        Ok(appended.expect("one record appended"))
    }

    /// Appends records in order, with one wait for Kafka's acknowledgement
    /// of them all instead of one per record; returns the sequence number
    /// of the last (`None` for no records: nothing is sent). Checkpoints
    /// go in between where they are due. `details` must not hold row
    /// values.
    ///
    /// The records go to one partition, so they land in chain order. In
    /// transactions ([`Auditor::in_transactions`]) they are visible all
    /// together or never. Without, should any of them fail, the chain's
    /// end is read again from the topic on the next append: records of the
    /// round that did land stay part of the chain.
    pub async fn append_all(&self, records: Vec<(&str, Value)>) -> Result<Option<u64>, KafkaError> {
        if records.is_empty() {
            return Ok(None);
        }
        let mut chain = self.inner.chain.clone().lock_owned().await;
        let written = match self.claim(&mut chain).await? {
            None => self.write(&mut chain, &self.inner.publisher, records).await,
            Some(own) => {
                let written = self.write_in_transaction(&mut chain, &own, records).await;
                written.map_err(|e| self.lose_claim(&mut chain, &own, e))
            }
        };
        let (end, last) = written?;
        chain.end = Some(end);
        chain.started = true;
        Ok(last)
    }

    /// Appends records as [`Auditor::append_all`] does, through
    /// `publisher`: a transactional producer puts them in its open
    /// transaction. They are delivered when this returns; the chain stays
    /// locked (no other record takes a sequence number) until the caller
    /// says the transaction committed ([`Staged::committed`]). Dropped
    /// without that, the records count as never written: the chain's end
    /// is read again from the topic (`read_committed`) on the next append.
    pub async fn stage(
        &self,
        publisher: &Publisher,
        records: Vec<(&str, Value)>,
    ) -> Result<Staged, KafkaError> {
        let mut chain = self.inner.chain.clone().lock_owned().await;
        self.claim(&mut chain).await?;
        let (end, _) = self.write(&mut chain, publisher, records).await?;
        Ok(Staged {
            chain,
            end: Some(end),
        })
    }

    /// The producer of this process's own records when it writes in
    /// transactions, registered first if it is not (which ends whatever an
    /// earlier writer of the chain left open, so the end is read again).
    async fn claim(&self, chain: &mut ChainEnd) -> Result<Option<Publisher>, KafkaError> {
        let Some((id, metrics)) = &self.inner.transactional else {
            return Ok(None);
        };
        if chain.fenced {
            return Err(KafkaError::Fenced { id: id.clone() });
        }
        if let Some(own) = &chain.claim {
            return Ok(Some(own.clone()));
        }
        let own = Publisher::register(
            &self.inner.settings,
            metrics.clone(),
            id,
            TRANSACTION_LIFETIME,
            TRANSACTION_STEP,
        )
        .await?;
        tracing::info!(chain = %self.inner.node, "this process writes the audit chain");
        chain.claim = Some(own.clone());
        chain.end = None;
        Ok(Some(own))
    }

    /// After a failed transaction of the auditor's own: the next append
    /// registers again, which aborts what this one left open; a fenced
    /// process writes nothing more. Returns the error to report.
    fn lose_claim(&self, chain: &mut ChainEnd, own: &Publisher, error: KafkaError) -> KafkaError {
        chain.end = None;
        if let Some(old) = chain.claim.take() {
            // Dropping a producer waits for its queue: off the workers.
            tokio::task::spawn_blocking(move || drop(old));
        }
        // A fenced producer's records fail as purged: its fatal error says why.
        if !(error.is_fenced() || own.is_fenced()) {
            return error;
        }
        chain.fenced = true;
        let id = topics::audit_transaction(&self.inner.node);
        tracing::error!(chain = %self.inner.node, error = %error, "another process writes this audit chain now: this one writes no more audit records");
        KafkaError::Fenced { id }
    }

    /// [`Auditor::write`] in a transaction of `own`, committed.
    async fn write_in_transaction(
        &self,
        chain: &mut ChainEnd,
        own: &Publisher,
        records: Vec<(&str, Value)>,
    ) -> Result<((u64, String), Option<u64>), KafkaError> {
        own.begin_transaction()?;
        let written = self.write(chain, own, records).await;
        let own = own.clone();
        let ok = written.is_ok();
        let ended = tokio::task::spawn_blocking(move || {
            if ok {
                own.commit_transaction(TRANSACTION_STEP)
            } else {
                own.abort_transaction(TRANSACTION_STEP)
            }
        })
        .await
        .expect("ending a transaction does not panic");
        let written = written?;
        ended?;
        Ok(written)
    }

    /// Sends `records` through `publisher` after the chain's end (read from
    /// the topic when not known) and waits for their delivery; returns the
    /// chain's end after them and the sequence number of the last. On an
    /// error the end is forgotten (read again next time).
    async fn write(
        &self,
        chain: &mut ChainEnd,
        publisher: &Publisher,
        records: Vec<(&str, Value)>,
    ) -> Result<((u64, String), Option<u64>), KafkaError> {
        let (mut seq, mut prev) = match chain.end.clone() {
            Some(end) => end,
            None => {
                let end = self.chain_end().await?;
                chain.end = Some(end.clone());
                end
            }
        };
        let inner = &self.inner;
        let mut batch = publisher.batch();
        let mut last = None;
        let mut start = !chain.started;
        for (kind, details) in records {
            let mut round = Vec::with_capacity(2);
            if start || (seq > 0 && seq % inner.checkpoint_every == 0) {
                let reason = if start { "start" } else { "periodic" };
                round.push((
                    "checkpoint",
                    json!({"reason": reason, "public_key": inner.key.public_key_hex()}),
                ));
                start = false;
            }
            round.push((kind, details));
            for (kind, details) in round {
                let (record, hash) =
                    signed_record(&inner.key, &inner.node, seq, &prev, kind, details, now_ms());
                let payload = record.to_string();
                let queued = publisher
                    .enqueue_in(
                        &mut batch,
                        OutgoingRecord::new(
                            topics::audit(),
                            inner.node.as_bytes(),
                            payload.as_bytes(),
                        ),
                    )
                    .await;
                if let Err(e) = queued {
                    chain.end = None;
                    return Err(e);
                }
                last = Some(seq);
                (seq, prev) = (seq + 1, hash);
            }
        }
        if let Err(e) = batch.seal().await {
            chain.end = None;
            return Err(e);
        }
        Ok(((seq, prev), last))
    }
}

/// Audit records delivered and not yet known to be committed (see
/// [`Auditor::stage`]). Holds the node's chain until then.
#[must_use = "dropping it forgets the records: commit their transaction, then call committed()"]
pub struct Staged {
    chain: tokio::sync::OwnedMutexGuard<ChainEnd>,
    /// The chain's end after the staged records.
    end: Option<(u64, String)>,
}

impl Staged {
    /// The staged records are committed: the chain goes on after them.
    pub fn committed(mut self) {
        self.chain.end = self.end.take();
        self.chain.started = true;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.end.is_some() {
            // Not committed: where the chain ends is read from the topic.
            self.chain.end = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> AuditKey {
        AuditKey::from_seed_hex(&hex::encode([byte; 32]), "test").unwrap()
    }

    /// A chain of `n` signed records of `node` (every 4th a checkpoint),
    /// as payloads.
    fn chain(key: &AuditKey, node: &str, n: u64) -> Vec<Value> {
        let mut prev = GENESIS.to_owned();
        (0..n)
            .map(|seq| {
                let kind = if seq % 4 == 0 {
                    "checkpoint"
                } else {
                    "decision"
                };
                let (record, hash) = signed_record(
                    key,
                    node,
                    seq,
                    &prev,
                    kind,
                    json!({"action": "subscription approved", "n": seq}),
                    1_764_990_000_000 + seq as i64,
                );
                prev = hash;
                record
            })
            .collect()
    }

    fn check(records: &[Value], keys: TrustedKeys) -> VerifyReport {
        let mut v = Verifier::new(keys);
        for (offset, r) in records.iter().enumerate() {
            let node = r["node"].as_str().unwrap_or("330100").to_owned();
            v.check(
                offset as i64,
                Some(node.as_bytes()),
                Some(r.to_string().as_bytes()),
            );
        }
        v.finish()
    }

    fn trusting(key: &AuditKey) -> TrustedKeys {
        let mut keys = TrustedKeys::none();
        keys.trust_spec(&key.public_key_hex()).unwrap();
        keys
    }

    #[test]
    fn a_replica_chain_verifies_with_its_nodes_key_and_not_with_another_nodes() {
        let k = key(7);
        let records = chain(&k, "330100/backflow-1", 6);
        let mut keys = TrustedKeys::none();
        keys.trust_spec(&format!("330100={}", k.public_key_hex()))
            .unwrap();
        let report = check(&records, keys);
        assert!(report.intact(), "{:?}", report.problems);
        assert!(report.signatures_checked());
        let mut other = TrustedKeys::none();
        other
            .trust_spec(&format!("330200={}", k.public_key_hex()))
            .unwrap();
        assert!(
            !check(&records, other).signatures_checked(),
            "a key trusted for another node does not vouch for this chain"
        );
    }

    fn kinds(report: &VerifyReport) -> Vec<(i64, ProblemKind)> {
        report.problems.iter().map(|p| (p.offset, p.kind)).collect()
    }

    /// A record with the right sequence, `prev` and hash, but not signed
    /// by the node: what anybody with write access to the topic can add.
    fn forge_after(last: &Value, details: Value) -> Value {
        let mut forged = json!({
            "node": last["node"],
            "seq": last["seq"].as_u64().unwrap() + 1,
            "ts_ms": 1,
            "kind": "decision",
            "details": details,
            "prev": last["hash"],
            "key_id": last["key_id"],
        });
        forged["hash"] = Value::String(digest(&forged));
        forged
    }

    #[test]
    fn digest_is_over_canonical_json() {
        let a = json!({"b": 1, "a": {"y": 2, "x": 3}});
        let b: Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_eq!(
            digest(&a),
            hex::encode(Sha256::digest(br#"{"a":{"x":3,"y":2},"b":1}"#))
        );
        assert_ne!(digest(&a), digest(&json!({"b": 2, "a": {"y": 2, "x": 3}})));
        assert_eq!(digest(&a).len(), 64);
    }

    #[test]
    fn signature_covers_the_context_and_hash_as_documented() {
        let k = key(7);
        let (record, hash) = signed_record(&k, "330100", 0, GENESIS, "decision", json!({}), 5);
        let mut body = record.clone();
        body.as_object_mut().unwrap().remove("hash");
        body.as_object_mut().unwrap().remove("sig");
        assert_eq!(
            hash,
            digest(&body),
            "the hash covers everything but hash and sig"
        );
        assert_eq!(record["prev"], GENESIS);
        assert_eq!(record["key_id"], k.key_id());
        // A third party needs only the public key, SHA-256 and Ed25519.
        let public = parse_public_key(&k.public_key_hex()).unwrap();
        let mut sig = [0u8; 64];
        hex::decode_to_slice(record["sig"].as_str().unwrap(), &mut sig).unwrap();
        let message = format!("backflow.audit.v1:{hash}");
        public
            .verify_strict(message.as_bytes(), &Signature::from_bytes(&sig))
            .unwrap();
        assert!(public
            .verify_strict(hash.as_bytes(), &Signature::from_bytes(&sig))
            .is_err());
    }

    #[test]
    fn signed_chain_verifies_with_its_key_only() {
        let k = key(1);
        let records = chain(&k, "330100", 9);
        let report = check(&records, trusting(&k));
        assert!(report.intact(), "{:?}", report.problems);
        let c = &report.chains["330100"];
        assert!(c.signatures_checked && report.signatures_checked());
        assert_eq!((c.records, c.checkpoints), (9, 3));
        assert_eq!(c.head.as_ref().unwrap().0, 8);
        assert_eq!(
            c.head.as_ref().unwrap().1,
            records[8]["hash"].as_str().unwrap()
        );

        // Without a key the chain checks, signatures unchecked.
        let report = check(&records, TrustedKeys::none());
        assert!(report.intact() && !report.signatures_checked());

        // With another node's key, every record is forged.
        let report = check(&records, trusting(&key(2)));
        assert_eq!(report.problems.len(), 9);
        assert!(report
            .problems
            .iter()
            .all(|p| p.kind == ProblemKind::Forged));
        // A key for another chain only: this one's signatures unchecked.
        let mut other = TrustedKeys::none();
        other
            .trust_spec(&format!("330000={}", key(2).public_key_hex()))
            .unwrap();
        let report = check(&records, other);
        assert!(report.intact() && !report.signatures_checked());
    }

    #[test]
    fn forged_record_with_right_hash_passes_the_chain_but_not_the_signature() {
        let k = key(1);
        let mut records = chain(&k, "330100", 5);
        records.push(forge_after(
            &records[4],
            json!({"action": "subscription approved by owner"}),
        ));
        assert!(
            check(&records, TrustedKeys::none()).intact(),
            "the hash chain alone cannot tell"
        );
        let report = check(&records, trusting(&k));
        assert_eq!(kinds(&report), vec![(5, ProblemKind::Forged)]);
        assert_eq!(report.problems[0].seq, Some(5));
        assert!(report.problems[0]
            .to_string()
            .starts_with("offset 5 (chain 330100, seq 5): forged"));

        // The node goes on from its own last record: its seq 5 is not
        // reported as inserted.
        let (own, _) = signed_record(
            &k,
            "330100",
            5,
            records[4]["hash"].as_str().unwrap(),
            "decision",
            json!({}),
            9,
        );
        records.push(own);
        let report = check(&records, trusting(&k));
        assert_eq!(kinds(&report), vec![(5, ProblemKind::Forged)]);
        // A forged record is judged by its signature alone, wherever it
        // claims to sit.
        let mut far = records[..5].to_vec();
        let mut jump = forge_after(&records[4], json!({}));
        jump["seq"] = json!(40);
        jump.as_object_mut().unwrap().remove("hash");
        jump["hash"] = Value::String(digest(&jump));
        far.push(jump);
        far.push(records[1].clone());
        assert_eq!(
            kinds(&check(&far, trusting(&k))),
            vec![(5, ProblemKind::Forged), (6, ProblemKind::Inserted)]
        );
        // A node that linked to the forged record (e.g. one that restarted
        // with a new key) is followed too.
        let mut linked = records[..6].to_vec();
        let (own, _) = signed_record(
            &k,
            "330100",
            6,
            linked[5]["hash"].as_str().unwrap(),
            "decision",
            json!({}),
            9,
        );
        linked.push(own);
        let report = check(&linked, trusting(&k));
        assert_eq!(kinds(&report), vec![(5, ProblemKind::Forged)]);
    }

    #[test]
    fn altered_inserted_missing_and_relinked_records_are_named_by_offset() {
        let k = key(1);
        let records = chain(&k, "330100", 10);
        let keys = || trusting(&k);

        let mut altered = records.clone();
        altered[3]["details"]["action"] = json!("subscription rejected");
        assert_eq!(
            kinds(&check(&altered, keys())),
            vec![(3, ProblemKind::Altered)]
        );

        let mut inserted = records.clone();
        inserted.insert(6, records[5].clone());
        assert_eq!(
            kinds(&check(&inserted, keys())),
            vec![(6, ProblemKind::Inserted)]
        );

        let mut missing = records.clone();
        missing.remove(4);
        missing.remove(4);
        let report = check(&missing, keys());
        assert_eq!(kinds(&report), vec![(4, ProblemKind::Missing)]);
        assert!(
            report.problems[0].detail.contains("2 records are missing"),
            "{}",
            report.problems[0].detail
        );

        // Changed and re-hashed: the signature and the next link break.
        let mut rehashed = records.clone();
        rehashed[2]["details"]["n"] = json!(99);
        let body = {
            let mut b = rehashed[2].clone();
            b.as_object_mut().unwrap().remove("hash");
            b.as_object_mut().unwrap().remove("sig");
            b
        };
        rehashed[2]["hash"] = Value::String(digest(&body));
        let report = check(&rehashed, keys());
        assert_eq!(
            kinds(&report),
            vec![(2, ProblemKind::Forged), (3, ProblemKind::PrevMismatch)]
        );
        // Without the key only the broken link shows.
        assert_eq!(
            kinds(&check(&rehashed, TrustedKeys::none())),
            vec![(3, ProblemKind::PrevMismatch)]
        );

        // All problems of one trail, not the first only.
        let mut many = records.clone();
        many[1]["details"]["n"] = json!(-1);
        many.remove(5);
        many.push(json!("not a record"));
        let report = check(&many, keys());
        assert_eq!(
            kinds(&report),
            vec![
                (1, ProblemKind::Altered),
                (5, ProblemKind::Missing),
                (9, ProblemKind::Unreadable)
            ]
        );
    }

    #[test]
    fn trail_missing_its_start_is_expired_with_a_checkpoint_and_missing_without() {
        let k = key(1);
        let records = chain(&k, "330100", 10);
        // From seq 3 on: checkpoints at 4 and 8 remain.
        let report = check(&records[3..], trusting(&k));
        assert!(report.intact(), "{:?}", report.problems);
        let expired = report.chains["330100"].expired.clone().unwrap();
        assert_eq!(expired.before_seq, 3);
        assert_eq!((expired.first_offset, expired.checkpoint_offset), (0, 1));
        // From seq 5 to 7: no checkpoint left.
        let report = check(&records[5..8], trusting(&k));
        assert_eq!(kinds(&report), vec![(0, ProblemKind::Missing)]);
        assert!(report.chains["330100"].expired.is_none());
        // A forged checkpoint does not make a gap look expired.
        let mut forged = vec![forge_after(&records[4], json!({}))];
        forged[0]["kind"] = json!("checkpoint");
        forged[0].as_object_mut().unwrap().remove("hash");
        forged[0]["hash"] = Value::String(digest(&forged[0]));
        let report = check(&forged, trusting(&k));
        assert_eq!(
            kinds(&report),
            vec![(0, ProblemKind::Forged), (0, ProblemKind::Missing)]
        );
        assert!(report.chains["330100"].expired.is_none());
    }

    #[test]
    fn unsigned_records_are_forged_once_each_without_knock_on_problems() {
        let k = key(1);
        let mut records = chain(&k, "330100", 4);
        for r in &mut records[..3] {
            r.as_object_mut().unwrap().remove("sig");
        }
        let report = check(&records, trusting(&k));
        assert_eq!(
            kinds(&report),
            vec![
                (0, ProblemKind::Forged),
                (1, ProblemKind::Forged),
                (2, ProblemKind::Forged)
            ]
        );
    }

    #[test]
    fn chains_of_two_nodes_are_checked_each_with_its_key() {
        let (a, b) = (key(1), key(2));
        let mut records = chain(&a, "330100", 3);
        records.extend(chain(&b, "330000", 3));
        let mut keys = TrustedKeys::none();
        keys.trust_spec(&format!("330100={}", a.public_key_hex()))
            .unwrap();
        keys.trust_spec(&format!("330000={}", b.public_key_hex()))
            .unwrap();
        assert!(check(&records, keys).intact());
        // A record filed under another node's key.
        let mut v = Verifier::new(trusting(&a));
        v.check(0, Some(b"330000"), Some(records[0].to_string().as_bytes()));
        assert_eq!(kinds(&v.finish()), vec![(0, ProblemKind::Inserted)]);
    }

    #[test]
    fn keys_parse_from_hex_and_never_show_the_secret() {
        let seed = hex::encode([9u8; 32]);
        let k = AuditKey::from_seed_hex(&format!("{seed}\n"), "audit.signing_key_file").unwrap();
        assert_eq!(k.public_key_hex().len(), 64);
        assert_eq!(k.key_id().len(), 16);
        assert!(!format!("{k:?}").contains(&seed));
        let bad = format!("{}zz", &seed[..62]);
        let err = AuditKey::from_seed_hex(&bad, "audit.signing_key_file (/k)")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("audit.signing_key_file (/k)") && err.contains("64 hex digits"),
            "{err}"
        );
        assert!(
            !err.contains(&bad[..20]),
            "the error does not quote the key: {err}"
        );
        assert!(parse_public_key("abc").is_err());
        assert_ne!(
            AuditKey::generate().unwrap().public_key_hex(),
            AuditKey::generate().unwrap().public_key_hex()
        );
    }

    #[test]
    fn key_is_required_on_a_real_cluster_and_made_up_on_the_embedded_one() {
        let none = AuditConfig::default();
        let err = AuditKey::for_node(&none, false).unwrap_err().to_string();
        assert!(
            err.contains("audit.signing_key_file") && err.contains("backflow audit keygen"),
            "{err}"
        );
        assert!(AuditKey::for_node(&none, true).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let written = AuditKey::write_new(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let err = AuditKey::write_new(&path).unwrap_err().to_string();
        assert!(err.contains("never overwritten"), "{err}");
        let config = AuditConfig {
            signing_key_file: Some(path),
            ..AuditConfig::default()
        };
        let loaded = AuditKey::for_node(&config, false).unwrap();
        assert_eq!(loaded.public_key_hex(), written.public_key_hex());
    }
}
