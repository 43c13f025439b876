//! What the classifier tests share: running a loaded program on one frame through
//! `BPF_PROG_TEST_RUN`, a private network namespace to run it in, and crafted frames.

pub mod packet;

use std::ffi::CString;
use std::io;
use std::os::fd::BorrowedFd;
use std::process::Command;

pub use fault::net::test_run::{Run, SkbCtx};

/// Runs the program once on `frame` with the context `ctx`.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], ctx: &SkbCtx) -> io::Result<Run> {
    fault::net::test_run::test_run(prog, frame, ctx, 1)
}

/// A network namespace of the calling thread's own, with `lo` up and a veth pair
/// (`fault-tr0`, `fault-tr1`): test-run looks the context's ifindex up there, and a packet
/// the program sends (a duplicate) goes nowhere outside it. It dies with the thread.
pub struct PrivateNet {
    /// ifindex of `fault-tr0`: a device that is not loopback.
    pub veth: u32,
}

/// Runs `f` on a new thread inside a fresh network namespace (see [`PrivateNet`]).
pub fn in_private_net<T: Send>(f: impl FnOnce(&PrivateNet) -> T + Send) -> T {
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            // SAFETY: unshare affects only this thread, which nothing else uses.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            );
            // Children forked from this thread start in its namespace.
            for args in [
                &["link", "set", "lo", "up"][..],
                &[
                    "link",
                    "add",
                    "fault-tr0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "fault-tr1",
                ],
                &["link", "set", "fault-tr0", "up"],
                &["link", "set", "fault-tr1", "up"],
            ] {
                let out = Command::new("ip").args(args).output().expect("run ip");
                assert!(
                    out.status.success(),
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let name = CString::new("fault-tr0").unwrap();
            // SAFETY: a valid C string.
            let veth = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert!(veth > 1, "fault-tr0 has an ifindex");
            f(&PrivateNet { veth })
        });
        match worker.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Whether the tests can run here: they load programs and need root. The reason if not.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    (euid != 0).then(|| format!("needs root to load eBPF programs (euid is {euid})"))
}

/// Says why a test returns without testing, past libtest's capture.
pub fn skip(reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(io::stderr(), "skipped: {reason}");
}
