//! SQL polling source (being written).
