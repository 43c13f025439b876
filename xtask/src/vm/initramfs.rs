//! The guest's initramfs: static busybox, the kernel modules the guest needs (with their
//! dependencies) and [`INIT`], which assembles the root filesystem and starts [`RUNNER`].

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{kernel::Kernel, HostTools, BUSYBOX, TAG_JOB, TAG_ROOT};
use crate::cmd;

/// Loaded by the initramfs, each after its dependencies. The first four mount the root; the
/// rest are what the privileged tests use, loaded up front so no test depends on autoloading.
/// Debian builds all of them as modules; one that is built in is simply skipped.
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "veth",
    "sch_ingress", // clsact
    "sch_fq",
    "sch_netem",
    "cls_bpf",
    "act_bpf",
];

/// PID 1 of the initramfs: loads the modules, builds the guest's root filesystem (the host's
/// root over 9p, read-only, under a tmpfs overlay), mounts the job share and the kernel
/// filesystems into it, and hands over to [`RUNNER`] inside that root.
const INIT: &str = r#"#!/bin/busybox sh
# Written by `cargo xtask vm` (xtask/src/vm/initramfs.rs).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# A guest that cannot start the job powers off; the host then shows this console.
give_up() {
    echo "fault-vm init: $*"
    poweroff -f
}

while read -r module; do
    insmod "/modules/$module" || echo "fault-vm init: insmod $module failed"
done </modules/order

p9="trans=virtio,version=9p2000.L,msize=512000"
mount -t 9p -o "$p9,ro,cache=loose" @TAG_ROOT@ /lower || give_up "cannot mount the host's root over 9p"
mount -t tmpfs -o mode=0755 overlay-rw /upper
mkdir /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot ||
    give_up "cannot mount the overlay root"

R=/newroot
mount -t tmpfs -o mode=0755 tmpfs $R/run
mkdir -p $R/run/fault-vm/job
mount -t 9p -o "$p9" @TAG_JOB@ $R/run/fault-vm/job || give_up "cannot mount the job share"
# Sets KERNEL_ROOT: where the host extracted this kernel's package (a host path, so it is
# visible under $R). Read per job, so the cached initramfs survives a moved workspace.
. $R/run/fault-vm/job/guest.conf

kver=$(uname -r)
mkdir -p $R/lib/modules/$kver
mount --bind "$R$KERNEL_ROOT/lib/modules/$kver" $R/lib/modules/$kver
for file in config System.map; do
    [ -e "$R$KERNEL_ROOT/boot/$file-$kver" ] && ln -sf "$KERNEL_ROOT/boot/$file-$kver" $R/boot/
done

mount --move /proc $R/proc
mount --move /sys $R/sys
mount --move /dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
mount -t bpf -o mode=0700 bpf $R/sys/fs/bpf
mount -t tracefs tracefs $R/sys/kernel/tracing
mount -t debugfs debugfs $R/sys/kernel/debug
mount -t securityfs securityfs $R/sys/kernel/security
ip link set lo up
hostname fault-vm

# switch_root empties the initramfs, so what the runner needs goes to the new root's /run.
cp /bin/busybox /runner $R/run/fault-vm/
exec switch_root $R /run/fault-vm/busybox sh /run/fault-vm/runner
"#;

/// PID 1 of the guest's real root: runs the job with its output in the job share, records the
/// exit code there and powers off.
const RUNNER: &str = r#"# Written by `cargo xtask vm` (xtask/src/vm/initramfs.rs).
bb=/run/fault-vm/busybox
job=/run/fault-vm/job
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
cd /
# The host takes the appearance of this file as the end of the boot.
$bb cat /proc/uptime >$job/started
/bin/sh $job/cmd.sh </dev/null >$job/stdout 2>$job/stderr
echo $? >$job/rc.part
$bb mv $job/rc.part $job/rc
$bb sync
$bb poweroff -f
"#;

