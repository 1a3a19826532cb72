//! SVG charts: throughput against workers, the latency CDF at 64 workers,
//! and the failover timeline around the first kill.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::workloads::{Row, SystemResults};

/// Size of a chart in pixels.
pub const SIZE: (u32, u32) = (900, 540);

/// The colour of the `index`th line of a chart.
pub fn color(index: usize) -> RGBColor {
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

/// A plotting failure as an error.
pub fn draw_error(error: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {error:?}")
}

/// One line per system.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// A tick label people read at a glance: 180k, 1.5k, 2M, 0.25.
pub fn tick(value: f64) -> String {
    let magnitude = value.abs();
    let (scaled, suffix) = if magnitude >= 1e6 {
        (value / 1e6, "M")
    } else if magnitude >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    let text = if scaled.abs() >= 100.0 || scaled.fract().abs() < 1e-9 {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{suffix}")
}

/// Which axes are logarithmic.
#[derive(Clone, Copy)]
enum Scale {
    Linear,
    LogX,
    LogXY,
}

fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    scale: Scale,
) -> anyhow::Result<()> {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x_min, mut x_max, mut y_min, mut y_max) = (f64::MAX, f64::MIN, f64::MAX, 0.0f64);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        if y > 0.0 {
            y_min = y_min.min(y);
        }
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
                .x_label_formatter(&|x| tick(*x))
                .y_label_formatter(&|y| tick(*y))
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
    match scale {
        Scale::LogXY => {
            let x_min = x_min.max(1e-3);
            // A decade below the smallest value, so no line sits on the axis.
            let y_min = if y_min > y_max { 1.0 } else { y_min / 2.0 };
            draw!(builder
                .build_cartesian_2d(
                    (x_min..x_max.max(x_min * 2.0)).log_scale(),
                    (y_min..y_max.max(y_min * 2.0)).log_scale()
                )
                .map_err(draw_error)?);
        }
        Scale::LogX => {
            let x_min = x_min.max(1e-3);
            draw!(builder
                .build_cartesian_2d((x_min..x_max.max(x_min * 2.0)).log_scale(), 0.0..y_max)
                .map_err(draw_error)?);
        }
        Scale::Linear => {
            draw!(builder
                .build_cartesian_2d(x_min..x_max, 0.0..y_max)
                .map_err(draw_error)?);
        }
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
        "pairs/s (log scale)",
        &series,
        Scale::LogXY,
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
        Scale::LogX,
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
        Scale::Linear,
    )?;
    names.push(name.to_string());

    for (name, title, x_label, rows) in [
        (
            "pairs_vs_held_locks.svg",
            "Uncontended pairs/s while many locks are held (workload 7)",
            "locks held (log scale)",
            (|s: &SystemResults| s.scale.as_ref().map(|scale| scale.pairs_by_held.clone()))
                as fn(&SystemResults) -> Option<Vec<(usize, Row)>>,
        ),
        (
            "pairs_vs_open_sessions.svg",
            "Uncontended pairs/s while many sessions renew (workload 5)",
            "sessions open (log scale)",
            |s: &SystemResults| s.keepalive.as_ref().map(|k| k.pairs_by_sessions.clone()),
        ),
    ] {
        let series: Vec<Series> = ran
            .iter()
            .filter_map(|s| {
                let rows = rows(s)?;
                Some(Series {
                    name: s.name.clone(),
                    points: rows
                        .iter()
                        .map(|(count, row)| (*count as f64, row.summary.throughput))
                        .collect(),
                })
            })
            .filter(|series| !series.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        line_chart(
            &dir.join(name),
            title,
            x_label,
            "pairs/s (log scale)",
            &series,
            Scale::LogXY,
        )?;
        names.push(name.to_string());
    }

    let churned: Vec<(String, &super::churn::Churn)> = ran
        .iter()
        .filter_map(|s| s.churn.as_ref().map(|churn| (s.name.clone(), churn)))
        .collect();
    if !churned.is_empty() {
        names.extend(super::churn::charts(dir, &churned)?);
    }
    Ok(names)
}
