//! SVG plots of benchmark and demo results, and migration phase timelines
//! as SVG and PNG.

use std::{
    ops::Range,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// Grouped bar chart: one group per metric, one bar per series (e.g. shim).
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    metrics: &[&str],
    series: &[(&str, Vec<f64>)],
) -> Result<()> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let ymax = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        * 1.2
        + 1e-9;
    let n = series.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..metrics.len() as f64, 0.0..ymax)
        .map_err(|e| anyhow!("plot: {e}"))?;
    let labels: Vec<String> = metrics.iter().map(|s| s.to_string()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_label)
        .x_labels(metrics.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.26 && i < labels.len() {
                labels[i].clone()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN];
    let width = 0.8 / n as f64;
    for (si, (name, values)) in series.iter().enumerate() {
        let color = palette[si % palette.len()];
        chart
            .draw_series(values.iter().enumerate().map(|(mi, v)| {
                let x0 = mi as f64 + 0.1 + si as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.95, *v)], color.filled())
            }))
            .map_err(|e| anyhow!("plot: {e}"))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("plot: {e}"))?;
    root.present().map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}

/// Points of a predicted-vs-measured panel: (predicted, measured, group).
pub type Points = Vec<(f64, f64, String)>;

/// Predicted-vs-measured scatter, one panel per quantity, with the y = x line
/// and the ±20% band: points inside the band are predictions within 20%.
pub fn predicted_vs_measured(path: &Path, title: &str, panels: &[(&str, Points)]) -> Result<()> {
    let root = SVGBackend::new(path, (520 * panels.len().max(1) as u32, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| anyhow!("plot: {e}"))?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for ((name, pts), area) in panels.iter().zip(areas.iter()) {
        let max = pts
            .iter()
            .flat_map(|(p, m, _)| [*p, *m])
            .filter(|v| v.is_finite())
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(*name, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max, 0.0..max)
            .map_err(|e| anyhow!("plot: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("predicted ms")
            .y_desc("measured ms")
            .draw()
            .map_err(|e| anyhow!("plot: {e}"))?;
        for (f, style) in [
            (1.0, BLACK.stroke_width(1)),
            (0.8, RGBColor(160, 160, 160).stroke_width(1)),
            (1.2, RGBColor(160, 160, 160).stroke_width(1)),
        ] {
            chart
                .draw_series(LineSeries::new([(0.0, 0.0), (max, max * f)], style))
                .map_err(|e| anyhow!("plot: {e}"))?;
        }
        let mut groups: Vec<String> = pts.iter().map(|(_, _, g)| g.clone()).collect();
        groups.sort();
        groups.dedup();
        for (gi, g) in groups.iter().enumerate() {
            let color = palette[gi % palette.len()];
            chart
                .draw_series(
                    pts.iter()
                        .filter(|(_, _, pg)| pg == g)
                        .map(|(p, m, _)| Circle::new((*p, *m), 4, color.filled())),
                )
                .map_err(|e| anyhow!("plot: {e}"))?
                .label(g.as_str())
                .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| anyhow!("plot: {e}"))?;
    }
    root.present().map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}

/// One phase of a migration on its timeline, in ms since the migration was
/// requested.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelinePhase {
    pub name: String,
    pub start_ms: f64,
    pub duration_ms: f64,
}

impl TimelinePhase {
    pub fn new(name: impl Into<String>, start_ms: f64, duration_ms: f64) -> Self {
        Self {
            name: name.into(),
            start_ms,
            duration_ms,
        }
    }

    fn end_ms(&self) -> f64 {
        self.start_ms + self.duration_ms
    }
}

/// One migration on a phase timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineBar {
    pub label: String,
    /// Its phases; one lying inside another (the destination's `dest: …`
    /// steps inside `restore`) is drawn as a thinner strip within it.
    pub phases: Vec<TimelinePhase>,
    /// Where the service was out: (start_ms, end_ms) on the bar's own axis.
    pub downtime: Option<(f64, f64)>,
    pub failed: bool,
}

impl TimelineBar {
    /// From a MOSE migration result as JSON (`mose_migrate::MigrationResult`:
    /// `phases: [{name, start_ms, duration_ms, bytes?}]`, `downtime_ms`,
    /// `status`); `failed` unless `status` is `ok`.
    ///
    /// The downtime window runs from the start of `freeze+dump` (the source
    /// takes its freeze time as that phase begins) to the end of `restore`
    /// (the source takes `downtime_ms` as it ends that phase; post-copy and
    /// hybrid end it at the destination's restored instant, where `lazy
    /// pages` begins): within a millisecond of `downtime_ms` in every run of
    /// results/bench-migration.json. Where the phases disagree with
    /// `downtime_ms` by more than 1 ms, the window is `downtime_ms` long and
    /// starts at 0 when `restore` ends `downtime_ms` after the migration's
    /// start (a container frozen with its pod is out from the start), else at
    /// the start of `freeze+dump` (a rollback: the source resumed after its
    /// last phase), else at 0. No window when `downtime_ms` is 0 or absent.
    pub fn from_result(label: impl Into<String>, result: &serde_json::Value) -> TimelineBar {
        let phases = phases_of(result);
        let downtime_ms = result["downtime_ms"].as_f64().unwrap_or(0.0);
        TimelineBar {
            label: label.into(),
            downtime: downtime_window(&phases, downtime_ms),
            failed: result["status"].as_str() != Some("ok"),
            phases,
        }
    }

    fn end_ms(&self) -> f64 {
        let phases = self.phases.iter().map(TimelinePhase::end_ms);
        let downtime = self.downtime.map(|(_, e)| e);
        phases.chain(downtime).fold(0.0, f64::max)
    }
}

/// The phases of a result's JSON, skipping entries without a name or times.
fn phases_of(result: &serde_json::Value) -> Vec<TimelinePhase> {
    let Some(phases) = result["phases"].as_array() else {
        return Vec::new();
    };
    phases
        .iter()
        .filter_map(|p| {
            Some(TimelinePhase::new(
                p["name"].as_str()?,
                p["start_ms"].as_f64()?,
                p["duration_ms"].as_f64()?,
            ))
        })
        .collect()
}

/// See [`TimelineBar::from_result`].
fn downtime_window(phases: &[TimelinePhase], downtime_ms: f64) -> Option<(f64, f64)> {
    if downtime_ms <= 0.0 || !downtime_ms.is_finite() {
        return None;
    }
    let named = |n: &str| phases.iter().rev().find(|p| p.name == n);
    let freeze = named("freeze+dump").map(|p| p.start_ms);
    let restored = named("restore").map(TimelinePhase::end_ms);
    let near = |a: f64, b: f64| (a - b).abs() <= 1.0;
    match (freeze, restored) {
        (Some(s), Some(e)) if near(e - s, downtime_ms) => Some((s, e)),
        (_, Some(e)) if near(e, downtime_ms) => Some((0.0, e)),
        (Some(s), _) => Some((s, s + downtime_ms)),
        (None, _) => Some((0.0, downtime_ms)),
    }
}

/// Shades of the pre-copy rounds (`round 1..N`), alternating.
const ROUND_SHADES: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(120, 180, 220),
    RGBColor(8, 69, 148),
    RGBColor(170, 205, 230),
];

