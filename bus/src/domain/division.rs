//! Who a node is: its GB/T 2260 administrative division code, the
//! jurisdiction that code governs, and the `[node]` section naming it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identity of this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Administrative division code (GB/T 2260, six digits), e.g. `330100`.
    pub code: DivisionCode,
    /// Human-readable name shown on dashboards.
    pub name: String,
    /// The upper node's division code (none at the top level).
    pub parent: Option<DivisionCode>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            code: DivisionCode::parse("330000").expect("valid default code"),
            name: "backflow demo node".to_owned(),
            parent: None,
        }
    }
}

/// A GB/T 2260 administrative division code: six ASCII digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DivisionCode(String);

impl DivisionCode {
    /// Parses a six-digit code.
    pub fn parse(code: &str) -> Result<Self, String> {
        if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(code.to_owned()))
        } else {
            Err(format!(
                "{code:?} is not a GB/T 2260 administrative division code: expected six digits such as \"330100\""
            ))
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this node may share with `subscriber`: a division inside
    /// its own jurisdiction, not itself. A node has no right to the data
    /// of divisions it does not govern, whatever its grants say.
    pub fn may_share_with(&self, subscriber: &DivisionCode) -> Result<(), String> {
        let prefix = self.jurisdiction_prefix();
        if subscriber == self || !subscriber.as_str().starts_with(prefix) {
            return Err(format!(
                "{subscriber} is not a division inside this node's jurisdiction ({self} shares only with codes starting with {prefix}, itself excluded)"
            ));
        }
        Ok(())
    }

    /// Jurisdiction prefix: the code without trailing "00" pairs
    /// (`330100` → `3301`, `330000` → `33`, `330106` → `330106`).
    pub fn jurisdiction_prefix(&self) -> &str {
        let mut s = self.0.as_str();
        while s.len() > 2 && s.ends_with("00") {
            s = &s[..s.len() - 2];
        }
        s
    }
}

impl TryFrom<String> for DivisionCode {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<DivisionCode> for String {
    fn from(value: DivisionCode) -> Self {
        value.0
    }
}

impl fmt::Display for DivisionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
