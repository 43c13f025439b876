//! The guest's kernel: Debian's own package, pinned, fetched once and kept unpacked in the
//! cache with an uncompressed image that qemu boots directly.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::{apt::Apt, find_program, HostTools};
use crate::cmd;

/// A kernel series pinned to one package build, so every run (and CI's cache key) boots the same
/// kernel. Debian removes superseded ABIs from its mirrors; when the pin is gone, the newest
/// `linux-image-<series>.0-*-amd64` on offer is used instead and the substitution is printed.
struct Pin {
    series: &'static str,
    abi: &'static str,
    version: &'static str,
    /// The Debian release it comes from, when it is not the host's (bookworm).
    suite: Option<&'static str>,
}

const PINS: &[Pin] = &[
    Pin {
        series: "6.1",
        abi: "6.1.0-56-amd64",
        version: "6.1.192-2",
        suite: None,
    },
    Pin {
        series: "5.10",
        abi: "5.10.0-46-amd64",
        version: "5.10.262-1",
        suite: Some("bullseye"),
    },
    Pin {
        series: "6.12",
        abi: "6.12.96+deb13-amd64",
        version: "6.12.96-1",
        suite: Some("trixie"),
    },
];

/// A prepared kernel: `dir` holds the package, its extracted tree, the boot image and the
/// initramfs.
pub(super) struct Kernel {
    pub(super) abi: String,
    pub(super) dir: PathBuf,
}

impl Kernel {
    /// The package's files, `lib/modules/<abi>` indexed by depmod.
    pub(super) fn tree(&self) -> PathBuf {
        self.dir.join("kernel")
    }
    /// Uncompressed ELF image: qemu boots it through its PVH entry point, which saves the
    /// guest 3 to 6 s of decompressing under TCG.
    pub(super) fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    pub(super) fn vmlinuz(&self) -> PathBuf {
        self.tree().join(format!("boot/vmlinuz-{}", self.abi))
    }
    pub(super) fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs.cpio")
    }
    pub(super) fn initramfs_key(&self) -> PathBuf {
        self.dir.join("initramfs.key")
    }
    /// Written last when the package has been unpacked; its content is the package version.
    fn ready_marker(&self) -> PathBuf {
        self.dir.join("ready")
    }
    fn is_ready(&self) -> bool {
        self.ready_marker().is_file()
    }
}