/// Colours of MOSE's own phases (migrate/src/sender) and the baseline's.
const KNOWN_COLORS: [(&str, RGBColor); 9] = [
    ("prepare", RGBColor(190, 190, 190)),
    ("image", RGBColor(140, 86, 75)),
    ("layout hint", RGBColor(188, 189, 34)),
    ("freeze+dump", RGBColor(255, 127, 14)),
    ("checkpoint", RGBColor(214, 39, 40)),
    ("transfer", RGBColor(23, 190, 207)),
    ("restore", RGBColor(44, 160, 44)),
    ("lazy pages", RGBColor(197, 176, 213)),
    ("release", RGBColor(110, 110, 110)),
];

/// Colours for other phase names (the destination's steps among them), in
/// order of first appearance.
const OTHER_COLORS: [RGBColor; 10] = [
    RGBColor(148, 103, 189),
    RGBColor(227, 119, 194),
    RGBColor(255, 187, 120),
    RGBColor(152, 223, 138),
    RGBColor(196, 156, 148),
    RGBColor(219, 219, 141),
    RGBColor(158, 218, 229),
    RGBColor(255, 152, 150),
    RGBColor(199, 199, 199),
    RGBColor(247, 182, 210),
];

/// The number of a pre-copy round's phase (`round 3` → 3).
fn round_number(name: &str) -> Option<usize> {
    name.strip_prefix("round ")?.parse().ok()
}

/// Where a phase goes in the legend: in the order a migration runs them,
/// the destination's steps after `restore`, other names last.
fn legend_rank(text: &str, swatch: Swatch) -> usize {
    const ORDER: [&str; 11] = [
        "prepare",
        "image",
        "round",
        "layout hint",
        "checkpoint",
        "freeze+dump",
        "transfer",
        "restore",
        "dest: ",
        "lazy pages",
        "release",
    ];
    let key = match swatch {
        Swatch::Rounds => "round",
        _ if text.starts_with("dest: ") => "dest: ",
        _ => text,
    };
    ORDER.iter().position(|k| *k == key).unwrap_or(ORDER.len())
}

