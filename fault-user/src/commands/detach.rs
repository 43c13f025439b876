//! `fault apply --detach`: the loader goes on in a session of its own, logging to
//! `/run/fault/NAME/log`, and the command returns once every fault is in place (exit 0),
//! or with the loader's error and exit code. Readiness for scripts either way: the
//! `applied` event, `--ready-file`, and the "ready" line.

use std::{
    io::Read as _,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::Context as _;

use crate::{
    cli::ApplyArgs,
    engine::Run,
    error::{failed, Error},
    observe,
    sys::private,
};

/// The log file of a detached run.
pub fn log_path(name: &str) -> std::path::PathBuf {
    observe::run_dir(name).join("log")
}

pub fn detach(args: &ApplyArgs) -> Result<(), Error> {
    // Bad input fails here, with exit 2 and nothing started.
    let (policy, _) = crate::plan::compile(&args.file)?;
    let name = policy.name;
    let dir = observe::run_dir(&name);
    let log_file = log_path(&name);
    let log = private::dir(&dir)
        .and_then(|()| private::create(&log_file))
        .map_err(failed("make the run's log"))?;
    let (ready_r, ready_w) = nix::unistd::pipe().map_err(failed("make the ready pipe"))?;
    let mut cmd = Command::new(std::env::current_exe().map_err(failed("find fault"))?);
    cmd.args(std::env::args_os().skip(1).filter(|a| a != "--detach"))
        .arg("--ready-fd")
        .arg(ready_w.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(failed("open the log"))?)
        .stderr(log);
    let reader_fd = ready_r.as_raw_fd();
    // SAFETY: setsid and close are async-signal-safe and touch no memory of ours.
    unsafe {
        cmd.pre_exec(move || {
            libc::close(reader_fd);
            match libc::setsid() {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            }
        });
    }
    let mut child = cmd.spawn().map_err(failed("start the loader"))?;
    drop(ready_w);
    if read_line(std::fs::File::from(ready_r)).starts_with("ready") {
        println!(
            "fault: {name} applied in the background (pid {}); `fault logs {name} -f` follows it, `fault stop {name}` ends it",
            child.id()
        );
        return Ok(());
    }
    // The loader ended before it was ready: its exit code and its last word.
    let status = child.wait().map_err(failed("wait for the loader"))?;
    let text = std::fs::read_to_string(&log_file).unwrap_or_default();
    let why = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("fault: "))
        .unwrap_or("the loader ended before every fault was in place")
        .to_owned();
    Err(Error::Detached {
        code: status.code().map_or(1, |c| c.clamp(1, 255) as u8),
        why,
        log: log_file,
    })
}

/// The first line the loader says on the pipe (up to the newline: the loader's children may
/// hold the pipe open long after).
fn read_line(mut pipe: std::fs::File) -> String {
    let mut said = Vec::new();
    let mut byte = [0u8; 1];
    while said.len() < 64 && matches!(pipe.read(&mut byte), Ok(1)) {
        if byte[0] == b'\n' {
            break;
        }
        said.push(byte[0]);
    }
    String::from_utf8_lossy(&said).into_owned()
}

/// Keeps the `--detach` pipe from the loader's children (the watchdog, probes), so the
/// parent hears of a loader that died before it was ready.
pub fn keep_ready_fd_private(fd: Option<i32>) {
    if let Some(fd) = fd {
        // SAFETY: fcntl on a descriptor number; a bad one only fails.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Every fault is in place: says so to whoever waits (the `--detach` parent, a
/// `--ready-file` watcher, a reader of stdout).
pub fn tell_ready(run: &Run) -> Result<(), Error> {
    let o = &run.plan.options;
    let name = &run.plan.policy.name;
    if let Some(path) = &o.ready_file {
        write_ready_file(path, name).map_err(failed("write the ready file"))?;
    }
    if !o.json {
        println!("fault: {name} ready: every fault is in place");
    }
    if let Some(fd) = o.ready_fd {
        // SAFETY: the fd is the write end `fault apply --detach` handed us, ours alone.
        let mut pipe = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let _ = std::io::Write::write_all(&mut pipe, b"ready\n");
    }
    Ok(())
}

/// `NAME PID`, written whole (a watcher never reads half of it).
fn write_ready_file(path: &Path, name: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{name} {}\n", std::process::id()))
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// The ready file goes with the run, so a script never mistakes an old one for the next
/// run's.
pub fn remove_ready_file(run: &Run) {
    if let Some(path) = &run.plan.options.ready_file {
        let _ = std::fs::remove_file(path);
    }
}
