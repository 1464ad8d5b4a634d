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
/// The line y = x.
pub const DIAGONAL: RGBColor = RGBColor(110, 110, 130);

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
pub(crate) fn span(v: impl Iterator<Item = f64>) -> (f64, f64) {
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

pub(crate) fn file(name: &str, points: usize, selected: usize) -> PlotFile {
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
            .x_label_formatter(&|v| tick(*v))
            .y_label_formatter(&|v| tick(*v))
            .x_desc($xd)
            .y_desc($yd)
            .draw()
            .map_err($e)?;
        for selected in [false, true] {
            chart.draw_series(dots($pts, selected)).map_err($e)?;
        }
        chart
    }};
}

/// A tick label: up to four significant digits, no trailing zeros.
pub fn tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let t = format!("{v:.digits$}");
    if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        t
    }
}

/// Labelled ticks of a log axis over [lo, hi]: 1-2-5 of every decade, or 1-9 where that
/// gives fewer than three, or five geometric steps on a range narrower than that.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo > 0.0 && hi > lo) {
        return vec![lo];
    }
    let within = |mults: &[f64]| {
        let (d0, d1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (d0..=d1)
            .flat_map(|d| mults.iter().map(move |m| m * 10f64.powi(d)))
            .filter(|v| *v >= lo && *v <= hi)
            .collect::<Vec<f64>>()
    };
    let v = within(&[1.0, 2.0, 5.0]);
    if v.len() >= 3 {
        return v;
    }
    let v = within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    if v.len() >= 3 {
        return v;
    }
    let step = (hi / lo).powf(1.0 / 6.0);
    (1..6)
        .map(|i| {
            let x = lo * step.powi(i);
            let p = 10f64.powi(x.log10().floor() as i32 - 1);
            (x / p).round() * p
        })
        .collect()
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

/// A scatter plot; `log` draws both axes on a log scale with 1-2-5 ticks and the line
/// y = x (grey).
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
        let xr = (x0..x1).log_scale().with_key_points(log_ticks(x0, x1));
        let yr = (y0..y1).log_scale().with_key_points(log_ticks(y0, y1));
        let mut chart = scatter_chart!(&root, &e, title, xd, yd, xr, yr, pts);
        let (m0, m1) = (x0.max(y0), x1.min(y1));
        if m0 < m1 {
            let n = 50;
            let line = (0..=n).map(|i| {
                let v = m0 * (m1 / m0).powf(i as f64 / n as f64);
                (v, v)
            });
            chart
                .draw_series(LineSeries::new(line, DIAGONAL.stroke_width(2)))
                .map_err(&e)?;
        }
    } else {
        let (x0, x1) = span(pts.iter().map(|p| p.0));
        let (y0, y1) = span(pts.iter().map(|p| p.1));
        scatter_chart!(&root, &e, title, xd, yd, x0..x1, y0..y1, pts);
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// The four plots of the data (the ranking's two are [`crate::report::sweep_plot`]'s);
/// returns what each drew.
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
        "response perplexity, short vs long model (orange: selected, grey: y = x)",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_label_every_range() {
        assert_eq!(log_ticks(1.5, 40.0), vec![2.0, 5.0, 10.0, 20.0]);
        // From 0.95 to 3.3: 1-2-5 gives two ticks, so 1-9.
        assert_eq!(log_ticks(0.95, 3.3), vec![1.0, 2.0, 3.0]);
        // 11-19 holds no 1-9 multiple: five steps inside the range.
        let v = log_ticks(11.0, 19.0);
        assert_eq!(v.len(), 5);
        assert!(v.iter().all(|x| (11.0..=19.0).contains(x)), "{v:?}");
        assert_eq!(
            (tick(20.0), tick(0.5), tick(0.123456)),
            ("20".into(), "0.5".into(), "0.1235".into())
        );
    }
}
