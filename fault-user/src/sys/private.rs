//! fault's own files: the records under /run/fault and the pins under bpffs say what a run
//! holds on the host, so only root may read or change them. Directories are made 0700 and
//! files 0600 whatever the umask was, and a directory left by an older version is tightened.

use std::{
    fs::{DirBuilder, File, OpenOptions, Permissions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::Context as _;

pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// Makes `path` (and any parent missing) with mode 0700, and sets 0700 on it if it was there.
pub fn dir(path: &Path) -> anyhow::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .with_context(|| format!("create {}", path.display()))?;
    std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
        .with_context(|| format!("set the mode of {}", path.display()))
}

/// Creates (or empties) `path` with mode 0600.
pub fn create(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
        .with_context(|| format!("create {}", path.display()))
}

/// Writes `bytes` to `path`, a file of mode 0600.
pub fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    create(path)?
        .write_all(bytes)
        .with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn modes_hold_whatever_the_umask() {
        let base = std::env::temp_dir().join(format!("fault-private-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        // An older version's directory, open to everyone.
        let old = base.join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, Permissions::from_mode(0o755)).unwrap();
        dir(&old).unwrap();
        dir(&base.join("a/b")).unwrap();
        write(&base.join("a/b/f"), b"x").unwrap();
        let mode = |p: &str| std::fs::metadata(base.join(p)).unwrap().mode() & 0o777;
        assert_eq!(
            (mode("old"), mode("a"), mode("a/b"), mode("a/b/f")),
            (0o700, 0o700, 0o700, 0o600)
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
