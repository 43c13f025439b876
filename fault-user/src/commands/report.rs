//! `fault report RUN`: one self-contained HTML page of a run, from its event log.

use std::path::{Path, PathBuf};

use crate::error::{failed, Error};
use crate::observe::event::parse_log;
use crate::report::{render, ReportError};

const PAGE: &str = "report.html";

/// Reads the run's event log (`run` is the file or the directory that holds `events.jsonl`),
/// writes the page to `output` or `report.html` beside the log, and prints where.
pub fn report(run: &Path, output: Option<&Path>) -> Result<(), Error> {
    let events = crate::observe::events_of(run);
    let text = std::fs::read_to_string(&events)
        .map_err(failed(format!("read the event log {}", events.display())))?;
    let records = parse_log(&text).map_err(|message| Error::BadLog {
        file: events.clone(),
        message,
    })?;
    let page = render(&records).map_err(|e| match e {
        ReportError::Empty => Error::BadLog {
            file: events.clone(),
            message: e.to_string(),
        },
        ReportError::Draw { .. } => failed("draw the report")(e),
    })?;
    let output = output.map_or_else(|| beside(&events), Path::to_path_buf);
    std::fs::write(&output, page).map_err(failed(format!("write {}", output.display())))?;
    println!("{}", output.display());
    Ok(())
}

/// `report.html` in the directory of the events file.
fn beside(events: &Path) -> PathBuf {
    events
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join(PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_goes_beside_the_log() {
        assert_eq!(
            beside(Path::new("/run/fault/x/events.jsonl")),
            Path::new("/run/fault/x/report.html")
        );
        assert_eq!(
            beside(Path::new("events.jsonl")),
            Path::new("./report.html")
        );
    }
}
