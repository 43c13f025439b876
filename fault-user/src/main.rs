//! The `fault` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use fault::{
    commands,
    error::{failed, Error},
    net::{DelayPath, TcMode},
    plan::Options,
};

#[derive(Parser)]
#[command(
    name = "fault",
    version,
    about = "Per-cgroup fault injection with eBPF: network loss, corruption, duplication, \
             delay and partitions, and skewed clocks, for a container, a pod, a unit or a process"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Apply a policy until its duration elapses or Ctrl-C/SIGTERM/SIGHUP, then revert.
    Apply {
        file: PathBuf,
        /// Run every check and print the plan: targets, compiled rules, how they would go on
        /// this host; attach nothing.
        #[arg(long)]
        dry_run: bool,
        /// How often to print the counters.
        #[arg(long, default_value = "1s", value_parser = positive_duration)]
        interval: Duration,
        /// Attach egress programs with tcx or as clsact filters (default: tcx where the
        /// kernel has it).
        #[arg(long, value_enum, env = "FAULT_TC_MODE")]
        tc_mode: Option<TcMode>,
        /// Hold delayed packets in fq or in fault itself (default: fq where the kernel has
        /// sch_fq).
        #[arg(long, value_enum, env = "FAULT_DELAY_PATH")]
        delay_path: Option<DelayPath>,
        /// Print each packet the userspace delay path fails to send again.
        #[arg(long, env = "FAULT_DEBUG_RESEND", value_parser = clap::builder::FalseyValueParser::new())]
        debug_resend: bool,
        /// Print a line for every process patched.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Validate policies without applying them.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Show what fault has active on this host, with its counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Remove what fault installed, also when the applying process died.
    Stop {
        /// The policy's metadata.name.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Started by `fault apply`: acts when the loader dies without reverting.
    #[command(hide = true)]
    Watchdog { name: String, pid: u32, start: u64 },
    /// Started by `fault apply` inside a group: one tcp or http check of a probe.
    #[command(hide = true)]
    ProbeOnce(fault::probe::OnceArgs),
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => Err("expected a duration above zero, like 1s or 500ms".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("expected a duration like 1s or 500ms: {e}")),
    }
}

fn apply(file: PathBuf, dry_run: bool, options: Options) -> Result<(), Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed("start the runtime"))?
        .block_on(commands::apply(&file, dry_run, options))
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors, which matches our "invalid policy or usage".
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Apply {
            file,
            dry_run,
            interval,
            tc_mode,
            delay_path,
            debug_resend,
            verbose,
        } => apply(
            file,
            dry_run,
            Options {
                tc_mode,
                delay_path,
                debug_resend,
                verbose,
                interval,
            },
        ),
        Cmd::Check { files } => commands::check(&files),
        Cmd::Status { json } => commands::status(json),
        Cmd::Stop { name, all } => commands::stop(name.as_deref(), all),
        Cmd::Watchdog { name, pid, start } => {
            fault::watchdog::watch(&name, pid, start).map_err(failed("watch the loader"))
        }
        Cmd::ProbeOnce(args) => fault::probe::once(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fault: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
