//! The page's three charts, drawn with plotters into SVG strings: the steps on a timeline,
//! the counters' rates, and the probes' latencies.
//!
//! All three share the x axis (seconds since `applied`) and the width of the left label
//! area, so a moment sits at the same horizontal position in each of them. The legends are
//! the page's (HTML), in the colours [`color`] gives each series.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::data::Run;
use super::ReportError;

/// Distinct colours for lines and bars (Tableau 10), taken in order.
const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (214, 39, 40),
];
const ABORT: RGBColor = RGBColor(200, 0, 0);
const FAILING: RGBColor = RGBColor(214, 39, 40);
const FONT: &str = "sans-serif";
/// plotters writes a font size of `size / 1.24` into the SVG: 16 gives about 13 px.
const LABEL_SIZE: u32 = 16;

/// Chart width in pixels; the page is laid out for it.
pub const WIDTH: u32 = 960;
const ROW_HEIGHT: u32 = 44;
const X_AXIS_HEIGHT: u32 = 44;
const MARGIN: u32 = 14;
const PLOT_HEIGHT: u32 = 300;

/// The colour of series `i`, for the page's legends.
pub fn color(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// `#rrggbb`, for CSS.
pub fn css_color(i: usize) -> String {
    let c = color(i);
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

/// What the three charts share: the x range and the left label area.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub span_s: f64,
    /// Pixels left of the plot: wide enough for the longest step name.
    pub left: u32,
}

impl Frame {
    pub fn of(run: &Run) -> Frame {
        let longest = run
            .bars
            .iter()
            .map(|b| b.name.chars().count())
            .max()
            .unwrap_or(0);
        Frame {
            span_s: run.span_s(),
            // About 7.5 px a character at the label size, plus the tick marks.
            left: (longest.min(MAX_LABEL) as u32 * 15 / 2 + 18).clamp(70, 260),
        }
    }
}

/// Step names longer than this are cut, so the label area stays within bounds.
const MAX_LABEL: usize = 32;

fn label(name: &str) -> String {
    if name.chars().count() <= MAX_LABEL {
        return name.to_string();
    }
    let cut: String = name.chars().take(MAX_LABEL - 1).collect();
    format!("{cut}…")
}

fn draw_error<E: std::fmt::Display>(chart: &'static str) -> impl Fn(E) -> ReportError {
    move |e| ReportError::Draw {
        chart,
        message: e.to_string(),
    }
}

fn seconds(v: &f64) -> String {
    format!("{v:.0} s")
}

/// Milliseconds for an axis: whole above ten, two decimals below.
fn millis(v: &f64) -> String {
    if v.abs() >= 10.0 || *v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Short numbers for an axis: `850`, `1.2k`, `3.4M`, `0.25`.
fn human(v: &f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Steps as horizontal bars: planned windows light, on-periods solid, the abort as a red
/// vertical line. Rows go top to bottom in the run's order.
pub fn timeline(run: &Run, frame: Frame) -> Result<String, ReportError> {
    let rows = run.bars.len().max(1);
    let height = ROW_HEIGHT * rows as u32 + X_AXIS_HEIGHT + 2 * MARGIN;
    let err = draw_error("timeline");
    // Row r spans [r, r + 1) on the y axis, bottom up; bar i sits in row rows - 1 - i so
    // the first step is on top. Its name labels the row's middle.
    let row_of = |i: usize| (rows - 1 - i) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(MARGIN)
            .x_label_area_size(X_AXIS_HEIGHT - 8)
            .y_label_area_size(frame.left)
            .build_cartesian_2d(0.0..frame.span_s, 0.0..rows as f64)
            .map_err(&err)?;
        // The rows' names are drawn below, not by the mesh: it would label "nice" numbers,
        // not the rows' middles.
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_label_formatter(&seconds)
            .x_desc("seconds since applied")
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, LABEL_SIZE))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(&err)?;
        let name_style = TextStyle::from((FONT, LABEL_SIZE).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center));
        for (i, bar) in run.bars.iter().enumerate() {
            let r = row_of(i);
            let name = Text::new(label(&bar.name), (-8, 0), name_style.clone());
            chart
                .draw_series([EmptyElement::at((0.0, r + 0.5)) + name])
                .map_err(&err)?;
            let planned = color(i).mix(0.25).filled();
            let planned = bar.planned.iter().map(|&w| bar_rect(w, r, planned, 4));
            chart.draw_series(planned).map_err(&err)?;
            let actual = bar
                .actual
                .iter()
                .map(|&w| bar_rect(w, r, color(i).filled(), 10));
            chart.draw_series(actual).map_err(&err)?;
        }
        if let Some(abort) = &run.abort {
            let top = rows as f64;
            chart
                .draw_series(LineSeries::new(
                    [(abort.at_s, 0.0), (abort.at_s, top)],
                    ABORT.stroke_width(2),
                ))
                .map_err(&err)?;
            abort_label(
                &mut chart,
                (abort.at_s, top),
                abort.at_s > frame.span_s / 2.0,
            )
            .map_err(&err)?;
        }
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

/// The window `(from, to)` in row `row`, `inset` pixels shorter than the row at top and
/// bottom (the planned window is taller than the on-period drawn over it).
fn bar_rect(
    (from, to): (f64, f64),
    row: f64,
    style: ShapeStyle,
    inset: u32,
) -> Rectangle<(f64, f64)> {
    let corners = [(from, row), (to, row + 1.0)];
    let mut rect = Rectangle::new(corners, style);
    rect.set_margin(inset, inset, 0, 0);
    rect
}

/// One line per rule and counter that is non-zero (colour `i` for `run.rates[i]`).
pub fn counters(run: &Run, frame: Frame) -> Result<String, ReportError> {
    let top = run
        .rates
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let axis = Axis {
        desc: "per second",
        format: &human,
    };
    plot("counters", run, frame, axis, top, |chart, err| {
        for (i, series) in run.rates.iter().enumerate() {
            chart
                .draw_series(LineSeries::new(
                    series.points.iter().copied(),
                    color(i).stroke_width(2),
                ))
                .map_err(err)?;
        }
        Ok(())
    })
}

/// Latency per probe (colour `i` for `run.probes[i]`), failing periods shaded, failed checks
/// as red crosses.
pub fn probes(run: &Run, frame: Frame) -> Result<String, ReportError> {
    let top = run
        .probes
        .iter()
        .flat_map(|p| p.latency.iter().chain(&p.failures).map(|l| l.1))
        .fold(0.0, f64::max);
    let axis = Axis {
        desc: "latency (ms)",
        format: &millis,
    };
    plot("probes", run, frame, axis, top, |chart, err| {
        let ceiling = chart.y_range().end;
        for probe in &run.probes {
            let bands = probe.failing.iter().map(|&(a, b)| {
                Rectangle::new([(a, 0.0), (b, ceiling)], FAILING.mix(0.12).filled())
            });
            chart.draw_series(bands).map_err(err)?;
        }
        for (i, probe) in run.probes.iter().enumerate() {
            let style = color(i).stroke_width(2);
            chart
                .draw_series(LineSeries::new(probe.latency.iter().copied(), style))
                .map_err(err)?;
            chart
                .draw_series(
                    probe
                        .latency
                        .iter()
                        .map(|&p| Circle::new(p, 2, color(i).filled())),
                )
                .map_err(err)?;
            chart
                .draw_series(
                    probe
                        .failures
                        .iter()
                        .map(|&p| Cross::new(p, 5, FAILING.stroke_width(2))),
                )
                .map_err(err)?;
        }
        Ok(())
    })
}

/// A value axis: its description and how its labels read.
struct Axis<'f> {
    desc: &'static str,
    format: &'f dyn Fn(&f64) -> String,
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type DrawErr<'e> = &'e dyn Fn(DrawingAreaErrorKind<std::io::Error>) -> ReportError;

/// A time chart with a value axis from zero to a little above `top`, the series `draw`
/// adds, and the abort marker over them.
fn plot(
    name: &'static str,
    run: &Run,
    frame: Frame,
    axis: Axis<'_>,
    top: f64,
    draw: impl FnOnce(&mut Chart<'_, '_>, DrawErr<'_>) -> Result<(), ReportError>,
) -> Result<String, ReportError> {
    let err = draw_error(name);
    let ceiling = if top > 0.0 { top * 1.15 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, PLOT_HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(MARGIN)
            .x_label_area_size(X_AXIS_HEIGHT - 8)
            .y_label_area_size(frame.left)
            .build_cartesian_2d(0.0..frame.span_s, 0.0..ceiling)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_label_formatter(&seconds)
            .y_label_formatter(axis.format)
            .x_desc("seconds since applied")
            .y_desc(axis.desc)
            .label_style((FONT, LABEL_SIZE))
            .axis_desc_style((FONT, LABEL_SIZE))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(&err)?;
        draw(&mut chart, &err)?;
        abort_marker(&mut chart, run, ceiling).map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

/// A red vertical line at the abort, labelled at its top.
fn abort_marker(
    chart: &mut Chart<'_, '_>,
    run: &Run,
    ceiling: f64,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let Some(abort) = &run.abort else {
        return Ok(());
    };
    chart.draw_series(LineSeries::new(
        [(abort.at_s, 0.0), (abort.at_s, ceiling)],
        ABORT.stroke_width(2),
    ))?;
    let right_half = abort.at_s > chart.x_range().end / 2.0;
    abort_label(chart, (abort.at_s, ceiling), right_half)
}

/// "abort" beside the marker's top end `at`, on the side of the chart with more room.
fn abort_label<X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    at: (X::ValueType, Y::ValueType),
    right_half: bool,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let (anchor, dx) = if right_half {
        (HPos::Right, -6)
    } else {
        (HPos::Left, 6)
    };
    let style = TextStyle::from((FONT, LABEL_SIZE).into_font())
        .color(&ABORT)
        .pos(Pos::new(anchor, VPos::Top));
    chart.draw_series([EmptyElement::at(at) + Text::new("abort", (dx, 4), style)])?;
    Ok(())
}
