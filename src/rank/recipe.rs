//! Recipes: which HMG and CAM terms a ranking uses and how each is put on a dataset-wide
//! scale before `alpha` weighs them: `score = alpha F(hmg) + (1 - alpha) F(cam)`.
//! The `paper` recipe is the paper's Eq. 6 exactly (spec section 6).

use super::normalize::{hmg_norm, minmax, rank, softmax, CamNorm, HmgNorm};
use super::terms::{cam, hmg, CamTerm, HmgTerm, Inputs};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// How a term's values become one dataset-wide scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fuse {
    /// Softmax over the dataset (the paper's Eq. 6): a few extreme samples dominate.
    Softmax,
    /// Rank / (n - 1): only the order counts, so neither term's spread can outvote the
    /// other's.
    Rank,
    /// (x - mean) / standard deviation.
    Zscore,
    /// Min-max scaling to [0, 1].
    Minmax,
}

/// The named recipes of `select --recipe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecipeName {
    /// The paper's Eq. 6 as written: alpha softmax(HMP) + (1 - alpha) softmax(CAS).
    Paper,
    /// Long-range context use: ranks of ln(ppl_short / ppl_long) and of the far gain.
    LongRange,
    /// Any context use: ranks of ln(ppl_short / ppl_long) and of the gain of the most
    /// useful segment wherever it lies.
    Context,
    /// LongPPL-style key tokens (needs `score --token-nll`) with the far gain, by rank.
    KeyTokens,
}

impl RecipeName {
    pub const ALL: [RecipeName; 4] = [
        RecipeName::Paper,
        RecipeName::LongRange,
        RecipeName::Context,
        RecipeName::KeyTokens,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RecipeName::Paper => "paper",
            RecipeName::LongRange => "long-range",
            RecipeName::Context => "context",
            RecipeName::KeyTokens => "key-tokens",
        }
    }

    pub fn recipe(self) -> Recipe {
        let (hmg, cam, fuse) = match self {
            RecipeName::Paper => (HmgTerm::Paper, CamTerm::Paper, Fuse::Softmax),
            RecipeName::LongRange => (HmgTerm::LogRatio, CamTerm::FarGain, Fuse::Rank),
            RecipeName::Context => (HmgTerm::LogRatio, CamTerm::Gain, Fuse::Rank),
            RecipeName::KeyTokens => (HmgTerm::KeyShare, CamTerm::FarGain, Fuse::Rank),
        };
        Recipe { hmg, cam, fuse }
    }
}

/// The recipe `select` uses when none is named: the one that measured best on the labeled
/// probe set (README, "How well does it select?").
pub const DEFAULT_RECIPE: RecipeName = RecipeName::LongRange;

/// The terms of a ranking and their dataset-wide scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Recipe {
    pub hmg: HmgTerm,
    pub cam: CamTerm,
    pub fuse: Fuse,
}

impl Recipe {
    /// The recipe's name when it is a named one, else its terms.
    pub fn describe(&self) -> String {
        match RecipeName::ALL.iter().find(|n| n.recipe() == *self) {
            Some(n) => n.name().to_string(),
            None => format!(
                "hmg {}, cam {}, fuse {}",
                value_name(self.hmg),
                value_name(self.cam),
                value_name(self.fuse)
            ),
        }
    }
}

/// A clap value's spelling on the command line.
pub fn value_name<T: ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_string())
}

