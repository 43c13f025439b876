//! The commands: `apply` runs a plan (`detach` in the background), `check` validates,
//! `status` reports, `stop` ends runs, also those whose loader died, `logs` shows a run's
//! log, `report` draws a run's page, and `docs` describes the format and the command line.

mod apply;
mod check;
mod cleanup;
mod detach;
mod docs;
mod logs;
mod report;
mod status;
mod stop;

pub use apply::apply;
pub use check::check;
pub use detach::{detach, remove_ready_file, tell_ready};
pub use docs::{completions, man, schema};
pub use logs::logs;
pub use report::report;
pub use status::{agent_status, status};
pub use stop::stop;
