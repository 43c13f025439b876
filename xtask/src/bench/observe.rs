//! Section 7 of the bench: what watching a run costs the loader. Its CPU time over a fixed
//! run of the bench's policy with `--metrics` not scraped, scraped every second (Prometheus'
//! usual rate is every 15 to 60 s) and ten times a second, with the event log written every
//! second as always; and how long a scrape takes. The packet path is not in it: the
//! counters are the per-CPU maps the programs keep anyway.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::gameday::cpu_ms;
use crate::sandbox::wait_ready;

/// How long each configuration runs.
const RUN: Duration = Duration::from_secs(20);
const NAME: &str = "bench";

/// One GET /metrics; how long it took.
fn scrape(addr: &str) -> Result<Duration> {
    let begun = Instant::now();
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    write!(s, "GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    Ok(begun.elapsed())
}

/// The loader's CPU (ms) over `RUN` while scraped every `every` (never if `None`), and the
/// scrapes' latencies.
fn run_once(fault: &Path, policy: &Path, every: Option<Duration>) -> Result<(f64, Vec<Duration>)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let mut apply = Command::new(fault)
        .args(["apply", "--interval", "1s", "--metrics", &addr])
        .arg(policy)
        .stdout(Stdio::null())
        .spawn()?;
    wait_ready(&mut apply, NAME)?;
    let before = cpu_ms(apply.id())?;
    let end = Instant::now() + RUN;
    let mut took = Vec::new();
    while Instant::now() < end {
        match every {
            Some(e) => {
                took.push(scrape(&addr)?);
                sleep(e);
            }
            None => sleep(Duration::from_millis(100)),
        }
    }
    let used = cpu_ms(apply.id())? - before;
    let _ = Command::new("kill")
        .args(["-TERM", &apply.id().to_string()])
        .status();
    let _ = apply.wait();
    Ok((used, took))
}

pub fn measure(fault: &Path, policy: &Path) -> Result<String> {
    let mut rows = String::from(
        "| scraped | loader CPU over the run (ms) | share of a core | more than unscraped | scrape p50 (ms) |\n\
         |---|---:|---:|---:|---:|\n",
    );
    let mut base = None;
    for (label, every) in [
        ("never", None),
        ("every 1 s", Some(Duration::from_secs(1))),
        ("every 100 ms", Some(Duration::from_millis(100))),
    ] {
        let (used, mut took) = run_once(fault, policy, every)?;
        took.sort();
        let p50 = took
            .get(took.len() / 2)
            .map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64() * 1e3));
        let share = used / RUN.as_millis() as f64 * 100.0;
        let extra = match base {
            None => "-".to_owned(),
            Some(b) => format!(
                "{:+.2} % of a core",
                (used - b) / RUN.as_millis() as f64 * 100.0
            ),
        };
        base.get_or_insert(used);
        println!(
            "  scraped {label}: {used:.0} ms CPU in {} s, scrape p50 {p50} ms",
            RUN.as_secs()
        );
        rows.push_str(&format!(
            "| {label} | {used:.0} | {share:.2} % | {extra} | {p50} |\n"
        ));
    }
    Ok(format!(
        "## Observability\n\n\
         The loader's CPU time (user + system, from /proc) over {} s of the throughput section's \
         policy with `--metrics`, the live view and the event log written every second, \
         unscraped and scraped by a client on this host (goal: scraping every second costs \
         under 1 % of a core). Each scrape reads the pinned counters of every rule and \
         encodes the whole registry.\n\n{rows}",
        RUN.as_secs()
    ))
}
