//! `gateau eval`: how well every method, term and recipe separates labeled samples, from
//! the raw score records (no model passes): AUROC, precision of the top fractions, length
//! bias, per label pair and per length band. `probe` makes a labeled probe set.

pub mod docs;
pub mod metrics;
pub mod plots;
pub mod probe;

use crate::cli::settings::RankSettings;
use crate::input::LineReader;
use crate::rank::normalize::{CamNorm, HmgNorm};
use crate::rank::recipe::{combine, value_name, RecipeName, DEFAULT_RECIPE};
use crate::rank::selection::Candidate;
use crate::rank::terms::{self, spearman, CamTerm, HmgTerm, Inputs};
use crate::report::analysis::{analyse, Analysis};
use anyhow::{bail, Context, Result};
use metrics::{auroc, order, precision_at};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

pub use crate::cli::settings::EvalSettings;

/// One way of ordering the samples.
pub struct Scorer {
    pub name: String,
    /// Higher = more likely positive; in candidate order.
    pub scores: Vec<f64>,
}

/// A scorer's figures on one set of samples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Figures {
    pub n: usize,
    pub auroc: Option<f64>,
    /// Precision of the top `ratio` (keys: the ratios as given).
    pub precision: BTreeMap<String, Option<f64>>,
    /// AUROC of each positive label against each negative label ("far/none"), and
    /// against all negatives ("far/*").
    pub pairs: BTreeMap<String, Option<f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScorerResult {
    pub name: String,
    #[serde(flatten)]
    pub all: Figures,
    /// Spearman correlation of the score with |S| and with the number of segments.
    pub rho_tokens: f64,
    pub rho_segments: f64,
    /// The same figures within each length band ("<2048", "2048-4095", ">=4096").
    pub bands: Vec<(String, Figures)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub n: usize,
    pub labels: BTreeMap<String, usize>,
    pub positive: Vec<String>,
    pub alpha: f64,
    pub default_recipe: String,
    pub scorers: Vec<ScorerResult>,
}

/// A label value as text: strings as they are, anything else as JSON.
fn label_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The label of every scored sample, in candidate order.
fn labels(s: &EvalSettings, a: &Analysis) -> Result<Vec<String>> {
    read_labels(&s.rank.data, &s.label_field, a)
}

/// The `field` of every scored sample of `data` as text, in candidate order (also
/// `gateau report --label-field`).
pub fn read_labels(data: &std::path::Path, field: &str, a: &Analysis) -> Result<Vec<String>> {
    let wanted: BTreeSet<u64> = a.candidates.iter().map(|c| c.line).collect();
    let mut by_line = BTreeMap::new();
    for raw in LineReader::open(data)? {
        let raw = raw?;
        if !wanted.contains(&raw.number) {
            continue;
        }
        let v: Value = serde_json::from_slice(&raw.bytes)
            .with_context(|| format!("{} line {}: not JSON", data.display(), raw.number))?;
        let Some(l) = v.get(field) else {
            bail!(
                "{} line {} has no \"{}\" field: label every sample, or name the field with \
                 --label-field",
                data.display(),
                raw.number,
                field
            );
        };
        by_line.insert(raw.number, label_text(l));
    }
    Ok(a.candidates
        .iter()
        .map(|c| by_line[&c.line].clone())
        .collect())
}

fn term_scores(c: &[Candidate], f: impl Fn(&Inputs) -> Option<f64>) -> Option<Vec<f64>> {
    let v: Vec<Option<f64>> = c.iter().map(|x| f(&x.inputs())).collect();
    // A term no sample has (e.g. key tokens without --token-nll) is not measured.
    v.iter().any(Option::is_some).then(|| {
        v.into_iter()
            .map(|x| x.unwrap_or(f64::NEG_INFINITY))
            .collect()
    })
}

