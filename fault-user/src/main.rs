//! The `fault` command line.

use std::process::ExitCode;

use clap::Parser;
use fault::{
    cli::{Cli, Cmd},
    commands,
    error::{failed, Error},
};

fn apply(args: fault::cli::ApplyArgs) -> Result<(), Error> {
    if args.detach {
        return commands::detach(&args);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed("start the runtime"))?
        .block_on(commands::apply(args))
}

fn agent(args: fault::cli::AgentArgs) -> Result<(), Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed("start the runtime"))?
        .block_on(fault::agent::run(args))
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors, which matches our "invalid policy or usage".
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Apply(args) => apply(args),
        Cmd::Agent(args) => agent(args),
        Cmd::Check { files } => commands::check(&files),
        Cmd::Status { json, agent } => match agent {
            true => commands::agent_status(json),
            false => commands::status(json),
        },
        Cmd::Stop { name, all } => commands::stop(name.as_deref(), all),
        Cmd::Logs { name, follow } => commands::logs(&name, follow),
        Cmd::Report { run, output } => commands::report(&run, output.as_deref()),
        Cmd::Schema => commands::schema(),
        Cmd::Completions { shell } => commands::completions(shell),
        Cmd::Man => commands::man(),
        Cmd::Watchdog { name, pid, start } => {
            fault::watchdog::watch(&name, pid, start).map_err(failed("watch the loader"))
        }
        Cmd::Injector => {
            fault::clock::injector::serve().map_err(failed("serve the loader's patches"))
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
