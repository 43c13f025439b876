//! Network faults: the TC and cgroup_skb programs, the qdiscs delays need, and the
//! userspace delay path.
//!
//! `NetPlan` decides how the rules go on this host before anything is attached; `NetFault`
//! is the kind the engine runs: it loads the object, attaches, follows new cgroups and
//! namespaces, and takes everything off again (see `crate::engine`).

pub mod attach;
pub mod clsact;
pub mod fq;
pub mod intents;
pub mod loader;
pub mod peer;
pub mod resend;
pub mod switch;
pub mod tc_mode;
pub mod test_run;

mod fault;
mod plan;

pub use attach::Direction;
pub use fault::{kernel_seed, NetFault};
pub use fq::DelayPath;
pub use plan::NetPlan;
pub use tc_mode::TcMode;
