//! The dataset-level ranking (spec section 6): HMP from normalized perplexities, CAS per
//! sample, Eq. 6, and the top-k cut with ties broken by line order. Pure functions.

use crate::normalize::{cas, hmg_norm, softmax, CamNorm, HmgNorm};
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
    /// 0-based position in score order.
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
    let alpha = match method {
        Method::Hmg => 1.0,
        Method::Cam => 0.0,
        _ => alpha,
    };
    let mut out = rank(c, alpha, hn, cn);
    let own: Option<Vec<f64>> = match method {
        Method::Gateau | Method::Hmg | Method::Cam => None,
        Method::Ppl => Some(c.iter().map(|x| x.ppl_long).collect()),
        Method::Ifd => Some(
            c.iter()
                .map(|x| ifd(x).ok_or(x.line))
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
    let short: Vec<f64> = c.iter().map(|x| x.ppl_short).collect();
    let long: Vec<f64> = c.iter().map(|x| x.ppl_long).collect();
    let (ns, nl) = (hmg_norm(&short, hn), hmg_norm(&long, hn));
    let hmp: Vec<f64> = ns.iter().zip(&nl).map(|(a, b)| a - b).collect();
    let cas: Vec<Option<f64>> = c.iter().map(|x| cas(&x.seg_ppl, &x.seg_attn, cn)).collect();
    let min = cas.iter().flatten().copied().fold(f64::INFINITY, f64::min);
    let filled: Vec<f64> = cas
        .iter()
        .map(|v| v.unwrap_or(if min.is_finite() { min } else { 0.0 }))
        .collect();
    let (sh, sc) = (softmax(&hmp), softmax(&filled));
    let mut out: Vec<Ranked> = (0..c.len())
        .map(|i| Ranked {
            line: c[i].line,
            hmp: hmp[i],
            cas: cas[i],
            cas_filled: filled[i],
            score: alpha * sh[i] + (1.0 - alpha) * sc[i],
            rank: 0,
        })
        .collect();
    sort_ranked(&mut out);
    out
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