fn is_abi(s: &str) -> bool {
    // 6.1.0-56-amd64, or trixie's 6.12.96+deb13-amd64
    let Some(rest) = s.strip_suffix("-amd64") else {
        return false;
    };
    if let Some((release, deb)) = rest.split_once("+deb") {
        let numbers = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        return numbers(deb) && release.split('.').count() == 3 && release.split('.').all(numbers);
    }
    let Some((release, abi)) = rest.rsplit_once('-') else {
        return false;
    };
    !abi.is_empty()
        && abi.bytes().all(|b| b.is_ascii_digit())
        && release.split('.').count() == 3
        && release
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Which package to fetch: the pin, or what replaces it.
struct Choice {
    abi: String,
    /// `None`: apt's candidate.
    version: Option<String>,
}

/// Maps `--kernel` to a prepared kernel in the cache, consulting apt only when the cache does not
/// have the pinned (or named) kernel yet.
pub(super) fn resolve(tools: &HostTools, cache: &Path, wanted: &str) -> Result<Kernel> {
    let suite = PINS
        .iter()
        .find(|p| p.series == wanted || p.abi == wanted || series_of(wanted) == Some(p.series))
        .and_then(|p| p.suite);
    let (series, pinned) = if is_abi(wanted) {
        (
            None,
            Choice {
                abi: wanted.into(),
                version: None,
            },
        )
    } else if let Some(pin) = PINS.iter().find(|p| p.series == wanted) {
        (
            Some(pin.series),
            Choice {
                abi: pin.abi.into(),
                version: Some(pin.version.into()),
            },
        )
    } else {
        let known: Vec<&str> = PINS.iter().map(|p| p.series).collect();
        bail!(
            "unknown kernel `{wanted}`: use a series ({}) or a Debian ABI such as {}",
            known.join(", "),
            PINS[0].abi
        );
    };
    let cached = |abi: &str| Kernel {
        abi: abi.into(),
        dir: cache.join(abi),
    };
    if cached(&pinned.abi).is_ready() {
        return Ok(cached(&pinned.abi));
    }
    let apt = match suite {
        Some(suite) => Apt::release(cache, suite)?,
        None => Apt::host(),
    };

    // Not cached: ask apt, refreshing its index once when it knows nothing useful or when a
    // download fails (an index older than the mirror names files that are gone).
    let mut refreshed = false;
    loop {
        let choice = match choose(&apt, series, &pinned) {
            Some(choice) => choice,
            None if !refreshed => {
                apt.update()?;
                refreshed = true;
                continue;
            }
            None => match series {
                Some(series) => bail!(
                    "apt offers neither linux-image-{} nor any other linux-image-{series}.0-*-amd64",
                    pinned.abi
                ),
                None => bail!("apt does not offer linux-image-{}", pinned.abi),
            },
        };
        let kernel = cached(&choice.abi);
        if kernel.is_ready() {
            return Ok(kernel);
        }
        match fetch(&apt, tools, cache, &choice) {
            Ok(()) => return Ok(kernel),
            Err(err) if !refreshed => {
                eprintln!("vm: {err:#}; refreshing apt's index and retrying");
                apt.update()?;
                refreshed = true;
            }
            Err(err) => return Err(err),
        }
    }
}

/// The pinned package if apt can still fetch it, else the newest ABI of the series.
fn choose(apt: &Apt, series: Option<&str>, pinned: &Choice) -> Option<Choice> {
    let package = format!("linux-image-{}", pinned.abi);
    let versions = apt_versions(apt, &package);
    match &pinned.version {
        Some(v) if versions.contains(v) => {
            return Some(Choice {
                abi: pinned.abi.clone(),
                version: Some(v.clone()),
            })
        }
        None if !versions.is_empty() => {
            return Some(Choice {
                abi: pinned.abi.clone(),
                version: None,
            })
        }
        _ => {}
    }
    let series = series?;
    let newest = newest_abi(apt, series)?;
    let candidate = apt_versions(apt, &format!("linux-image-{newest}"))
        .into_iter()
        .next()
        .unwrap_or_else(|| "?".into());
    let was = match &pinned.version {
        Some(v) => format!("{package} {v}"),
        None => package,
    };
    eprintln!(
        "vm: the pinned {was} is no longer offered by apt; using linux-image-{newest} {candidate} instead"
    );
    Some(Choice {
        abi: newest,
        version: None,
    })
}

/// Versions apt can download, candidate first (`apt-cache madison` lists newest first).
fn apt_versions(apt: &Apt, package: &str) -> Vec<String> {
    let out =
        cmd::stdout_of(&mut apt.command("apt-cache", ["madison", package])).unwrap_or_default();
    // "linux-image-6.1.0-56-amd64 | 6.1.192-2 | http://deb.debian.org/... Packages"
    out.lines()
        .filter_map(|line| {
            let mut fields = line.split('|').map(str::trim);
            (fields.next()? == package).then(|| fields.next().map(String::from))?
        })
        .collect()
}

/// The newest ABI of `series` among apt's linux-image packages: `<series>.0-N-amd64`
/// (bullseye, bookworm) or `<series>.N+debM-amd64` (trixie), N compared as a number.
fn newest_abi(apt: &Apt, series: &str) -> Option<String> {
    let prefix = format!("linux-image-{series}.");
    let pattern = format!("^{}", prefix.replace('.', "\\."));
    let out = cmd::stdout_of(&mut apt.command("apt-cache", ["search", "--names-only", &pattern]))
        .unwrap_or_default();
    out.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|name| {
            let abi = name.strip_prefix("linux-image-")?;
            let rest = name.strip_prefix(&prefix)?.strip_suffix("-amd64")?;
            let n = match rest.strip_prefix("0-") {
                Some(n) => n,
                None => rest.split_once("+deb")?.0,
            };
            Some((n.parse::<u32>().ok()?, abi.to_string()))
        })
        .filter(|(_, abi)| is_abi(abi))
        .max()
        .map(|(_, abi)| abi)
}

/// The series (`6.12`) of an ABI (`6.12.96+deb13-amd64`).
fn series_of(abi: &str) -> Option<&str> {
    let mut dots = abi.match_indices('.');
    let (second, _) = dots.nth(1)?;
    Some(&abi[..second])
}

