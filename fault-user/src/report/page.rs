//! The HTML around the charts: a header that says what ran and how it ended, one section per
//! chart with its legend, the targets, the final counters, the event log and the policy.
//!
//! Every text that comes from the log goes through [`esc`]; the charts are plotters' SVG,
//! which escapes its own text.

use std::fmt::Write as _;

use super::charts::{self, Frame};
use super::data::Run;
use super::ReportError;
use crate::observe::event::Reason;

/// The event log shows at most this many lines; a run that patched thousands of processes
/// would otherwise bury the rest.
const MAX_NOTES: usize = 400;

const STYLE: &str = "
body { margin: 0; background: #f6f6f4; color: #1d1d1f;
       font: 14px/1.45 'DejaVu Sans', 'Helvetica Neue', Arial, sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 20px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h1 .kind { font-size: 14px; font-weight: normal; color: #666; margin-left: 8px; }
h2 { font-size: 17px; margin: 0 0 8px; }
header, section { background: #fff; border: 1px solid #ddd; border-radius: 6px;
                  padding: 14px 18px; margin-bottom: 16px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0 0; }
dt { color: #666; }
dd { margin: 0; }
.warn { color: #a00; font-weight: bold; }
.empty { color: #666; font-style: italic; }
svg { display: block; max-width: 100%; height: auto; }
.legend { list-style: none; padding: 0; margin: 0 0 6px; display: flex; flex-wrap: wrap;
          gap: 4px 18px; font-size: 13px; }
.sw { display: inline-block; width: 22px; height: 10px; margin-right: 6px;
      vertical-align: middle; border-radius: 2px; }
.sw.line { height: 3px; }
.sw.cross { width: 10px; height: 10px; background: none; color: #d62728; font-weight: bold;
            line-height: 10px; text-align: center; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
th { background: #fafafa; }
table.log th:first-child { width: 70px; }
table.log th:nth-child(2) { width: 130px; }
table.probes { width: auto; min-width: 50%; margin-top: 12px; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #fafafa; border: 1px solid #eee; padding: 10px; overflow-x: auto;
      font: 12.5px/1.4 'DejaVu Sans Mono', monospace; }
";

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole document.
pub fn html(run: &Run) -> Result<String, ReportError> {
    let title = run
        .applied
        .as_ref()
        .map_or("a run that did not start".to_string(), |a| a.policy.clone());
    let frame = Frame::of(run);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>fault report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        esc(&title)
    );
    header(&mut out, run);
    timeline(&mut out, run, frame)?;
    counters(&mut out, run, frame)?;
    probes(&mut out, run, frame)?;
    targets(&mut out, run);
    final_counts(&mut out, run);
    notes(&mut out, run);
    policy(&mut out, run);
    out.push_str("</main>\n</body>\n</html>\n");
    Ok(out)
}

fn header(out: &mut String, run: &Run) {
    out.push_str("<header id=\"summary\">\n");
    match &run.applied {
        Some(a) => {
            let _ = writeln!(
                out,
                "<h1>{}<span class=\"kind\">{}</span></h1>",
                esc(&a.policy),
                esc(&a.kind)
            );
        }
        None => out.push_str(
            "<h1>fault run</h1>\n<p class=\"warn\">no applied event: the run did not start \
             (or its log was cut); below is what the log holds</p>\n",
        ),
    }
    out.push_str("<dl>\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(out, "<dt>{k}</dt><dd>{v}</dd>");
    };
    row("started", esc(&wall(&run.start_wall)));
    if let Some(a) = &run.applied {
        row("planned duration", esc(&secs(a.duration_s)));
        row("loader pid", a.pid.to_string());
    }
    match &run.end {
        Some(end) => {
            row("ran for", esc(&secs(end.at_s)));
            let reason = format!("{}: {}", reason(end.reason), end.detail);
            row("ended", esc(&reason));
        }
        None => {
            row("last event", esc(&secs(run.last_s)));
            row(
                "ended",
                "<span class=\"warn\">no reverted event: the loader may have been killed"
                    .to_string()
                    + "</span>",
            );
        }
    }
    if let Some(abort) = &run.abort {
        let text = format!("at {}: {}: {}", secs(abort.at_s), abort.probe, abort.why);
        row(
            "abort",
            format!("<span class=\"warn\">{}</span>", esc(&text)),
        );
    }
    out.push_str("</dl>\n</header>\n");
}

fn timeline(out: &mut String, run: &Run, frame: Frame) -> Result<(), ReportError> {
    out.push_str("<section id=\"timeline\">\n<h2>Timeline</h2>\n");
    if run.bars.is_empty() {
        out.push_str("<p class=\"empty\">no applied event: no steps to draw</p>\n</section>\n");
        return Ok(());
    }
    out.push_str("<ul class=\"legend\">\n");
    out.push_str(
        "<li><span class=\"sw\" style=\"background:#999;opacity:.35\"></span>planned</li>\n\
         <li><span class=\"sw\" style=\"background:#555\"></span>on</li>\n",
    );
    abort_legend(out, run);
    out.push_str("</ul>\n");
    out.push_str(&charts::timeline(run, frame)?);
    out.push_str("</section>\n");
    Ok(())
}

fn counters(out: &mut String, run: &Run, frame: Frame) -> Result<(), ReportError> {
    out.push_str("<section id=\"counters\">\n<h2>Counters</h2>\n");
    if run.rates.is_empty() {
        out.push_str("<p class=\"empty\">no counter moved between samples</p>\n</section>\n");
        return Ok(());
    }
    out.push_str("<ul class=\"legend\">\n");
    for (i, series) in run.rates.iter().enumerate() {
        line_legend(out, i, &series.label);
    }
    abort_legend(out, run);
    out.push_str("</ul>\n");
    out.push_str(&charts::counters(run, frame)?);
    out.push_str("</section>\n");
    Ok(())
}

fn probes(out: &mut String, run: &Run, frame: Frame) -> Result<(), ReportError> {
    out.push_str("<section id=\"probes\">\n<h2>Probes</h2>\n");
    if run.probes.is_empty() {
        out.push_str("<p class=\"empty\">the run has no probes</p>\n</section>\n");
        return Ok(());
    }
    out.push_str("<ul class=\"legend\">\n");
    for (i, probe) in run.probes.iter().enumerate() {
        line_legend(out, i, &format!("{} latency", probe.name));
    }
    out.push_str(
        "<li><span class=\"sw cross\">&#215;</span>failed check</li>\n\
         <li><span class=\"sw\" style=\"background:#d62728;opacity:.15\"></span>failing</li>\n",
    );
    abort_legend(out, run);
    out.push_str("</ul>\n");
    out.push_str(&charts::probes(run, frame)?);
    out.push_str("</section>\n");
    Ok(())
}

fn line_legend(out: &mut String, i: usize, label: &str) {
    let _ = writeln!(
        out,
        "<li><span class=\"sw line\" style=\"background:{}\"></span>{}</li>",
        charts::css_color(i),
        esc(label)
    );
}

fn abort_legend(out: &mut String, run: &Run) {
    if let Some(abort) = &run.abort {
        let _ = writeln!(
            out,
            "<li><span class=\"sw line\" style=\"background:#c80000;width:3px;height:12px\">\
             </span>abort at {}</li>",
            esc(&secs(abort.at_s))
        );
    }
}

fn targets(out: &mut String, run: &Run) {
    out.push_str("<section id=\"targets\">\n<h2>Targets</h2>\n");
    if run.targets().is_empty() {
        out.push_str("<p class=\"empty\">no targets recorded</p>\n</section>\n");
        return;
    }
    out.push_str("<table>\n<tr><th>target</th><th>cgroup</th><th>group</th></tr>\n");
    for t in run.targets() {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.name),
            esc(&t.cgroup),
            esc(t.group.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</table>\n</section>\n");
}

fn final_counts(out: &mut String, run: &Run) {
    out.push_str("<section id=\"final\">\n<h2>Final counters</h2>\n");
    if run.final_rules.is_empty() && run.final_probes.is_empty() {
        out.push_str("<p class=\"empty\">no counters recorded</p>\n</section>\n");
        return;
    }
    if !run.final_rules.is_empty() {
        out.push_str(
            "<table>\n<tr><th>rule</th><th>summary</th><th>step</th><th class=\"n\">seen</th>\
             <th class=\"n\">dropped</th><th class=\"n\">corrupted</th>\
             <th class=\"n\">duplicated</th><th class=\"n\">delayed</th></tr>\n",
        );
        for c in &run.final_rules {
            let info = run.rule(&c.rule);
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td></tr>",
                esc(&c.rule),
                esc(info.map_or("", |r| r.summary.as_str())),
                esc(info.and_then(|r| r.step.as_deref()).unwrap_or("")),
                c.seen,
                c.dropped,
                c.corrupted,
                c.duplicated,
                c.delayed,
            );
        }
        out.push_str("</table>\n");
    }
    if !run.final_probes.is_empty() {
        out.push_str(
            "<table class=\"probes\">\n<tr><th>probe</th><th class=\"n\">ok</th><th class=\"n\">failed</th>\
             <th class=\"n\">last latency</th></tr>\n",
        );
        for p in &run.final_probes {
            let latency = p
                .last_latency_ms
                .map_or(String::new(), |ms| format!("{ms:.1} ms"));
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td></tr>",
                esc(&p.probe),
                p.ok,
                p.failed,
                esc(&latency),
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</section>\n");
}

fn notes(out: &mut String, run: &Run) {
    out.push_str("<section id=\"events\">\n<h2>Events</h2>\n");
    if run.notes.is_empty() {
        out.push_str("<p class=\"empty\">nothing but samples</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table class=\"log\">\n<tr><th class=\"n\">at</th><th>event</th><th>what</th></tr>\n",
    );
    for note in run.notes.iter().take(MAX_NOTES) {
        let _ = writeln!(
            out,
            "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&secs(note.at_s)),
            esc(note.kind),
            esc(&note.text),
        );
    }
    out.push_str("</table>\n");
    if run.notes.len() > MAX_NOTES {
        let _ = writeln!(
            out,
            "<p class=\"empty\">and {} more events, in the log</p>",
            run.notes.len() - MAX_NOTES
        );
    }
    out.push_str("</section>\n");
}

fn policy(out: &mut String, run: &Run) {
    out.push_str("<section id=\"policy\">\n<h2>Policy</h2>\n");
    match &run.applied {
        Some(a) => {
            let _ = write!(
                out,
                "<p>{}</p>\n<pre>{}</pre>\n",
                esc(&a.file.display().to_string()),
                esc(&a.text)
            );
        }
        None => out.push_str(
            "<p class=\"empty\">the policy text comes with the applied event, which this log \
             lacks</p>\n",
        ),
    }
    out.push_str("</section>\n");
}

/// `2026-12-02T03:30:00.123Z` as `2026-12-02 03:30:00.123 UTC`.
fn wall(rfc3339: &str) -> String {
    match rfc3339.strip_suffix('Z') {
        Some(t) => format!("{} UTC", t.replacen('T', " ", 1)),
        None => rfc3339.replacen('T', " ", 1),
    }
}

fn secs(s: f64) -> String {
    format!("{s:.1} s")
}

fn reason(r: Reason) -> &'static str {
    match r {
        Reason::Deadline => "deadline",
        Reason::Signal => "signal",
        Reason::Stopped => "stopped",
        Reason::Aborted => "aborted",
        Reason::Failed => "failed",
        Reason::LoaderDied => "loader died",
    }
}
