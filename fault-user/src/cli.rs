//! The command line, as clap reads it. It lives in the library so that `fault completions`
//! and `fault man` describe the very parser `fault` runs.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::net::{DelayPath, TcMode};

#[derive(Parser)]
#[command(
    name = "fault",
    version,
    about = "Per-cgroup fault injection with eBPF: network loss, corruption, duplication, \
             delay and partitions, and skewed clocks, for a container, a pod, a unit or a process"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

/// What `fault apply` prints on stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// The live view: redrawn in place on a terminal, plain lines otherwise.
    #[default]
    Text,
    /// The run's events, one JSON object per line (see `fault report`).
    Json,
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    pub file: PathBuf,
    /// Run every check and print the plan: targets, compiled rules, how they would go on
    /// this host; attach nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How often to print the counters (and to record them in the event log).
    #[arg(long, default_value = "1s", value_parser = interval)]
    pub interval: Duration,
    /// Attach egress programs with tcx or as clsact filters (default: tcx where the
    /// kernel has it).
    #[arg(long, value_enum, env = "FAULT_TC_MODE")]
    pub tc_mode: Option<TcMode>,
    /// Hold delayed packets in fq or in fault itself (default: fq where the kernel has
    /// sch_fq).
    #[arg(long, value_enum, env = "FAULT_DELAY_PATH")]
    pub delay_path: Option<DelayPath>,
    /// Print each packet the userspace delay path fails to send again.
    #[arg(long, env = "FAULT_DEBUG_RESEND", value_parser = clap::builder::FalseyValueParser::new())]
    pub debug_resend: bool,
    /// Print a line for every process patched.
    #[arg(short, long)]
    pub verbose: bool,
    /// Serve Prometheus metrics at this address (GET /metrics), e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Also write the event log here (it is always written to /run/fault/NAME/events.jsonl).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// What to print on stdout: the live view, or the events as JSON lines.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Return once every fault is in place (exit 0) or with the error; the run goes on in
    /// its own session, logging to /run/fault/NAME/log (`fault logs NAME`).
    #[arg(long, conflicts_with = "dry_run")]
    pub detach: bool,
    /// Write this file (the run's name and pid) once every fault is in place.
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Set by `--detach` for the loader it starts: the pipe to say "ready" on.
    #[arg(long, hide = true)]
    pub ready_fd: Option<i32>,
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The directory of policy files to keep applied (a mounted ConfigMap): every
    /// `*.yaml` and `*.yml` in it, each its own experiment.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Serve the agent's Prometheus metrics at this address (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Apply a policy until its duration elapses or Ctrl-C/SIGTERM/SIGHUP, then revert.
    Apply(ApplyArgs),
    /// Keep the experiments of a directory applied: a new file is applied, a removed one
    /// reverted, a changed one replaced; SIGTERM reverts them all.
    Agent(AgentArgs),
    /// Validate policies without applying them.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show what fault has active on this host, with its counters.
    Status {
        #[arg(long)]
        json: bool,
        /// Only what `fault agent` watches: each file and its state.
        #[arg(long)]
        agent: bool,
    },
    /// Remove what fault installed, also when the applying process died.
    Stop {
        /// The policy's metadata.name.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Print the log of a run (one started with --detach writes one).
    Logs {
        /// The policy's metadata.name.
        name: String,
        /// Keep printing what the run logs until it ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Write a self-contained HTML page of a run from its event log.
    Report {
        /// The run's events file, or its directory (/run/fault/NAME).
        run: PathBuf,
        /// Where to write the page (default: report.html beside the events file).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Print the JSON Schema of policy files (both kinds), for editors and validators.
    Schema,
    /// Print a completion script for a shell.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// Started by `fault apply`: acts when the loader dies without reverting.
    #[command(hide = true)]
    Watchdog { name: String, pid: u32, start: u64 },
    /// Started by `fault apply` for clock faults: patches and reverts processes for the
    /// loader, so that its death cannot leave one half patched.
    #[command(hide = true)]
    Injector,
    /// Started by `fault apply` inside a group: one tcp or http check of a probe.
    #[command(hide = true)]
    ProbeOnce(crate::probe::OnceArgs),
}

/// The live view's period: 10 ms to a day (a shorter one only floods the terminal).
fn interval(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d < Duration::from_millis(10) || d > Duration::from_secs(86_400) => {
            Err("expected a duration from 10ms to 24h, like 1s or 500ms".into())
        }
        Ok(d) => Ok(d),
        Err(e) => Err(format!("expected a duration like 1s or 500ms: {e}")),
    }
}
