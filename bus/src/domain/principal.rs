//! The principals of the control plane: who may call, and over which
//! datasets each decides.

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The node's operator.
    Admin,
    /// An owner department.
    Owner(String),
    /// A subscriber node.
    Subscriber(String),
    /// Reads and verifies the audit trail, and nothing else (separation of
    /// duties: the operator who runs the node is not the one who checks
    /// its record).
    Auditor,
}

impl Principal {
    /// Parses `admin`, `owner:<department>`, `subscriber:<node>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "admin" => Ok(Principal::Admin),
            None if s == "auditor" => Ok(Principal::Auditor),
            Some(("owner", d)) if !d.is_empty() => Ok(Principal::Owner(d.to_owned())),
            Some(("subscriber", n)) if n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(Principal::Subscriber(n.to_owned()))
            }
            _ => Err(format!(
                "{s:?} is not a principal: use admin, auditor, owner:<department> or subscriber:<six-digit node code>"
            )),
        }
    }

    /// The principal as configured (`owner:gongan`).
    pub fn name(&self) -> String {
        match self {
            Principal::Admin => "admin".to_owned(),
            Principal::Owner(d) => format!("owner:{d}"),
            Principal::Subscriber(n) => format!("subscriber:{n}"),
            Principal::Auditor => "auditor".to_owned(),
        }
    }

    /// Whether the principal decides over `dataset`: an admin, or the
    /// department its id starts with.
    pub fn owns(&self, dataset: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Owner(d) => dataset.split_once('.').is_some_and(|(dept, _)| dept == d),
            Principal::Subscriber(_) | Principal::Auditor => false,
        }
    }
}
