//! tcx or clsact: decided by asking the kernel, not by its version (backports and
//! distribution kernels make a version a poor guide).

use serde::{Deserialize, Serialize};

/// How the egress programs are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TcMode {
    /// tcx links (Linux 6.6+): they end with fault's file descriptors.
    Tcx,
    /// cls_bpf filters on a clsact qdisc: they outlive fault, so the state file records them.
    Clsact,
}

impl TcMode {
    /// `forced`, else tcx where the kernel has it.
    pub fn choose(forced: Option<TcMode>) -> TcMode {
        match forced {
            Some(mode) => mode,
            None if tcx_supported() => TcMode::Tcx,
            None => TcMode::Clsact,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TcMode::Tcx => "tcx",
            TcMode::Clsact => "clsact",
        }
    }
}

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;

/// Whether the kernel knows the tcx attach point: a query of loopback's tcx ingress
/// succeeds (with no programs) where it does, and fails with EINVAL where the attach type is
/// unknown. Loopback exists in every namespace, with ifindex 1.
fn tcx_supported() -> bool {
    // union bpf_attr's query member: target_ifindex, attach_type, query_flags,
    // attach_flags, prog_ids, prog_cnt, ... (the rest stays zero).
    let mut attr = [0u32; 16];
    attr[0] = 1;
    attr[1] = BPF_TCX_INGRESS;
    // SAFETY: attr is a zeroed bpf_attr of the size passed; with prog_ids null the kernel
    // only writes the program count into it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_mode_wins() {
        assert_eq!(TcMode::choose(Some(TcMode::Clsact)), TcMode::Clsact);
        assert_eq!(TcMode::choose(Some(TcMode::Tcx)), TcMode::Tcx);
    }

    /// The probe agrees with what the kernel release says on the kernels this project
    /// runs on (tcx arrived in 6.6); it needs CAP_BPF, so it says why when it cannot ask.
    #[test]
    fn probe_matches_the_kernel() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: querying BPF attach points needs root");
            return;
        }
        let release = nix::sys::utsname::uname().unwrap();
        let release = release.release().to_string_lossy().into_owned();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next().unwrap().parse().unwrap();
        let minor: u32 = parts.next().unwrap().parse().unwrap();
        assert_eq!(
            tcx_supported(),
            (major, minor) >= (6, 6),
            "kernel {release}"
        );
    }
}
