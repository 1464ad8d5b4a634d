//! PNG plots drawn with plotters' pure-Rust bitmap backend; the font (DejaVu Sans) is
//! compiled in, so nothing is read from the system. Each plot draws numbers the summary
//! (or the inspected record) holds.

use crate::report::json::SampleRow;
use crate::report::json::{Histogram, PlotFile, Summary};
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 700;
/// Samples that were not selected.
pub const REJECTED: RGBColor = RGBColor(70, 110, 180);
/// Selected samples.
pub const SELECTED: RGBColor = RGBColor(230, 120, 20);
/// The selection cut.
pub const CUT: RGBColor = RGBColor(200, 20, 20);

pub(crate) fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TTF compiled into the binary; failing here is a build defect.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

pub(crate) fn err<E: std::fmt::Debug>(file: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("cannot draw {}: {e:?}", file.display())
}

pub(crate) type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

pub(crate) fn canvas(path: &Path) -> Result<Area<'_>> {
    fonts();
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err(path))?;
    Ok(root)
}

/// A range around the finite values, padded so points do not sit on the frame.
fn span(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    (lo - pad, hi + pad)
}

fn file(name: &str, points: usize, selected: usize) -> PlotFile {
    PlotFile {
        file: name.into(),
        width: WIDTH,
        height: HEIGHT,
        points,
        selected_points: selected,
    }
}

