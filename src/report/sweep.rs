//! The alpha sweep of `gateau report` (and `select --report-dir`): the same recipe,
//! normalizations and cut at alpha 0, 0.1, ..., 1, each selection compared with the one
//! at the run's own alpha (overlap = shared / k, and Jaccard), and its precision when the
//! data is labeled.

use crate::cli::settings::{LabelSpec, RankSettings};
use crate::rank::selection::{rank_with, Method, Ranking};
use crate::report::analysis::Analysis;
use crate::report::json::{AlphaSweep, SweepPoint};
use anyhow::Result;
use std::collections::HashSet;

/// Alpha 0, 0.1, ..., 1, and `own` where it is none of them.
pub fn alphas(own: f64) -> Vec<f64> {
    let mut v: Vec<f64> = (0..=10).map(|i| i as f64 / 10.0).collect();
    if !v.contains(&own) {
        v.push(own);
        v.sort_by(f64::total_cmp);
    }
    v
}

/// The lines of the top `k` under the gateau method (Eq. 6 with the recipe) at `alpha`.
fn selection(a: &Analysis, r: &Ranking, alpha: f64) -> Result<HashSet<u64>> {
    let ranked = rank_with(&a.candidates, Method::Gateau, &Ranking { alpha, ..*r })
        .map_err(|m| anyhow::anyhow!("alpha sweep: {m:?}"))?;
    Ok(ranked.iter().take(a.k).map(|x| x.line).collect())
}

/// Sweeps alpha; `labels` (field and positive values) adds precision.
pub fn sweep(s: &RankSettings, a: &Analysis, labels: Option<&LabelSpec>) -> Result<AlphaSweep> {
    let r = s.ranking();
    let positive: Option<HashSet<u64>> = match labels {
        Some(l) => {
            let text = crate::report::eval::read_labels(&s.data, &l.field, a)?;
            Some(
                a.candidates
                    .iter()
                    .zip(text)
                    .filter(|(_, t)| l.positive.iter().any(|p| p == t))
                    .map(|(c, _)| c.line)
                    .collect(),
            )
        }
        None => None,
    };
    let k = a.k;
    let precision = |sel: &HashSet<u64>| {
        positive
            .as_ref()
            .filter(|_| k > 0)
            .map(|p| sel.intersection(p).count() as f64 / k as f64)
    };
    let own = selection(a, &r, s.alpha)?;
    let mut points = Vec::new();
    for alpha in alphas(s.alpha) {
        let sel = selection(a, &r, alpha)?;
        let shared = sel.intersection(&own).count();
        let union = sel.union(&own).count();
        points.push(SweepPoint {
            alpha,
            overlap: (k > 0).then(|| shared as f64 / k as f64),
            jaccard: (union > 0).then(|| shared as f64 / union as f64),
            precision: precision(&sel),
        });
    }
    Ok(AlphaSweep {
        alpha: s.alpha,
        k,
        label_field: labels.map(|l| l.field.clone()),
        positive: labels.map(|l| l.positive.clone()).unwrap_or_default(),
        positives: positive.as_ref().map(HashSet::len),
        precision: precision(&own),
        points,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_holds_the_runs_alpha() {
        assert_eq!(alphas(0.8).len(), 11);
        assert!(alphas(0.8).contains(&0.8));
        let v = alphas(0.75);
        assert_eq!(v.len(), 12);
        assert_eq!(v[8], 0.75);
    }
}
