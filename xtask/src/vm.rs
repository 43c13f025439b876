//! `cargo xtask vm [--kernel 6.1|5.10|6.12] -- CMD ARGS...`: runs a command as root in a
//! qemu guest that boots one of Debian's own kernels (bookworm's 6.1 by default, bullseye's
//! 5.10, trixie's 6.12), so the binaries built here can be tried on a kernel with clsact (no
//! tcx), sch_fq, sch_netem, kprobes and no lockdown, or with tcx and fq both (6.12).
//!
//! The pieces:
//! - [`kernel`]: Debian's `linux-image-<abi>` package, fetched with `apt-get download` (never
//!   installed on the host) and cached unpacked under `target/vm/<abi>/`, so a second run boots
//!   at once and CI can cache the directory.
//! - [`initramfs`]: busybox, the modules, and the init that builds the guest's root: the host's
//!   `/`, read-only over 9p under a tmpfs overlay. The guest sees the workspace, `target/` and
//!   the host's tools at the same paths, and can write (to RAM).
//! - This file: the command travels through a second 9p share, the job directory, as a shell
//!   script; the guest writes its stdout, stderr and exit code back there, and the host streams
//!   both outputs while the guest runs. Kernel messages stay on the serial console, which is
//!   shown only when the guest fails.
//!
//! qemu runs with TCG only. On the machines fault is developed on, `/dev/kvm` exists but KVM
//! fails on MSRs and instruction emulation, and tools that pick KVM when the device is there
//! break; TCG boots this guest in about 3 s.

mod apt;
mod initramfs;
mod kernel;

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{cmd, setup};
use kernel::Kernel;

/// The kernel series `--kernel` defaults to.
pub const DEFAULT_KERNEL: &str = "6.1";

/// Defaults for `cargo xtask vm` and [`run_in_guest`].
pub const DEFAULT_MEM: &str = "2G";
pub const DEFAULT_CPUS: u32 = 2;
/// Long enough for the whole privileged suite under TCG; a hung guest is killed after it.
pub const DEFAULT_TIMEOUT_SECS: u64 = 1800;

/// The 9p mount tags the guest's init looks for.
const TAG_ROOT: &str = "fault-root";
const TAG_JOB: &str = "fault-job";

/// `cargo xtask vm` as typed.
pub struct Options {
    pub kernel: String,
    pub mem: String,
    pub cpus: u32,
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kernel: DEFAULT_KERNEL.into(),
            mem: DEFAULT_MEM.into(),
            cpus: DEFAULT_CPUS,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        }
    }
}

/// `cargo xtask vm`: exits with the command's exit code.
pub fn run(root: &Path, options: &Options, command: &[String]) -> Result<()> {
    if command.is_empty() {
        bail!("nothing to run: `cargo xtask vm [OPTIONS] -- CMD ARGS...`");
    }
    let code = run_with(root, options, command)?;
    std::process::exit(code)
}

/// Runs `cmd` as root in a guest booting `kernel` (a series such as `6.1`, or an exact ABI such
/// as `6.1.0-56-amd64`), in the current directory, with its stdout and stderr streamed to ours.
/// Returns its exit code; an error means the guest could not be prepared, booted or heard from.
pub fn run_in_guest(root: &Path, kernel: &str, cmd: &[String]) -> Result<i32> {
    let options = Options {
        kernel: kernel.into(),
        ..Options::default()
    };
    run_with(root, &options, cmd)
}

fn run_with(root: &Path, options: &Options, command: &[String]) -> Result<i32> {
    let tools = HostTools::find()?;
    let cache = crate::target_dir(root).join("vm");
    let started = Instant::now();
    let kernel = kernel::resolve(&tools, &cache, &options.kernel)?;
    initramfs::ensure(&tools, &kernel)?;
    // Only a run that fetched or rebuilt something takes long enough to mention.
    let prepared = Some(started.elapsed()).filter(|t| *t > Duration::from_secs(1));
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let job = Job::create(&kernel, &cwd, command)?;
    let outcome = boot(&tools, &kernel, &job, options)?;

    let mut timing = format!(
        "vm: {} (tcg, {} cpus, {}): boot {:.1} s",
        kernel.abi,
        options.cpus,
        options.mem,
        outcome.boot.as_secs_f64()
    );
    if let Some(uptime) = outcome.guest_uptime {
        timing += &format!(" (kernel up {uptime:.1} s)");
    }
    timing += &format!(
        ", command {:.1} s",
        (outcome.total - outcome.boot).as_secs_f64()
    );
    if let Some(prepared) = prepared {
        timing += &format!(
            ", preparing {:.1} s (cached in {})",
            prepared.as_secs_f64(),
            kernel.dir.display()
        );
    }
    eprintln!("{timing}");
    Ok(outcome.code)
}

// ---- host tools -----------------------------------------------------------------------------

/// The host programs the VM needs, by full path (depmod and modprobe live in /usr/sbin, which
/// a non-root PATH may lack).
struct HostTools {
    qemu: PathBuf,
    depmod: PathBuf,
    modprobe: PathBuf,
}