/// What a legend entry shows beside its text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Swatch {
    Fill(RGBColor),
    Rounds,
    Downtime,
}

/// One colour per distinct phase name, the same on every bar, and the
/// legend in order of first appearance.
struct Colors {
    named: Vec<(String, RGBColor)>,
    legend: Vec<(String, Swatch)>,
}

impl Colors {
    fn of(bars: &[TimelineBar]) -> Self {
        let mut c = Colors {
            named: Vec::new(),
            legend: Vec::new(),
        };
        let mut rounds = 0;
        for p in bars.iter().flat_map(|b| &b.phases) {
            match round_number(&p.name) {
                Some(k) => {
                    if rounds == 0 {
                        c.legend.push((String::new(), Swatch::Rounds));
                    }
                    rounds = rounds.max(k);
                }
                None => c.add(&p.name),
            }
        }
        if let Some(e) = c.legend.iter_mut().find(|e| e.1 == Swatch::Rounds) {
            e.0 = match rounds {
                1 => "round 1".to_string(),
                n => format!("round 1..{n}"),
            };
        }
        c.legend
            .sort_by_key(|(text, swatch)| legend_rank(text, *swatch));
        if bars.iter().any(|b| b.downtime.is_some()) {
            c.legend.push(("downtime".to_string(), Swatch::Downtime));
        }
        c
    }

    fn add(&mut self, name: &str) {
        if self.named.iter().any(|(n, _)| n == name) {
            return;
        }
        let known = KNOWN_COLORS.iter().find(|(n, _)| *n == name).map(|k| k.1);
        let used = |c: &RGBColor| self.named.iter().any(|(_, u)| u == c);
        let free = OTHER_COLORS.iter().find(|c| !used(c));
        let color = known
            .or(free.copied())
            .unwrap_or(OTHER_COLORS[self.named.len() % OTHER_COLORS.len()]);
        self.named.push((name.to_string(), color));
        self.legend.push((name.to_string(), Swatch::Fill(color)));
    }

    fn color(&self, name: &str) -> RGBColor {
        if let Some(k) = round_number(name) {
            return ROUND_SHADES[k.saturating_sub(1) % ROUND_SHADES.len()];
        }
        let found = self.named.iter().find(|(n, _)| n == name);
        found.map_or(RGBColor(128, 128, 128), |(_, c)| *c)
    }
}

/// Pixel sizes of the timeline.
const WIDTH: u32 = 1100;
const SLOT_PX: u32 = 58;
const TOP_PX: u32 = 50;
const AXIS_PX: u32 = 50;
const LEGEND_ROW_PX: i32 = 24;
/// Font size of labels, legend and annotations (plotters' units).
const FONT: u32 = 16;
/// Estimated width of one character of that font, in pixels.
const CHAR_PX: f64 = 7.6;

/// Where the legend entries go: (x, row) from the legend's top left, in
/// columns as wide as the longest entry.
fn legend_positions(legend: &[(String, Swatch)]) -> Vec<(i32, i32)> {
    let longest = legend.iter().map(|(t, _)| t.chars().count()).max();
    let column = 30 + (longest.unwrap_or(0) as f64 * CHAR_PX) as i32 + 24;
    let columns = ((WIDTH as i32 - 40) / column).max(1);
    (0..legend.len() as i32)
        .map(|k| ((k % columns) * column, k / columns))
        .collect()
}

/// The drawing's height: title, one slot per bar, axis and legend.
fn timeline_height(bars: usize, legend: &[(String, Swatch)]) -> u32 {
    let rows = legend_positions(legend).last().map_or(0, |p| p.1 + 1);
    TOP_PX + SLOT_PX * bars.max(1) as u32 + AXIS_PX + (rows * LEGEND_ROW_PX + 20) as u32
}

/// The time axis: milliseconds, or seconds past 5 s.
struct Axis {
    max_ms: f64,
    per_unit: f64,
    unit: &'static str,
}

