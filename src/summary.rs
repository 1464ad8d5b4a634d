//! `gateau report` (and `select --report-dir`): summary.json, summary.md and the PNG plots
//! of a ranked dataset. Every number a plot draws is computed here and written to
//! summary.json first, so the plots can be checked against it.

use crate::analysis::Analysis;
use crate::rank::normalize::rank as ranks;
use crate::report::{Counts, Stats};
use crate::settings::RankSettings;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const DEFAULT_BINS: usize = 30;

/// The files [`write_dir`] writes into its folder.
pub const FILES: [&str; 6] = [
    "summary.json",
    "summary.md",
    "score_hist.png",
    "hmp_cas.png",
    "ppl_short_long.png",
    "score_length.png",
];

/// Equal-width bins over [lo, hi]; the last bin is closed on the right.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<usize>,
    /// Of `counts`, how many were selected.
    pub selected: Vec<usize>,
}

impl Histogram {
    /// `bins` bins between the smallest and largest value (one bin when they are equal).
    pub fn of(values: &[(f64, bool)], bins: usize) -> Self {
        let finite = values.iter().filter(|v| v.0.is_finite());
        let lo = finite.clone().map(|v| v.0).fold(f64::INFINITY, f64::min);
        let hi = finite.map(|v| v.0).fold(f64::NEG_INFINITY, f64::max);
        if lo > hi {
            return Self {
                edges: Vec::new(),
                counts: Vec::new(),
                selected: Vec::new(),
            };
        }
        let bins = if hi > lo { bins.max(1) } else { 1 };
        let w = (hi - lo) / bins as f64;
        let edges: Vec<f64> = (0..=bins)
            .map(|i| if i == bins { hi } else { lo + w * i as f64 })
            .collect();
        let (mut counts, mut selected) = (vec![0; bins], vec![0; bins]);
        for &(v, sel) in values.iter().filter(|v| v.0.is_finite()) {
            let i = if w > 0.0 {
                (((v - lo) / w).floor() as usize).min(bins - 1)
            } else {
                0
            };
            counts[i] += 1;
            selected[i] += usize::from(sel);
        }
        Self {
            edges,
            counts,
            selected,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Correlation {
    /// Samples with a CAS (not null).
    pub n: usize,
    pub pearson: Option<f64>,
    /// Pearson correlation of the ranks (ties share their mean rank).
    pub spearman: Option<f64>,
}

/// Pearson correlation; None with fewer than two points or a constant column.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len();
    if n < 2 || y.len() != n {
        return None;
    }
    let (mx, my) = (
        x.iter().sum::<f64>() / n as f64,
        y.iter().sum::<f64>() / n as f64,
    );
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Long-context selectors drift toward longer samples: lengths of the chosen vs the rest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LengthDrift {
    pub selected: Stats,
    pub rejected: Stats,
    /// Mean length of the selected samples over that of the rejected ones.
    pub mean_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceCount {
    pub source: String,
    pub scored: usize,
    pub selected: usize,
    /// selected / scored.
    pub kept: f64,
}

/// A written plot and how many points or bars it drew.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlotFile {
    pub file: String,
    pub width: u32,
    pub height: u32,
    pub points: usize,
    pub selected_points: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub settings: serde_json::Value,
    pub counts: Counts,
    pub cutoff_score: Option<f64>,
    pub stats: BTreeMap<String, Stats>,
    pub hmp_cas: Correlation,
    pub length: LengthDrift,
    /// Per value of the input's "source" / "dataset" field (empty when there is none).
    pub sources: Vec<SourceCount>,
    /// Of the final score, as drawn in score_hist.png.
    pub histogram: Histogram,
    /// The ranking's warnings (as `select` prints them).
    #[serde(default)]
    pub diagnostics: crate::report::Diagnostics,
    pub plots: Vec<PlotFile>,
}

pub fn summarize(
    s: &RankSettings,
    a: &Analysis,
    pts: &[crate::report::SampleRow],
    bins: usize,
) -> Result<Summary> {
    let (hx, hy): (Vec<f64>, Vec<f64>) =
        pts.iter().filter_map(|p| p.cas.map(|c| (p.hmp, c))).unzip();
    let hmp_cas = Correlation {
        n: hx.len(),
        pearson: pearson(&hx, &hy),
        spearman: pearson(&ranks(&hx), &ranks(&hy)),
    };
    let lengths = |sel: bool| {
        Stats::of(
            pts.iter()
                .filter(|p| p.selected == sel)
                .filter_map(|p| p.n_tokens.map(|n| n as f64)),
        )
    };
    let (ls, lr) = (lengths(true), lengths(false));
    let mean_ratio = (ls.n > 0 && lr.n > 0 && lr.mean > 0.0).then(|| ls.mean / lr.mean);
    let mut by_source: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in &a.ranked {
        if let Some(src) = &a.record(r.line).source {
            let e = by_source.entry(src.clone()).or_default();
            e.0 += 1;
            e.1 += usize::from(r.rank < a.k);
        }
    }
    let sources = by_source
        .into_iter()
        .map(|(source, (scored, selected))| SourceCount {
            source,
            scored,
            selected,
            kept: selected as f64 / scored as f64,
        })
        .collect();
    let scores: Vec<(f64, bool)> = pts.iter().map(|p| (p.score, p.selected)).collect();
    Ok(Summary {
        settings: serde_json::to_value(s)?,
        counts: a.counts.clone(),
        cutoff_score: a.cutoff(),
        stats: crate::select::stats(a),
        hmp_cas,
        length: LengthDrift {
            selected: ls,
            rejected: lr,
            mean_ratio,
        },
        sources,
        histogram: Histogram::of(&scores, bins),
        diagnostics: crate::rank::diagnose::diagnose(&a.candidates, &a.ranked, &s.ranking()),
        plots: Vec::new(),
    })
}

fn opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.4}"))
}

/// The summary as a Markdown page (tables a reviewer can paste into an issue).
pub fn markdown(s: &Summary, method: &str) -> String {
    let c = &s.counts;
    let mut md = format!(
        "# gateau selection report\n\nMethod **{method}**: {}.\n\n\
         Cut-off score: {}\n\n## Score components\n\n\
         | | n | min | p25 | median | p75 | max | mean | std |\n|---|---|---|---|---|---|---|---|---|\n",
        c.sentence(),
        s.cutoff_score.map_or("none".into(), |v| format!("{v:.6}"))
    );
    let row = |name: &str, t: &Stats| {
        format!(
            "| {name} | {} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} | {:.4} |\n",
            t.n, t.min, t.p25, t.median, t.p75, t.max, t.mean, t.std
        )
    };
    for (k, v) in &s.stats {
        md += &row(k, v);
    }
    md += &format!(
        "\n## HMG against CAM\n\nOver {} samples with a CAS: Pearson {}, Spearman {}.\n",
        s.hmp_cas.n,
        opt(s.hmp_cas.pearson),
        opt(s.hmp_cas.spearman)
    );
    md += "\n## Length (tokens) of selected and rejected samples\n\n\
           | | n | min | p25 | median | p75 | max | mean | std |\n|---|---|---|---|---|---|---|---|---|\n";
    md += &row("selected", &s.length.selected);
    md += &row("rejected", &s.length.rejected);
    md += &format!(
        "\nMean length ratio selected / rejected: {}{}\n",
        opt(s.length.mean_ratio),
        match s.length.mean_ratio {
            Some(r) if r > 1.2 => " (the selection drifts toward longer samples)",
            Some(r) if r < 1.0 / 1.2 => " (the selection drifts toward shorter samples)",
            _ => "",
        }
    );
    md += "\n## Sources\n\n";
    if s.sources.is_empty() {
        md += "The input has no \"source\" or \"dataset\" field.\n";
    } else {
        md += "| source | scored | selected | kept |\n|---|---|---|---|\n";
        for x in &s.sources {
            md += &format!(
                "| {} | {} | {} | {:.1}% |\n",
                x.source,
                x.scored,
                x.selected,
                100.0 * x.kept
            );
        }
    }
    md += "\n## Notes\n\n";
    if s.diagnostics.notes.is_empty() {
        md += "No warnings about the ranking's terms.\n";
    }
    for n in &s.diagnostics.notes {
        md += &format!("- {n}\n");
    }
    md += "\n## Plots\n\n";
    for p in &s.plots {
        md += &format!("![{0}]({0})\n", p.file);
    }
    md
}

/// Writes summary.json, summary.md and the plots into `dir`.
pub fn write_dir(s: &RankSettings, a: &Analysis, dir: &Path, bins: usize) -> Result<Summary> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report folder {}", dir.display()))?;
    let rows = a.rows();
    let mut summary = summarize(s, a, &rows, bins)?;
    summary.plots = crate::plots::draw_all(dir, &rows, &summary)?;
    let json = dir.join("summary.json");
    std::fs::write(&json, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("cannot write {}", json.display()))?;
    let md = dir.join("summary.md");
    std::fs::write(&md, markdown(&summary, s.method.name()))
        .with_context(|| format!("cannot write {}", md.display()))?;
    Ok(summary)
}

