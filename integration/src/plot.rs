//! SVG plots of benchmark and demo results.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

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
