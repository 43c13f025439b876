//! `cargo xtask setup`: everything a fresh Debian 12 machine needs to build and test fault.
//!
//! Each step checks before it acts, so a second run only checks. See shared/TOOLCHAIN.md and
//! shared/CONTAINERS.md for why each piece is needed.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Whether a step still has work to do; `Missing` says what, for the progress line.
enum State {
    Done,
    Missing(String),
}

struct Step {
    what: &'static str,
    check: fn() -> Result<State>,
    install: fn() -> Result<()>,
}

/// In dependency order: bpf-linker needs LLVM from apt, the images need podman from apt.
const STEPS: &[Step] = &[
    Step {
        what: "rust-src for nightly",
        check: check_rust_src,
        install: install_rust_src,
    },
    Step {
        what: "apt packages",
        check: check_apt,
        install: install_apt,
    },
    Step {
        what: "bpf-linker 0.13",
        check: check_bpf_linker,
        install: install_bpf_linker,
    },
    Step {
        what: "cargo-fuzz 0.13",
        check: check_cargo_fuzz,
        install: install_cargo_fuzz,
    },
    Step {
        what: "check-jsonschema (PyPI)",
        check: check_jsonschema,
        install: install_jsonschema,
    },
    Step {
        what: "kubernetes-validate (PyPI)",
        check: check_kubernetes_validate,
        install: install_kubernetes_validate,
    },
    Step {
        what: "/etc/containers/containers.conf",
        check: check_containers_conf,
        install: install_containers_conf,
    },
    Step {
        what: "podman images",
        check: check_images,
        install: install_images,
    },
];

/// Runs every step, printing one line each.
pub fn run() -> Result<()> {
    for step in STEPS {
        match (step.check)()? {
            State::Done => println!("ok: {}", step.what),
            State::Missing(detail) => {
                println!("installing: {} ({detail})", step.what);
                (step.install)().with_context(|| format!("setup step `{}`", step.what))?;
                if let State::Missing(still) = (step.check)()? {
                    bail!(
                        "setup step `{}` ran but {still} is still missing",
                        step.what
                    );
                }
            }
        }
    }
    Ok(())
}

/// Quiet when everything is in place (well under a second); otherwise runs the full setup.
pub fn ensure() -> Result<()> {
    for step in STEPS {
        if let State::Missing(detail) = (step.check)()? {
            println!(
                "setup: {} is missing ({detail}); running `cargo xtask setup`",
                step.what
            );
            return run();
        }
    }
    Ok(())
}

// ---- rust-src -------------------------------------------------------------------------------

fn check_rust_src() -> Result<State> {
    // Fails when the nightly toolchain itself is missing; either way rust-src is missing.
    let installed = cmd::stdout_of(&mut cmd::new(
        "rustup",
        ["component", "list", "--toolchain", "nightly", "--installed"],
    ))
    .unwrap_or_default();
    Ok(if installed.lines().any(|l| l.starts_with("rust-src")) {
        State::Done
    } else {
        State::Missing("rust-src".into())
    })
}

fn install_rust_src() -> Result<()> {
    let toolchains =
        cmd::stdout_of(&mut cmd::new("rustup", ["toolchain", "list"])).unwrap_or_default();
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        cmd::run(&mut cmd::new(
            "rustup",
            ["component", "add", "rust-src", "--toolchain", "nightly"],
        ))
    } else {
        cmd::run(&mut cmd::new(
            "rustup",
            [
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ],
        ))
    }
}

// ---- apt ------------------------------------------------------------------------------------

/// Installed with apt's defaults (recommends included: podman brings netavark, aardvark-dns
/// and catatonit that way).
const APT_PACKAGES: &[&str] = &[
    // bpf-linker links against LLVM 22, the major of the nightly's LLVM
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
    // the tests and the demo
    "bpftool",
    "iproute2",
    "iputils-ping",
    "ethtool",
    // containers: busybox and the host's python3.11 make the images
    "podman",
    "busybox-static",
    "python3.11-minimal",
    "golang-go",  // the clock tests build a Go target (tests/tests/clock.rs)
    "musl-tools", // and a musl static one (Java and Node come with the machine)
    // cargo xtask vm: depmod/modprobe for the guest kernel's modules, xz for its image
    "kmod",
    "xz-utils",
];

