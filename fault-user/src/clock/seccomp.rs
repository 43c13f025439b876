//! Would the target's seccomp filter let fault's injected system calls through?
//!
//! The calls fault makes in a target pass through the target's own seccomp filters, so a
//! profile that refuses `memfd_create` makes injection fail, and one that kills on it would
//! kill the target. So before the first call, the filters are read
//! (`PTRACE_SECCOMP_GET_FILTER`, root only) and run here, on the exact arguments fault is
//! about to pass: a refusal is reported and the process left untouched.

use std::io;

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const RET_ACTION_FULL: u32 = 0xffff_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_LOG: u32 = 0x7ffc_0000;

/// A system call fault will make, as the filter sees it (`struct seccomp_data`).
#[derive(Debug, Clone)]
pub struct Call {
    pub name: &'static str,
    pub nr: i32,
    pub ip: u64,
    pub args: [u64; 6],
}

#[derive(Debug, thiserror::Error)]
pub enum Blocked {
    #[error("its seccomp filter answers {action} to {call}, which fault needs to map its clock code; left untouched")]
    Refused { call: &'static str, action: String },
    #[error("reading its seccomp filters (PTRACE_SECCOMP_GET_FILTER)")]
    Unreadable(#[source] io::Error),
    #[error("its seccomp filter could not be evaluated ({0}); left untouched")]
    Malformed(String),
}

/// A classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// Checks `calls` against every filter of thread `tid` of `pid` (which must be
/// ptrace-stopped by us).
pub fn check(pid: u32, tid: i32, calls: &[Call]) -> Result<(), Blocked> {
    let mode = super::inject::status_field(pid, "Seccomp").unwrap_or_default();
    match mode.as_str() {
        "0" | "" => return Ok(()),
        // Strict mode allows read, write, exit and sigreturn only.
        "1" => {
            return Err(Blocked::Refused {
                call: calls.first().map_or("mmap", |c| c.name),
                action: "kill (strict mode)".into(),
            })
        }
        _ => {}
    }
    let filters = read_filters(tid)?;
    for call in calls {
        let action = filters
            .iter()
            .map(|f| run(f, call))
            .collect::<Result<Vec<u32>, String>>()
            .map_err(Blocked::Malformed)?
            .into_iter()
            // The kernel takes the most severe answer: the lowest action as a signed number.
            .min_by_key(|&r| (r & RET_ACTION_FULL) as i32)
            .unwrap_or(RET_ALLOW);
        let a = action & RET_ACTION_FULL;
        if a != RET_ALLOW && a != RET_LOG {
            return Err(Blocked::Refused {
                call: call.name,
                action: describe(action),
            });
        }
    }
    Ok(())
}

fn describe(action: u32) -> String {
    match action & RET_ACTION_FULL {
        0x8000_0000 => "kill-process".into(),
        0 => "kill-thread".into(),
        0x0003_0000 => "trap".into(),
        0x0005_0000 => format!("errno {}", action & 0xffff),
        0x7fc0_0000 => "user-notif".into(),
        0x7ff0_0000 => "trace".into(),
        other => format!("action {other:#x}"),
    }
}

fn read_filters(tid: i32) -> Result<Vec<Vec<Insn>>, Blocked> {
    let mut out = Vec::new();
    for index in 0usize.. {
        // SAFETY: with a null buffer the kernel only returns the filter's length.
        let n = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid,
                index,
                std::ptr::null_mut::<Insn>(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                break; // past the oldest filter
            }
            return Err(Blocked::Unreadable(e));
        }
        let mut prog = vec![Insn::default(); n as usize];
        // SAFETY: prog has room for the n instructions the kernel reported.
        let r = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index, prog.as_mut_ptr()) };
        if r < 0 {
            return Err(Blocked::Unreadable(io::Error::last_os_error()));
        }
        out.push(prog);
    }
    Ok(out)
}