/// Program, and the Debian package that `cargo xtask setup` installs it from.
const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("depmod", "kmod"),
    ("modprobe", "kmod"),
    ("xz", "xz-utils"),
    ("dpkg-deb", "dpkg"),
    ("apt-get", "apt"),
];

/// Static, because nothing else is in the initramfs (package busybox-static).
const BUSYBOX: &str = "/bin/busybox";

impl HostTools {
    fn find() -> Result<Self> {
        if Self::missing().is_some() {
            setup::ensure()?;
        }
        if let Some(missing) = Self::missing() {
            bail!("still missing after `cargo xtask setup`: {missing}");
        }
        if !is_static_elf(Path::new(BUSYBOX))? {
            bail!("{BUSYBOX} is dynamically linked; the initramfs needs busybox-static");
        }
        let path = |name: &str| find_program(name).expect("checked by missing()");
        Ok(Self {
            qemu: path("qemu-system-x86_64"),
            depmod: path("depmod"),
            modprobe: path("modprobe"),
        })
    }

    fn missing() -> Option<String> {
        let mut missing: Vec<String> = TOOLS
            .iter()
            .filter(|(program, _)| find_program(program).is_none())
            .map(|(program, package)| format!("{program} (package {package})"))
            .collect();
        if !Path::new(BUSYBOX).exists() {
            missing.push(format!("{BUSYBOX} (package busybox-static)"));
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// True for an ELF file without a PT_INTERP program header, that is, without a dynamic loader.
fn is_static_elf(path: &Path) -> Result<bool> {
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // ELF64 little-endian only: the host is x86_64.
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    const PT_INTERP: u32 = 3;
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{} has a truncated ELF header", path.display());
    };
    let interp = (0..usize::from(phnum))
        .filter_map(|i| u32_at(phoff as usize + i * usize::from(phentsize)))
        .any(|p_type| p_type == PT_INTERP);
    Ok(!interp)
}

// ---- one run --------------------------------------------------------------------------------

/// A job directory: `share/` is the guest's view (command in, output out), the logs stay
/// beside it. Removed when dropped.
struct Job {
    dir: PathBuf,
}

impl Job {
    fn create(kernel: &Kernel, cwd: &Path, command: &[String]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("fault-vm-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        let job = Self { dir };
        fs::create_dir_all(job.share())
            .with_context(|| format!("creating {}", job.dir.display()))?;
        let tree = kernel.tree();
        let mut conf = b"KERNEL_ROOT=".to_vec();
        conf.extend(shell_quote(tree.as_os_str()));
        conf.push(b'\n');
        fs::write(job.share().join("guest.conf"), conf)?;
        fs::write(job.share().join("cmd.sh"), command_script(cwd, command))?;
        Ok(job)
    }
    fn share(&self) -> PathBuf {
        self.dir.join("share")
    }
    fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("vm: cannot remove {}: {err}", self.dir.display());
        }
    }
}

/// Host variables the guest command inherits: Rust's and cargo's own, fault's, and PATH (the
/// guest's root is the host's, so the same directories exist there).
fn forwarded(name: &str) -> bool {
    name == "PATH"
        || ["RUST", "CARGO", "FAULT_"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// The script the guest runs: environment, directory, then the command itself (`exec`, so its
/// exit status is the script's). FAULT_IN_VM=1 lets a test know where it runs.
fn command_script(cwd: &Path, command: &[String]) -> Vec<u8> {
    let mut s = b"# Written by `cargo xtask vm`.\n".to_vec();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let identifier = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if identifier && forwarded(name) && name != "FAULT_IN_VM" {
            s.extend(format!("export {name}=").as_bytes());
            s.extend(shell_quote(&value));
            s.push(b'\n');
        }
    }
    s.extend(b"export FAULT_IN_VM=1\n");
    // The guest sees the host's directories (/tmp included: CI may clone there), with its
    // writes kept in the overlay's tmpfs.
    let dir = shell_quote(cwd.as_os_str());
    s.extend(b"if ! cd ");
    s.extend(&dir);
    s.extend(b" 2>/dev/null; then\n");
    s.extend(b"    printf 'vm: %s does not exist in the guest; running in /\\n' ");
    s.extend(&dir);
    s.extend(b" >&2\n    cd /\nfi\nexec");
    for arg in command {
        s.push(b' ');
        s.extend(shell_quote(OsStr::new(arg)));
    }
    s.push(b'\n');
    s
}

/// Single-quoted for sh: a quote inside becomes '\''.
fn shell_quote(s: &OsStr) -> Vec<u8> {
    let mut out = vec![b'\''];
    for &b in s.as_bytes() {
        if b == b'\'' {
            out.extend(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

struct Outcome {
    code: i32,
    /// From qemu's start until the guest began the command.
    boot: Duration,
    /// The guest's /proc/uptime when it began the command.
    guest_uptime: Option<f64>,
    total: Duration,
}

fn boot(tools: &HostTools, kernel: &Kernel, job: &Job, options: &Options) -> Result<Outcome> {
    let image = if kernel.vmlinux().is_file() {
        kernel.vmlinux()
    } else {
        kernel.vmlinuz()
    };
    let mut serial = b"file:".to_vec();
    serial.extend(job.console_log().as_os_str().as_bytes());
    // multidevs=remap: the host's / spans several filesystems whose inode numbers would
    // otherwise collide in the guest.
    let root_fs = "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap";
    let mut job_fs = b"local,id=job,security_model=none,path=".to_vec();
    // qemu's option syntax escapes a comma by doubling it.
    for &b in job.share().as_os_str().as_bytes() {
        if b == b',' {
            job_fs.push(b',');
        }
        job_fs.push(b);
    }
    let qemu_log = File::create(job.qemu_log())?;

    let mut qemu = Command::new(&tools.qemu);
    qemu.args(["-accel", "tcg", "-cpu", "max"])
        .args(["-m", &options.mem, "-smp", &options.cpus.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(OsStr::from_bytes(&serial))
        .arg("-kernel")
        .arg(&image)
        .arg("-initrd")
        .arg(kernel.initramfs())
        // Kernel messages go to the serial log, which is only shown on failure; loglevel 5
        // keeps warnings and the call traces of a lockup or oops (printed at the default
        // level, 4) and leaves out notices and information.
        .args(["-append", "console=ttyS0 quiet loglevel=5 panic=-1"])
        .args(["-fsdev", root_fs])
        .args([
            "-device",
            &format!("virtio-9p-pci,fsdev=root,mount_tag={TAG_ROOT}"),
        ])
        .arg("-fsdev")
        .arg(OsStr::from_bytes(&job_fs))
        .args([
            "-device",
            &format!("virtio-9p-pci,fsdev=job,mount_tag={TAG_JOB}"),
        ])
        .stdin(Stdio::null())
        .stdout(qemu_log.try_clone()?)
        .stderr(qemu_log);

    let started = Instant::now();
    let mut child = KillOnDrop(
        qemu.spawn()
            .with_context(|| format!("starting `{}`", cmd::display(&qemu)))?,
    );
    let share = job.share();
    let mut stdout = Tail::new(share.join("stdout"));
    let mut stderr = Tail::new(share.join("stderr"));
    let mut boot = None;
    let status = loop {
        let exited = child.0.try_wait()?;
        stdout.pump(&mut std::io::stdout())?;
        stderr.pump(&mut std::io::stderr())?;
        if boot.is_none() && share.join("started").exists() {
            boot = Some(started.elapsed());
        }
        if let Some(status) = exited {
            break status;
        }
        if started.elapsed() > options.timeout {
            drop(child);
            show_logs(job);
            bail!(
                "the guest did not finish within {} s (qemu killed)",
                options.timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let total = started.elapsed();
    // "12.34 5.67": seconds since the guest's kernel started, then idle time.
    let guest_uptime = fs::read_to_string(share.join("started"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    let rc = fs::read_to_string(share.join("rc")).ok();
    match rc.as_deref().map(str::trim).map(str::parse::<i32>) {
        Some(Ok(code)) => Ok(Outcome {
            code,
            boot: boot.unwrap_or(total),
            guest_uptime,
            total,
        }),
        _ => {
            show_logs(job);
            bail!("the guest reported no exit code (qemu: {status})")
        }
    }
}

/// qemu, killed if we stop waiting for it (timeout, or an error such as a closed stdout).
/// A child process killed (and reaped) when this goes out of scope, unless it has exited.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The end of the serial console and qemu's own messages, for a guest that failed.
fn show_logs(job: &Job) {
    for (what, path) in [
        ("serial console", job.console_log()),
        ("qemu", job.qemu_log()),
    ] {
        let text = fs::read_to_string(&path).unwrap_or_default();
        if text.trim().is_empty() {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(60);
        // The first kernel bug report (a lockup, an oops) with its call trace, if the tail
        // has moved past it.
        if let Some(bug) = lines[..start].iter().position(|l| l.contains("BUG:")) {
            let report = &lines[bug..(bug + 60).min(start)];
            eprintln!("vm: --- {what} (the first bug report) ---");
            for line in report {
                eprintln!("{line}");
            }
        }
        let tail = &lines[start..];
        eprintln!("vm: --- {what} (last {} lines) ---", tail.len());
        for line in tail {
            eprintln!("{line}");
        }
    }
}

/// Follows a file the guest appends to, copying what is new.
struct Tail {
    path: PathBuf,
    file: Option<File>,
    offset: u64,
}

impl Tail {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            offset: 0,
        }
    }

    fn pump(&mut self, to: &mut dyn Write) -> Result<()> {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut new = Vec::new();
        file.read_to_end(&mut new)?;
        if !new.is_empty() {
            self.offset += new.len() as u64;
            to.write_all(&new)?;
            to.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_sh() {
        assert_eq!(shell_quote(OsStr::new("a b")), b"'a b'");
        assert_eq!(shell_quote(OsStr::new("it's")), b"'it'\\''s'");
    }
}
