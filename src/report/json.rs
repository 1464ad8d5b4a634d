//! The selection report: counts, score statistics, the cut-off, every bad, skipped,
//! missing or duplicate sample, and the diagnostics of spec section 9.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub p25: f64,
    pub median: f64,
    pub p75: f64,
    pub max: f64,
    pub mean: f64,
    pub std: f64,
}

/// Quantile by linear interpolation between order statistics (numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

impl Stats {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        Self {
            n: v.len(),
            min: v[0],
            p25: quantile(&v, 0.25),
            median: quantile(&v, 0.5),
            p75: quantile(&v, 0.75),
            max: v[v.len() - 1],
            mean,
            std: var.sqrt(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub line: u64,
    pub id: Value,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DuplicateId {
    pub id: Value,
    pub kept_line: u64,
    pub dropped_lines: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleRow {
    /// 1-based position in score order (1 = the best), as every output prints it.
    pub rank: usize,
    pub line: u64,
    pub id: Value,
    pub selected: bool,
    pub score: f64,
    pub hmp: f64,
    pub cas: Option<f64>,
    pub ppl_short: f64,
    pub ppl_long: f64,
    pub n_tokens: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Counts {
    pub lines: u64,
    pub records: usize,
    pub scored: usize,
    pub selected: usize,
    pub bad: usize,
    pub skipped: usize,
    pub missing: usize,
    pub duplicate_ids: usize,
}

impl Counts {
    /// "kept K of N scored samples (L input lines: B bad, ...)".
    pub fn sentence(&self) -> String {
        format!(
            "kept {} of {} scored samples ({} input lines: {} bad, {} skipped, {} missing, {} \
             duplicate ids)",
            self.selected,
            self.scored,
            self.lines,
            self.bad,
            self.skipped,
            self.missing,
            self.duplicate_ids
        )
    }
}

/// How much each term of Eq. 6 moves the score, and how flat the CAM distributions are.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct Diagnostics {
    /// Standard deviation of alpha * softmax(HMP) over the dataset.
    pub hmg_term_std: f64,
    /// Standard deviation of (1 - alpha) * softmax(CAS) over the dataset.
    pub cam_term_std: f64,
    /// Mean over samples of max(ATT) - min(ATT): near 0 means the attention term is flat.
    pub att_spread_mean: f64,
    /// Mean over samples of max(IS) - min(IS).
    pub is_spread_mean: f64,
    /// Spearman correlation of the HMG and CAM terms over the scored samples.
    pub rho_hmg_cam: f64,
    /// Spearman correlation of each term with the number of segments.
    pub rho_hmg_segments: f64,
    pub rho_cam_segments: f64,
    /// Plain-language notes on the above.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub settings: Value,
    pub counts: Counts,
    /// Score of the last selected sample.
    pub cutoff_score: Option<f64>,
    pub stats: std::collections::BTreeMap<String, Stats>,
    pub diagnostics: Diagnostics,
    pub bad: Vec<Problem>,
    pub skipped: Vec<Problem>,
    /// Input lines with no score record (a shard not run, or a score run not finished).
    pub missing_lines: Vec<u64>,
    pub duplicate_ids: Vec<DuplicateId>,
    /// Every scored sample in score order.
    pub samples: Vec<SampleRow>,
}

// summary.json (`gateau report`, `select --report-dir`).

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
    pub diagnostics: crate::report::json::Diagnostics,
    /// The same recipe and cut at alpha 0, 0.1, ..., 1, against this run's selection.
    pub alpha_sweep: AlphaSweep,
    pub plots: Vec<PlotFile>,
}

/// One alpha of the sweep.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepPoint {
    pub alpha: f64,
    /// Selected here and in the run's own selection, over the selection's size k
    /// (both selections have k samples); None when k is 0.
    pub overlap: Option<f64>,
    /// |A and B| / |A or B| of the two selections; None when k is 0.
    pub jaccard: Option<f64>,
    /// Positives among the selected over k (with `report --label-field`); else None.
    pub precision: Option<f64>,
}

/// How the selection moves with alpha, the rest of the ranking held fixed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AlphaSweep {
    /// The run's own alpha: the selection every overlap is measured against.
    pub alpha: f64,
    /// Size of every selection.
    pub k: usize,
    /// The label field and positive values precision counts, when given.
    pub label_field: Option<String>,
    pub positive: Vec<String>,
    /// Positives among the scored samples.
    pub positives: Option<usize>,
    /// Precision of the run's own selection.
    pub precision: Option<f64>,
    pub points: Vec<SweepPoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.25), 1.75);
        let s = Stats::of([4.0, 1.0, 3.0, 2.0]);
        assert_eq!((s.min, s.max, s.mean, s.median), (1.0, 4.0, 2.5, 2.5));
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-12);
    }
}
