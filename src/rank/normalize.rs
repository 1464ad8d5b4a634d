//! The normalizations of the spec (sections 4-6), in f64: softmax (stable), L1, min-max,
//! rank, cosine, and the per-sample CAS built from them.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// How HMG's perplexities are put on one scale across the dataset (spec section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HmgNorm {
    /// Min-max scaling to [0, 1] (the authors' rank.py).
    Minmax,
    /// Softmax over the dataset (the paper's literal Eq. 2).
    Softmax,
    /// Rank / (n - 1), ties take their mean rank.
    Rank,
    /// Raw perplexities.
    None,
}

/// How a sample's segment perplexities and attention become distributions (spec section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CamNorm {
    /// Softmax over the segments (Eqs. 3-4).
    Softmax,
    /// Divide by the sum.
    L1,
    /// Raw values.
    None,
}

pub fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

pub fn l1(x: &[f64]) -> Vec<f64> {
    let s: f64 = x.iter().map(|v| v.abs()).sum();
    if s == 0.0 {
        return vec![0.0; x.len()];
    }
    x.iter().map(|v| v / s).collect()
}

pub fn minmax(x: &[f64]) -> Vec<f64> {
    let lo = x.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return vec![0.0; x.len()];
    }
    x.iter().map(|v| (v - lo) / (hi - lo)).collect()
}

/// 0-based ascending ranks, ties sharing their mean rank, divided by n - 1 (0 when n = 1).
pub fn rank(x: &[f64]) -> Vec<f64> {
    let n = x.len();
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; n];
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0;
        for &k in &idx[i..=j] {
            out[k] = mean;
        }
        i = j + 1;
    }
    if n <= 1 {
        return vec![0.0; n];
    }
    out.iter().map(|r| r / (n - 1) as f64).collect()
}

pub fn hmg_norm(x: &[f64], norm: HmgNorm) -> Vec<f64> {
    match norm {
        HmgNorm::Minmax => minmax(x),
        HmgNorm::Softmax => softmax(x),
        HmgNorm::Rank => rank(x),
        HmgNorm::None => x.to_vec(),
    }
}

pub fn cam_norm(x: &[f64], norm: CamNorm) -> Vec<f64> {
    match norm {
        CamNorm::Softmax => softmax(x),
        CamNorm::L1 => l1(x),
        CamNorm::None => x.to_vec(),
    }
}

/// Cosine similarity; 0 when either vector is all zeros.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    dot / (na * nb)
}

/// `cas = cosine(N(seg_ppl), N(seg_attn))`; None with fewer than two segments.
pub fn cas(seg_ppl: &[f64], seg_attn: &[f64], norm: CamNorm) -> Option<f64> {
    if seg_ppl.len() < 2 || seg_ppl.len() != seg_attn.len() {
        return None;
    }
    Some(cosine(&cam_norm(seg_ppl, norm), &cam_norm(seg_attn, norm)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn softmax_by_hand() {
        // e^0, e^1, e^2 = 1, 2.718281828, 7.389056099; sum 11.107337927
        close(
            &softmax(&[0.0, 1.0, 2.0]),
            &[0.09003057317038046, 0.24472847105479764, 0.6652409557748219],
        );
        // Stable for huge inputs.
        close(&softmax(&[1000.0, 1000.0]), &[0.5, 0.5]);
    }

    #[test]
    fn minmax_and_constant_column() {
        close(&minmax(&[2.0, 4.0, 3.0]), &[0.0, 1.0, 0.5]);
        close(&minmax(&[7.0, 7.0]), &[0.0, 0.0]);
    }

    #[test]
    fn rank_ties_take_mean_rank() {
        // sorted: 1.0 (0), 3.0 (1,2 -> 1.5), 5.0 (3); / 3
        close(&rank(&[3.0, 1.0, 5.0, 3.0]), &[0.5, 0.0, 1.0, 0.5]);
        close(&rank(&[9.0]), &[0.0]);
    }

    #[test]
    fn l1_divides_by_sum() {
        close(&l1(&[1.0, 3.0]), &[0.25, 0.75]);
    }

    #[test]
    fn cosine_by_hand() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn cas_needs_two_segments() {
        assert_eq!(cas(&[1.0], &[0.5], CamNorm::Softmax), None);
        // Uniform inputs give uniform distributions: cosine 1.
        let c = cas(&[2.0, 2.0, 2.0], &[0.1, 0.1, 0.1], CamNorm::Softmax).unwrap();
        assert!((c - 1.0).abs() < 1e-12);
        // l1 of [1, 3] and [3, 1]: (0.25*0.75*2) / (0.25^2 + 0.75^2) = 0.375 / 0.625 = 0.6
        let c = cas(&[1.0, 3.0], &[3.0, 1.0], CamNorm::L1).unwrap();
        assert!((c - 0.6).abs() < 1e-12);
    }
}
