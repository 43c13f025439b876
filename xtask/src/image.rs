//! `cargo xtask image`: the OCI image the Kubernetes DaemonSet runs (deploy/kubernetes/),
//! imported into the local podman store. There is no registry to push to: load it onto the
//! nodes from there (`podman save TAG | ctr -n k8s.io images import -`).

mod oci;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::{build, setup};

/// Builds the image from `binary`, or from the release binary (built first if missing), and
/// tags it `tag` or `localhost/fault-agent:<version>`.
pub fn run(root: &Path, binary: Option<PathBuf>, tag: Option<String>) -> Result<()> {
    setup::ensure()?;
    let binary = match binary {
        Some(given) if given.is_file() => given,
        Some(given) => bail!("{} is not a file", given.display()),
        None => {
            let release = crate::target_dir(root).join("release/fault");
            if release.is_file() {
                release
            } else {
                build::fault(root)?
            }
        }
    };
    let tag = match tag {
        Some(tag) => tag,
        None => oci::default_tag(&binary)?,
    };
    let id = oci::build(&binary, &tag)?;
    println!("built image {tag} ({id}) from {}", binary.display());
    Ok(())
}
