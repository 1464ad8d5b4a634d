//! The dataset-level ranking (spec section 6): a method (GATEAU under a recipe, or a
//! baseline) orders the scored samples, ties broken by line order. Pure functions.

use super::recipe::{combine, Recipe, RecipeName};
use super::terms::Inputs;
use crate::rank::normalize::{CamNorm, HmgNorm};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// What orders the samples: GATEAU or one of the paper's baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Eq. 6: alpha softmax(HMP) + (1 - alpha) softmax(CAS).
    Gateau,
    /// HMG alone: Eq. 6 with alpha = 1.
    Hmg,
    /// CAM alone: Eq. 6 with alpha = 0.
    Cam,
    /// Perplexity Guidance: highest ppl_long first.
    Ppl,
    /// Instruction-Following Difficulty (Cherry): highest ppl_long / ppl_alone first.
    Ifd,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::Gateau,
        Method::Hmg,
        Method::Cam,
        Method::Ppl,
        Method::Ifd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Method::Gateau => "gateau",
            Method::Hmg => "hmg",
            Method::Cam => "cam",
            Method::Ppl => "ppl",
            Method::Ifd => "ifd",
        }
    }
}

/// What ranking needs of one scored sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub line: u64,
    pub ppl_short: f64,
    pub ppl_long: f64,
    pub seg_ppl: Vec<f64>,
    pub seg_attn: Vec<f64>,
    /// Response perplexity with nothing before it (IFD's denominator), when scored.
    pub ppl_alone: Option<f64>,
    /// Per segment: does it lie wholly before what model A reads (None: not recorded)?
    pub seg_far: Option<Vec<bool>>,
    /// Per-token response NLL of model A and model B (`score --token-nll`).
    pub nll: Option<(Vec<f32>, Vec<f32>)>,
}

impl Candidate {
    pub fn inputs(&self) -> Inputs<'_> {
        Inputs {
            ppl_short: self.ppl_short,
            ppl_long: self.ppl_long,
            seg_ppl: &self.seg_ppl,
            seg_attn: &self.seg_attn,
            seg_far: self.seg_far.as_deref(),
            nll: self.nll.as_ref().map(|(a, b)| (a.as_slice(), b.as_slice())),
        }
    }
}

/// How GATEAU's score is made: the recipe, alpha and the paper recipe's normalizations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ranking {
    pub recipe: Recipe,
    pub alpha: f64,
    pub hmg_norm: HmgNorm,
    pub cam_norm: CamNorm,
}

impl Ranking {
    /// The paper's Eq. 6 with these settings.
    pub fn paper(alpha: f64, hmg_norm: HmgNorm, cam_norm: CamNorm) -> Self {
        Self {
            recipe: RecipeName::Paper.recipe(),
            alpha,
            hmg_norm,
            cam_norm,
        }
    }
}

/// What a method needs that a scored sample lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// `ppl_alone` (`score --with-ifd`), on this line.
    PplAlone(u64),
    /// `nll_short` / `nll_long` (`score --token-nll`), on this line.
    TokenNll(u64),
}

/// One sample's parts of the final score.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub line: u64,
    pub hmp: f64,
    /// CAS under the chosen normalization; None when the sample had < 2 segments.
    pub cas: Option<f64>,
    /// CAS after null-filling (dataset minimum, or 0 when all are null).
    pub cas_filled: f64,
    pub score: f64,
    /// 0-based position in score order (every output prints it 1-based: `rank + 1`).
    pub rank: usize,
}

/// IFD = ppl_long / ppl_alone (Cherry's Instruction-Following Difficulty).
pub fn ifd(c: &Candidate) -> Option<f64> {
    c.ppl_alone.map(|a| c.ppl_long / a)
}

/// Ranks by `method`. Every row keeps its HMP and CAS (Eq. 6 parts) for display; `score`
/// is the method's own: Eq. 6 with alpha (or 1, or 0), ppl_long, or IFD.
/// Fails when IFD is asked for and a candidate has no ppl_alone (its line is named).
pub fn rank_by(
    c: &[Candidate],
    method: Method,
    alpha: f64,
    hn: HmgNorm,
    cn: CamNorm,
) -> Result<Vec<Ranked>, u64> {
    rank_with(c, method, &Ranking::paper(alpha, hn, cn)).map_err(|m| match m {
        Missing::PplAlone(l) | Missing::TokenNll(l) => l,
    })
}

