//! What both fuzz targets run: the header of a kind, then the fuzzer's bytes as the rest of
//! the document, through the calls `fault check` makes (parse, validate, compile).

use std::path::Path;

pub fn run(kind: &str, data: &[u8]) {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let text = format!("apiVersion: fault/v1\nkind: {kind}\n{body}");
    if let Ok(policy) = fault::policy::parse(&text, Path::new("fuzz.yaml")) {
        let _ = fault::policy::lpm_entries(&policy.rules);
    }
}
