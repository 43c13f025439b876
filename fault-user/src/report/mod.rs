//! A run's HTML page (`fault report`): drawn from its event log.
//!
//! `data` turns the records into what is drawn (seconds on the run's timeline, step bars,
//! rates, latencies), `charts` draws the three charts with plotters into SVG, `page` lays
//! out one self-contained HTML file around them: inline CSS and SVG, no script, nothing
//! fetched from anywhere, so the file can be mailed, attached to a ticket or opened offline.

mod charts;
mod data;
mod page;
#[cfg(test)]
mod tests;

use crate::observe::event::Record;

use data::Run;

/// Why a page could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The log holds no record at all: there is nothing to draw, not even a failed start.
    #[error("the event log holds no events")]
    Empty,
    /// plotters refused to draw a chart.
    #[error("draw the {chart} chart: {message}")]
    Draw {
        chart: &'static str,
        message: String,
    },
}

/// The page of the run these records tell, as one HTML document.
///
/// A log without `applied` (a run that failed to start) still renders: the page says so and
/// shows what the log holds (warnings, the `reverted` reason). A log without `reverted` says
/// the loader may have been killed. Only an empty log is refused.
pub fn render(records: &[Record]) -> Result<String, ReportError> {
    if records.is_empty() {
        return Err(ReportError::Empty);
    }
    page::html(&Run::from_records(records))
}