/// Ranks by `method` under a ranking's recipe (see [`rank_by`]).
pub fn rank_with(c: &[Candidate], method: Method, r: &Ranking) -> Result<Vec<Ranked>, Missing> {
    let alpha = match method {
        Method::Hmg => 1.0,
        Method::Cam => 0.0,
        _ => r.alpha,
    };
    let mut out = rank_recipe(c, &Ranking { alpha, ..*r })?;
    let own: Option<Vec<f64>> = match method {
        Method::Gateau | Method::Hmg | Method::Cam => None,
        Method::Ppl => Some(c.iter().map(|x| x.ppl_long).collect()),
        Method::Ifd => Some(
            c.iter()
                .map(|x| ifd(x).ok_or(Missing::PplAlone(x.line)))
                .collect::<Result<_, _>>()?,
        ),
    };
    if let Some(v) = own {
        let by_line: std::collections::HashMap<u64, f64> =
            c.iter().map(|x| x.line).zip(v).collect();
        for r in &mut out {
            r.score = by_line[&r.line];
        }
        sort_ranked(&mut out);
    }
    Ok(out)
}

/// Score order, ties by line; ranks renumbered.
fn sort_ranked(out: &mut [Ranked]) {
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.line.cmp(&b.line)));
    for (i, r) in out.iter_mut().enumerate() {
        r.rank = i;
    }
}

/// Scores every candidate (Eq. 6) and returns them in score order (ties: lower line first).
pub fn rank(c: &[Candidate], alpha: f64, hn: HmgNorm, cn: CamNorm) -> Vec<Ranked> {
    rank_recipe(c, &Ranking::paper(alpha, hn, cn))
        .expect("the paper recipe needs nothing beyond the perplexities")
}

