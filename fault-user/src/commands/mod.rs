//! The commands: `apply` runs a plan, `check` validates, `status` reports and `stop` ends
//! runs, also those whose loader died.

mod apply;
mod check;
mod cleanup;
mod status;
mod stop;

pub use apply::apply;
pub use check::check;
pub use status::status;
pub use stop::stop;
