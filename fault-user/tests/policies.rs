//! Every example under policies/ parses and compiles, so the examples cannot rot.

use std::path::Path;

#[test]
fn every_example_policy_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("policies/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let policy = fault::policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            fault::policy::lpm_entries(&policy.rules).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(
        seen >= 4,
        "expected the example policies in {}, found {seen}",
        dir.display()
    );
}
