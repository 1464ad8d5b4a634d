//! The per-sample quantities a ranking can be built from, all computed from the raw score
//! records (no model passes): the HMG side (how much the long context lowers the
//! response's perplexity) and the CAM side (what the segment passes and the attention say
//! about which parts of the context the response uses).

use super::normalize::{cas, rank, CamNorm};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// LongPPL's key-token rule: a response token is a key token when the long context lowers
/// its NLL by more than this many nats...
pub const KEY_GAIN_NATS: f64 = 2.0;
/// ...and the long model then predicts it well (NLL below this many nats).
pub const KEY_NLL_NATS: f64 = 2.0;

/// The HMG part of a ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HmgTerm {
    /// The paper's HMP = N(ppl_short) - N(ppl_long), N = --hmg-norm across the dataset
    /// (min-max by default). A few very hard samples set the scale for all.
    Paper,
    /// ln(ppl_short / ppl_long): the mean per-token NLL that the long context saves.
    LogRatio,
    /// Share of response tokens that are key tokens: NLL lower by more than 2 nats with
    /// the long context, and below 2 nats (LongPPL). Needs `score --token-nll`.
    KeyShare,
    /// Mean over response tokens of max(0, NLL_A - NLL_B). Needs `score --token-nll`.
    KeyGain,
}

/// The CAM part of a ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CamTerm {
    /// The paper's CAS = cosine(N(seg_ppl), N(seg_attn)), N = --cam-norm (softmax by
    /// default). High when no segment helps more than another.
    Paper,
    /// Minus the paper's CAS.
    Flip,
    /// Spearman correlation of segment importance (-seg_ppl) with segment attention: does
    /// the attention go where the useful segments are?
    Agree,
    /// median(ln seg_ppl) - min(ln seg_ppl): how much the single most useful segment
    /// lowers the response's perplexity, against a typical segment.
    Gain,
    /// Gain with the minimum taken over the segments model A does not read (every
    /// segment when model A is a separate checkpoint): long-range context use. 0 when no
    /// segment lies beyond model A's window.
    FarGain,
    /// Concentration of importance: 1 - entropy / ln(n) of the segments' positive gains
    /// (median(ln seg_ppl) - ln seg_ppl, clipped at 0) as a distribution.
    Focus,
    /// Attention share of the most important tenth of the segments (at least one).
    AttnTop,
}

impl HmgTerm {
    pub fn needs_token_nll(self) -> bool {
        matches!(self, HmgTerm::KeyShare | HmgTerm::KeyGain)
    }
}

/// What the terms need of one scored sample.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Inputs<'a> {
    pub ppl_short: f64,
    pub ppl_long: f64,
    pub seg_ppl: &'a [f64],
    pub seg_attn: &'a [f64],
    /// Per segment: does it lie wholly before what model A reads? None: unknown (records
    /// of an older gateau), every segment counts.
    pub seg_far: Option<&'a [bool]>,
    /// Per-token response NLL of model A and model B (`score --token-nll`).
    pub nll: Option<(&'a [f32], &'a [f32])>,
}

/// The median (mean of the middle two for an even count); 0 for no values.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Spearman's rank correlation (ties at their mean rank); 0 when either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    if a.len() < 2 || a.len() != b.len() {
        return 0.0;
    }
    pearson(&rank(a), &rank(b))
}

pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// `median(ln seg_ppl) - min over the chosen segments of ln seg_ppl`, at least 0.
fn gain(seg_ppl: &[f64], chosen: impl Fn(usize) -> bool) -> f64 {
    let mut logs: Vec<f64> = seg_ppl.iter().map(|p| p.ln()).collect();
    let best = logs
        .iter()
        .enumerate()
        .filter(|(i, _)| chosen(*i))
        .map(|(_, v)| *v)
        .fold(f64::INFINITY, f64::min);
    if !best.is_finite() {
        return 0.0;
    }
    (median(&mut logs) - best).max(0.0)
}

