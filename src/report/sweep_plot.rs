//! The ranking's two plots: score against rank (score_rank.png) and the alpha sweep
//! (alpha_sweep.png), drawn from the rows and summary.json's `alpha_sweep`.

use crate::report::json::{AlphaSweep, PlotFile, SampleRow, Summary};
use crate::report::plots::{canvas, err, file, span, tick, CUT, REJECTED, SELECTED};
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

/// Overlap with the run's own selection.
pub const OVERLAP: RGBColor = REJECTED;
/// Jaccard index with it.
pub const JACCARD: RGBColor = RGBColor(40, 160, 90);
/// Precision against the labels.
pub const PRECISION: RGBColor = SELECTED;

/// score_rank.png and alpha_sweep.png; returns what each drew.
pub fn draw_all(dir: &Path, rows: &[SampleRow], s: &Summary) -> Result<Vec<PlotFile>> {
    let name = "score_rank.png";
    let v: Vec<(f64, f64, bool)> = rows
        .iter()
        .map(|p| (p.rank as f64, p.score, p.selected))
        .collect();
    let k = v.iter().filter(|p| p.2).count();
    score_rank(&dir.join(name), &v, k)?;
    let mut out = vec![file(name, v.len(), k)];
    let name = "alpha_sweep.png";
    alpha_sweep(&dir.join(name), &s.alpha_sweep)?;
    out.push(file(name, s.alpha_sweep.points.len(), 0));
    Ok(out)
}

/// Score against 1-based rank, selected in orange, the cut (red) after rank k.
pub fn score_rank(path: &Path, pts: &[(f64, f64, bool)], k: usize) -> Result<()> {
    let root = canvas(path)?;
    let e = err(path);
    let n = pts.len().max(1) as f64;
    let (y0, y1) = span(pts.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "score against rank (orange: selected, red: the cut)",
            ("sans-serif", 26),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n + 1.0, y0..y1)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 14))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .x_desc("rank (1 = best)")
        .y_desc("score")
        .draw()
        .map_err(&e)?;
    chart
        .draw_series(LineSeries::new(
            pts.iter().map(|p| (p.0, p.1)),
            REJECTED.mix(0.5).stroke_width(1),
        ))
        .map_err(&e)?;
    for selected in [false, true] {
        let c = if selected { SELECTED } else { REJECTED };
        chart
            .draw_series(
                pts.iter()
                    .filter(|p| p.2 == selected)
                    .map(|p| Circle::new((p.0, p.1), 4, c.filled())),
            )
            .map_err(&e)?;
    }
    if k > 0 && (k as f64) < n {
        let x = k as f64 + 0.5;
        chart
            .draw_series(LineSeries::new([(x, y0), (x, y1)], CUT.stroke_width(3)))
            .map_err(&e)?;
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// Overlap and Jaccard with the run's selection, and precision where labeled, against
/// alpha; the run's alpha as a red line.
pub fn alpha_sweep(path: &Path, w: &AlphaSweep) -> Result<()> {
    let root = canvas(path)?;
    let e = err(path);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "selection against alpha (k = {}; red: this run's alpha {})",
                w.k, w.alpha
            ),
            ("sans-serif", 26),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.02..1.02, 0.0..1.08)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 14))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .x_desc("alpha (weight of the HMG term)")
        .y_desc("fraction")
        .draw()
        .map_err(&e)?;
    chart
        .draw_series(LineSeries::new(
            [(w.alpha, 0.0), (w.alpha, 1.08)],
            CUT.stroke_width(2),
        ))
        .map_err(&e)?;
    type Get = fn(&crate::report::json::SweepPoint) -> Option<f64>;
    // Overlap thick and underneath: where Jaccard equals it (both 1), both stay visible.
    let series: [(&str, RGBColor, Get, u32); 3] = [
        ("overlap: shared / k", OVERLAP, |p| p.overlap, 7),
        ("Jaccard: shared / union", JACCARD, |p| p.jaccard, 2),
        ("precision (labels)", PRECISION, |p| p.precision, 3),
    ];
    for (label, color, get, width) in series {
        let v: Vec<(f64, f64)> = w
            .points
            .iter()
            .filter_map(|p| get(p).map(|y| (p.alpha, y)))
            .collect();
        if v.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(v.clone(), color.stroke_width(width)))
            .map_err(&e)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(
                v.iter()
                    .map(|&p| Circle::new(p, 2 + width as i32, color.filled())),
            )
            .map_err(&e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}