impl Axis {
    fn of(bars: &[TimelineBar]) -> Self {
        let end = bars.iter().map(TimelineBar::end_ms).fold(0.0, f64::max);
        let max_ms = if end > 0.0 { end * 1.03 } else { 1.0 };
        let (per_unit, unit) = if max_ms > 5000.0 {
            (1000.0, "s")
        } else {
            (1.0, "ms")
        };
        Axis {
            max_ms,
            per_unit,
            unit,
        }
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The plotting area in pixels, and where a time and a bar's slot fall in it.
struct Frame<'r, 'a> {
    root: &'r Area<'a>,
    x: Range<i32>,
    y: Range<i32>,
    max_ms: f64,
    bars: usize,
}

impl Frame<'_, '_> {
    fn px(&self, ms: f64) -> i32 {
        let f = (ms / self.max_ms).clamp(0.0, 1.0);
        self.x.start + (f * f64::from(self.x.end - self.x.start)).round() as i32
    }

    /// `frac` 0 is the top of bar `i`'s slot, 1 its bottom.
    fn py(&self, i: usize, frac: f64) -> i32 {
        let slot = f64::from(self.y.end - self.y.start) / self.bars.max(1) as f64;
        self.y.start + ((i as f64 + frac) * slot).round() as i32
    }

    fn text(&self, s: &str, at: (i32, i32), color: RGBColor, pos: Pos, bold: bool) -> Result<()> {
        let weight = if bold {
            FontStyle::Bold
        } else {
            FontStyle::Normal
        };
        let style = ("sans-serif", FONT, weight)
            .into_font()
            .color(&color)
            .pos(pos);
        self.root.draw(&Text::new(s, at, style)).map_err(plot_err)
    }

    fn rect(&self, a: (i32, i32), b: (i32, i32), style: ShapeStyle) -> Result<()> {
        self.root
            .draw(&Rectangle::new([a, b], style))
            .map_err(plot_err)
    }

    fn line(&self, a: (i32, i32), b: (i32, i32), style: ShapeStyle) -> Result<()> {
        self.root
            .draw(&PathElement::new(vec![a, b], style))
            .map_err(plot_err)
    }
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// Top and bottom of a phase in its slot: a phase inside another is a
/// thinner strip at the bottom of it.
const BAR: (f64, f64) = (0.38, 0.84);
const NESTED: (f64, f64) = (0.62, 0.84);
/// The downtime box, a little taller than the bar.
const DOWNTIME: (f64, f64) = (0.32, 0.90);

/// Whether `p` lies inside another phase of `phases` (a destination step
/// inside `restore`).
fn nested(p: &TimelinePhase, phases: &[TimelinePhase]) -> bool {
    const EPS: f64 = 0.01;
    phases.iter().any(|q| {
        !std::ptr::eq(p, q)
            && q.duration_ms > p.duration_ms
            && q.start_ms - EPS <= p.start_ms
            && p.end_ms() <= q.end_ms() + EPS
    })
}

fn draw_phases(f: &Frame, i: usize, bar: &TimelineBar, colors: &Colors) -> Result<()> {
    for inner in [false, true] {
        for p in bar
            .phases
            .iter()
            .filter(|p| nested(p, &bar.phases) == inner)
        {
            let (top, bottom) = if inner { NESTED } else { BAR };
            let x0 = f.px(p.start_ms);
            let x1 = f.px(p.end_ms()).max(x0 + 1);
            let color = colors.color(&p.name);
            f.rect((x0, f.py(i, top)), (x1, f.py(i, bottom)), color.filled())?;
        }
    }
    Ok(())
}

/// Diagonal hatching inside a pixel box.
fn hatch(f: &Frame, (x0, y0): (i32, i32), (x1, y1): (i32, i32), style: ShapeStyle) -> Result<()> {
    let h = y1 - y0;
    let mut s = x0 - h;
    while s < x1 {
        // the line from (s, y1) to (s + h, y0), clipped to x0..x1
        let (a, b) = (s.max(x0), (s + h).min(x1));
        if a < b {
            f.line((a, y1 - (a - s)), (b, y1 - (b - s)), style)?;
        }
        s += 7;
    }
    Ok(())
}

fn draw_downtime(f: &Frame, i: usize, (start, end): (f64, f64)) -> Result<()> {
    let (x0, x1) = (f.px(start), f.px(end).max(f.px(start) + 2));
    let (y0, y1) = (f.py(i, DOWNTIME.0), f.py(i, DOWNTIME.1));
    hatch(f, (x0, y0), (x1, y1), BLACK.mix(0.35).stroke_width(1))?;
    f.rect((x0, y0), (x1, y1), BLACK.stroke_width(2))?;
    let text = format!("downtime {:.0} ms", end - start);
    let width = (text.chars().count() as f64 * CHAR_PX) as i32;
    let (x, h) = if x0 + width <= f.x.end + 60 {
        (x0, HPos::Left)
    } else {
        (x1, HPos::Right)
    };
    let pos = Pos::new(h, VPos::Bottom);
    f.text(&text, (x, f.py(i, 0.29)), BLACK, pos, true)
}

const FAILED_RED: RGBColor = RGBColor(190, 0, 0);

fn draw_bar(f: &Frame, i: usize, bar: &TimelineBar, colors: &Colors) -> Result<()> {
    draw_phases(f, i, bar, colors)?;
    if let Some(w) = bar.downtime {
        draw_downtime(f, i, w)?;
    }
    let mid = f.py(i, (BAR.0 + BAR.1) / 2.0);
    let label_color = if bar.failed { FAILED_RED } else { BLACK };
    let right_center = Pos::new(HPos::Right, VPos::Center);
    f.text(
        &bar.label,
        (f.x.start - 10, mid),
        label_color,
        right_center,
        false,
    )?;
    if bar.failed {
        let x = f.px(bar.end_ms()) + 8;
        let left_center = Pos::new(HPos::Left, VPos::Center);
        f.text("FAILED", (x, mid), FAILED_RED, left_center, true)?;
    }
    Ok(())
}

fn draw_swatch(f: &Frame, (x, y): (i32, i32), swatch: Swatch) -> Result<()> {
    let (a, b) = ((x, y - 7), (x + 22, y + 7));
    match swatch {
        Swatch::Fill(c) => f.rect(a, b, c.filled()),
        Swatch::Rounds => {
            for (k, c) in ROUND_SHADES.iter().enumerate() {
                let x0 = x + 22 * k as i32 / 4;
                f.rect(
                    (x0, y - 7),
                    (x + 22 * (k as i32 + 1) / 4, y + 7),
                    c.filled(),
                )?;
            }
            Ok(())
        }
        Swatch::Downtime => {
            hatch(f, a, b, BLACK.mix(0.35).stroke_width(1))?;
            f.rect(a, b, BLACK.stroke_width(2))
        }
    }
}

fn draw_legend(f: &Frame, top: i32, colors: &Colors) -> Result<()> {
    let left = 20;
    let positions = legend_positions(&colors.legend);
    for ((text, swatch), (x, row)) in colors.legend.iter().zip(positions) {
        let y = top + row * LEGEND_ROW_PX + LEGEND_ROW_PX / 2;
        draw_swatch(f, (left + x, y), *swatch)?;
        let pos = Pos::new(HPos::Left, VPos::Center);
        f.text(text, (left + x + 30, y), BLACK, pos, false)?;
    }
    Ok(())
}

/// Pixels left of the plot for the bars' labels.
fn label_area(bars: &[TimelineBar]) -> u32 {
    let longest = bars.iter().map(|b| b.label.chars().count()).max();
    (longest.unwrap_or(0) as f64 * CHAR_PX + 24.0).clamp(80.0, 360.0) as u32
}

/// A time axis label: no decimals where the ticks are whole.
fn tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Title, time axis and grid; returns the plotting area in pixels.
fn draw_axes(
    root: &Area,
    title: &str,
    bars: &[TimelineBar],
    axis: &Axis,
) -> Result<(Range<i32>, Range<i32>)> {
    let chart_h = TOP_PX + SLOT_PX * bars.len().max(1) as u32 + AXIS_PX;
    let (area, _) = root.split_vertically(chart_h);
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 22))
        .margin(10)
        .margin_right(90)
        .x_label_area_size(AXIS_PX - 10)
        .y_label_area_size(label_area(bars))
        .build_cartesian_2d(0.0..axis.max_ms / axis.per_unit, 0.0..1.0)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc(format!(
            "time since the migration was requested ({})",
            axis.unit
        ))
        .label_style(("sans-serif", FONT))
        .axis_desc_style(("sans-serif", FONT))
        .light_line_style(RGBColor(242, 242, 242))
        .x_label_formatter(&|v| tick(*v))
        .draw()
        .map_err(plot_err)?;
    Ok(chart.plotting_area().get_pixel_range())
}

/// The timeline as SVG text.
fn timeline_svg(title: &str, bars: &[TimelineBar]) -> Result<String> {
    let colors = Colors::of(bars);
    let axis = Axis::of(bars);
    let height = timeline_height(bars.len(), &colors.legend);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (x, y) = draw_axes(&root, title, bars, &axis)?;
        let legend_top = y.end + AXIS_PX as i32;
        let f = Frame {
            root: &root,
            x,
            y,
            max_ms: axis.max_ms,
            bars: bars.len(),
        };
        for (i, bar) in bars.iter().enumerate() {
            draw_bar(&f, i, bar, &colors)?;
        }
        draw_legend(&f, legend_top, &colors)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Where the PNG plots' font is, from Debian's fonts-dejavu-core.
const FONT_DIR: &str = "/usr/share/fonts/truetype/dejavu";

/// DejaVu Sans (regular and bold) from `dir` as the SVG's `sans-serif`.
fn fonts(dir: &Path) -> Result<resvg::usvg::fontdb::Database> {
    let mut db = resvg::usvg::fontdb::Database::new();
    for file in ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf"] {
        let path = dir.join(file);
        let data = std::fs::read(&path).with_context(|| {
            format!(
                "reading the font {} for the PNG plots (install the Debian package fonts-dejavu-core)",
                path.display()
            )
        })?;
        db.load_font_data(data);
    }
    db.set_sans_serif_family("DejaVu Sans");
    Ok(db)
}

/// Renders SVG text to a PNG file with resvg.
pub fn svg_to_png(svg: &str, path: &Path) -> Result<()> {
    let opt = resvg::usvg::Options {
        font_family: "DejaVu Sans".to_string(),
        fontdb: std::sync::Arc::new(fonts(Path::new(FONT_DIR))?),
        ..Default::default()
    };
    let tree = resvg::usvg::Tree::from_str(svg, &opt).context("parsing the SVG plot")?;
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| anyhow!("the SVG plot is empty"))?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(&tree, Default::default(), &mut pixmap.as_mut());
    pixmap
        .save_png(path)
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

/// Phase timeline: one horizontal bar per migration, its phases as coloured
/// segments on a shared time axis (ms, or s past 5 s), one colour per phase
/// name on every bar (pre-copy rounds in shades of blue), the destination's
/// steps as a thin strip inside `restore`, the downtime window as a hatched
/// black box with its length in ms above it, and failed migrations' labels
/// in red with FAILED after the bar. Writes `<stem>.svg` and `<stem>.png`
/// (rendered from the SVG with resvg, in DejaVu Sans from
/// fonts-dejavu-core) into `dir`; returns their paths.
pub fn phase_timeline(
    dir: &Path,
    stem: &str,
    title: &str,
    bars: &[TimelineBar],
) -> Result<(PathBuf, PathBuf)> {
    let svg = timeline_svg(title, bars)?;
    let svg_path = dir.join(format!("{stem}.svg"));
    std::fs::write(&svg_path, &svg).with_context(|| format!("writing {}", svg_path.display()))?;
    let png_path = dir.join(format!("{stem}.png"));
    svg_to_png(&svg, &png_path)?;
    Ok((svg_path, png_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// results/bench-migration.json, runs[1].detail (64 MiB, 0 MiB/s,
    /// 1000 Mbit/s), trimmed to what the timeline reads.
    const POSTCOPY: &str = r#"{"status": "ok", "technique": "postcopy", "downtime_ms": 203.351287, "total_ms": 1066.344078, "phases": [{"duration_ms": 11.193039, "name": "prepare", "start_ms": 0.009269}, {"duration_ms": 107.157208, "name": "freeze+dump", "start_ms": 11.237598}, {"bytes": 126931, "duration_ms": 4.052665000000005, "name": "transfer", "start_ms": 118.395857}, {"duration_ms": 0.201638, "name": "dest: assemble image", "start_ms": 122.899301}, {"duration_ms": 0.299174, "name": "dest: rootfs (container staged)", "start_ms": 123.100939}, {"duration_ms": 11.005135, "name": "dest: create task", "start_ms": 123.400113}, {"duration_ms": 80.183272, "name": "dest: CRIU restore", "start_ms": 134.405248}, {"duration_ms": 92.13484100000002, "name": "restore", "start_ms": 122.453679}, {"bytes": 67671938, "duration_ms": 804.0438419999999, "name": "lazy pages", "start_ms": 214.58852}, {"duration_ms": 47.70628999999997, "name": "release", "start_ms": 1018.633368}]}"#;

    /// runs[3].detail: hybrid, two pre-copy rounds.
    const HYBRID: &str = r#"{"status": "ok", "technique": "hybrid", "downtime_ms": 248.16839000000004, "total_ms": 1310.652376, "phases": [{"duration_ms": 17.030668, "name": "prepare", "start_ms": 0.016483}, {"bytes": 67651793, "duration_ms": 561.238459, "name": "round 1", "start_ms": 17.125373999999997}, {"bytes": 12477, "duration_ms": 46.82335999999998, "name": "round 2", "start_ms": 578.3701110000001}, {"duration_ms": 143.805881, "name": "freeze+dump", "start_ms": 625.351662}, {"bytes": 98148, "duration_ms": 4.888064999999983, "name": "transfer", "start_ms": 769.159762}, {"duration_ms": 0.353512, "name": "dest: assemble image", "start_ms": 774.932032}, {"duration_ms": 0.462625, "name": "dest: rootfs (container staged)", "start_ms": 775.2855440000001}, {"duration_ms": 15.049464, "name": "dest: create task", "start_ms": 775.7481690000001}, {"duration_ms": 82.722121, "name": "dest: CRIU restore", "start_ms": 790.7976330000001}, {"duration_ms": 99.46613200000002, "name": "restore", "start_ms": 774.053622}, {"bytes": 301102, "duration_ms": 387.72810600000014, "name": "lazy pages", "start_ms": 873.519754}, {"duration_ms": 49.39923599999997, "name": "release", "start_ms": 1261.248198}]}"#;

    /// runs[22].detail: a post-copy rolled back during its freeze+dump (the
    /// source resumed after the last phase: no `restore`).
    const ROLLED_BACK: &str = r#"{"status": "rolled-back", "technique": "postcopy", "downtime_ms": 16938.471713, "total_ms": 16915.689173, "phases": [{"duration_ms": 11.371509, "name": "prepare", "start_ms": 0.0034549999999999997}, {"duration_ms": 16902.998659, "name": "freeze+dump", "start_ms": 11.394457}]}"#;

    fn bar(label: &str, json: &str) -> TimelineBar {
        let v: serde_json::Value = serde_json::from_str(json).expect("test JSON");
        TimelineBar::from_result(label, &v)
    }

    fn names(b: &TimelineBar) -> Vec<&str> {
        b.phases.iter().map(|p| p.name.as_str()).collect()
    }

    fn window_len(b: &TimelineBar) -> f64 {
        let (s, e) = b.downtime.expect("a downtime window");
        e - s
    }

    /// The baseline of runs[0] (ctr checkpoint, tar over TCP, restore), as
    /// the benchmark would hand it over: down for the whole span.
    fn baseline() -> TimelineBar {
        let phases = vec![
            TimelinePhase::new("checkpoint", 0.0, 152.4),
            TimelinePhase::new("transfer", 152.4, 1260.2),
            TimelinePhase::new("restore", 1412.6, 221.4),
        ];
        TimelineBar {
            label: "baseline n1→n2".into(),
            downtime: Some((0.0, 1634.0)),
            phases,
            failed: false,
        }
    }

    #[test]
    fn from_result_postcopy() {
        let b = bar("postcopy n1→n2", POSTCOPY);
        assert_eq!(b.label, "postcopy n1→n2");
        assert!(!b.failed);
        assert_eq!(
            names(&b),
            [
                "prepare",
                "freeze+dump",
                "transfer",
                "dest: assemble image",
                "dest: rootfs (container staged)",
                "dest: create task",
                "dest: CRIU restore",
                "restore",
                "lazy pages",
                "release"
            ]
        );
        assert_eq!(b.phases[1].start_ms, 11.237598);
        assert_eq!(b.phases[1].duration_ms, 107.157208);
        let (start, end) = b.downtime.expect("a downtime window");
        assert_eq!(start, 11.237598, "starts with freeze+dump");
        assert!((end - 214.58852).abs() < 0.01, "ends as lazy pages begin");
        assert!((window_len(&b) - 203.351287).abs() < 1.0);
    }

    #[test]
    fn from_result_hybrid_rounds() {
        let b = bar("hybrid", HYBRID);
        assert_eq!(
            &names(&b)[..4],
            ["prepare", "round 1", "round 2", "freeze+dump"]
        );
        assert_eq!(b.downtime.map(|w| w.0), Some(625.351662));
        assert!((window_len(&b) - 248.16839).abs() < 1.0);
        let c = Colors::of(&[b]);
        assert_ne!(c.color("round 1"), c.color("round 2"));
        let rounds: Vec<_> = c.legend.iter().filter(|e| e.1 == Swatch::Rounds).collect();
        assert_eq!(rounds.len(), 1, "one legend entry for the rounds");
        assert_eq!(rounds[0].0, "round 1..2");
    }

    #[test]
    fn from_result_rolled_back() {
        let b = bar("postcopy", ROLLED_BACK);
        assert!(b.failed);
        assert_eq!(names(&b), ["prepare", "freeze+dump"]);
        // no restore: freeze+dump's start plus downtime_ms
        let (start, end) = b.downtime.expect("a downtime window");
        assert_eq!(start, 11.394457);
        assert!((end - start - 16938.471713).abs() < 1e-6);
    }

    /// Not a measured run: the shape of a container frozen with its pod,
    /// whose downtime counts from the migration's start.
    #[test]
    fn from_result_frozen_before_the_migration() {
        let json = r#"{"status": "ok", "downtime_ms": 300.0, "phases": [
            {"name": "prepare", "start_ms": 0.0, "duration_ms": 10.0},
            {"name": "freeze+dump", "start_ms": 10.0, "duration_ms": 150.0},
            {"name": "restore", "start_ms": 160.0, "duration_ms": 140.0},
            {"name": "release", "start_ms": 300.0, "duration_ms": 5.0}]}"#;
        assert_eq!(bar("pod", json).downtime, Some((0.0, 300.0)));
        let none = r#"{"status": "failed", "downtime_ms": 0.0, "phases": []}"#;
        assert_eq!(bar("never frozen", none).downtime, None);
    }

    #[test]
    fn nested_phases_are_the_destination_steps() {
        let b = bar("postcopy", POSTCOPY);
        let inner: Vec<&str> = b
            .phases
            .iter()
            .filter(|p| nested(p, &b.phases))
            .map(|p| p.name.as_str())
            .collect();
        assert!(inner.iter().all(|n| n.starts_with("dest: ")), "{inner:?}");
        assert_eq!(inner.len(), 4);
    }

    /// Width and height from a PNG's IHDR.
    fn png_size(data: &[u8]) -> (u32, u32) {
        let be =
            |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        (be(16), be(20))
    }

    fn check_outputs(bars: &[TimelineBar], svg: &Path, png: &Path) {
        let text = std::fs::read_to_string(svg).expect("the SVG");
        assert!(text.starts_with("<svg"), "{}", &text[..40.min(text.len())]);
        let colors = Colors::of(bars);
        for (entry, _) in &colors.legend {
            assert!(text.contains(entry.as_str()), "{entry} not in the SVG");
        }
        for b in bars {
            assert!(text.contains(&b.label), "{} not in the SVG", b.label);
        }
        let data = std::fs::read(png).expect("the PNG");
        assert_eq!(&data[..8], b"\x89PNG\r\n\x1a\n");
        let height = timeline_height(bars.len(), &colors.legend);
        assert_eq!(png_size(&data), (WIDTH, height));
        assert!(data.len() > 10_000, "a PNG of {} bytes", data.len());
    }

    #[test]
    fn a_missing_font_names_its_package() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let Err(e) = fonts(dir.path()) else {
            panic!("fonts loaded from an empty directory");
        };
        let msg = format!("{e:#}");
        assert!(msg.contains("fonts-dejavu-core"), "{msg}");
        assert!(msg.contains("DejaVuSans.ttf"), "{msg}");
    }