/// Stacked bars per bin (selected on top of rejected) and the cut as a vertical line.
pub fn histogram(path: &Path, h: &Histogram, cut: Option<f64>, what: &str) -> Result<()> {
    let root = canvas(path)?;
    let e = err(path);
    let (lo, hi) = match (h.edges.first(), h.edges.last()) {
        (Some(&a), Some(&b)) if b > a => (a, b),
        (Some(&a), _) => (a - 0.5, a + 0.5),
        _ => (0.0, 1.0),
    };
    let top = h.counts.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{what}: distribution, cut (red), selected (orange)"),
            ("sans-serif", 26),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, 0.0..top)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 14))
        .x_desc(what)
        .y_desc("samples")
        .draw()
        .map_err(&e)?;
    let bins = h.counts.len();
    // One flat bin (all values equal) is drawn across the padded range.
    let flat = !matches!((h.edges.first(), h.edges.last()), (Some(a), Some(b)) if b > a);
    let edge = |i: usize| match (flat, i) {
        (false, _) => h.edges[i],
        (true, 0) => lo,
        (true, _) => hi,
    };
    let rejected = (0..bins).map(|i| {
        let r = (h.counts[i] - h.selected[i]) as f64;
        Rectangle::new([(edge(i), 0.0), (edge(i + 1), r)], REJECTED.filled())
    });
    chart.draw_series(rejected).map_err(&e)?;
    let selected = (0..bins).map(|i| {
        let r = (h.counts[i] - h.selected[i]) as f64;
        Rectangle::new(
            [(edge(i), r), (edge(i + 1), h.counts[i] as f64)],
            SELECTED.filled(),
        )
    });
    chart.draw_series(selected).map_err(&e)?;
    if let Some(c) = cut {
        chart
            .draw_series(LineSeries::new([(c, 0.0), (c, top)], CUT.stroke_width(3)))
            .map_err(&e)?;
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// Rejected points, or selected ones (drawn second, over the others).
fn dots(pts: &[(f64, f64, bool)], selected: bool) -> Vec<Circle<(f64, f64), i32>> {
    let c = if selected { SELECTED } else { REJECTED };
    pts.iter()
        .filter(|p| p.2 == selected)
        .map(|p| Circle::new((p.0, p.1), 4, c.filled()))
        .collect()
}

/// One scatter chart over the given axis ranges (linear or log: their types differ, so a
/// macro instead of a function).
macro_rules! scatter_chart {
    ($root:expr, $e:expr, $title:expr, $xd:expr, $yd:expr, $xr:expr, $yr:expr, $pts:expr) => {{
        let mut chart = ChartBuilder::on($root)
            .caption($title, ("sans-serif", 26))
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d($xr, $yr)
            .map_err($e)?;
        chart
            .configure_mesh()
            .axis_desc_style(("sans-serif", 18))
            .label_style(("sans-serif", 14))
            .x_desc($xd)
            .y_desc($yd)
            .draw()
            .map_err($e)?;
        for selected in [false, true] {
            chart.draw_series(dots($pts, selected)).map_err($e)?;
        }
    }};
}

/// A log range around positive values, a tenth wider on each side.
fn log_span(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v
        .filter(|x| x.is_finite() && *x > 0.0)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
    if lo > hi {
        return (0.1, 10.0);
    }
    (lo / 1.1, hi * 1.1)
}

fn scatter(
    path: &Path,
    title: &str,
    (xd, yd): (&str, &str),
    pts: &[(f64, f64, bool)],
    log: bool,
) -> Result<()> {
    let root = canvas(path)?;
    let e = err(path);
    if log {
        let (x0, x1) = log_span(pts.iter().map(|p| p.0));
        let (y0, y1) = log_span(pts.iter().map(|p| p.1));
        let (xr, yr) = ((x0..x1).log_scale(), (y0..y1).log_scale());
        scatter_chart!(&root, &e, title, xd, yd, xr, yr, pts);
    } else {
        let (x0, x1) = span(pts.iter().map(|p| p.0));
        let (y0, y1) = span(pts.iter().map(|p| p.1));
        scatter_chart!(&root, &e, title, xd, yd, x0..x1, y0..y1, pts);
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// The four report plots; returns what each drew.
pub fn draw_all(dir: &Path, pts: &[SampleRow], s: &Summary) -> Result<Vec<PlotFile>> {
    let mut out = Vec::new();
    let sel = |v: &[(f64, f64, bool)]| v.iter().filter(|p| p.2).count();

    let name = "score_hist.png";
    histogram(&dir.join(name), &s.histogram, s.cutoff_score, "score")?;
    let n: usize = s.histogram.counts.iter().sum();
    out.push(file(name, n, s.histogram.selected.iter().sum()));

    let name = "hmp_cas.png";
    let v: Vec<_> = pts
        .iter()
        .filter_map(|p| p.cas.map(|c| (p.hmp, c, p.selected)))
        .collect();
    scatter(
        &dir.join(name),
        "HMP against CAS (orange: selected)",
        ("HMP", "CAS"),
        &v,
        false,
    )?;
    out.push(file(name, v.len(), sel(&v)));

    let name = "ppl_short_long.png";
    let v: Vec<_> = pts
        .iter()
        .filter(|p| p.ppl_short > 0.0 && p.ppl_long > 0.0)
        .map(|p| (p.ppl_short, p.ppl_long, p.selected))
        .collect();
    scatter(
        &dir.join(name),
        "response perplexity, short vs long model (orange: selected)",
        ("ppl_short (log)", "ppl_long (log)"),
        &v,
        true,
    )?;
    out.push(file(name, v.len(), sel(&v)));

    let name = "score_length.png";
    let v: Vec<_> = pts
        .iter()
        .filter_map(|p| p.n_tokens.map(|n| (n as f64, p.score, p.selected)))
        .collect();
    scatter(
        &dir.join(name),
        "score against sample length (orange: selected)",
        ("tokens", "score"),
        &v,
        false,
    )?;
    out.push(file(name, v.len(), sel(&v)));
    Ok(out)
}

/// One sample's segments: importance (median ln seg_ppl - ln seg_ppl, clipped at 0; high =
/// important) and ATT as grouped bars along the context, each scaled to its own maximum.
pub fn segments(path: &Path, title: &str, importance: &[f64], att: &[f64]) -> Result<()> {
    let scaled = |v: &[f64]| {
        let top = v.iter().copied().fold(0.0f64, f64::max).max(1e-12);
        v.iter().map(|x| x.max(0.0) / top).collect::<Vec<f64>>()
    };
    let (is, att) = (&scaled(importance)[..], &scaled(att)[..]);
    let root = canvas(path)?;
    let e = err(path);
    let n = is.len().max(1);
    let top = is
        .iter()
        .chain(att)
        .copied()
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-12)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..n as f64, 0.0..top)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 14))
        .x_desc("segment (context order)")
        .y_desc("share of the sample's maximum")
        .draw()
        .map_err(&e)?;
    // Two bars per segment: IS on the left half, ATT on the right.
    let series = [
        (
            is,
            0.05,
            REJECTED,
            "importance (how much the segment lowers the response's perplexity)",
        ),
        (att, 0.5, SELECTED, "ATT (attention share)"),
    ];
    for (values, left, color, label) in series {
        chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                let x = i as f64 + left;
                Rectangle::new([(x, 0.0), (x + 0.45, v)], color.filled())
            }))
            .map_err(&e)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)?;
    Ok(())
}
