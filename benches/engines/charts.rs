//! SVG charts: throughput against workers, the latency CDF at 64 workers,
//! and the failover timeline around the first kill.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::workloads::SystemResults;

const SIZE: (u32, u32) = (900, 540);

fn color(index: usize) -> RGBColor {
    const COLORS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    COLORS[index % COLORS.len()]
}

fn draw_error(error: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {error:?}")
}

/// One line per system.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> anyhow::Result<()> {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x_min, mut x_max, mut y_max) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_max = y_max.max(y);
    }
    if x_min > x_max {
        (x_min, x_max) = (0.0, 1.0);
    }
    if x_max <= x_min {
        x_max = x_min + 1.0;
    }
    let y_max = if y_max <= 0.0 { 1.0 } else { y_max * 1.05 };
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .draw()
                .map_err(draw_error)?;
            for (index, s) in series.iter().enumerate() {
                let style = color(index);
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), style.stroke_width(2)))
                    .map_err(draw_error)?
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style.stroke_width(2)));
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(draw_error)?;
        }};
    }
    if log_x {
        let x_min = x_min.max(1e-3);
        draw!(builder
            .build_cartesian_2d((x_min..x_max.max(x_min * 2.0)).log_scale(), 0.0..y_max)
            .map_err(draw_error)?);
    } else {
        draw!(builder
            .build_cartesian_2d(x_min..x_max, 0.0..y_max)
            .map_err(draw_error)?);
    }
    root.present().map_err(draw_error)?;
    Ok(())
}

/// Draws the charts into `dir`; returns their file names.
pub fn draw_all(dir: &Path, results: &[SystemResults], cdf_workers: usize) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ran: Vec<&SystemResults> = results.iter().filter(|s| s.skipped.is_none()).collect();
    let mut names = Vec::new();

    let series: Vec<Series> = ran
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            points: s
                .uncontended
                .iter()
                .map(|(workers, row)| (*workers as f64, row.summary.throughput))
                .collect(),
        })
        .collect();
    let name = "throughput_vs_workers.svg";
    line_chart(
        &dir.join(name),
        "Uncontended acquire+release pairs/s by workers",
        "workers (log scale)",
        "pairs/s",
        &series,
        true,
    )?;
    names.push(name.to_string());

    let series: Vec<Series> = ran
        .iter()
        .filter_map(|s| {
            let (_, row) = s.uncontended.iter().find(|(w, _)| *w == cdf_workers)?;
            Some(Series {
                name: s.name.clone(),
                points: row.summary.cdf.clone(),
            })
        })
        .collect();
    let name = "latency_cdf.svg";
    line_chart(
        &dir.join(name),
        &format!("Latency CDF, uncontended, {cdf_workers} workers"),
        "acquire+release latency, ms (log scale)",
        "fraction of pairs at most this slow",
        &series,
        true,
    )?;
    names.push(name.to_string());

    let series: Vec<Series> = ran
        .iter()
        .filter_map(|s| {
            let failover = s.failover.as_ref()?;
            Some(Series {
                name: s.name.clone(),
                points: failover.timeline.clone(),
            })
        })
        .collect();
    let name = "failover_timeline.svg";
    line_chart(
        &dir.join(name),
        "Pairs/s in 100 ms buckets around SIGKILL of the leader (t = 0)",
        "seconds since the kill",
        "pairs/s",
        &series,
        false,
    )?;
    names.push(name.to_string());
    Ok(names)
}