    #[test]
    fn phase_timeline_writes_svg_and_png() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let bars = [
            bar("postcopy n1→n2", POSTCOPY),
            bar("hybrid n2→n1", HYBRID),
            baseline(),
        ];
        let (svg, png) =
            phase_timeline(dir.path(), "t", "Phases, 64 MiB", &bars).expect("the timeline");
        assert_eq!(
            (svg.clone(), png.clone()),
            (dir.path().join("t.svg"), dir.path().join("t.png"))
        );
        check_outputs(&bars, &svg, &png);
        let text = std::fs::read_to_string(&svg).expect("the SVG");
        for name in bars.iter().flat_map(|b| &b.phases).map(|p| &p.name) {
            if round_number(name).is_none() {
                assert!(text.contains(name.as_str()), "{name} not in the SVG");
            }
        }
        for s in [
            "round 1..2",
            "downtime 203 ms",
            "downtime 248 ms",
            "downtime 1634 ms",
            "(ms)",
        ] {
            assert!(text.contains(s), "{s} not in the SVG");
        }
        assert!(!text.contains("FAILED"));
    }

    #[test]
    fn phase_timeline_marks_failures_in_seconds() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let bars = [
            bar("postcopy n1→n2", POSTCOPY),
            bar("postcopy n2→n1", ROLLED_BACK),
        ];
        let (svg, png) =
            phase_timeline(dir.path(), "f", "With a rollback", &bars).expect("the timeline");
        check_outputs(&bars, &svg, &png);
        let text = std::fs::read_to_string(&svg).expect("the SVG");
        for s in ["FAILED", "(s)", "downtime 16938 ms"] {
            assert!(text.contains(s), "{s} not in the SVG");
        }
    }
}