/// Installed without recommends: runc's pull in criu and python3-protobuf, which we don't use.
/// runc rather than crun because crun refuses the hybrid cgroup layout of these machines.
/// qemu's recommends are GUI and firmware packages `cargo xtask vm` does not use.
/// promtool (the metrics test) comes with Debian's prometheus, whose recommends are the
/// exporters; chromium renders `fault report`'s page in the report test.
/// containerd (with its CRI plugin and `ctr`) and the CNI plugins run Kubernetes pods for the
/// tests (tests/src/cri.rs) without a kubelet; protoc builds the k8s-cri crate's CRI client,
/// and its recommended libprotobuf-dev is not needed for that.
/// docker.io's dockerd proves the docker path of `container:` targets (tests/src/docker.rs).
const APT_PACKAGES_NO_RECOMMENDS: &[&str] = &[
    "runc",
    "qemu-system-x86",
    "prometheus",
    "chromium",
    "containerd",
    "containernetworking-plugins",
    "protobuf-compiler",
    "docker.io",
];

fn missing_packages(wanted: &[&str]) -> Vec<String> {
    // dpkg-query exits non-zero when a package is unknown but still prints the known ones.
    let mut query = cmd::new("dpkg-query", ["-W", "-f=${Package} ${Status}\n"]);
    query.args(wanted);
    let out = cmd::stdout_any_status(&mut query).unwrap_or_default();
    let installed: HashSet<&str> = out
        .lines()
        .filter(|l| l.ends_with(" install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    wanted
        .iter()
        .filter(|p| !installed.contains(*p))
        .map(|p| p.to_string())
        .collect()
}

fn check_apt() -> Result<State> {
    let mut missing = missing_packages(APT_PACKAGES);
    missing.extend(missing_packages(APT_PACKAGES_NO_RECOMMENDS));
    Ok(if missing.is_empty() {
        State::Done
    } else {
        State::Missing(missing.join(" "))
    })
}

fn apt_get(args: &[&str]) -> Command {
    let mut c = cmd::new("apt-get", ["-o", "DPkg::Lock::Timeout=600"]);
    c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn install_apt() -> Result<()> {
    // Only reached when something is missing, so the index update happens at most once.
    cmd::run(apt_get(&["update", "-q"]).stdout(std::process::Stdio::null()))?;
    // --no-upgrade: leave the versions of what is already installed alone.
    let missing = missing_packages(APT_PACKAGES);
    if !missing.is_empty() {
        let mut c = apt_get(&["install", "-y", "-q", "--no-upgrade"]);
        cmd::run(c.args(&missing))?;
    }
    let missing = missing_packages(APT_PACKAGES_NO_RECOMMENDS);
    if !missing.is_empty() {
        let mut c = apt_get(&[
            "install",
            "-y",
            "-q",
            "--no-upgrade",
            "--no-install-recommends",
        ]);
        cmd::run(c.args(&missing))?;
    }
    Ok(())
}

// ---- bpf-linker -----------------------------------------------------------------------------

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

fn check_bpf_linker() -> Result<State> {
    let version = cmd::stdout_of(&mut cmd::new("bpf-linker", ["--version"]));
    Ok(match version {
        Some(v) if v.trim().starts_with("bpf-linker 0.13.") => State::Done,
        Some(v) => State::Missing(format!("found {}", v.trim())),
        None => State::Missing("not installed".into()),
    })
}

fn install_bpf_linker() -> Result<()> {
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let install = |locked: bool| {
        let mut c = crate::cmd::cargo();
        c.args(["install", "bpf-linker", "--version", "^0.13"]);
        if locked {
            c.arg("--locked");
        }
        // Without the prefix variables llvm-sys looks in /usr and fails on -lLLVM.
        c.args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", &path)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .env("LLVM_PREFIX", LLVM_PREFIX);
        cmd::run(&mut c)
    };
    // The published lock file can go stale against the registry; fall back to fresh resolution.
    install(true).or_else(|err| {
        eprintln!("setup: {err:#}; retrying without --locked");
        install(false)
    })
}

// ---- cargo-fuzz ------------------------------------------------------------------------------

/// libFuzzer's driver for `cargo xtask fuzz` (fault-user/fuzz).
fn check_cargo_fuzz() -> Result<State> {
    let version = cmd::stdout_of(&mut cmd::new("cargo-fuzz", ["--version"]));
    Ok(match version {
        Some(v) if v.trim().starts_with("cargo-fuzz 0.13.") => State::Done,
        Some(v) => State::Missing(format!("found {}", v.trim())),
        None => State::Missing("not installed".into()),
    })
}

fn install_cargo_fuzz() -> Result<()> {
    let mut c = crate::cmd::cargo();
    c.args(["install", "cargo-fuzz", "--version", "^0.13", "--locked"]);
    cmd::run(&mut c)
}

// ---- containers.conf ------------------------------------------------------------------------

const CONTAINERS_CONF_PATH: &str = "/etc/containers/containers.conf";

const CONTAINERS_CONF: &str = r#"# Written by `cargo xtask setup` (fault).
[containers]
# podman's default for root asks for nofile/nproc of 1048576, and raising a hard limit needs
# CAP_SYS_RESOURCE, which these VMs do not grant.
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
# crun refuses the hybrid cgroup v1/v2 layout; there is no systemd to manage cgroups.
runtime = "runc"
cgroup_manager = "cgroupfs"
"#;

// ---- check-jsonschema -------------------------------------------------------------------------

/// The independent validator the schema test checks `fault schema` with.
const JSONSCHEMA: &str = "check-jsonschema==0.39.0";

fn check_jsonschema() -> Result<State> {
    let found = Command::new("python3")
        .args(["-m", "check_jsonschema", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    Ok(match found {
        true => State::Done,
        false => State::Missing(JSONSCHEMA.into()),
    })
}

fn install_jsonschema() -> Result<()> {
    pip_install(JSONSCHEMA)
}

/// `pip install REQUIREMENT` as root, quietly.
fn pip_install(requirement: &str) -> Result<()> {
    cmd::run(&mut cmd::new(
        "python3",
        [
            "-m",
            "pip",
            "install",
            "-q",
            "--root-user-action=ignore",
            requirement,
        ],
    ))
}

// ---- kubernetes-validate ----------------------------------------------------------------------

/// The offline validator the deploy test checks deploy/kubernetes with: it ships the
/// Kubernetes schemas (1.34 to 1.37 in this version), so it needs no cluster and no network.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

fn check_kubernetes_validate() -> Result<State> {
    let version = cmd::stdout_of(&mut cmd::new(
        "python3",
        ["-m", "kubernetes_validate", "--version"],
    ));
    Ok(match version {
        Some(v) if v.trim() == "1.37.0" => State::Done,
        Some(v) => State::Missing(format!("{KUBERNETES_VALIDATE}, found {}", v.trim())),
        None => State::Missing(KUBERNETES_VALIDATE.into()),
    })
}

fn install_kubernetes_validate() -> Result<()> {
    pip_install(KUBERNETES_VALIDATE)
}

fn check_containers_conf() -> Result<State> {
    Ok(match fs::read_to_string(CONTAINERS_CONF_PATH) {
        Ok(current) if current == CONTAINERS_CONF => State::Done,
        Ok(_) => State::Missing("different content".into()),
        Err(_) => State::Missing("no file".into()),
    })
}

fn install_containers_conf() -> Result<()> {
    let path = Path::new(CONTAINERS_CONF_PATH);
    fs::create_dir_all(path.parent().expect("absolute path"))?;
    fs::write(path, CONTAINERS_CONF).with_context(|| format!("writing {}", path.display()))
}

// ---- podman images --------------------------------------------------------------------------

/// Busybox only, about 2 MB.
pub const IMAGE_BUSYBOX: &str = "localhost/fault-bb:latest";
/// Busybox plus the host's python3.11, about 18 MB.
pub const IMAGE_PYTHON: &str = "localhost/fault-bbpy:latest";
/// The sandbox ("pause") image of the CRI tests' pods: busybox sleeping, since no registry
/// serves registry.k8s.io/pause. Its sleep is PID 1 of the pod and holds its namespaces.
pub const IMAGE_PAUSE: &str = "localhost/fault-pause:latest";
/// The pause image's command: busybox's sleep takes no `infinity`; this is 68 years.
const PAUSE_CMD: &str = r#"CMD ["/bin/sleep", "2147483647"]"#;

fn image_exists(image: &str) -> bool {
    cmd::succeeds(&mut cmd::new("podman", ["image", "exists", image]))
}

fn check_images() -> Result<State> {
    let missing: Vec<&str> = [IMAGE_BUSYBOX, IMAGE_PYTHON, IMAGE_PAUSE]
        .into_iter()
        .filter(|i| !image_exists(i))
        .collect();
    Ok(if missing.is_empty() {
        State::Done
    } else {
        State::Missing(missing.join(" "))
    })
}

/// A scratch directory removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(label: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{label}-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.0) {
            eprintln!("setup: cannot remove {}: {err}", self.0.display());
        }
    }
}

fn install_images() -> Result<()> {
    // No registry is reachable: images are host files in a tarball, through `podman import`.
    let scratch = ScratchDir::new("fault-images")?;
    if !image_exists(IMAGE_BUSYBOX) {
        let rootfs = scratch.0.join("bb");
        busybox_rootfs(&rootfs)?;
        import_image(&rootfs, IMAGE_BUSYBOX, &[])?;
    }
    if !image_exists(IMAGE_PYTHON) {
        let rootfs = scratch.0.join("bbpy");
        busybox_rootfs(&rootfs)?;
        add_python(&rootfs)?;
        import_image(&rootfs, IMAGE_PYTHON, &[])?;
    }
    if !image_exists(IMAGE_PAUSE) {
        let rootfs = scratch.0.join("pause");
        busybox_rootfs(&rootfs)?;
        import_image(&rootfs, IMAGE_PAUSE, &[PAUSE_CMD])?;
    }
    Ok(())
}

fn busybox_rootfs(rootfs: &Path) -> Result<()> {
    for dir in ["bin", "tmp", "etc", "proc", "sys", "dev"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).context("copying /bin/busybox")?;
    let applets = cmd::stdout_of(&mut cmd::new("/bin/busybox", ["--list"]))
        .context("`busybox --list` failed")?;
    for applet in applets.lines().map(str::trim) {
        if !applet.is_empty() && applet != "busybox" {
            symlink("busybox", rootfs.join("bin").join(applet))?;
        }
    }
    Ok(())
}

/// Copies a host file into the rootfs at the same path (symlinks are followed).
fn copy_host_file(rootfs: &Path, host: &Path) -> Result<()> {
    let dest = rootfs.join(host.strip_prefix("/").unwrap_or(host));
    fs::create_dir_all(dest.parent().expect("file path has a parent"))?;
    fs::copy(host, &dest).with_context(|| format!("copying {}", host.display()))?;
    Ok(())
}

fn add_python(rootfs: &Path) -> Result<()> {
    let python = Path::new("/usr/bin/python3.11");
    copy_host_file(rootfs, python)?;
    symlink("python3.11", rootfs.join("usr/bin/python3"))?;

    let ldd = cmd::stdout_of(&mut cmd::new("ldd", [python])).context("`ldd python3.11` failed")?;
    let mut libs: Vec<PathBuf> = ldd
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    // Lets a Rust binary from the host (fault-probe) run inside when bind-mounted.
    libs.push(PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"));
    for lib in libs.iter().filter(|l| l.exists()) {
        copy_host_file(rootfs, lib)?;
    }

    // The standard library modules python3.11 starts with (socket, struct, json, ...).
    let files = cmd::stdout_of(&mut cmd::new("dpkg", ["-L", "libpython3.11-minimal"]))
        .context("`dpkg -L libpython3.11-minimal` failed")?;
    for file in files.lines().map(Path::new) {
        let Ok(meta) = fs::symlink_metadata(file) else {
            continue;
        };
        let dest = rootfs.join(file.strip_prefix("/").unwrap_or(file));
        if meta.file_type().is_symlink() {
            fs::create_dir_all(dest.parent().expect("file path has a parent"))?;
            if !dest.exists() {
                symlink(fs::read_link(file)?, &dest)?;
            }
        } else if meta.is_file() {
            copy_host_file(rootfs, file)?;
        }
    }
    Ok(())
}

/// `changes` are Dockerfile instructions for the image's config (`podman import --change`).
fn import_image(rootfs: &Path, image: &str, changes: &[&str]) -> Result<()> {
    let tarball = rootfs.with_extension("tar");
    let mut tar = Command::new("tar");
    tar.arg("-C").arg(rootfs).arg("-cf").arg(&tarball).arg(".");
    cmd::run(&mut tar)?;
    let mut import = Command::new("podman");
    import.args(["import", "-q"]);
    for change in changes {
        import.args(["--change", change]);
    }
    import.arg(&tarball).arg(image);
    cmd::run(import.stdout(std::process::Stdio::null()))
}