/// Runs one filter on `call`; returns its `SECCOMP_RET_*` value.
pub fn run(prog: &[Insn], call: &Call) -> Result<u32, String> {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&call.nr.to_le_bytes());
    data[4..8].copy_from_slice(&AUDIT_ARCH_X86_64.to_le_bytes());
    data[8..16].copy_from_slice(&call.ip.to_le_bytes());
    for (i, a) in call.args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let load = |k: u32| -> Result<u32, String> {
        let k = k as usize;
        data.get(k..k + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(|| format!("load at {k} outside seccomp_data"))
    };
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    // Classic BPF only jumps forward, so this ends within prog.len() steps.
    while let Some(&i) = prog.get(pc) {
        pc += 1;
        let k = i.k;
        let src = if i.code & 0x08 != 0 { x } else { k };
        match i.code & 0x07 {
            0x00 => {
                a = match i.code & 0xe0 {
                    0x00 => k,
                    0x20 => load(k)?,
                    0x60 => *mem.get(k as usize).ok_or("bad scratch slot")?,
                    0x80 => data.len() as u32,
                    m => return Err(format!("load mode {m:#x}")),
                }
            }
            0x01 => {
                x = match i.code & 0xe0 {
                    0x00 => k,
                    0x60 => *mem.get(k as usize).ok_or("bad scratch slot")?,
                    0x80 => data.len() as u32,
                    m => return Err(format!("ldx mode {m:#x}")),
                }
            }
            0x02 => *mem.get_mut(k as usize).ok_or("bad scratch slot")? = a,
            0x03 => *mem.get_mut(k as usize).ok_or("bad scratch slot")? = x,
            0x04 => {
                a = match i.code & 0xf0 {
                    0x00 => a.wrapping_add(src),
                    0x10 => a.wrapping_sub(src),
                    0x20 => a.wrapping_mul(src),
                    0x30 => a.checked_div(src).ok_or("division by zero")?,
                    0x40 => a | src,
                    0x50 => a & src,
                    0x60 => a.checked_shl(src).unwrap_or(0),
                    0x70 => a.checked_shr(src).unwrap_or(0),
                    0x80 => a.wrapping_neg(),
                    0x90 => a.checked_rem(src).ok_or("division by zero")?,
                    0xa0 => a ^ src,
                    op => return Err(format!("alu op {op:#x}")),
                }
            }
            0x05 => {
                let taken = match i.code & 0xf0 {
                    0x00 => {
                        pc += k as usize;
                        continue;
                    }
                    0x10 => a == src,
                    0x20 => a > src,
                    0x30 => a >= src,
                    0x40 => a & src != 0,
                    op => return Err(format!("jump op {op:#x}")),
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            0x06 => {
                return Ok(match i.code & 0x18 {
                    0x10 => a,
                    0x08 => x,
                    _ => k,
                })
            }
            _ => {
                if i.code & 0xf8 == 0x80 {
                    a = x; // txa
                } else {
                    x = a; // tax
                }
            }
        }
    }
    Err("the filter ran off its end".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stmt(code: u16, k: u32) -> Insn {
        Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }
    fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
        Insn {
            code: 0x15,
            jt,
            jf,
            k,
        }
    }

    fn call(nr: i32, prot: u64) -> Call {
        Call {
            name: "x",
            nr,
            ip: 0x7fff_0000_1000,
            args: [0, 0, prot, 0, 0, 0],
        }
    }

    /// Like a container profile: check the arch, refuse memfd_create with EPERM, kill on
    /// mprotect with PROT_EXEC, allow the rest.
    fn profile() -> Vec<Insn> {
        vec![
            stmt(0x20, 4),                      // ld [arch]
            jeq(AUDIT_ARCH_X86_64, 1, 0),       //
            stmt(0x06, 0),                      // ret kill-thread
            stmt(0x20, 0),                      // ld [nr]
            jeq(319, 0, 1),                     //
            stmt(0x06, 0x0005_0001),            // ret errno(EPERM)
            jeq(10, 0, 4),                      // mprotect?
            stmt(0x20, 32),                     // ld [args[2]] (low half)
            stmt(0x54, libc::PROT_EXEC as u32), // and #PROT_EXEC
            jeq(0, 1, 0),                       //
            stmt(0x06, 0x8000_0000),            // ret kill-process
            stmt(0x06, RET_ALLOW),              // ret allow
        ]
    }

    #[test]
    fn runs_a_container_like_profile() {
        let p = profile();
        assert_eq!(run(&p, &call(9, 3)), Ok(RET_ALLOW));
        assert_eq!(run(&p, &call(319, 0)), Ok(0x0005_0001));
        assert_eq!(run(&p, &call(10, 1)), Ok(RET_ALLOW));
        assert_eq!(run(&p, &call(10, 5)), Ok(0x8000_0000));
        assert_eq!(describe(0x0005_0001), "errno 1");
        assert_eq!(describe(0x8000_0000), "kill-process");
    }

    #[test]
    fn malformed_filters_are_errors() {
        assert!(run(&[stmt(0x20, 1000), stmt(0x06, RET_ALLOW)], &call(1, 0)).is_err());
        assert!(run(&[stmt(0x00, 0)], &call(1, 0)).is_err(), "no return");
    }

    #[test]
    fn our_own_process_has_no_filter() {
        let pid = std::process::id();
        if crate::clock::inject::status_field(pid, "Seccomp").as_deref() == Some("0") {
            // Nothing to read, nothing refused.
            assert!(check(pid, pid as i32, &[call(319, 0)]).is_ok());
        }
    }
}
