//! `fault probe-once`: one tcp or http check, run by a process fault started inside a group
//! (see `inside.rs`), its result printed on one line of stdout for the parent to read.
//!
//! The process is in the group's cgroup, so the group's clock faults reach it: a process
//! that execs there is patched like any other. It therefore times the check with the
//! `clock_gettime` system call, which the clock faults leave alone (they redirect the vDSO),
//! and the parent's own deadline bounds the whole run whatever the child's clocks say.

use std::{net::SocketAddr, time::Duration};

use tokio::process::Command;

use super::{check, tally::Outcome, Check};
use crate::error::Error;

/// One check, as `fault probe-once` takes it.
#[derive(Debug, clap::Args)]
pub struct OnceArgs {
    /// Connect to this address.
    #[arg(long, required_unless_present = "http", conflicts_with = "http")]
    tcp: Option<SocketAddr>,
    /// GET this URL.
    #[arg(long)]
    http: Option<String>,
    /// The status the GET must answer with.
    #[arg(long, default_value_t = 200)]
    status: u16,
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Runs the check and prints `ok MICROS` or `failed MICROS REASON`; a failed check is a
/// result, not an error of the command.
pub fn once(args: OnceArgs) -> Result<(), Error> {
    let begun = true_monotonic();
    let result = match (&args.tcp, &args.http) {
        (Some(addr), _) => check::tcp_blocking(*addr, args.timeout),
        (None, Some(url)) => check::http_blocking(url, args.status, args.timeout),
        (None, None) => Err("nothing to check".into()),
    };
    let latency = true_monotonic().saturating_sub(begun);
    println!("{}", encode(latency, &result));
    Ok(())
}

/// `fault probe-once` for `check`, from fault's own executable.
pub(super) fn command(check: &Check, timeout: Duration) -> Result<Command, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find fault's executable: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("probe-once");
    match check {
        Check::Tcp(addr) => cmd.arg("--tcp").arg(addr.to_string()),
        Check::Http { url, status } => cmd
            .arg("--http")
            .arg(url)
            .arg("--status")
            .arg(status.to_string()),
        Check::Exec(_) => return Err("exec probes run their command, not probe-once".into()),
    };
    cmd.arg("--timeout")
        .arg(humantime::format_duration(timeout).to_string());
    Ok(cmd)
}

fn encode(latency: Duration, result: &Result<(), String>) -> String {
    let us = latency.as_micros();
    match result {
        Ok(()) => format!("ok {us}"),
        // One line, whatever the reason holds.
        Err(e) => format!("failed {us} {}", e.replace('\n', " ")),
    }
}

/// The child's line back into an outcome; `None` when it printed something else.
pub(super) fn decode(stdout: &str) -> Option<Outcome> {
    let line = stdout.lines().find(|l| !l.trim().is_empty())?;
    let (verdict, rest) = line.split_once(' ')?;
    let (us, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let latency = Duration::from_micros(us.parse().ok()?);
    match verdict {
        "ok" => Some(Outcome {
            latency,
            error: None,
        }),
        "failed" => Some(Outcome {
            latency,
            error: Some(reason.to_string()),
        }),
        _ => None,
    }
}

/// CLOCK_MONOTONIC through the system call rather than the vDSO.
fn true_monotonic() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer it is given.
    unsafe { libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_survive_the_trip_through_stdout() {
        let ms = Duration::from_millis(12);
        let ok = decode(&encode(ms, &Ok(()))).unwrap();
        assert_eq!((ok.latency, ok.error), (ms, None));
        let why = "connect to 10.0.0.2:80: Connection refused (os error 111)";
        let failed = decode(&encode(ms, &Err(why.into()))).unwrap();
        assert_eq!(failed.error.as_deref(), Some(why));
        assert_eq!(decode("fault: something else\n"), None);
        assert_eq!(decode(""), None);
    }

    #[test]
    fn the_command_names_the_check() {
        let cmd = command(
            &Check::Http {
                url: "http://10.0.0.2:8080/health".into(),
                status: 204,
            },
            Duration::from_millis(1500),
        )
        .unwrap();
        let args: Vec<String> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "probe-once",
                "--http",
                "http://10.0.0.2:8080/health",
                "--status",
                "204",
                "--timeout",
                "1s 500ms"
            ]
        );
    }

    #[test]
    fn the_system_call_clock_moves() {
        let a = true_monotonic();
        std::thread::sleep(Duration::from_millis(2));
        assert!(true_monotonic() - a >= Duration::from_millis(2));
    }
}
