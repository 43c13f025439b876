//! A cgroup's freezer (cgroup v2, Linux 5.2): writing `1` to `cgroup.freeze` stops every
//! process of the cgroup and of its descendants, `cgroup.events` says `frozen 1` once all of
//! them have stopped, and writing `0` lets them go on. A frozen process is not told: it
//! just stops running, which is what a stop-the-world pause looks like from outside.
//! <https://docs.kernel.org/admin-guide/cgroup-v2.html#core-interface-files>

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// One file of one cgroup that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}", path.display())]
pub struct FreezeError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FreezeError {
    /// The cgroup is not there (any more): nothing of it is left frozen.
    pub fn is_gone(&self) -> bool {
        self.source.kind() == io::ErrorKind::NotFound
    }
}

fn error(op: &'static str, path: PathBuf) -> impl FnOnce(io::Error) -> FreezeError {
    move |source| FreezeError { op, path, source }
}

/// Asks the kernel to freeze (`true`) or thaw the cgroup. Freezing takes effect as each
/// process gets to a point where it can stop; see [`wait_frozen`].
pub fn set(cgroup: &Path, frozen: bool) -> Result<(), FreezeError> {
    let path = cgroup.join("cgroup.freeze");
    let (op, value) = match frozen {
        true => ("freeze through", "1"),
        false => ("thaw through", "0"),
    };
    std::fs::write(&path, value).map_err(error(op, path))
}

/// Whether someone asked for the cgroup itself to be frozen (its `cgroup.freeze` reads 1).
pub fn requested(cgroup: &Path) -> Result<bool, FreezeError> {
    let path = cgroup.join("cgroup.freeze");
    let text = std::fs::read_to_string(&path).map_err(error("read", path))?;
    Ok(text.trim() == "1")
}

/// Whether every process of the cgroup has stopped (`frozen 1` in `cgroup.events`), which
/// is also the case when an ancestor is frozen.
pub fn is_frozen(cgroup: &Path) -> Result<bool, FreezeError> {
    let path = cgroup.join("cgroup.events");
    let text = std::fs::read_to_string(&path).map_err(error("read", path))?;
    Ok(events_say_frozen(&text))
}

/// Waits until the cgroup is frozen or `until` passes; whether it got there. The kernel
/// notifies a change of `cgroup.events` to a poll for POLLPRI on it, after a read; the
/// wait also reads again every 10 ms, so a notification it missed costs no more than that.
pub fn wait_frozen(cgroup: &Path, until: Instant) -> Result<bool, FreezeError> {
    let path = cgroup.join("cgroup.events");
    let mut file = File::open(&path).map_err(error("open", path.clone()))?;
    let mut text = String::new();
    loop {
        text.clear();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text))
            .map_err(error("read", path.clone()))?;
        if events_say_frozen(&text) {
            return Ok(true);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        poll_pri(&file, left.min(Duration::from_millis(10)));
    }
}

/// Sleeps until `file` reports a change (POLLPRI) or `timeout` passes. An error (EINTR)
/// only makes the caller read again sooner.
fn poll_pri(file: &File, timeout: Duration) {
    let mut fd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, 1000) as libc::c_int;
    // SAFETY: one valid pollfd, on a descriptor `file` keeps open for the call.
    unsafe { libc::poll(&mut fd, 1, ms) };
}

/// `cgroup.events` holds `populated 0|1` and `frozen 0|1`, a key and a value per line.
fn events_say_frozen(text: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().eq(["frozen", "1"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_frozen_key_of_cgroup_events() {
        assert!(events_say_frozen("populated 1\nfrozen 1\n"));
        assert!(!events_say_frozen("populated 1\nfrozen 0\n"));
        assert!(!events_say_frozen("populated 1\n"));
    }
}
