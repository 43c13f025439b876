//! `cargo xtask bench`.

use std::path::Path;

use anyhow::{bail, Result};

pub fn run(_root: &Path, _args: &[String]) -> Result<()> {
    bail!("not implemented yet")
}
