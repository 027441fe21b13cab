//! The control plane: the API through which owners register datasets and
//! decide on subscriptions, subscribers request and report, admins issue
//! tokens and auditors verify; the schema registry's REST API; and the
//! operators' dashboard over them.

pub mod api;
pub mod dashboard;
pub mod registry;