/// Every recipe at `alpha`, each term alone, and the baselines.
pub fn scorers(c: &[Candidate], s: &RankSettings) -> Vec<Scorer> {
    let inputs: Vec<Inputs> = c.iter().map(Candidate::inputs).collect();
    let mut out = Vec::new();
    let mut push = |name: String, scores: Option<Vec<f64>>| {
        if let Some(scores) = scores {
            out.push(Scorer { name, scores });
        }
    };
    for n in RecipeName::ALL {
        let tag = if n == DEFAULT_RECIPE {
            " (default)"
        } else {
            ""
        };
        let r = combine(&inputs, &n.recipe(), s.alpha, s.hmg_norm, s.cam_norm).ok();
        push(format!("recipe {}{tag}", n.name()), r.map(|m| m.score));
    }
    let paper_l1 = combine(
        &inputs,
        &RecipeName::Paper.recipe(),
        s.alpha,
        s.hmg_norm,
        CamNorm::L1,
    );
    push(
        "recipe paper, cam-norm l1".into(),
        paper_l1.ok().map(|m| m.score),
    );
    if !RecipeName::ALL.iter().any(|n| n.recipe() == s.recipe) {
        let r = combine(&inputs, &s.recipe, s.alpha, s.hmg_norm, s.cam_norm).ok();
        push(
            format!("recipe {}", s.recipe.describe()),
            r.map(|m| m.score),
        );
    }
    for hn in [HmgNorm::Minmax, HmgNorm::Softmax, HmgNorm::Rank] {
        push(
            format!("hmg paper, hmg-norm {}", value_name(hn)),
            Some(crate::rank::recipe::hmp(&inputs, hn)),
        );
    }
    for t in [HmgTerm::LogRatio, HmgTerm::KeyShare, HmgTerm::KeyGain] {
        push(
            format!("hmg {}", value_name(t)),
            term_scores(c, |x| terms::hmg(t, x)),
        );
    }
    for cn in [CamNorm::Softmax, CamNorm::L1] {
        push(
            format!("cam paper, cam-norm {}", value_name(cn)),
            term_scores(c, |x| terms::cam(CamTerm::Paper, cn, x)),
        );
    }
    for t in [
        CamTerm::Flip,
        CamTerm::Agree,
        CamTerm::Gain,
        CamTerm::FarGain,
        CamTerm::Focus,
        CamTerm::AttnTop,
    ] {
        push(
            format!("cam {}", value_name(t)),
            term_scores(c, |x| terms::cam(t, s.cam_norm, x)),
        );
    }
    push(
        "baseline ppl_long".into(),
        Some(c.iter().map(|x| x.ppl_long).collect()),
    );
    push(
        "baseline ifd".into(),
        c.iter()
            .map(crate::rank::selection::ifd)
            .collect::<Option<Vec<f64>>>(),
    );
    out
}

/// The band a length falls in, named by its edges.
pub fn band_name(n: usize, edges: &[usize]) -> String {
    let i = edges.partition_point(|&e| e <= n);
    match (i.checked_sub(1).map(|j| edges[j]), edges.get(i)) {
        (None, Some(hi)) => format!("<{hi}"),
        (Some(lo), Some(hi)) => format!("{lo}-{}", hi - 1),
        (Some(lo), None) => format!(">={lo}"),
        (None, None) => "all".into(),
    }
}

