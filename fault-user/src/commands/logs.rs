//! `fault logs NAME [--follow]`: what a detached loader wrote, and with `--follow` what it
//! writes until its run ends.

use std::{
    io::{Read as _, Seek as _},
    time::Duration,
};

use anyhow::anyhow;

use super::detach::log_path;
use crate::{
    error::{failed, Error},
    state::{self, State},
};

pub fn logs(name: &str, follow: bool) -> Result<(), Error> {
    crate::policy::check_name(name).map_err(|why| Error::Usage(format!("fault logs: {why}")))?;
    let path = log_path(name);
    let mut file = std::fs::File::open(&path).map_err(|e| {
        failed("fault logs")(anyhow!(
            "no log of {name} at {} ({e}); runs started with `fault apply --detach` write one",
            path.display()
        ))
    })?;
    let mut out = std::io::stdout().lock();
    let mut pos = 0u64;
    loop {
        pos += copy_new(&mut file, pos, &mut out).map_err(failed("read the log"))?;
        if !follow {
            return Ok(());
        }
        if !running(name) {
            // What it wrote on its way out.
            copy_new(&mut file, pos, &mut out).map_err(failed("read the log"))?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Copies what the log has past `pos`; how many bytes.
fn copy_new(
    file: &mut std::fs::File,
    pos: u64,
    out: &mut impl std::io::Write,
) -> std::io::Result<u64> {
    file.seek(std::io::SeekFrom::Start(pos))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    out.write_all(&buf)?;
    out.flush()?;
    Ok(buf.len() as u64)
}

/// Whether the run's loader still runs.
fn running(name: &str) -> bool {
    State::read(&state::state_path(name)).is_ok_and(|s| s.loader_alive())
}
