//! The contracts every part of backflow shares, with no I/O: topic and
//! group names, record headers, the share policy (which rows and fields a
//! subscriber receives, and how they are protected) and what a policy
//! discloses. Everything else imports from here; nothing here imports
//! from the rest of the crate.

pub mod disclosure;
pub mod division;
pub mod headers;
pub mod policy;
pub mod principal;
pub mod restart;
pub mod topics;
