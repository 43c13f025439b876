//! `fault check`: validation only.

use std::path::PathBuf;

use crate::{error::Error, plan};

pub fn check(files: &[PathBuf]) -> Result<(), Error> {
    let mut lines = Vec::new();
    for f in files {
        match plan::compile(f) {
            Ok((p, lpm)) if p.is_experiment() => println!(
                "{}: ok (experiment: {} groups, {} steps, {} probes, {} stop conditions; {} \
                 network rules before partitions, {} trie entries)",
                f.display(),
                p.groups.len(),
                p.steps.len(),
                p.probes.len(),
                p.aborts.len(),
                p.rules.len(),
                lpm.len()
            ),
            Ok((p, lpm)) => println!(
                "{}: ok ({} rules, {} trie entries, {} clock rules, {} targets)",
                f.display(),
                p.rules.len(),
                lpm.len(),
                p.clock.len(),
                p.targets.len()
            ),
            Err(e) => lines.push(e.to_string()),
        }
    }
    match lines.is_empty() {
        true => Ok(()),
        false => Err(Error::Check { lines }),
    }
}
