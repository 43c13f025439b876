//! The timers a process made before it was patched, and the clock of each, from /proc: a
//! timerfd's `clockid` in `/proc/PID/fdinfo/FD`, a POSIX timer's `ClockID` in
//! `/proc/PID/timers`. Arming a timer with an absolute expiry does not name its clock, so
//! the rewrite (fault-ebpf/src/clock_rewrite.rs) looks the clock up by the timer; it learns
//! the timers made after the patch itself, at their creation.

use std::path::Path;

use fault_common::{TimerKey, TIMER_POSIX};

/// Every timerfd and POSIX timer of process `pid`, with its clock id. A process that is
/// gone, or whose files cannot be read, has none.
pub fn timers_of(pid: u32) -> Vec<(TimerKey, u32)> {
    let root = Path::new("/proc").join(pid.to_string());
    let mut out = timerfds(pid, &root);
    if let Ok(text) = std::fs::read_to_string(root.join("timers")) {
        out.extend(
            posix_timers(&text)
                .into_iter()
                .map(|(id, clock)| (key(pid, id | TIMER_POSIX), clock)),
        );
    }
    out
}

fn key(tgid: u32, id: u32) -> TimerKey {
    TimerKey { tgid, id }
}

fn timerfds(pid: u32, root: &Path) -> Vec<(TimerKey, u32)> {
    let Ok(dir) = std::fs::read_dir(root.join("fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let fd: u32 = entry.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(entry.path()).ok()?;
            if link.as_os_str() != "anon_inode:[timerfd]" {
                return None;
            }
            let info = std::fs::read_to_string(root.join("fdinfo").join(fd.to_string())).ok()?;
            Some((key(pid, fd), timerfd_clock(&info)?))
        })
        .collect()
}

/// The `clockid:` line of a timerfd's fdinfo.
fn timerfd_clock(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("clockid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `/proc/PID/timers`: (timer id, clock id) for each timer, from its `ID:` and `ClockID:`
/// lines. Clocks of other processes' CPU time (negative ids) are left out.
fn posix_timers(text: &str) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut id = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("ID:") {
            id = v.trim().parse::<u32>().ok();
        } else if let Some(v) = line.strip_prefix("ClockID:") {
            if let (Some(i), Ok(clock)) = (id.take(), v.trim().parse::<u32>()) {
                out.push((i, clock));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timerfds_clock_is_its_fdinfo_clockid() {
        let info = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1030\nclockid: 1\nticks: 0\n\
                    settime flags: 01\nit_value: (0, 0)\nit_interval: (0, 0)\n";
        assert_eq!(timerfd_clock(info), Some(1));
        assert_eq!(timerfd_clock("pos:\t0\nflags:\t02\n"), None);
    }

    #[test]
    fn posix_timers_are_read_with_their_clocks() {
        let text = "ID: 0\nsignal: 14/0000000000000000\nnotify: signal/pid.8329\nClockID: 0\n\
                    ID: 3\nsignal: 10/00007f0000000000\nnotify: thread/tid.8330\nClockID: 7\n\
                    ID: 4\nsignal: 10/0\nnotify: signal/pid.1\nClockID: -6\n";
        assert_eq!(posix_timers(text), vec![(0, 0), (3, 7)]);
    }

    #[test]
    fn this_process_timers_are_found_with_their_clocks() {
        // SAFETY: plain system calls; the descriptor and the timer are closed below.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_BOOTTIME, libc::TFD_CLOEXEC) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
        ev.sigev_notify = libc::SIGEV_NONE;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: as above.
        let rc = unsafe { libc::timer_create(libc::CLOCK_REALTIME, &mut ev, &mut timer) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        let found = timers_of(std::process::id());
        // SAFETY: as above.
        unsafe {
            libc::close(fd);
            libc::timer_delete(timer);
        }
        let pid = std::process::id();
        assert!(
            found.contains(&(
                TimerKey {
                    tgid: pid,
                    id: fd as u32
                },
                libc::CLOCK_BOOTTIME as u32
            )),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|(k, c)| k.id & TIMER_POSIX != 0 && *c == 0),
            "{found:?}"
        );
    }
}
