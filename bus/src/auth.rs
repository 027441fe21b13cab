//! Who is calling: the principals of the control plane and the bearer
//! tokens that name them.
//!
//! Principals: `admin` (the node's operator), `owner:<department>` (datasets
//! `<department>.*`), `subscriber:<node>` (requests for itself only),
//! `auditor` (reads and verifies the audit trail, nothing else).
//! Tokens are known by their SHA-256 only: those of the configuration file
//! (`[[auth.tokens]]`) and those an admin issued through the API (kept in
//! `backflow._catalog`). A request names its token as
//! `Authorization: Bearer <token>`, or, for clients that only speak HTTP
//! basic authentication (Confluent's schema registry clients), as the
//! password of `Authorization: Basic` (the user name is not read).
//!
//! The API and the schema registry authenticate through the same
//! [`Authenticator`], so one token works for both.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::catalog::Catalog;

pub use crate::domain::principal::Principal;

/// Bearer tokens of the control-plane API.
///
/// ```toml
/// [[auth.tokens]]
/// principal = "owner:gongan"        # admin | owner:<department> | subscriber:<node>
/// sha256 = "9f86d0..."              # echo -n "$TOKEN" | sha256sum
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Tokens, by their SHA-256; with none, every API call is refused.
    pub tokens: Vec<TokenConfig>,
}

/// One API token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// `admin`, `owner:<department>` or `subscriber:<node>`.
    pub principal: String,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

/// The hex SHA-256 of a token, as `[[auth.tokens]]` holds it.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Why a request was not authenticated (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unauthenticated(pub String);

/// Tells who a request comes from. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    /// Tokens of the configuration file, by SHA-256.
    configured: Arc<HashMap<String, Principal>>,
    /// Tokens issued through the API live in the catalog (a node's);
    /// `None` in processes without one (`backflow subscribe`).
    catalog: Option<Catalog>,
}

impl Authenticator {
    /// Knows the configured tokens (validated with the configuration) and
    /// those the catalog holds.
    pub fn new(tokens: &[TokenConfig], catalog: Catalog) -> Self {
        Self {
            catalog: Some(catalog),
            ..Self::configured_only(tokens)
        }
    }

    /// Knows the configured tokens only (a process without a catalog).
    pub fn configured_only(tokens: &[TokenConfig]) -> Self {
        let configured = tokens
            .iter()
            .filter_map(|t| {
                Some((
                    t.sha256.to_ascii_lowercase(),
                    Principal::parse(&t.principal).ok()?,
                ))
            })
            .collect();
        Self {
            configured: Arc::new(configured),
            catalog: None,
        }
    }

    /// The principal of the request's token.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Unauthenticated> {
        let token = presented_token(headers)?;
        let hash = token_hash(token.trim());
        if let Some(p) = self.configured.get(&hash) {
            return Ok(p.clone());
        }
        let Some(catalog) = &self.catalog else {
            return Err(Unauthenticated("unknown token".to_owned()));
        };
        // Tokens issued through the API; one not known here yet may have
        // been issued moments ago (or before a restart): catch up with the
        // catalog.
        let mut issued = catalog.state().await.tokens.get(&hash).cloned();
        if issued.is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(5), catalog.caught_up()).await;
            issued = catalog.state().await.tokens.get(&hash).cloned();
        }
        match issued {
            Some(t) if t.revoked => Err(Unauthenticated("token revoked".to_owned())),
            Some(t) => Principal::parse(&t.principal)
                .map_err(|_| Unauthenticated("unknown token".to_owned())),
            None => Err(Unauthenticated("unknown token".to_owned())),
        }
    }
}

/// The token of `Authorization: Bearer <token>` or the password of
/// `Authorization: Basic <base64(user:password)>`.
fn presented_token(headers: &HeaderMap) -> Result<String, Unauthenticated> {
    use base64::Engine as _;
    let missing = || {
        Unauthenticated(
            "no bearer token: send Authorization: Bearer <token> (or the token as the password of HTTP basic authentication)"
                .to_owned(),
        )
    };
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(missing)?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Ok(token.to_owned());
    }
    if let Some(encoded) = value.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                Unauthenticated("Authorization: Basic is not base64 of user:password".to_owned())
            })?;
        let (_, password) = decoded.split_once(':').ok_or_else(|| {
            Unauthenticated("Authorization: Basic is not base64 of user:password".to_owned())
        })?;
        return Ok(password.to_owned());
    }
    Err(missing())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_parse_and_own_their_datasets() {
        assert_eq!(Principal::parse("admin").unwrap(), Principal::Admin);
        assert_eq!(Principal::parse("auditor").unwrap(), Principal::Auditor);
        assert!(!Principal::Auditor.owns("gongan.population"));
        let owner = Principal::parse("owner:gongan").unwrap();
        assert!(owner.owns("gongan.population"));
        assert!(!owner.owns("minzheng.marriage"));
        assert!(!Principal::parse("subscriber:330106")
            .unwrap()
            .owns("gongan.population"));
        assert!(Principal::parse("subscriber:3301").is_err());
        assert!(Principal::parse("root").is_err());
        assert_eq!(token_hash("abc").len(), 64);
    }

    #[test]
    fn tokens_are_read_from_bearer_and_basic_authorization() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
            presented_token(&h)
        };
        assert_eq!(with("Bearer t0k").unwrap(), "t0k");
        // base64("330106:t0k:with:colons")
        assert_eq!(
            with("Basic MzMwMTA2OnQwazp3aXRoOmNvbG9ucw==").unwrap(),
            "t0k:with:colons"
        );
        assert!(with("Basic !!!").is_err());
        assert!(with("Digest x").is_err());
        assert!(presented_token(&HeaderMap::new()).is_err());
    }
}
