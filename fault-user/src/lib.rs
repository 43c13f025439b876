//! fault: per-cgroup network and clock fault injection with eBPF.
//!
//! A run goes `policy` (parse, validate, compile) → `plan` (targets resolved, how each
//! fault goes on this host, refusals) → `engine` (start each kind, follow the targets, stop
//! in reverse). The kinds are `net` (TC and cgroup_skb programs, qdiscs, the userspace delay
//! path) and `clock` (vDSO redirection, the exec hold). `target` resolves who a policy
//! applies to, `sys` wraps what fault asks of the host, `state` records what is active for
//! `fault status` and `fault stop`, `display` formats counters, `observe` keeps the event log
//! and serves metrics, `report` draws a run's HTML page, `agent` keeps the faults a directory of
//! policy files asks for, `commands` holds the CLI's
//! commands and `error` their failures and exit codes.

pub mod agent;
pub mod churn;
pub mod cli;
pub mod clock;
pub mod collide;
pub mod commands;
pub mod cri;
pub mod display;
pub mod dist;
pub mod engine;
pub mod error;
pub mod groups;
pub mod guard;
pub mod lease;
pub mod net;
pub mod observe;
pub mod pause;
pub mod plan;
pub mod policy;
pub mod probe;
pub mod program_log;
pub mod report;
pub mod state;
pub mod sys;
pub mod target;
pub mod timeline;
pub mod watchdog;