/// `gateau report`.
pub fn run(s: crate::settings::ReportSettings) -> Result<std::process::ExitCode> {
    if !s.rank.quiet {
        eprintln!("gateau report: settings {}", crate::settings::describe(&s));
    }
    let a = crate::analysis::analyse(&s.rank)?;
    let summary = write_dir(&s.rank, &a, &s.out, s.bins)?;
    if !s.rank.quiet {
        let c = &summary.counts;
        eprintln!(
            "gateau report: {} scored, {} selected ({}); HMP-CAS Pearson {}; length ratio \
             selected/rejected {}; {} plots, summary.json and summary.md in {}",
            c.scored,
            c.selected,
            s.rank.method.name(),
            opt(summary.hmp_cas.pearson),
            opt(summary.length.mean_ratio),
            summary.plots.len(),
            s.out.display()
        );
    }
    Ok(s.rank.max_bad.exit_code(
        "gateau report",
        a.problems() as u64,
        a.counts.lines,
        s.rank.quiet,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_bins_by_hand() {
        // lo 0, hi 4, two bins of width 2: [0, 2) gets 0 and 1, [2, 4] gets 2, 3 and 4.
        let v = [
            (0.0, true),
            (1.0, false),
            (2.0, true),
            (3.0, false),
            (4.0, true),
        ];
        let h = Histogram::of(&v, 2);
        assert_eq!(h.edges, vec![0.0, 2.0, 4.0]);
        assert_eq!(h.counts, vec![2, 3]);
        assert_eq!(h.selected, vec![1, 2]);
        let flat = Histogram::of(&[(5.0, false), (5.0, true)], 10);
        assert_eq!((flat.counts, flat.edges), (vec![2], vec![5.0, 5.0]));
    }

    #[test]
    fn pearson_by_hand() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-12);
        // x = [0, 1, 2], y = [0, 2, 1]: cov 1 / sqrt(2 * 2) = 0.5.
        assert!((pearson(&[0.0, 1.0, 2.0], &[0.0, 2.0, 1.0]).unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[1.0, 2.0]), None);
    }
}
