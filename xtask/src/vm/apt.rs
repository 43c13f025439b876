//! apt, as the guest's kernels are fetched with it: the host's own sources for its release's
//! kernel (bookworm's 6.1), or a private index of another Debian release (bullseye's 5.10,
//! trixie's 6.12) kept in the cache beside the kernels, so the host's apt configuration is
//! never touched. The host's archive keyring signs every release named here.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::cmd;

const MIRROR: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

pub(super) struct Apt {
    /// `-o` options pointing apt at a private index; empty for the host's.
    options: Vec<String>,
}

impl Apt {
    pub(super) fn host() -> Apt {
        Apt {
            options: Vec::new(),
        }
    }

    /// A private index of `suite` (its main and security archives) under `cache`.
    pub(super) fn release(cache: &Path, suite: &str) -> Result<Apt> {
        let dir = cache.join(format!("apt-{suite}"));
        for sub in ["lists/partial", "archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let sources = dir.join("sources.list");
        let line =
            |url: &str, suite: &str| format!("deb [signed-by={KEYRING}] {url} {suite} main\n");
        let text = line(MIRROR, suite) + &line(SECURITY, &format!("{suite}-security"));
        std::fs::write(&sources, text).with_context(|| format!("writing {}", sources.display()))?;
        let set = |key: &str, value: &Path| format!("{key}={}", value.display());
        Ok(Apt {
            options: vec![
                set("Dir::Etc::SourceList", &sources),
                // No parts: the host's own sources stay out of this index.
                set("Dir::Etc::SourceParts", &dir.join("none")),
                set("Dir::State::Lists", &dir.join("lists")),
                set("Dir::Cache", &dir),
                set("Dir::Cache::Archives", &dir.join("archives")),
            ],
        })
    }

    /// `program` (apt-get or apt-cache) with this index's options, then `args`.
    pub(super) fn command<I, S>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = cmd::new(program, ["-o", "APT::Sandbox::User=root"]);
        for o in &self.options {
            c.args(["-o", o]);
        }
        c.args(args);
        c
    }

    pub(super) fn update(&self) -> Result<()> {
        eprintln!("vm: running apt-get update");
        cmd::run(
            self.command("apt-get", ["-o", "DPkg::Lock::Timeout=600", "update", "-q"])
                .stdout(Stdio::null()),
        )
    }
}