/// The HMG term of one sample before any dataset-level normalization; None when the
/// sample lacks what the term needs. `Paper` is dataset-level: here it is ppl_short, the
/// caller subtracts the normalized ppl_long (see `super::recipe`).
pub fn hmg(t: HmgTerm, x: &Inputs) -> Option<f64> {
    match t {
        HmgTerm::Paper => Some(x.ppl_short),
        HmgTerm::LogRatio => Some((x.ppl_short / x.ppl_long).ln()),
        HmgTerm::KeyShare | HmgTerm::KeyGain => {
            let (a, b) = x.nll?;
            // Model A may lack the first response token (spec section 8): align the ends.
            let n = a.len().min(b.len());
            if n == 0 {
                return None;
            }
            let (a, b) = (&a[a.len() - n..], &b[b.len() - n..]);
            let pairs = a.iter().zip(b).map(|(&s, &l)| (s as f64, l as f64));
            Some(match t {
                HmgTerm::KeyShare => {
                    pairs
                        .filter(|(s, l)| s - l > KEY_GAIN_NATS && *l < KEY_NLL_NATS)
                        .count() as f64
                        / n as f64
                }
                _ => pairs.map(|(s, l)| (s - l).max(0.0)).sum::<f64>() / n as f64,
            })
        }
    }
}

