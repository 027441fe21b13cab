//! What a process runs: the node (`backflow serve`, `backflow source`) and
//! the subscriber (`backflow subscribe`), and their logging.

pub mod node;
pub mod telemetry;
