//! `gateau report` (and `select --report-dir`): summary.json, summary.md and the PNG plots
//! of a ranked dataset. Every number a plot draws is computed here and written to
//! summary.json first, so the plots can be checked against it.

use crate::cli::settings::{LabelSpec, RankSettings};
use crate::rank::normalize::rank as ranks;
use crate::report::analysis::Analysis;
pub use crate::report::json::pearson;
use crate::report::json::{Correlation, Histogram, LengthDrift, SourceCount, Stats, Summary};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub const DEFAULT_BINS: usize = 30;

/// The files [`write_dir`] writes into its folder.
pub use crate::cli::settings::REPORT_FILES as FILES;

pub fn summarize(
    s: &RankSettings,
    a: &Analysis,
    pts: &[crate::report::json::SampleRow],
    bins: usize,
    labels: Option<&LabelSpec>,
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
        stats: crate::report::analysis::stats(a),
        hmp_cas,
        length: LengthDrift {
            selected: ls,
            rejected: lr,
            mean_ratio,
        },
        sources,
        histogram: Histogram::of(&scores, bins),
        diagnostics: crate::report::notes::diagnose(&a.candidates, &a.ranked, &s.ranking()),
        alpha_sweep: crate::report::sweep::sweep(s, a, labels)?,
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
    md += &sweep_table(&s.alpha_sweep);
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

/// The alpha sweep as a Markdown table.
fn sweep_table(w: &crate::report::json::AlphaSweep) -> String {
    let mut md = format!(
        "\n## Alpha sweep\n\nThe same recipe and cut (k = {}) at every alpha. Overlap: the \
         share of this run's selection (alpha {}) that the alpha's selection keeps (shared / \
         k); Jaccard: shared / union.",
        w.k, w.alpha
    );
    let labeled = w.label_field.is_some();
    if let Some(f) = &w.label_field {
        md += &format!(
            " Precision: samples whose \"{f}\" is {} among the selected ({} positives of all \
             scored; this run's selection: {}).",
            w.positive.join(" or "),
            w.positives.unwrap_or(0),
            opt(w.precision)
        );
    }
    md += if labeled {
        "\n\n| alpha | overlap | Jaccard | precision |\n|---|---|---|---|\n"
    } else {
        "\n\n| alpha | overlap | Jaccard |\n|---|---|---|\n"
    };
    for p in &w.points {
        let own = if p.alpha == w.alpha {
            " (this run)"
        } else {
            ""
        };
        md += &format!(
            "| {}{own} | {} | {} |",
            p.alpha,
            opt(p.overlap),
            opt(p.jaccard)
        );
        if labeled {
            md += &format!(" {} |", opt(p.precision));
        }
        md += "\n";
    }
    md
}

/// Writes summary.json, summary.md and the plots into `dir`; `labels` adds precision to
/// the alpha sweep.
pub fn write_dir(
    s: &RankSettings,
    a: &Analysis,
    dir: &Path,
    bins: usize,
    labels: Option<&LabelSpec>,
) -> Result<Summary> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report folder {}", dir.display()))?;
    let rows = a.rows();
    let mut summary = summarize(s, a, &rows, bins, labels)?;
    summary.plots = crate::report::plots::draw_all(dir, &rows, &summary)?;
    summary
        .plots
        .extend(crate::report::sweep_plot::draw_all(dir, &rows, &summary)?);
    let json = dir.join("summary.json");
    std::fs::write(&json, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("cannot write {}", json.display()))?;
    let md = dir.join("summary.md");
    std::fs::write(&md, markdown(&summary, s.method.name()))
        .with_context(|| format!("cannot write {}", md.display()))?;
    Ok(summary)
}

/// `gateau report`.
pub fn run(s: crate::cli::settings::ReportSettings) -> Result<std::process::ExitCode> {
    if !s.rank.quiet {
        eprintln!("{}", s.settings_line());
    }
    let a = crate::report::analysis::analyse(&s.rank)?;
    let summary = write_dir(&s.rank, &a, &s.out, s.bins, s.labels.as_ref())?;
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