/// Downloads and unpacks the package into `<cache>/<abi>`, building it aside and renaming it
/// into place so an interrupted or concurrent run never leaves a half-made directory behind.
fn fetch(apt: &Apt, tools: &HostTools, cache: &Path, choice: &Choice) -> Result<()> {
    let package = match &choice.version {
        Some(v) => format!("linux-image-{}={v}", choice.abi),
        None => format!("linux-image-{}", choice.abi),
    };
    eprintln!(
        "vm: fetching {package} (once; cached under {})",
        cache.display()
    );
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let partial = cache.join(format!(".{}.partial-{}", choice.abi, std::process::id()));
    let _cleanup = RemoveOnDrop(partial.clone());
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    fs::create_dir_all(&partial)?;
    let kernel = Kernel {
        abi: choice.abi.clone(),
        dir: partial.clone(),
    };

    // Root's apt downloads as the _apt user, who cannot write here; the file is a plain
    // download, so there is nothing to gain from that sandbox.
    let mut download = apt.command("apt-get", ["-q", "download", &package]);
    cmd::run(download.current_dir(&partial).stdout(Stdio::null()))?;
    let deb = fs::read_dir(&partial)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension() == Some(OsStr::new("deb")))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;

    let tree = kernel.tree();
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    // trixie's packages put the modules under usr/ (a merged /usr); the rest of this code,
    // depmod -b included, looks in lib/.
    if !tree.join("lib").exists() && tree.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", tree.join("lib"))
            .context("linking lib to usr/lib in the kernel's tree")?;
    }
    // The package leaves modules.dep to its postinst; the guest's modprobe needs it.
    cmd::run(
        Command::new(&tools.depmod)
            .arg("-b")
            .arg(&tree)
            .arg(&choice.abi),
    )?;
    extract_vmlinux(&kernel.vmlinuz(), &kernel.vmlinux())?;

    let version = deb
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('_').nth(1))
        .unwrap_or("?")
        .to_string();
    fs::write(kernel.ready_marker(), format!("{version}\n"))?;

    let dest = Kernel {
        abi: choice.abi.clone(),
        dir: cache.join(&choice.abi),
    };
    if dest.dir.exists() && !dest.is_ready() {
        // Not made by this code (a directory only gets its name when complete).
        fs::remove_dir_all(&dest.dir)
            .with_context(|| format!("removing the incomplete {}", dest.dir.display()))?;
    }
    if let Err(err) = fs::rename(&partial, &dest.dir) {
        // Another run finished first: use its copy.
        if !dest.is_ready() {
            return Err(err)
                .with_context(|| format!("moving the kernel to {}", dest.dir.display()));
        }
    }
    Ok(())
}

/// The compressed payload of a bzImage is one of these; the first that decompresses to an ELF
/// file is vmlinux. Debian's 6.1 uses xz.
const PAYLOADS: &[(&[u8], &str)] = &[
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x8b\x08\x00", "gzip"),
];

/// Writes the uncompressed ELF kernel inside a bzImage to `dest`. Without one (no decompressor,
/// or none of the payloads is ELF) nothing is written and the bzImage is booted instead.
fn extract_vmlinux(vmlinuz: &Path, dest: &Path) -> Result<()> {
    let image = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    for (magic, tool) in PAYLOADS {
        let Some(program) = find_program(tool) else {
            continue;
        };
        let starts = image
            .windows(magic.len())
            .enumerate()
            .filter(|(_, w)| w == magic)
            .map(|(i, _)| i)
            .take(4);
        for start in starts {
            let out = File::create(dest)?;
            let mut child = Command::new(&program)
                .args(["-dc"])
                .stdin(Stdio::piped())
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {tool}"))?;
            let mut stdin = child.stdin.take().expect("piped");
            // The payload is followed by the rest of the bzImage, so the decompressor complains
            // and may stop reading early: its exit status and a broken pipe say nothing; the
            // ELF check below decides.
            let _ = stdin.write_all(&image[start..]);
            drop(stdin);
            child.wait()?;
            let mut head = [0u8; 4];
            let is_elf = File::open(dest)
                .and_then(|mut f| f.read_exact(&mut head))
                .is_ok()
                && head == *b"\x7fELF";
            if is_elf {
                return Ok(());
            }
        }
    }
    let _ = fs::remove_file(dest);
    eprintln!(
        "vm: no ELF kernel found inside {}; booting the compressed image (slower)",
        vmlinuz.display()
    );
    Ok(())
}

/// A directory removed (if still there) when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_debian_abis() {
        assert!(is_abi("6.1.0-56-amd64"));
        assert!(!is_abi("6.1"));
        assert!(!is_abi("6.1.0-56-arm64"));
        assert!(!is_abi("6.1.0--amd64"));
        assert!(is_abi("6.12.96+deb13-amd64"));
        assert!(!is_abi("6.12+deb13-amd64"));
        assert_eq!(series_of("6.12.96+deb13-amd64"), Some("6.12"));
        assert_eq!(series_of("5.10.0-46-amd64"), Some("5.10"));
    }
}
