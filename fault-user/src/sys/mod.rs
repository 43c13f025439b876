//! What fault asks of the host, apart from BPF: namespaces, mounts, clocks and processes.

pub mod caps;
pub mod mounts;
pub mod netns;
pub mod private;
pub mod proc;
pub mod rtnl;
pub mod time;
