//! Running a loaded program on one crafted frame through `BPF_PROG_TEST_RUN`: how
//! `fault-bench` measures the classifiers and how the classifier tests drive them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

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
    /// Explicit, so no byte the kernel checks is left uninitialised.
    _pad: u32,
}

/// `struct __sk_buff` as 32-bit words: what test-run takes as the context of sched_cls and
/// cgroup_skb programs. Only the fields test-run accepts are given setters.
#[derive(Clone, Copy)]
pub struct SkbCtx([u32; 48]);

impl Default for SkbCtx {
    fn default() -> Self {
        Self::new()
    }
}

impl SkbCtx {
    pub fn new() -> Self {
        SkbCtx([0; 48])
    }

    /// `ifindex` (offset 40): the device the packet is on; 0 and 1 mean loopback.
    pub fn ifindex(mut self, ifindex: u32) -> Self {
        self.0[10] = ifindex;
        self
    }

    /// `tstamp` (offset 152), as a run left it.
    pub fn tstamp(&self) -> u64 {
        u64::from(self.0[38]) | u64::from(self.0[39]) << 32
    }

    /// `cb[0..5]` (offset 48).
    pub fn cb(mut self, cb: [u32; 5]) -> Self {
        self.0[12..17].copy_from_slice(&cb);
        self
    }
}

/// What the runs returned.
#[derive(Debug)]
pub struct Run {
    pub retval: u32,
    /// The frame as the (last) run left it.
    pub data: Vec<u8>,
    /// The kernel's mean time per run, in ns.
    pub duration_ns: u32,
    /// `skb->tstamp` as the (last) run left it: a departure time the program wrote.
    pub tstamp: u64,
}

/// Runs the program `repeat` times on `frame` with the context `ctx`.
pub fn test_run(prog: BorrowedFd<'_>, frame: &[u8], ctx: &SkbCtx, repeat: u32) -> io::Result<Run> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut ctx_out = SkbCtx::new();
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
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
        duration_ns: attr.duration,
        tstamp: ctx_out.tstamp(),
    })
}
