//! `fault schema`, `fault completions` and `fault man`: the policy format and the command
//! line, described for editors, shells and man.

use std::io::Write as _;

use clap::CommandFactory as _;

use crate::{
    cli::Cli,
    error::{failed, Error},
    policy,
};

/// Prints the JSON Schema of policy files, both kinds.
pub fn schema() -> Result<(), Error> {
    let mut text = serde_json::to_string_pretty(&policy::policy_schema())
        .map_err(failed("format the schema"))?;
    text.push('\n');
    print(text.as_bytes(), "write the schema")
}

/// Prints the completion script of `shell` for the command line `fault` parses.
pub fn completions(shell: clap_complete::Shell) -> Result<(), Error> {
    print(&completion_script(shell), "write the completion script")
}

/// Prints the man page (roff) of the command line.
pub fn man() -> Result<(), Error> {
    let page = man_page().map_err(failed("render the man page"))?;
    print(&page, "write the man page")
}

/// The script, in memory: clap_complete panics when its writer fails, and stdout can (a
/// closed pipe).
fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "fault", &mut script);
    script
}

fn man_page() -> std::io::Result<Vec<u8>> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    Ok(page)
}

fn print(bytes: &[u8], step: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(failed(step))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_completions_know_the_commands() {
        let script = String::from_utf8(completion_script(clap_complete::Shell::Bash))
            .expect("a UTF-8 script");
        for command in [
            "apply",
            "check",
            "status",
            "stop",
            "schema",
            "completions",
            "man",
        ] {
            assert!(script.contains(command), "no {command} in:\n{script}");
        }
    }

    #[test]
    fn the_man_page_opens_with_its_title() {
        let page = String::from_utf8(man_page().expect("a man page")).expect("UTF-8 roff");
        // roff's preamble defines the apostrophe string (.ie/.el) before anything is printed;
        // the first request after it is the title.
        let first = page
            .lines()
            .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
            .expect("a line after the preamble");
        assert!(first.starts_with(".TH fault 1"), "first line: {first}");
        assert!(page.contains("apply"), "no apply in the page");
    }
}
