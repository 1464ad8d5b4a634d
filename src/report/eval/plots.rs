//! `gateau eval --plots`: ROC curves and precision against the kept fraction, one line per
//! scorer, drawn with the report's canvas (compiled-in font).

use super::metrics::{order, precision_at, roc as roc_points};
use super::Scorer;
use crate::report::plots::{canvas, err};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

/// Distinct, print-safe colours for up to ten lines (then they repeat).
const PALETTE: [RGBColor; 10] = [
    RGBColor(230, 120, 20),
    RGBColor(70, 110, 180),
    RGBColor(40, 150, 60),
    RGBColor(200, 20, 20),
    RGBColor(140, 80, 170),
    RGBColor(120, 80, 40),
    RGBColor(220, 90, 170),
    RGBColor(100, 100, 100),
    RGBColor(170, 170, 30),
    RGBColor(20, 170, 190),
];

fn lines_chart(
    path: &Path,
    title: &str,
    (xd, yd): (&str, &str),
    series: &[(String, Vec<(f64, f64)>)],
    diagonal: bool,
) -> Result<()> {
    let root = canvas(path)?;
    let e = err(path);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, 0.0..1.02)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .x_desc(xd)
        .y_desc(yd)
        .x_labels(11)
        .y_labels(11)
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(&e)?;
    if diagonal {
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                BLACK.mix(0.3).stroke_width(1),
            ))
            .map_err(&e)?;
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(3)))
            .map_err(&e)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}

/// ROC curves: true positive rate against false positive rate.
pub fn roc(path: &Path, scorers: &[Scorer], positive: &[bool]) -> Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = scorers
        .iter()
        .map(|s| (s.name.clone(), roc_points(&s.scores, positive)))
        .collect();
    lines_chart(
        path,
        "ROC: positives found against negatives let in",
        ("false positive rate", "true positive rate"),
        &series,
        true,
    )
}

/// Precision of the top fraction, for fractions 1%..100%.
pub fn precision(path: &Path, scorers: &[Scorer], positive: &[bool], lines: &[u64]) -> Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = scorers
        .iter()
        .map(|s| {
            let o = order(&s.scores, lines);
            let pts = (1..=100)
                .filter_map(|k| {
                    let r = k as f64 / 100.0;
                    precision_at(&o, positive, r).map(|p| (r, p))
                })
                .collect();
            (s.name.clone(), pts)
        })
        .collect();
    lines_chart(
        path,
        "precision of the selection against the kept fraction",
        ("kept fraction (--ratio)", "precision (share of positives)"),
        &series,
        false,
    )
}
