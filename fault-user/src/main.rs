//! The `fault` command line.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use fault::run;

#[derive(Parser)]
#[command(
    name = "fault",
    version,
    about = "Per-cgroup network fault injection with eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Apply a policy until its duration elapses or Ctrl-C/SIGTERM, then revert.
    Apply {
        file: PathBuf,
        /// Print the resolved targets and compiled rules; attach nothing.
        #[arg(long)]
        dry_run: bool,
        /// How often to print the counters.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
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
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors, which matches our "invalid policy or usage".
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Apply {
            file,
            dry_run,
            interval,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(run::failed)
            .and_then(|rt| rt.block_on(run::apply(&file, dry_run, interval))),
        Cmd::Check { files } => run::check(&files),
        Cmd::Status { json } => run::status(json),
        Cmd::Stop { name, all } => run::stop(name.as_deref(), all),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fault: {:#}", e.error);
            ExitCode::from(e.code as u8)
        }
    }
}
