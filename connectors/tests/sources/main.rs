//! The connectors against real databases (PostgreSQL, MariaDB, SQLite): one
//! test binary, one module per area, so the drivers are linked once.
//! Run one area with a filter, e.g. `cargo test -p backflow-connectors --test sources postgres_source::`.

mod database_passwords;
mod database_tls;
mod database_tls_attacks;
mod mysql_source;
mod poll_source;
mod postgres_source;
mod support;
