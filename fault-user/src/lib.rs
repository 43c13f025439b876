//! fault: per-cgroup network fault injection with eBPF.
//!
//! `policy` parses and compiles policies, `target` resolves who they apply to, `loader`
//! loads the eBPF object and fills its maps, `attach` puts the programs on interfaces,
//! `state` records what is active, `run` holds the commands and `report` formats counters.

pub mod attach;
pub mod clock;
pub mod dist;
pub mod loader;
pub mod peer;
pub mod policy;
pub mod report;
pub mod resend;
pub mod run;
pub mod state;
pub mod sys;
pub mod sysfs;
pub mod target;