pub fn fuse(x: &[f64], f: Fuse) -> Vec<f64> {
    match f {
        Fuse::Softmax => softmax(x),
        Fuse::Rank => rank(x),
        Fuse::Minmax => minmax(x),
        Fuse::Zscore => {
            let n = x.len().max(1) as f64;
            let mean = x.iter().sum::<f64>() / n;
            let sd = (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            if sd == 0.0 {
                vec![0.0; x.len()]
            } else {
                x.iter().map(|v| (v - mean) / sd).collect()
            }
        }
    }
}

/// The paper's HMP, dataset-level already: `N(ppl_short) - N(ppl_long)` (spec section 4).
pub fn hmp(x: &[Inputs], hn: HmgNorm) -> Vec<f64> {
    let short: Vec<f64> = x.iter().map(|c| c.ppl_short).collect();
    let long: Vec<f64> = x.iter().map(|c| c.ppl_long).collect();
    let (ns, nl) = (hmg_norm(&short, hn), hmg_norm(&long, hn));
    ns.iter().zip(&nl).map(|(a, b)| a - b).collect()
}

/// Per sample: the HMG term, the CAM term (None with fewer than two segments), the CAM
/// term after null-filling (the dataset's minimum, 0 when all are null), and the score.
pub struct Combined {
    pub hmg: Vec<f64>,
    pub cam: Vec<Option<f64>>,
    pub cam_filled: Vec<f64>,
    pub score: Vec<f64>,
}

/// Combines the terms of every sample. Errs with the index of the first sample that lacks
/// what the HMG term needs.
pub fn combine(
    x: &[Inputs],
    r: &Recipe,
    alpha: f64,
    hn: HmgNorm,
    cn: CamNorm,
) -> Result<Combined, usize> {
    let hmg_values: Vec<f64> = match r.hmg {
        HmgTerm::Paper => hmp(x, hn),
        t => x
            .iter()
            .enumerate()
            .map(|(i, c)| hmg(t, c).ok_or(i))
            .collect::<Result<_, _>>()?,
    };
    let cam_values: Vec<Option<f64>> = x.iter().map(|c| cam(r.cam, cn, c)).collect();
    let min = cam_values
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let filled: Vec<f64> = cam_values
        .iter()
        .map(|v| v.unwrap_or(if min.is_finite() { min } else { 0.0 }))
        .collect();
    let (fh, fc) = (fuse(&hmg_values, r.fuse), fuse(&filled, r.fuse));
    let score = (0..x.len())
        .map(|i| alpha * fh[i] + (1.0 - alpha) * fc[i])
        .collect();
    Ok(Combined {
        hmg: hmg_values,
        cam: cam_values,
        cam_filled: filled,
        score,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusions_by_hand() {
        let x = [1.0, 3.0, 2.0];
        assert_eq!(fuse(&x, Fuse::Rank), vec![0.0, 1.0, 0.5]);
        assert_eq!(fuse(&x, Fuse::Minmax), vec![0.0, 1.0, 0.5]);
        // mean 2, population sd sqrt(2/3).
        let z = fuse(&x, Fuse::Zscore);
        let sd = (2.0f64 / 3.0).sqrt();
        assert!((z[0] + 1.0 / sd).abs() < 1e-12 && (z[2]).abs() < 1e-12);
        assert_eq!(fuse(&[4.0, 4.0], Fuse::Zscore), vec![0.0, 0.0]);
    }

    #[test]
    fn named_recipes_describe_themselves() {
        for n in RecipeName::ALL {
            assert_eq!(n.recipe().describe(), n.name());
        }
        let custom = Recipe {
            hmg: HmgTerm::LogRatio,
            cam: CamTerm::Agree,
            fuse: Fuse::Zscore,
        };
        assert_eq!(custom.describe(), "hmg log-ratio, cam agree, fuse zscore");
    }

    #[test]
    fn long_range_ranks_by_hand() {
        let e = std::f64::consts::E;
        // Sample 0: log-ratio ln 4, far gain 1 (ln seg_ppl [0, 1, 1] -> median 1, min 0).
        // Sample 1: log-ratio ln 2, far gain 0. Sample 2: one segment -> cam null -> min.
        let (p0, p1, p2) = ([1.0, e, e], [e, e, e], [3.0]);
        let a = [0.1, 0.1, 0.1];
        fn mk<'a>(ps: f64, p: &'a [f64], a: &'a [f64]) -> Inputs<'a> {
            Inputs {
                ppl_short: ps,
                ppl_long: 1.0,
                seg_ppl: p,
                seg_attn: &a[..p.len()],
                ..Default::default()
            }
        }
        let x = [mk(4.0, &p0, &a), mk(2.0, &p1, &a), mk(8.0, &p2, &a)];
        let r = RecipeName::LongRange.recipe();
        let c = combine(&x, &r, 0.8, HmgNorm::Minmax, CamNorm::Softmax).unwrap();
        assert_eq!(c.cam, vec![Some(1.0), Some(0.0), None]);
        assert_eq!(c.cam_filled, vec![1.0, 0.0, 0.0]);
        // hmg ranks: ln4 -> 0.5, ln2 -> 0, ln8 -> 1; cam ranks (ties 0, 0 -> 0.25): 1, .25, .25
        let want = [0.8 * 0.5 + 0.2, 0.2 * 0.25, 0.8 + 0.2 * 0.25];
        for (s, w) in c.score.iter().zip(want) {
            assert!((s - w).abs() < 1e-12, "{:?}", c.score);
        }
        // Key tokens need per-token NLL: the first sample lacking it is named.
        let k = RecipeName::KeyTokens.recipe();
        assert_eq!(
            combine(&x, &k, 0.8, HmgNorm::Minmax, CamNorm::Softmax).err(),
            Some(0)
        );
    }
}
