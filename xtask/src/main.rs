//! `cargo xtask <command>`: the project's own build, test and demo entry points.
//!
//! Every command that needs the eBPF toolchain or podman calls [`setup::ensure`] first, so a
//! fresh machine (or CI) needs nothing but stable cargo to get going.

mod bench;
mod build;
mod cmd;
mod demo;
mod fuzz;
mod image;
mod lan;
mod sandbox;
mod setup;
mod test;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, test and demo the fault injector"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent: a second run only checks)
    Setup,
    /// Build the `fault` binary (release), eBPF programs included
    Build,
    /// Run the unit tests, then the privileged suite (needs root)
    Test,
    /// Build the OCI image of `fault agent` for deploy/kubernetes (podman, no registry)
    Image {
        /// The binary to package; default: the release build, built first if missing
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The image's name; default: localhost/fault-agent:<the binary's version>
        #[arg(long)]
        tag: Option<String>,
    },
    /// Run the demo
    Demo {
        /// Passed through to the demo
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz parse, validate and compile of both kinds (cargo-fuzz, nightly)
    Fuzz {
        /// Seconds per target
        #[arg(long, default_value_t = 60)]
        time: u64,
    },
    /// Run the benchmarks
    Bench {
        /// Passed through to the benchmarks
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a command as root in a qemu guest booting a Debian kernel (TCG, host / shared)
    Vm {
        /// A kernel series (6.1, bookworm's; 5.10, bullseye's; 6.12, trixie's) or an exact
        /// Debian ABI (6.1.0-56-amd64)
        #[arg(long, default_value = vm::DEFAULT_KERNEL)]
        kernel: String,
        /// Guest memory, in qemu's syntax
        #[arg(long, default_value = vm::DEFAULT_MEM)]
        mem: String,
        /// Guest CPUs
        #[arg(long, default_value_t = vm::DEFAULT_CPUS)]
        cpus: u32,
        /// Seconds before a guest that has not finished is killed
        #[arg(long, default_value_t = vm::DEFAULT_TIMEOUT_SECS)]
        timeout: u64,
        /// The command and its arguments, after `--`
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

fn main() -> ExitCode {
    // Printed by hand: the chain once, without the backtrace anyhow adds under RUST_BACKTRACE.
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    match cli.command {
        Command::Setup => setup::run(),
        Command::Build => {
            setup::ensure()?;
            let bin = build::fault(&root)?;
            println!("built {}", bin.display());
            Ok(())
        }
        Command::Test => test::run(&root),
        Command::Image { binary, tag } => image::run(&root, binary, tag),
        Command::Demo { args } => demo::run(&root, &args),
        Command::Bench { args } => bench::run(&root, &args),
        Command::Fuzz { time } => fuzz::run(&root, time),
        Command::Vm {
            kernel,
            mem,
            cpus,
            timeout,
            cmd,
        } => {
            let options = vm::Options {
                kernel,
                mem,
                cpus,
                timeout: std::time::Duration::from_secs(timeout),
            };
            vm::run(&root, &options, &cmd)
        }
    }
}

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask's manifest directory has a parent")
        .to_path_buf()
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` if set (relative to the root), else
/// `<root>/target`.
fn target_dir(root: &std::path::Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}
