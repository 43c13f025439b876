//! What the classifier tests share: running a loaded program on one frame through
//! `BPF_PROG_TEST_RUN`, a private network namespace to run it in, and crafted frames.

pub mod packet;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::process::Command;

/// `BPF_PROG_TEST_RUN` (include/uapi/linux/bpf.h).
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`, up to `batch_size` (Linux 5.18 layout).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct __sk_buff` as 32-bit words: what test-run takes as the context of sched_cls and
/// cgroup_skb programs. Only the fields test-run accepts are given setters.
#[derive(Clone, Copy)]
pub struct SkbCtx([u32; 48]);

impl SkbCtx {
    pub fn new() -> Self {
        SkbCtx([0; 48])
    }

    /// `ifindex` (offset 40): the device the packet is on; 0 and 1 mean loopback.
    pub fn ifindex(mut self, ifindex: u32) -> Self {
        self.0[10] = ifindex;
        self
    }

    /// `cb[0..5]` (offset 48).
    pub fn cb(mut self, cb: [u32; 5]) -> Self {
        self.0[12..17].copy_from_slice(&cb);
        self
    }
}

/// What one run returned.
#[derive(Debug)]
pub struct Run {
    pub retval: u32,
    /// The frame as the program left it.
    pub data: Vec<u8>,
}

/// Runs the program once on `frame` with the context `ctx`.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], ctx: &SkbCtx) -> io::Result<Run> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut ctx_out = SkbCtx::new();
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: std::mem::size_of::<SkbCtx>() as u32,
        ctx_size_out: std::mem::size_of::<SkbCtx>() as u32,
        ctx_in: ctx.0.as_ptr() as u64,
        ctx_out: ctx_out.0.as_mut_ptr() as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix whose pointers outlive the call, and the size
    // passed is its size; the kernel writes only into `out`, `ctx_out` and `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(Run {
        retval: attr.retval,
        data: out,
    })
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
