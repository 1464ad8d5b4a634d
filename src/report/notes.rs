//! Warnings about a ranking's terms, shared by `select` and `report`: a term that
//! dominates through its spread, flat attention, terms that cancel each other, and terms
//! that follow the number of segments instead of the context's use. Each note names the
//! fix.

use crate::rank::normalize::cam_norm;
use crate::rank::recipe::{fuse, DEFAULT_RECIPE};
use crate::rank::selection::{Candidate, Ranked, Ranking};
use crate::rank::terms::{spearman, CamTerm};
use crate::report::json::{Diagnostics, Stats};

/// |Spearman| with the segment count above which a term is said to measure length.
pub const SEGMENT_BIAS: f64 = 0.5;
/// Spearman between the HMG and CAM terms below which they are said to cancel.
pub const ANTI_CORRELATED: f64 = -0.3;
/// Mean within-sample spread of the attention distribution below which it is flat.
pub const FLAT_ATTENTION: f64 = 1e-3;

fn spread(v: &[f64]) -> f64 {
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    hi - lo
}

/// Diagnoses the terms behind `ranked` (rows of any order; matched to `cands` by line).
pub fn diagnose(cands: &[Candidate], ranked: &[Ranked], r: &Ranking) -> Diagnostics {
    let by_line: std::collections::HashMap<u64, &Ranked> =
        ranked.iter().map(|x| (x.line, x)).collect();
    let rows: Vec<(&Candidate, &Ranked)> = cands
        .iter()
        .filter_map(|c| by_line.get(&c.line).map(|x| (c, *x)))
        .collect();
    let hmg: Vec<f64> = rows.iter().map(|(_, x)| x.hmp).collect();
    let cam: Vec<f64> = rows.iter().map(|(_, x)| x.cas_filled).collect();
    let segs: Vec<f64> = rows.iter().map(|(c, _)| c.seg_ppl.len() as f64).collect();
    let (fh, fc) = (fuse(&hmg, r.recipe.fuse), fuse(&cam, r.recipe.fuse));
    let hmg_term_std = Stats::of(fh.iter().map(|x| r.alpha * x)).std;
    let cam_term_std = Stats::of(fc.iter().map(|x| (1.0 - r.alpha) * x)).std;
    let with_segments: Vec<&Candidate> = cands.iter().filter(|c| c.seg_ppl.len() >= 2).collect();
    let mean = |f: &dyn Fn(&Candidate) -> f64| {
        if with_segments.is_empty() {
            0.0
        } else {
            with_segments.iter().map(|c| f(c)).sum::<f64>() / with_segments.len() as f64
        }
    };
    let att_spread_mean = mean(&|c| spread(&cam_norm(&c.seg_attn, r.cam_norm)));
    let is_spread_mean = mean(&|c| spread(&cam_norm(&c.seg_ppl, r.cam_norm)));
    let rho_hmg_cam = spearman(&hmg, &cam);
    let rho_hmg_segments = spearman(&hmg, &segs);
    let rho_cam_segments = spearman(&cam, &segs);
    let fix = format!(
        "--recipe {} (the default) measured best on labeled data",
        DEFAULT_RECIPE.name()
    );
    let cam_name = crate::rank::recipe::value_name(r.recipe.cam);
    let mut notes = Vec::new();
    if r.alpha < 1.0 && cam_term_std > hmg_term_std {
        notes.push(format!(
            "the CAM term varies more than the HMG term ({cam_term_std:.3e} vs \
             {hmg_term_std:.3e}): it dominates the ranking even at alpha {}; {fix}",
            r.alpha
        ));
    }
    let uses_attention = matches!(
        r.recipe.cam,
        CamTerm::Paper | CamTerm::Flip | CamTerm::Agree | CamTerm::AttnTop
    );
    if uses_attention && !with_segments.is_empty() && att_spread_mean < FLAT_ATTENTION {
        notes.push(format!(
            "ATT is nearly uniform within samples (mean spread {att_spread_mean:.1e} < \
             {FLAT_ATTENTION:.0e}): the CAM term {cam_name} mostly measures how uneven the \
             segment perplexities are; --cam-norm l1 keeps the attention signal, {fix}"
        ));
    }
    if r.alpha > 0.0 && r.alpha < 1.0 && rho_hmg_cam < ANTI_CORRELATED {
        notes.push(format!(
            "the CAM term {cam_name} is anti-correlated with the HMG term (Spearman \
             {rho_hmg_cam:.2}): the two cancel instead of agreeing on what needs the \
             context; {fix}"
        ));
    }
    for (what, rho, weight) in [
        ("HMG", rho_hmg_segments, r.alpha),
        ("CAM", rho_cam_segments, 1.0 - r.alpha),
    ] {
        if weight > 0.0 && rho.abs() > SEGMENT_BIAS {
            notes.push(format!(
                "the {what} term follows the number of segments (Spearman {rho:.2}, |rho| > \
                 {SEGMENT_BIAS}): it ranks by length more than by context use; check it with \
                 `gateau eval` on a labeled subset, or {fix}"
            ));
        }
    }
    Diagnostics {
        hmg_term_std,
        cam_term_std,
        att_spread_mean,
        is_spread_mean,
        rho_hmg_cam,
        rho_hmg_segments,
        rho_cam_segments,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::normalize::{CamNorm, HmgNorm};
    use crate::rank::recipe::RecipeName;
    use crate::rank::selection::rank_recipe;

    fn cand(line: u64, ps: f64, seg_ppl: Vec<f64>) -> Candidate {
        let n = seg_ppl.len();
        Candidate {
            line,
            ppl_short: ps,
            ppl_long: 2.0,
            seg_ppl,
            seg_attn: vec![1e-4; n],
            ppl_alone: None,
            seg_far: None,
            nll: None,
        }
    }

    #[test]
    fn notes_name_cancelling_and_length_following_terms() {
        // HMG rises with the line; the gain falls with it, and the segment count rises:
        // anti-correlated terms and an HMG term that follows the segment count.
        let c: Vec<Candidate> = (0..6)
            .map(|i| {
                let mut p = vec![8.0; 3 + i];
                p[0] = 8.0 / (6 - i) as f64;
                cand(i as u64, 3.0 + i as f64, p)
            })
            .collect();
        let r = Ranking {
            recipe: RecipeName::Context.recipe(),
            alpha: 0.8,
            ..Ranking::paper(0.8, HmgNorm::Minmax, CamNorm::Softmax)
        };
        let ranked = rank_recipe(&c, &r).unwrap();
        let d = diagnose(&c, &ranked, &r);
        assert!((d.rho_hmg_cam + 1.0).abs() < 1e-12, "{}", d.rho_hmg_cam);
        assert!((d.rho_hmg_segments - 1.0).abs() < 1e-12);
        assert!(d.notes.iter().any(|n| n.contains("anti-correlated")));
        assert!(d
            .notes
            .iter()
            .any(|n| n.contains("HMG term follows the number")));
        assert!(d
            .notes
            .iter()
            .any(|n| n.contains("CAM term follows the number")));
        // Gain uses no attention: no flat-attention note despite ATT spread 0.
        assert!(!d.notes.iter().any(|n| n.contains("ATT is nearly uniform")));
        let p = Ranking::paper(0.8, HmgNorm::Minmax, CamNorm::Softmax);
        let d = diagnose(&c, &rank_recipe(&c, &p).unwrap(), &p);
        assert!(d.notes.iter().any(|n| n.contains("ATT is nearly uniform")));
    }
}
