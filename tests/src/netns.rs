//! Named network namespaces and veth pairs between them.

use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{check, check_quietly, output_of, unique_name};

/// Prefix of every namespace the harness creates; [`crate::leftovers`] looks for it.
pub(crate) const NETNS_PREFIX: &str = "fault-t-";

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates `fault-t-<prefix>-<pid>-<n>` with its loopback up.
    pub fn new(prefix: &str) -> Self {
        let name = format!("{NETNS_PREFIX}{}", unique_name(prefix));
        check(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self {
            path: Path::new("/run/netns").join(&name),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount under /run/netns that holds the namespace.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n <name> <args>`; panics on failure, returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        check(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Makes `cmd` run inside this namespace (see [`enter_netns`]).
    pub fn exec<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        enter_netns(cmd, &self.path)
    }

    /// Runs `cmd` to completion inside this namespace; panics only if it cannot start.
    pub fn output(&self, mut cmd: Command) -> Output {
        output_of(self.exec(&mut cmd))
    }

    /// Runs `f` on a thread that has entered this namespace, so test code can open sockets
    /// in it directly. A panic in `f` propagates.
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = std::fs::File::open(&self.path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.path.display()));
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a valid namespace fd affects only this (fresh) thread.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert!(
                    rc == 0,
                    "setns into {}: {}",
                    self.name,
                    io::Error::last_os_error()
                );
                f()
            });
            match worker.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside keep the namespace itself alive, but the name goes away.
        check_quietly(Command::new("ip").args(["netns", "delete", &self.name]));
    }
}

/// Makes `cmd`, when spawned, enter the network namespace bound at `ns_path` before exec.
///
/// Unlike `ip netns exec`, this does not remount /sys, so the child still sees /sys/fs/bpf and
/// the cgroup hierarchy.
pub fn enter_netns<'c>(cmd: &'c mut Command, ns_path: &Path) -> &'c mut Command {
    let path = CString::new(ns_path.as_os_str().as_bytes()).expect("path without NUL");
    let hook = move || {
        // Between fork and exec only async-signal-safe calls are allowed: raw syscalls on the
        // pre-built path, and `last_os_error`, which does not allocate.
        // SAFETY: `path` is a valid C string owned by the closure.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is open; setns only changes this child's namespace.
        let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
        let err = io::Error::last_os_error();
        // SAFETY: fd is ours to close.
        unsafe { libc::close(fd) };
        if rc != 0 {
            return Err(err);
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls (see above).
    unsafe { cmd.pre_exec(hook) }
}

/// A veth pair with one end in each of two namespaces, addressed and up.
///
/// Deleting either namespace deletes the pair, so dropping this is a best-effort early cleanup.
pub struct VethPair {
    ns_a: String,
    ns_b: String,
    name_a: String,
    name_b: String,
    ip_a: IpAddr,
    ip_b: IpAddr,
    ip6_a: Option<IpAddr>,
    ip6_b: Option<IpAddr>,
}

impl VethPair {
    /// `addr_a`/`addr_b` are CIDR strings such as `"10.77.1.1/24"`. Interface names are
    /// `fv<n>a` and `fv<n>b`, unique within the test process.
    pub fn new(ns_a: &Netns, addr_a: &str, ns_b: &Netns, addr_b: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (name_a, name_b) = (format!("fv{n}a"), format!("fv{n}b"));
        // Created directly in their namespaces, so the names never meet the host's.
        ns_a.ip(&[
            "link", "add", &name_a, "type", "veth", "peer", "name", &name_b, "netns", &ns_b.name,
        ]);
        let pair = Self {
            ns_a: ns_a.name.clone(),
            ns_b: ns_b.name.clone(),
            ip_a: host_part(addr_a),
            ip_b: host_part(addr_b),
            ip6_a: None,
            ip6_b: None,
            name_a,
            name_b,
        };
        for (ns, dev, addr) in [(ns_a, &pair.name_a, addr_a), (ns_b, &pair.name_b, addr_b)] {
            ns.ip(&["addr", "add", addr, "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        pair
    }

    /// Adds IPv6 addresses (CIDR, e.g. `"fd77:1::1/64"`) to both ends, usable at once
    /// (duplicate address detection is skipped).
    pub fn with_ipv6(mut self, addr_a: &str, addr_b: &str) -> Self {
        for (ns, dev, addr) in [
            (&self.ns_a, &self.name_a, addr_a),
            (&self.ns_b, &self.name_b, addr_b),
        ] {
            check(Command::new("ip").args(["-n", ns, "addr", "add", addr, "dev", dev, "nodad"]));
        }
        self.ip6_a = Some(host_part(addr_a));
        self.ip6_b = Some(host_part(addr_b));
        self
    }

    /// Interface name in namespace A.
    pub fn name_a(&self) -> &str {
        &self.name_a
    }

    /// Interface name in namespace B.
    pub fn name_b(&self) -> &str {
        &self.name_b
    }

    /// Address of end A given to [`VethPair::new`], without the prefix length.
    pub fn ip_a(&self) -> IpAddr {
        self.ip_a
    }

    /// Address of end B given to [`VethPair::new`], without the prefix length.
    pub fn ip_b(&self) -> IpAddr {
        self.ip_b
    }

    /// IPv6 address of end A, if [`VethPair::with_ipv6`] added one.
    pub fn ip6_a(&self) -> Option<IpAddr> {
        self.ip6_a
    }

    /// IPv6 address of end B, if [`VethPair::with_ipv6`] added one.
    pub fn ip6_b(&self) -> Option<IpAddr> {
        self.ip6_b
    }

    /// Turns transmit checksum offload on or off on both ends (`ethtool -K <dev> tx on|off`).
    /// veth offloads by default, in which case a corrupted payload is delivered whatever its
    /// checksum says; with it off the receiver checks and drops bad checksums.
    pub fn set_tx_checksum_offload(&self, on: bool) {
        let state = if on { "on" } else { "off" };
        for (ns, dev) in [(&self.ns_a, &self.name_a), (&self.ns_b, &self.name_b)] {
            let mut cmd = Command::new("ethtool");
            cmd.args(["-K", dev, "tx", state]);
            enter_netns(&mut cmd, &Path::new("/run/netns").join(ns));
            check(&mut cmd);
        }
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Deleting either namespace deletes the pair: nothing to do if one is gone already.
        let run = Path::new("/run/netns");
        if run.join(&self.ns_a).exists() && run.join(&self.ns_b).exists() {
            check_quietly(Command::new("ip").args(["-n", &self.ns_a, "link", "del", &self.name_a]));
        }
    }
}

fn host_part(cidr: &str) -> IpAddr {
    let host = cidr.split('/').next().unwrap_or(cidr);
    host.parse()
        .unwrap_or_else(|e| panic!("`{cidr}` is not an address in CIDR form: {e}"))
}
