//! A share as configured (`[[shares]]`) or granted through the control
//! plane: which rows and fields of a dataset one lower node receives, and
//! the policy the distributor applies for it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::division::DivisionCode;

/// An active share of a dataset with one subscriber node, declared in the
/// configuration file (the control plane will manage these in
/// `backflow._catalog`).
///
/// ```toml
/// [[shares]]
/// subscriber = "330106"
/// dataset = "gongan.population"
/// region_column = "region_code"      # rows whose code starts with 330106
/// fields = { id = "plain", name = "masked:name", id_number = "masked:keep(6,4)", phone = "hashed", region_code = "plain" }
/// predicates = [{ column = "status", op = "=", value = "active" }]
/// secret_env = "SHARE_330106_SECRET" # HMAC key of hashed fields
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    /// The subscriber node's division code.
    pub subscriber: DivisionCode,
    /// Dataset id.
    pub dataset: String,
    /// Column with each row's division code: the subscriber receives the
    /// rows of its jurisdiction. A share needs this or `all_rows = true`.
    #[serde(default)]
    pub region_column: Option<String>,
    /// Every row to this subscriber, declared explicitly: without a row
    /// rule nothing is shared.
    #[serde(default)]
    pub all_rows: bool,
    /// Fields granted knowing that they give back part of what another
    /// granted field's mask hides (see `disclosure`); such a share is
    /// refused otherwise.
    #[serde(default)]
    pub accept_disclosure: Vec<String>,
    /// Granted fields and their rule: `plain`, `hashed`,
    /// `masked:keep(FIRST,LAST)`, `masked:name`, `masked:fixed(TEXT)`.
    pub fields: BTreeMap<String, String>,
    /// Extra row conditions.
    #[serde(default)]
    pub predicates: Vec<crate::domain::policy::Predicate>,
    /// Environment variable holding the HMAC key of hashed fields.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// The key, resolved from `secret_env`; never logged.
    #[serde(skip)]
    pub secret: Option<String>,
    /// Policy version, sent with every record in `backflow.policy`.
    #[serde(default = "default_policy_version")]
    pub version: u32,
    /// The compatibility level of the dataset (its owner's choice), which
    /// the share topic's subjects follow; set from the catalog.
    #[serde(skip)]
    pub compatibility: Option<crate::registry::Level>,
    /// Whether the subscriber may share on what it receives: `none` (the
    /// default) or `within_jurisdiction`.
    #[serde(default)]
    pub onward: crate::domain::policy::Onward,
    /// A subscription activated and not yet backfilled: a transactional
    /// distributor delivers it the raw topic's records before its live
    /// ones. Set from the catalog.
    #[serde(skip)]
    pub catch_up: bool,
    /// Given by a catalog subscription (not the configuration file): the
    /// distributor delivers to it only while the catalog has it active
    /// under this policy version.
    #[serde(skip)]
    pub granted: bool,
}

fn default_policy_version() -> u32 {
    1
}

impl ShareConfig {
    /// The policy this share applies.
    pub fn policy(&self) -> Result<crate::domain::policy::SharePolicy, String> {
        use crate::domain::policy::{FieldRule, SharePolicy};
        let rows = match (&self.region_column, self.all_rows) {
            (Some(c), false) => crate::domain::policy::RowRule::Jurisdiction(c.clone()),
            (None, true) => crate::domain::policy::RowRule::All,
            (Some(_), true) => {
                return Err(
                    "all_rows: region_column and all_rows = true exclude each other: keep one"
                        .to_owned(),
                )
            }
            (None, false) => return Err("region_column: a share needs a row rule: region_column = \"<column with each row's division code>\" (the subscriber's jurisdiction) or all_rows = true (every row)".to_owned()),
        };
        let fields = self
            .fields
            .iter()
            .map(|(k, v)| {
                FieldRule::parse(v)
                    .map(|r| (k.clone(), r))
                    .map_err(|e| format!("fields.{k}: {e}"))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        Ok(SharePolicy {
            subscriber: self.subscriber.to_string(),
            dataset: self.dataset.clone(),
            rows,
            prefix: self.subscriber.jurisdiction_prefix().to_owned(),
            predicates: self.predicates.clone(),
            fields,
            secret: self.secret.clone().unwrap_or_default().into_bytes(),
            version: self.version,
        })
    }
}