fn figures(
    scores: &[f64],
    lines: &[u64],
    labels: &[&str],
    positive: &[String],
    ratios: &[f64],
) -> Figures {
    let pos: Vec<bool> = labels
        .iter()
        .map(|l| positive.iter().any(|p| p == l))
        .collect();
    let o = order(scores, lines);
    let precision = ratios
        .iter()
        .map(|&r| (format!("{r}"), precision_at(&o, &pos, r)))
        .collect();
    let kinds: BTreeSet<&str> = labels.iter().copied().collect();
    let mut pairs = BTreeMap::new();
    for p in kinds.iter().filter(|k| positive.iter().any(|x| x == *k)) {
        let against = |neg: Option<&str>| {
            let keep: Vec<usize> = (0..labels.len())
                .filter(|&i| labels[i] == *p || (!pos[i] && neg.is_none_or(|n| labels[i] == n)))
                .collect();
            let s: Vec<f64> = keep.iter().map(|&i| scores[i]).collect();
            let q: Vec<bool> = keep.iter().map(|&i| pos[i]).collect();
            auroc(&s, &q)
        };
        for n in kinds.iter().filter(|k| !positive.iter().any(|x| x == *k)) {
            pairs.insert(format!("{p}/{n}"), against(Some(n)));
        }
        pairs.insert(format!("{p}/*"), against(None));
    }
    Figures {
        n: scores.len(),
        auroc: auroc(scores, &pos),
        precision,
        pairs,
    }
}

/// Evaluates every scorer on the labeled candidates.
pub fn evaluate(
    c: &[Candidate],
    n_tokens: &[usize],
    labels: &[String],
    s: &EvalSettings,
) -> EvalReport {
    let lines: Vec<u64> = c.iter().map(|x| x.line).collect();
    let lens: Vec<f64> = n_tokens.iter().map(|&n| n as f64).collect();
    let segs: Vec<f64> = c.iter().map(|x| x.seg_ppl.len() as f64).collect();
    let labels_ref: Vec<&str> = labels.iter().map(String::as_str).collect();
    // Bands in length order, each with its samples.
    let mut band_of: BTreeMap<usize, (String, Vec<usize>)> = BTreeMap::new();
    for (i, &n) in n_tokens.iter().enumerate() {
        let b = s.bands.partition_point(|&e| e <= n);
        band_of
            .entry(b)
            .or_insert_with(|| (band_name(n, &s.bands), Vec::new()))
            .1
            .push(i);
    }
    // Scorers are independent: one per core.
    let results = scorers(c, &s.rank)
        .into_par_iter()
        .map(|sc| {
            let bands = band_of
                .values()
                .map(|(name, idx)| {
                    let pick = |v: &[f64]| idx.iter().map(|&i| v[i]).collect::<Vec<_>>();
                    let l: Vec<u64> = idx.iter().map(|&i| lines[i]).collect();
                    let lab: Vec<&str> = idx.iter().map(|&i| labels_ref[i]).collect();
                    (
                        name.clone(),
                        figures(&pick(&sc.scores), &l, &lab, &s.positive, &s.ratios),
                    )
                })
                .collect();
            // -inf (a term the sample lacks) ranks lowest; Spearman needs finite values.
            let finite: Vec<f64> = sc
                .scores
                .iter()
                .map(|&v| if v.is_finite() { v } else { f64::MIN })
                .collect();
            ScorerResult {
                all: figures(&sc.scores, &lines, &labels_ref, &s.positive, &s.ratios),
                rho_tokens: spearman(&finite, &lens),
                rho_segments: spearman(&finite, &segs),
                bands,
                name: sc.name,
            }
        })
        .collect();
    let mut counts = BTreeMap::new();
    for l in labels {
        *counts.entry(l.clone()).or_insert(0) += 1;
    }
    EvalReport {
        n: c.len(),
        labels: counts,
        positive: s.positive.clone(),
        alpha: s.rank.alpha,
        default_recipe: DEFAULT_RECIPE.name().into(),
        scorers: results,
    }
}

fn f3(v: Option<f64>) -> String {
    v.map_or("  -  ".into(), |x| format!("{x:.3}"))
}

