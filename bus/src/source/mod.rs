//! Feeds: a department's database changes captured and published to the
//! raw topics. `feed` runs one feed, `feeds` starts, restarts and reports
//! them, `topic_state` reads a raw topic's current rows for sources that
//! need them.

pub mod config;
pub mod feed;
pub mod feeds;
pub mod topic_state;
