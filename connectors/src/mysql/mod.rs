//! MySQL/MariaDB binlog source (being written).
