//! The selection report: counts, score statistics, the cut-off, every bad, skipped,
//! missing or duplicate sample, and the diagnostics of spec section 9.

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