/// Scores every candidate under a recipe; `hmp` and `cas` of each row are then the
/// recipe's HMG and CAM terms.
pub fn rank_recipe(c: &[Candidate], r: &Ranking) -> Result<Vec<Ranked>, Missing> {
    let inputs: Vec<Inputs> = c.iter().map(Candidate::inputs).collect();
    let m = combine(&inputs, &r.recipe, r.alpha, r.hmg_norm, r.cam_norm)
        .map_err(|i| Missing::TokenNll(c[i].line))?;
    let mut out: Vec<Ranked> = (0..c.len())
        .map(|i| Ranked {
            line: c[i].line,
            hmp: m.hmg[i],
            cas: m.cam[i],
            cas_filled: m.cam_filled[i],
            score: m.score[i],
            rank: 0,
        })
        .collect();
    sort_ranked(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(line: u64, ps: f64, pl: f64, seg_ppl: &[f64], seg_attn: &[f64]) -> Candidate {
        Candidate {
            line,
            ppl_short: ps,
            ppl_long: pl,
            seg_ppl: seg_ppl.to_vec(),
            seg_attn: seg_attn.to_vec(),
            ppl_alone: None,
            seg_far: None,
            nll: None,
        }
    }

    #[test]
    fn eq6_on_hand_worked_numbers() {
        // minmax(short) = [0, 1], minmax(long) = [0, 1] -> HMP = [0, 0]; softmax -> 0.5 each.
        // CAS with l1: sample 0 [1,1]/[1,1] -> 1; sample 1 [1,3]/[3,1] -> 0.6.
        // softmax([1, 0.6]) = [1/(1+e^-0.4), e^-0.4/(1+e^-0.4)].
        let c = [
            cand(0, 2.0, 1.0, &[1.0, 1.0], &[1.0, 1.0]),
            cand(1, 4.0, 3.0, &[1.0, 3.0], &[3.0, 1.0]),
        ];
        let r = rank(&c, 0.8, HmgNorm::Minmax, CamNorm::L1);
        let p0 = 1.0 / (1.0 + (-0.4f64).exp());
        assert_eq!(r[0].line, 0);
        assert!((r[0].score - (0.8 * 0.5 + 0.2 * p0)).abs() < 1e-12);
        assert!((r[1].score - (0.8 * 0.5 + 0.2 * (1.0 - p0))).abs() < 1e-12);
        assert!((r[1].cas.unwrap() - 0.6).abs() < 1e-12);
    }

    #[test]
    fn null_cas_takes_the_minimum_and_ties_go_to_line_order() {
        let c = [
            cand(5, 1.0, 1.0, &[], &[]),
            cand(2, 1.0, 1.0, &[1.0, 3.0], &[3.0, 1.0]),
        ];
        let r = rank(&c, 0.5, HmgNorm::Minmax, CamNorm::L1);
        // Both CAS 0.6 after filling and HMP 0: a tie, broken by line.
        assert_eq!(r.iter().map(|x| x.line).collect::<Vec<_>>(), vec![2, 5]);
        assert_eq!(r[1].cas, None);
        assert!((r[1].cas_filled - 0.6).abs() < 1e-12);
        assert!((r[0].score - r[1].score).abs() < 1e-15);
    }

    #[test]
    fn baselines_rank_by_their_own_numbers() {
        let mut c = vec![
            cand(0, 9.0, 3.0, &[], &[]),
            cand(1, 1.0, 5.0, &[], &[]),
            cand(2, 2.0, 3.0, &[], &[]),
        ];
        let lines = |r: &[Ranked]| r.iter().map(|x| x.line).collect::<Vec<_>>();
        let (hn, cn) = (HmgNorm::Minmax, CamNorm::Softmax);
        // ppl: 5 > 3 = 3 (tie in line order).
        let r = rank_by(&c, Method::Ppl, 0.8, hn, cn).unwrap();
        assert_eq!(lines(&r), vec![1, 0, 2]);
        assert_eq!(r[0].score, 5.0);
        // ifd without ppl_alone names the first line lacking it.
        assert_eq!(rank_by(&c, Method::Ifd, 0.8, hn, cn).unwrap_err(), 0);
        // ifd: 3/1 = 3, 5/10 = 0.5, 3/2 = 1.5.
        for (x, a) in c.iter_mut().zip([1.0, 10.0, 2.0]) {
            x.ppl_alone = Some(a);
        }
        let r = rank_by(&c, Method::Ifd, 0.8, hn, cn).unwrap();
        assert_eq!(lines(&r), vec![0, 2, 1]);
        assert_eq!(
            r.iter().map(|x| x.score).collect::<Vec<_>>(),
            [3.0, 1.5, 0.5]
        );
        // hmg: minmax short [1, 0, 1/8] - minmax long [0, 1, 0] = [1, -1, 1/8].
        let r = rank_by(&c, Method::Hmg, 0.8, hn, cn).unwrap();
        assert_eq!(lines(&r), vec![0, 2, 1]);
        let z = 1f64.exp() + (-1f64).exp() + 0.125f64.exp();
        assert!((r[0].score - 1f64.exp() / z).abs() < 1e-12);
        // cam: every cas null -> CAS 0 -> uniform softmax; a three-way tie in line order.
        let r = rank_by(&c, Method::Cam, 0.8, hn, cn).unwrap();
        assert_eq!(lines(&r), vec![0, 1, 2]);
        assert!(r.iter().all(|x| (x.score - 1.0 / 3.0).abs() < 1e-12));
    }

    #[test]
    fn all_null_cas_is_zero() {
        let c = [cand(0, 3.0, 1.0, &[], &[]), cand(1, 1.0, 1.0, &[], &[])];
        let r = rank(&c, 0.8, HmgNorm::Minmax, CamNorm::Softmax);
        assert!(r.iter().all(|x| x.cas_filled == 0.0));
        // HMP: minmax short [1, 0] - minmax long [0, 0] -> [1, 0]; line 0 first.
        assert_eq!(r[0].line, 0);
        let e = 1f64.exp();
        assert!((r[0].score - (0.8 * e / (e + 1.0) + 0.2 * 0.5)).abs() < 1e-12);
    }
}