/// Builds the initramfs unless the cached one was made from the same scripts and module list.
pub(super) fn ensure(tools: &HostTools, kernel: &Kernel) -> Result<()> {
    let busybox = fs::read(BUSYBOX).with_context(|| format!("reading {BUSYBOX}"))?;
    let init = INIT
        .replace("@TAG_ROOT@", TAG_ROOT)
        .replace("@TAG_JOB@", TAG_JOB);
    let key = format!(
        "{:016x}\n",
        fingerprint(&[
            init.as_bytes(),
            RUNNER.as_bytes(),
            MODULES.join(" ").as_bytes(),
            &busybox,
        ])
    );
    if kernel.initramfs().is_file()
        && fs::read_to_string(kernel.initramfs_key()).is_ok_and(|k| k == key)
    {
        return Ok(());
    }
    let mut cpio = Cpio::default();
    for dir in [
        "bin", "dev", "proc", "sys", "modules", "lower", "upper", "newroot",
    ] {
        cpio.dir(dir);
    }
    // PID 1's stdin, stdout and stderr before devtmpfs is mounted.
    cpio.char_device("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, init.as_bytes());
    cpio.file("runner", 0o644, RUNNER.as_bytes());

    let mut order = String::new();
    for path in module_files(tools, kernel)? {
        let (stem, bytes) = read_module(&path)?;
        cpio.file(&format!("modules/{stem}.ko"), 0o644, &bytes);
        order.push_str(&format!("{stem}.ko\n"));
    }
    cpio.file("modules/order", 0o644, order.as_bytes());

    let tmp = kernel
        .dir
        .join(format!(".initramfs.{}", std::process::id()));
    fs::write(&tmp, cpio.finish())?;
    fs::rename(&tmp, kernel.initramfs())?;
    fs::write(kernel.initramfs_key(), key)?;
    Ok(())
}

/// The module files to load, dependencies first, each once.
fn module_files(tools: &HostTools, kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for module in MODULES {
        let mut c = Command::new(&tools.modprobe);
        c.arg("-d")
            .arg(kernel.tree())
            .args(["-S", &kernel.abi, "--show-depends", module]);
        let out = cmd::stdout_of(&mut c).with_context(|| {
            format!(
                "module {module} not found for {} (`{}`)",
                kernel.abi,
                cmd::display(&c)
            )
        })?;
        // "insmod /path/to/x.ko [params]" or "builtin x"
        for line in out.lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                let path = PathBuf::from(path.split_whitespace().next().unwrap_or_default());
                if seen.insert(path.clone()) {
                    files.push(path);
                }
            }
        }
    }
    Ok(files)
}

/// A module's name and its uncompressed bytes (busybox's insmod may not decompress).
fn read_module(path: &Path) -> Result<(String, Vec<u8>)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("odd module path {}", path.display()))?;
    let decompressors = [(".ko.xz", "xz"), (".ko.zst", "zstd"), (".ko.gz", "gzip")];
    if let Some(stem) = name.strip_suffix(".ko") {
        return Ok((stem.into(), fs::read(path)?));
    }
    for (suffix, tool) in decompressors {
        if let Some(stem) = name.strip_suffix(suffix) {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("starting {tool} for {}", path.display()))?;
            if !out.status.success() {
                bail!("{tool} -dc {} failed", path.display());
            }
            return Ok((stem.into(), out.stdout));
        }
    }
    bail!("unknown module file type: {}", path.display())
}

/// FNV-1a: stable across toolchains, unlike std's hasher, so the cache key stays put.
fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&[0u8]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// An uncompressed cpio archive in the "newc" format the kernel unpacks into its rootfs. Built
/// here rather than with cpio(1) so that a device node can be included without mknod and root.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn dir(&mut self, path: &str) {
        self.entry(path, 0o040_755, (0, 0), &[]);
    }
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, 0o100_000 | mode, (0, 0), data);
    }
    fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.entry(path, 0o020_600, (major, minor), &[]);
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.inode += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let name_size = path.len() + 1;
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the archive is reproducible
            data.len() as u32,
            0, // device of the archive's own files: irrelevant
            0,
            rdev.0,
            rdev.1,
            name_size as u32,
            0, // checksum, unused by "newc"
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    /// Header plus name, and data, each end on a 4-byte boundary.
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_end_with_the_trailer() {
        let mut cpio = Cpio::default();
        cpio.file("init", 0o755, b"#!/bin/sh\n");
        let out = cpio.finish();
        assert!(out.len().is_multiple_of(4));
        assert!(out.starts_with(b"070701"));
        let trailer = out
            .windows(10)
            .position(|w| w == b"TRAILER!!!")
            .expect("trailer");
        assert_eq!(
            (trailer - 110) % 4,
            0,
            "the trailer's header starts aligned"
        );
    }
}
