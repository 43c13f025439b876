//! An OCI image of `fault agent` from a built binary, with no registry and no Dockerfile: a
//! root filesystem holding the binary, the shared objects `ldd` names and the dynamic loader,
//! tarred and handed to `podman import` with the entrypoint and command set.
//!
//! Compiled into xtask (`cargo xtask image`) and, through `#[path]`, into
//! tests/tests/deploy.rs, so that the test builds its image the same way without a nested
//! cargo (which would wait on the lock of the cargo running the tests). It keeps to std and
//! anyhow, which both crates have.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context, Result};

/// The image's name without its tag; the tag defaults to the binary's version.
pub const REPOSITORY: &str = "localhost/fault-agent";

/// Where the binary sits in the image.
const ENTRYPOINT: &str = "/usr/local/bin/fault";

/// The default command, in the JSON form of a Dockerfile's CMD: the agent on the directory
/// the DaemonSet mounts its ConfigMap at (deploy/kubernetes/daemonset.yaml).
const CMD: &str = r#"["agent","--dir","/etc/fault/experiments"]"#;

/// `REPOSITORY:<version>`, the version from `binary --version` ("fault 0.1.0"), so that the
/// tag names what the image holds.
pub fn default_tag(binary: &Path) -> Result<String> {
    let out = run(Command::new(binary).arg("--version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        ["fault", version] => Ok(format!("{REPOSITORY}:{version}")),
        _ => bail!(
            "expected `{} --version` to print `fault VERSION`, got {text:?}",
            binary.display()
        ),
    }
}

/// Builds the image `tag` (replacing one of that name) from `binary`; returns the image id.
pub fn build(binary: &Path, tag: &str) -> Result<String> {
    let scratch = Scratch::new()?;
    let rootfs = scratch.0.join("rootfs");
    for dir in ["usr/local/bin", "etc", "proc", "sys", "dev", "run"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    let dest = rootfs.join(ENTRYPOINT.trim_start_matches('/'));
    fs::copy(binary, &dest).with_context(|| format!("copying {}", binary.display()))?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))?;
    for lib in shared_objects(binary)? {
        let dest = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        fs::create_dir_all(dest.parent().expect("a library path has a parent"))?;
        // Follows symbolic links: the loader's path is usually one.
        fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }

    let tarball = scratch.0.join("rootfs.tar");
    let mut tar = Command::new("tar");
    tar.args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tarball)
        .arg(".");
    run(&mut tar)?;

    let mut import = Command::new("podman");
    import
        .args(["import", "--quiet"])
        .arg("--change")
        .arg(format!(r#"ENTRYPOINT ["{ENTRYPOINT}"]"#))
        .arg("--change")
        .arg(format!("CMD {CMD}"))
        .arg(&tarball)
        .arg(tag);
    let out = run(&mut import)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The absolute paths `ldd` resolves for `binary`, the dynamic loader included (the vDSO has
/// none); empty for a static binary. A library ldd cannot find is an error.
fn shared_objects(binary: &Path) -> Result<Vec<PathBuf>> {
    let mut ldd = Command::new("ldd");
    ldd.arg(binary);
    let out = output(&mut ldd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // glibc's ldd says so on stdout, and exits 1, for a static binary.
        if text.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("`ldd {}` failed ({}): {text}", binary.display(), out.status);
    }
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2
        // (0x...)", "linux-vdso.so.1 (0x...)", or "libfoo.so => not found".
        let resolved = line.split_once(" => ").map_or(line, |(_, to)| to);
        if resolved.starts_with("not found") {
            bail!("`ldd {}` cannot find {line}", binary.display());
        }
        if let Some(path) = resolved
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libs.push(PathBuf::from(path));
        }
    }
    if libs.is_empty() {
        bail!("`ldd {}` named no library: {text}", binary.display());
    }
    Ok(libs)
}

fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", shown(cmd)))
}

/// Runs to completion; a non-zero exit is an error with the command's stderr.
fn run(cmd: &mut Command) -> Result<Output> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            shown(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn shown(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// A scratch directory for the rootfs and its tarball, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("fault-image-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            eprintln!("image: cannot remove {}: {err}", self.0.display());
        }
    }
}