/// The CAM term of one sample; None with fewer than two segments (as the paper's CAS).
pub fn cam(t: CamTerm, norm: CamNorm, x: &Inputs) -> Option<f64> {
    let (p, a) = (x.seg_ppl, x.seg_attn);
    if p.len() < 2 || p.len() != a.len() {
        return None;
    }
    Some(match t {
        CamTerm::Paper => cas(p, a, norm)?,
        CamTerm::Flip => -cas(p, a, norm)?,
        CamTerm::Agree => {
            let importance: Vec<f64> = p.iter().map(|v| -v).collect();
            spearman(&importance, a)
        }
        CamTerm::Gain => gain(p, |_| true),
        CamTerm::FarGain => match x.seg_far {
            Some(far) => gain(p, |i| far.get(i).copied().unwrap_or(false)),
            None => gain(p, |_| true),
        },
        CamTerm::Focus => {
            let mut logs: Vec<f64> = p.iter().map(|v| v.ln()).collect();
            let med = median(&mut logs.clone());
            logs.iter_mut().for_each(|v| *v = (med - *v).max(0.0));
            let total: f64 = logs.iter().sum();
            if total <= 0.0 {
                0.0
            } else {
                let h: f64 = logs
                    .iter()
                    .filter(|&&g| g > 0.0)
                    .map(|g| {
                        let q = g / total;
                        -q * q.ln()
                    })
                    .sum();
                1.0 - h / (p.len() as f64).ln()
            }
        }
        CamTerm::AttnTop => {
            let total: f64 = a.iter().sum();
            if total <= 0.0 {
                return Some(0.0);
            }
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&i, &j| p[i].total_cmp(&p[j]).then(i.cmp(&j)));
            let k = (p.len() / 10).max(1);
            order[..k].iter().map(|&i| a[i]).sum::<f64>() / total
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(p: &'a [f64], a: &'a [f64]) -> Inputs<'a> {
        Inputs {
            ppl_short: 8.0,
            ppl_long: 2.0,
            seg_ppl: p,
            seg_attn: a,
            ..Default::default()
        }
    }

    #[test]
    fn hmg_terms_by_hand() {
        let x = inputs(&[], &[]);
        assert!((hmg(HmgTerm::LogRatio, &x).unwrap() - 4f64.ln()).abs() < 1e-12);
        assert_eq!(hmg(HmgTerm::KeyShare, &x), None);
        // Tokens: gains 3 (long 1: key), 2.5 (long 2.5: not key, too hard), 0.5, -1.
        let (a, b) = ([4.0f32, 5.0, 1.5, 0.0], [1.0f32, 2.5, 1.0, 1.0]);
        let x = Inputs {
            nll: Some((&a, &b)),
            ..x
        };
        assert!((hmg(HmgTerm::KeyShare, &x).unwrap() - 0.25).abs() < 1e-12);
        // (3 + 2.5 + 0.5 + 0) / 4
        assert!((hmg(HmgTerm::KeyGain, &x).unwrap() - 1.5).abs() < 1e-12);
        // Model A one token short: the last three tokens pair up.
        let (a, b) = ([5.0f32, 1.5, 0.0], [1.0f32, 2.5, 1.0, 1.0]);
        let x = Inputs {
            nll: Some((&a, &b)),
            ..x
        };
        assert!((hmg(HmgTerm::KeyGain, &x).unwrap() - 3.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn gain_is_median_minus_best() {
        let e = std::f64::consts::E;
        // ln: [1, 2, 3, 0.5] -> median 1.5, min 0.5 -> gain 1.
        let p = [e, e * e, e.powi(3), e.sqrt()];
        let a = [0.1, 0.2, 0.3, 0.4];
        let x = inputs(&p, &a);
        assert!((cam(CamTerm::Gain, CamNorm::Softmax, &x).unwrap() - 1.0).abs() < 1e-12);
        // Only segments 0 and 1 lie beyond model A: min ln = 1 -> 1.5 - 1 = 0.5.
        let far = [true, true, false, false];
        let y = Inputs {
            seg_far: Some(&far),
            ..x.clone()
        };
        assert!((cam(CamTerm::FarGain, CamNorm::Softmax, &y).unwrap() - 0.5).abs() < 1e-12);
        // Nothing beyond the window: 0. Unknown positions: every segment counts.
        let none = [false; 4];
        let z = Inputs {
            seg_far: Some(&none),
            ..x.clone()
        };
        assert_eq!(cam(CamTerm::FarGain, CamNorm::Softmax, &z), Some(0.0));
        assert!((cam(CamTerm::FarGain, CamNorm::Softmax, &x).unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(
            cam(CamTerm::Gain, CamNorm::Softmax, &inputs(&[2.0], &[1.0])),
            None
        );
    }

    #[test]
    fn agreement_attention_and_focus_by_hand() {
        // Importance order (lowest ppl first): seg 2, 0, 1; attention order 2, 0, 1 too.
        let p = [2.0, 3.0, 1.0];
        let a = [0.2, 0.1, 0.7];
        let x = inputs(&p, &a);
        assert!((cam(CamTerm::Agree, CamNorm::Softmax, &x).unwrap() - 1.0).abs() < 1e-12);
        // Top tenth = one segment (index 2): share 0.7 / 1.0.
        assert!((cam(CamTerm::AttnTop, CamNorm::Softmax, &x).unwrap() - 0.7).abs() < 1e-12);
        // Gains: median ln = ln 2; positive only for seg 2 (ln 2): all mass on one
        // segment -> entropy 0 -> focus 1.
        assert!((cam(CamTerm::Focus, CamNorm::Softmax, &x).unwrap() - 1.0).abs() < 1e-12);
        // Flip is minus the paper's CAS; equal segments -> focus 0.
        let c = cas(&p, &a, CamNorm::L1).unwrap();
        assert!((cam(CamTerm::Flip, CamNorm::L1, &x).unwrap() + c).abs() < 1e-12);
        let q = [2.0, 2.0, 2.0];
        assert_eq!(cam(CamTerm::Focus, CamNorm::L1, &inputs(&q, &a)), Some(0.0));
    }

    #[test]
    fn spearman_by_hand() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // ranks [0, 0.5, 1] vs [0.25, 0.25, 1] (tie): pearson by hand = 0.8660254...
        let r = spearman(&[1.0, 2.0, 3.0], &[5.0, 5.0, 9.0]);
        assert!((r - 0.75f64.sqrt()).abs() < 1e-12, "{r}");
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
    }
}