/// The terminal tables: every scorer overall; per label pair; per length band.
pub fn tables(r: &EvalReport, ratios: &[f64]) -> String {
    let mut out = format!(
        "gateau eval: {} samples ({}), positive: {}; alpha {}\n\n",
        r.n,
        r.labels
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.positive.join(", "),
        r.alpha
    );
    let w = r
        .scorers
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    out += &format!("{:<w$}  AUROC", "method");
    for q in ratios {
        out += &format!("  P@{:<3}", format!("{}", (q * 100.0).round()));
    }
    out += "  rho(len)  rho(segs)\n";
    for s in &r.scorers {
        out += &format!("{:<w$}  {}", s.name, f3(s.all.auroc));
        for q in ratios {
            out += &format!("  {}", f3(s.all.precision[&format!("{q}")]));
        }
        out += &format!("  {:>8.3}  {:>9.3}\n", s.rho_tokens, s.rho_segments);
    }
    let pair_keys: Vec<String> = r
        .scorers
        .first()
        .map(|s| s.all.pairs.keys().cloned().collect())
        .unwrap_or_default();
    if pair_keys.len() > 1 {
        out += &format!(
            "\nAUROC per label pair (positive/negative; * = all negatives)\n{:<w$}",
            "method"
        );
        for k in &pair_keys {
            out += &format!("  {k:>14}");
        }
        out += "\n";
        for s in &r.scorers {
            out += &format!("{:<w$}", s.name);
            for k in &pair_keys {
                out += &format!("  {:>14}", f3(s.all.pairs[k]));
            }
            out += "\n";
        }
    }
    out += "\nPer length band (tokens): AUROC, P@30, and the lowest label-pair AUROC\n";
    for s in r.scorers.iter().filter(|s| s.name.starts_with("recipe")) {
        out += &format!("{:<w$}", s.name);
        for (b, f) in &s.bands {
            let worst = f
                .pairs
                .values()
                .flatten()
                .copied()
                .fold(f64::INFINITY, f64::min);
            let p30 = f.precision.get("0.3").copied().flatten();
            out += &format!(
                "  {b} (n {}): {} / {} / {}",
                f.n,
                f3(f.auroc),
                f3(p30),
                f3(worst.is_finite().then_some(worst))
            );
        }
        out += "\n";
    }
    out
}

/// Runs `gateau eval`.
pub fn run(s: EvalSettings) -> Result<std::process::ExitCode> {
    if !s.rank.quiet {
        eprintln!("{}", s.settings_line());
    }
    let a = analyse(&s.rank)?;
    let labels = labels(&s, &a)?;
    if !labels.iter().any(|l| s.positive.contains(l)) {
        let found: BTreeSet<&String> = labels.iter().collect();
        bail!(
            "no sample is labeled positive: --positive {} matches none of the \"{}\" values \
             found ({})",
            s.positive.join(","),
            s.label_field,
            found.into_iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let n_tokens: Vec<usize> = a
        .candidates
        .iter()
        .map(|c| a.record(c.line).n_tokens.unwrap_or(0))
        .collect();
    let report = evaluate(&a.candidates, &n_tokens, &labels, &s);
    print!("{}", tables(&report, &s.ratios));
    if let Some(path) = &s.json {
        let f = std::fs::File::create(path)
            .with_context(|| format!("cannot create --json {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), &report)
            .with_context(|| format!("cannot write --json {}", path.display()))?;
    }
    if let Some(dir) = &s.plots {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --plots {}", dir.display()))?;
        let pos: Vec<bool> = labels.iter().map(|l| s.positive.contains(l)).collect();
        let lines: Vec<u64> = a.candidates.iter().map(|c| c.line).collect();
        let shown: Vec<Scorer> = scorers(&a.candidates, &s.rank)
            .into_iter()
            .filter(|x| {
                x.name.starts_with("recipe")
                    || x.name == "hmg log-ratio"
                    || x.name == "cam far-gain"
            })
            .collect();
        plots::roc(&dir.join("roc.png"), &shown, &pos)?;
        plots::precision(&dir.join("precision.png"), &shown, &pos, &lines)?;
        if !s.rank.quiet {
            eprintln!("gateau eval: plots in {}", dir.display());
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
