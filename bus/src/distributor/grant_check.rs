//! The check of a grant against the share schema it derives, made when the
//! owner decides (approves, narrows, re-activates a subscription, or changes
//! the dataset's rules), before anything is written: the owner learns at its
//! own request that the change would break what a district already holds,
//! instead of the subscription failing later in the distributor.
//!
//! A share topic's subjects follow the dataset's compatibility level (the
//! same level its raw subjects follow, see [`super::share_codec`]); the check
//! derives the share schema of the dataset's latest raw schema under the new
//! grant and asks the registry's compatibility rules what registering it
//! would answer. Nothing is registered here. The distributor still isolates
//! a refusal that arrives another way (a change racing this check, a subject
//! edited by hand): that subscription alone fails.

use backflow_schemas::registry_client::subject_for;
use backflow_schemas::{table_from_schemas, TableCodec, TableTarget};

use crate::distributor::share::ShareConfig;
use crate::domain::topics;
use crate::registry::{compat, Registry, RegistryError, VersionSel};
use crate::state::catalog::{Dataset, Subscription, SubscriptionState};

/// The share an active subscription of `dataset` gives, or `None` when it
/// gives none: not active, the dataset without a row rule (fail closed),
/// or a subscriber that is not a division code.
pub fn share_of(sub: &Subscription, dataset: &Dataset) -> Option<ShareConfig> {
    if sub.state != SubscriptionState::Active || dataset.row_rule().is_none() {
        return None;
    }
    let subscriber = crate::domain::division::DivisionCode::parse(&sub.subscriber).ok()?;
    Some(ShareConfig {
        subscriber,
        dataset: sub.dataset.clone(),
        region_column: dataset.region_column.clone(),
        all_rows: dataset.all_rows,
        accept_disclosure: dataset.accepted_disclosures(),
        compatibility: dataset.compatibility,
        onward: sub.onward,
        fields: sub.granted.clone(),
        predicates: Vec::new(),
        secret_env: None,
        secret: Some(sub.secret.clone()),
        version: sub.policy_version,
        catch_up: false,
        granted: true,
    })
}

/// Why the registry would refuse the share schema `share` derives from its
/// dataset's latest raw schema, or why the grant does not fit that schema;
/// `Ok(None)` when it would be taken (or no raw schema exists yet, so
/// nothing was delivered under another). `Err`: the registry could not be
/// read (try again).
pub async fn refusal(
    registry: &Registry,
    share: &ShareConfig,
) -> Result<Option<String>, RegistryError> {
    registry.caught_up().await?;
    let raw = topics::raw(&share.dataset);
    let topic = topics::share(share.subscriber.as_str(), &share.dataset);
    let st = registry.state().await;
    let latest = |key| {
        st.version(&subject_for(&raw, key), VersionSel::Latest, false)
            .ok()
            .map(|(_, entry)| entry.schema.clone())
    };
    let (Some(key_schema), Some(value_schema)) = (latest(true), latest(false)) else {
        return Ok(None);
    };
    let (department, name) = share
        .dataset
        .split_once('.')
        .unwrap_or(("", &share.dataset));
    let target = TableTarget {
        dataset: share.dataset.clone(),
        schema: department.to_owned(),
        name: name.to_owned(),
    };
    let source = match table_from_schemas(&key_schema, &value_schema, &target) {
        Ok(table) => table,
        // The raw schema is not one backflow can read: the distributor
        // skips such records whatever the grant.
        Err(_) => return Ok(None),
    };
    let table = match share.policy().and_then(|p| p.share_table(&source)) {
        Ok(table) => table,
        Err(why) => {
            return Ok(Some(format!(
                "the grant does not fit the dataset's table: {why}"
            )))
        }
    };
    let codec = match TableCodec::new(table.desc) {
        Ok(codec) => codec,
        Err(e) => return Ok(Some(format!("the share schema cannot be built: {e}"))),
    };
    for (key, schema) in [(true, codec.key_schema()), (false, codec.value_schema())] {
        let subject = subject_for(&topic, key);
        if st
            .find(&subject, &crate::registry::state::normalize(schema))
            .is_some()
        {
            continue;
        }
        let level = share
            .compatibility
            .unwrap_or_else(|| st.level(Some(&subject)));
        let history = st.history(&subject);
        let refs: Vec<(u32, &apache_avro::Schema)> =
            history.iter().map(|(v, s)| (*v, s.as_ref())).collect();
        let reasons = compat::check(level, schema, &refs);
        if !reasons.is_empty() {
            return Ok(Some(format!(
                "the share schema it derives for {topic} is incompatible ({level}) with what the subscriber received so far: {}",
                reasons.join("; ")
            )));
        }
    }
    Ok(None)
}
