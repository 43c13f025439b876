//! What the watched directory asks for: each policy file in it, read whole, and whether it
//! is a policy this agent can run. A mounted ConfigMap keeps its real files under `..data`
//! and links each key to them; the dot entries are the ConfigMap's own and are passed over.

use std::{
    collections::HashMap,
    hash::Hasher as _,
    path::{Path, PathBuf},
};

/// One file of the directory as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub file: PathBuf,
    /// Of the file's bytes: a change of content is a change of experiment.
    pub hash: u64,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A policy that compiles, by its `metadata.name`.
    Valid { name: String },
    /// Why it cannot be applied, as `fault check` says it.
    Invalid { why: String },
}

/// The hash the agent keys a file's content by (also in the status file, so a reader can
/// tell which content a state belongs to).
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// Whether `name` is a policy file of the directory: `*.yaml` or `*.yml`, not hidden.
fn is_policy_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// The policy files in `dir`, sorted by path. Content already judged (same file, same
/// hash, in `known`) keeps its verdict; new content is compiled as `fault check` would.
pub fn scan(dir: &Path, known: &HashMap<PathBuf, Wanted>) -> std::io::Result<Vec<Wanted>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| is_policy_name(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        // Through the ConfigMap's links: what counts is what they point at.
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        // Gone between the listing and the read: the next scan sees it gone.
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        let hash = content_hash(&bytes);
        let verdict = match known.get(&file) {
            Some(w) if w.hash == hash => w.verdict.clone(),
            _ => judge(&file),
        };
        out.push(Wanted {
            file,
            hash,
            verdict,
        });
    }
    refuse_shared_names(&mut out);
    Ok(out)
}

fn judge(file: &Path) -> Verdict {
    match crate::plan::compile(file) {
        Ok((policy, _)) => Verdict::Valid { name: policy.name },
        Err(e) => Verdict::Invalid { why: e.to_string() },
    }
}

/// Two files may not run under one name (their records and pins would be one): the first
/// by path keeps it.
fn refuse_shared_names(wanted: &mut [Wanted]) {
    let mut first: HashMap<String, PathBuf> = HashMap::new();
    for w in wanted.iter_mut() {
        let Verdict::Valid { name } = &w.verdict else {
            continue;
        };
        match first.get(name) {
            Some(owner) => {
                w.verdict = Verdict::Invalid {
                    why: format!(
                        "{}: metadata.name: {name} is already the name of {}; expected a \
                         name no other file in the directory has",
                        w.file.display(),
                        owner.display()
                    ),
                }
            }
            None => {
                first.insert(name.clone(), w.file.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str) -> String {
        format!(
            "apiVersion: fault/v1\nkind: FaultPolicy\nmetadata:\n  name: {name}\nspec:\n  \
             duration: 1m\n  targets:\n    - cgroup: /sys/fs/cgroup\n  network:\n    \
             - direction: egress\n      drop: {{probability: 10%}}\n"
        )
    }

    fn tmp(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fault-agent-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_configmap_layout_yields_its_keys_and_not_its_own_entries() {
        let d = tmp("layout");
        let data = d.join("..2026_12_03_00_00_00.1");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("a.yaml"), policy("a")).unwrap();
        std::fs::write(data.join("notes.txt"), "x").unwrap();
        std::os::unix::fs::symlink(data.file_name().unwrap(), d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/a.yaml", d.join("a.yaml")).unwrap();
        std::os::unix::fs::symlink("..data/notes.txt", d.join("notes.txt")).unwrap();
        let got = scan(&d, &HashMap::new()).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].file, d.join("a.yaml"));
        assert_eq!(got[0].verdict, Verdict::Valid { name: "a".into() });
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_second_file_with_the_same_name_is_refused_and_a_broken_one_says_why() {
        let d = tmp("names");
        std::fs::write(d.join("1.yaml"), policy("same")).unwrap();
        std::fs::write(d.join("2.yml"), policy("same")).unwrap();
        std::fs::write(d.join("3.yaml"), "apiVersion: fault/v1\nkind: Nope\n").unwrap();
        let got = scan(&d, &HashMap::new()).unwrap();
        assert_eq!(
            got[0].verdict,
            Verdict::Valid {
                name: "same".into()
            }
        );
        let Verdict::Invalid { why } = &got[1].verdict else {
            panic!("{got:?}")
        };
        assert!(
            why.contains("already the name of") && why.contains("1.yaml"),
            "{why}"
        );
        let Verdict::Invalid { why } = &got[2].verdict else {
            panic!("{got:?}")
        };
        assert!(why.contains("3.yaml"), "{why}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn known_content_is_not_judged_again() {
        let d = tmp("known");
        std::fs::write(d.join("a.yaml"), policy("a")).unwrap();
        let first = scan(&d, &HashMap::new()).unwrap();
        let mut known: HashMap<PathBuf, Wanted> =
            first.iter().map(|w| (w.file.clone(), w.clone())).collect();
        // A verdict the compiler would never give shows the cache was used.
        known.get_mut(&d.join("a.yaml")).unwrap().verdict = Verdict::Valid { name: "z".into() };
        let again = scan(&d, &known).unwrap();
        assert_eq!(again[0].verdict, Verdict::Valid { name: "z".into() });
        std::fs::write(d.join("a.yaml"), policy("b")).unwrap();
        let changed = scan(&d, &known).unwrap();
        assert_eq!(changed[0].verdict, Verdict::Valid { name: "b".into() });
        std::fs::remove_dir_all(&d).unwrap();
    }
}
