//! What a policy file may be at most, checked before the YAML parser sees it: its size (a
//! device like /dev/zero included) and how deeply it nests (the parser's time grows with
//! the depth: 100,000 nested lists took over a minute), and how much of a bad value an
//! error message repeats.

use std::io::Read as _;
use std::path::Path;

use super::PolicyError;

/// The largest policy file read: far above any real policy (the examples are under 4 KiB).
pub const MAX_POLICY_BYTES: u64 = 4 << 20;
/// The deepest nesting of collections accepted; real policies nest under 10.
pub const MAX_DEPTH: usize = 64;
/// How many characters of its text an error message keeps.
pub const MAX_MESSAGE_CHARS: usize = 400;

fn refuse(file: &Path, line: Option<usize>, message: String) -> PolicyError {
    PolicyError {
        file: file.to_owned(),
        path: String::new(),
        line,
        message,
    }
}

/// Reads the policy at `path`, refusing one over [`MAX_POLICY_BYTES`] without reading more
/// than one byte past the limit.
pub fn read(path: &Path) -> Result<String, PolicyError> {
    let cannot = |err: std::io::Error| refuse(path, None, format!("cannot read the policy: {err}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if meta.is_dir() {
        return Err(refuse(
            path,
            None,
            "is a directory, not a policy file".into(),
        ));
    }
    let too_big = |size: Option<u64>| {
        refuse(
            path,
            None,
            format!(
                "the policy is {}more than the {} MiB a policy may be",
                size.map_or(String::new(), |n| format!("{n} bytes, ")),
                MAX_POLICY_BYTES >> 20
            ),
        )
    };
    if meta.is_file() && meta.len() > MAX_POLICY_BYTES {
        return Err(too_big(Some(meta.len())));
    }
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(too_big(None));
    }
    String::from_utf8(bytes).map_err(|e| {
        refuse(
            path,
            None,
            format!(
                "the policy is not UTF-8 text (byte {} is not)",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// Refuses `text` if its collections nest deeper than [`MAX_DEPTH`]. The depth is counted
/// generously, in one pass: a line's block depth is the number of indentation levels open
/// above it plus the `- ` entries it starts with, and flow collections (`[`, `{`) add one
/// each where a value may start, outside quotes and comments.
pub fn check_depth(text: &str, file: &Path) -> Result<(), PolicyError> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for (n, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let indent = line.len() - body.len();
        if flow == 0 {
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let (entries, deepest_flow) = scan_line(body, &mut flow);
        let depth = indents.len() + entries + deepest_flow;
        if depth > MAX_DEPTH {
            return Err(refuse(
                file,
                Some(n + 1),
                format!("the policy nests deeper than the {MAX_DEPTH} levels a policy may"),
            ));
        }
    }
    Ok(())
}

/// The `- ` entries `body` starts with, and the deepest flow level reached on it (`flow`
/// carries the open level from line to line).
fn scan_line(body: &str, flow: &mut usize) -> (usize, usize) {
    let mut rest = body;
    let mut entries = 0;
    while let Some(r) = rest
        .strip_prefix("- ")
        .or(if rest == "-" { Some("") } else { None })
    {
        entries += 1;
        rest = r.trim_start_matches(' ');
    }
    let mut deepest = *flow;
    let mut quote: Option<char> = None;
    // Where a node may start: a bracket there opens a collection (in block context a
    // bracket inside a plain scalar is only a character).
    let mut node_start = true;
    let mut previous = ' ';
    for c in rest.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '#' if previous == ' ' || previous == '\t' => break,
                '\'' | '"' if node_start || *flow > 0 => quote = Some(c),
                '[' | '{' if node_start || *flow > 0 => {
                    *flow += 1;
                    deepest = deepest.max(*flow);
                }
                ']' | '}' if *flow > 0 => *flow -= 1,
                _ => {}
            },
        }
        if quote.is_none() {
            node_start = match c {
                ' ' | '\t' => node_start || matches!(previous, ':' | '-' | '?' | ','),
                '[' | '{' | ',' => *flow > 0,
                _ => false,
            };
        }
        previous = c;
    }
    (entries, deepest)
}

/// `message`, cut to [`MAX_MESSAGE_CHARS`] characters: a bad value of megabytes is not
/// repeated whole.
pub fn shorten(message: &str) -> std::borrow::Cow<'_, str> {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        None => message.into(),
        Some((cut, _)) => format!("{}... ({} bytes in all)", &message[..cut], message.len()).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_of(text: &str) -> Result<(), PolicyError> {
        check_depth(text, Path::new("p.yaml"))
    }

    #[test]
    fn deep_flow_and_block_nesting_are_refused_and_real_policies_pass() {
        let flow = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let err = depth_of(&flow).unwrap_err();
        assert!(err.message.contains("64 levels"), "{}", err.message);
        assert_eq!(err.line, Some(1));
        let compact = format!("a:\n  {}x\n", "- ".repeat(70));
        assert!(depth_of(&compact).is_err());
        let stairs: String = (0..70)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert!(depth_of(&stairs).is_err());
        let fine =
            "spec:\n  network:\n    - match: {ports: [80, 443], cidrs: ['10.0.0.0/8']}\n      \
                    drop: {probability: 10%}  # a [comment {\n    - name: \"a [b\"\n";
        depth_of(fine).unwrap();
        // Brackets inside plain scalars and quotes open nothing.
        let plain = format!("a: {}\nb: '{}'\n", "x[".repeat(100), "[".repeat(100));
        depth_of(&plain).unwrap();
    }

    #[test]
    fn the_example_policies_are_far_from_the_limit() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            check_depth(&text, &path).unwrap();
        }
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(50_000);
        let cut = shorten(&long);
        assert!(cut.len() < 500, "{}", cut.len());
        assert!(cut.ends_with("(50000 bytes in all)"));
        assert_eq!(shorten("short"), "short");
    }

    #[test]
    fn a_file_over_the_limit_and_an_endless_device_are_refused() {
        let dir = std::env::temp_dir().join(format!("fault-bounds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.yaml");
        std::fs::write(&big, vec![b'#'; (MAX_POLICY_BYTES + 1) as usize]).unwrap();
        let err = read(&big).unwrap_err();
        assert!(err.message.contains("4 MiB"), "{}", err.message);
        let err = read(Path::new("/dev/zero")).unwrap_err();
        assert!(err.message.contains("4 MiB"), "{}", err.message);
        let err = read(&dir).unwrap_err();
        assert!(err.message.contains("directory"), "{}", err.message);
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, b"a: \xff\n").unwrap();
        assert!(read(&bad).unwrap_err().message.contains("UTF-8"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
