//! RoPE frequencies for every scaling type gateau reads (`default`, `linear`, `dynamic`,
//! `yarn`, `llama3`), computed as transformers' `ROPE_INIT_FUNCTIONS` compute them, and the
//! cos/sin tables of one pass. Dynamic NTK depends on the length of the pass, so tables are
//! always asked for a pass length; the other scalings' rows depend on the position alone,
//! which is what lets [`super::rope_cache`] keep them across passes.

use serde::Serialize;

/// LLaMA-3 style frequency-dependent RoPE scaling (`rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// YaRN (`rope_type = "yarn"`): interpolation of the low frequencies blended into
/// extrapolation of the high ones, and an attention factor on cos and sin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct YarnScaling {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    /// Multiplies cos and sin, so q·k by its square (transformers' `attention_scaling`).
    pub attention_factor: f64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// Whether the correction range is rounded outwards to whole dimensions.
    pub truncate: bool,
}

/// A RoPE scaling other than none.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// NTK-aware base, recomputed from the length of each pass once it exceeds
    /// `max_position_embeddings`.
    Dynamic {
        factor: f64,
    },
    Yarn(YarnScaling),
    Llama3(Llama3Scaling),
}

impl RopeScaling {
    /// The name config.json gives the type.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Linear { .. } => "linear",
            Self::Dynamic { .. } => "dynamic",
            Self::Yarn(_) => "yarn",
            Self::Llama3(_) => "llama3",
        }
    }

    pub fn factor(&self) -> f64 {
        match self {
            Self::Linear { factor } | Self::Dynamic { factor } => *factor,
            Self::Yarn(y) => y.factor,
            Self::Llama3(l) => l.factor,
        }
    }
}

/// The RoPE of one model: base, rotated dimensions and scaling.
#[derive(Debug, Clone, Copy)]
pub struct Rope<'a> {
    pub theta: f64,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub scaling: Option<&'a RopeScaling>,
}

/// `theta^(-2i/d)` for i in 0..d/2.
fn plain(theta: f64, d: usize) -> Vec<f64> {
    (0..d / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / d as f64))
        .collect()
}

impl Rope<'_> {
    /// Inverse frequencies for a pass of `len` positions (only `dynamic` looks at it).
    pub fn inv_freq(&self, len: usize) -> Vec<f64> {
        let d = self.head_dim;
        match self.scaling {
            None => plain(self.theta, d),
            Some(RopeScaling::Linear { factor }) => {
                plain(self.theta, d).iter().map(|f| f / factor).collect()
            }
            Some(RopeScaling::Dynamic { factor }) => {
                // transformers: seq_len = max(seq_len, max_position_embeddings), so passes
                // within the trained length keep the plain base.
                let max = self.max_position_embeddings as f64;
                let seq = (len as f64).max(max);
                let dd = d as f64;
                let base =
                    self.theta * ((factor * seq / max) - (factor - 1.0)).powf(dd / (dd - 2.0));
                plain(base, d)
            }
            Some(RopeScaling::Yarn(y)) => yarn(self.theta, d, y),
            Some(RopeScaling::Llama3(s)) => llama3(plain(self.theta, d), s),
        }
    }

    /// The factor cos and sin are multiplied by (YaRN's attention factor, else 1).
    pub fn attention_factor(&self) -> f64 {
        match self.scaling {
            Some(RopeScaling::Yarn(y)) => y.attention_factor,
            _ => 1.0,
        }
    }

    /// Whether tables depend on the pass length beyond their number of rows.
    pub fn depends_on_length(&self) -> bool {
        matches!(self.scaling, Some(RopeScaling::Dynamic { .. }))
    }

    /// cos and sin `[len, head_dim / 2]` row-major, for positions `0..len` of a pass of
    /// `pass_len` positions. Angles are formed in f64: an f32 `position x frequency` is off
    /// by up to 4e-3 rad at 64k positions.
    pub fn tables(&self, len: usize, pass_len: usize) -> (Vec<f32>, Vec<f32>) {
        self.rows(0..len, pass_len)
    }

    /// The rows `positions` of [`Self::tables`]: each row depends on its position and the
    /// frequencies only, so rows computed apart equal rows computed together, bit for bit.
    /// Rows are spread over the CPU's threads: a 64k-token pass has 4M angles, whose f64 cos
    /// and sin took about 0.2 s on one core while the GPU waited.
    pub fn rows(&self, positions: std::ops::Range<usize>, pass_len: usize) -> (Vec<f32>, Vec<f32>) {
        use rayon::prelude::*;
        let inv = self.inv_freq(pass_len);
        let scale = self.attention_factor();
        let half = inv.len();
        let n = positions.len();
        let (mut cos, mut sin) = (vec![0f32; n * half], vec![0f32; n * half]);
        const CHUNK: usize = 512;
        cos.par_chunks_mut(CHUNK * half)
            .zip(sin.par_chunks_mut(CHUNK * half))
            .enumerate()
            .for_each(|(i, (c, s))| {
                let first = positions.start + i * CHUNK;
                for (j, (c, s)) in c.chunks_mut(half).zip(s.chunks_mut(half)).enumerate() {
                    let p = (first + j) as f64;
                    for ((c, s), &f) in c.iter_mut().zip(s.iter_mut()).zip(&inv) {
                        let a = p * f;
                        *c = (a.cos() * scale) as f32;
                        *s = (a.sin() * scale) as f32;
                    }
                }
            });
        (cos, sin)
    }
}

/// transformers' `_compute_yarn_parameters`.
fn yarn(theta: f64, d: usize, y: &YarnScaling) -> Vec<f64> {
    let dd = d as f64;
    let orig = y.original_max_position_embeddings as f64;
    let correction_dim = |rotations: f64| {
        dd * (orig / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
    if y.truncate {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0);
    let mut high = high.min(dd - 1.0);
    if low == high {
        // transformers' guard against a zero-width ramp.
        high += 0.001;
    }
    plain(theta, d)
        .iter()
        .enumerate()
        .map(|(i, &extrapolated)| {
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let extrapolation_weight = 1.0 - ramp;
            let interpolated = extrapolated / y.factor;
            interpolated * (1.0 - extrapolation_weight) + extrapolated * extrapolation_weight
        })
        .collect()
}

/// transformers' `_compute_llama3_parameters`.
fn llama3(base: Vec<f64>, s: &Llama3Scaling) -> Vec<f64> {
    let old = s.original_max_position_embeddings as f64;
    let low_wavelen = old / s.low_freq_factor;
    let high_wavelen = old / s.high_freq_factor;
    base.iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let scaled = if wavelen > low_wavelen {
                f / s.factor
            } else {
                f
            };
            let medium = (high_wavelen..=low_wavelen).contains(&wavelen);
            if medium {
                let smooth =
                    (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * scaled / s.factor + smooth * scaled
            } else {
                scaled
            }
        })
        .collect()
}

/// transformers' default YaRN attention factor: `0.1 ln(s) + 1` (1 for s <= 1), or the
/// ratio of two such terms when `mscale` and `mscale_all_dim` are both set.
pub fn yarn_attention_factor(factor: f64, mscale: Option<f64>, mscale_all_dim: Option<f64>) -> f64 {
    let m = |scale: f64, ms: f64| match scale <= 1.0 {
        true => 1.0,
        false => 0.1 * ms * scale.ln() + 1.0,
    };
    match (mscale, mscale_all_dim) {
        (Some(a), Some(b)) if a != 0.0 && b != 0.0 => m(factor, a) / m(factor, b),
        _ => m(factor, 1.0),
    }
}

/// cos and sin tables `[T, head_dim / 2]` in f32 for passes of these lengths laid end to end
/// (one for an unpacked row; positions restart at 0 in each), each from its own length's
/// frequencies (dynamic NTK depends on it).
pub(super) fn tables_for(
    cfg: &super::ModelConfig,
    lens: &[usize],
    device: &candle_core::Device,
) -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
    let rope = cfg.rope();
    let half = cfg.head_dim / 2;
    let t: usize = lens.iter().sum();
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for &n in lens {
        let (c, s) = rope.tables(n, n);
        cos.extend(c);
        sin.extend(s);
    }
    let cos = candle_core::Tensor::from_vec(cos, (t, half), device)?;
    let sin = candle_core::Tensor::from_vec(sin, (t, half), device)?;
    Ok((cos, sin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(scaling: Option<&RopeScaling>) -> Rope<'_> {
        Rope {
            theta: 10000.0,
            head_dim: 16,
            max_position_embeddings: 128,
            scaling,
        }
    }

    #[test]
    fn linear_divides_every_frequency() {
        let s = RopeScaling::Linear { factor: 4.0 };
        let (a, b) = (rope(None).inv_freq(10), rope(Some(&s)).inv_freq(10));
        for (x, y) in a.iter().zip(&b) {
            assert!((x / 4.0 - y).abs() <= 1e-15 * x);
        }
    }

    #[test]
    fn dynamic_keeps_the_base_within_the_trained_length() {
        let s = RopeScaling::Dynamic { factor: 2.0 };
        assert_eq!(rope(Some(&s)).inv_freq(128), rope(None).inv_freq(128));
        // 256 positions at factor 2: base * (2 * 2 - 1)^(16 / 14).
        let base = 10000.0 * 3f64.powf(16.0 / 14.0);
        let want = plain(base, 16);
        let got = rope(Some(&s)).inv_freq(256);
        for (x, y) in want.iter().zip(&got) {
            assert!((x - y).abs() <= 1e-15 * x);
        }
    }

    #[test]
    fn yarn_extrapolates_high_and_interpolates_low_frequencies() {
        let y = YarnScaling {
            factor: 4.0,
            original_max_position_embeddings: 256,
            attention_factor: yarn_attention_factor(4.0, None, None),
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: true,
        };
        let s = RopeScaling::Yarn(y);
        let (p, f) = (rope(None).inv_freq(1), rope(Some(&s)).inv_freq(1));
        // d = 16, theta 1e4, 256 positions: low = floor(16 ln(256 / 64 pi) / 2 ln 1e4) = 0,
        // high = ceil(16 ln(256 / 2 pi) / 2 ln 1e4) = 4: ramp (i - 0) / 4.
        assert_eq!(f[0], p[0]);
        for i in 1..4 {
            let w = 1.0 - i as f64 / 4.0;
            let want = p[i] / 4.0 * (1.0 - w) + p[i] * w;
            assert!((f[i] - want).abs() <= 1e-15 * p[i], "dimension {i}");
        }
        for i in 4..8 {
            assert!((f[i] - p[i] / 4.0).abs() <= 1e-15 * p[i], "dimension {i}");
        }
        let a = rope(Some(&s)).attention_factor();
        assert!((a - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
    }

    /// Rows spread over threads equal one plain loop over positions, and a range of rows
    /// equals the same rows of the whole table (chunk edges at 512 crossed on purpose).
    #[test]
    fn rows_are_the_plain_loop_at_any_offset() {
        let y = YarnScaling {
            factor: 4.0,
            original_max_position_embeddings: 256,
            attention_factor: 1.2,
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate: true,
        };
        let s = RopeScaling::Yarn(y);
        let r = rope(Some(&s));
        let (n, half) = (1500, 8);
        let inv = r.inv_freq(n);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in 0..n {
            for &f in &inv {
                cos.push(((p as f64 * f).cos() * 1.2) as f32);
                sin.push(((p as f64 * f).sin() * 1.2) as f32);
            }
        }
        assert_eq!(r.tables(n, n), (cos.clone(), sin.clone()));
        let (c, s) = r.rows(700..1300, n);
        assert_eq!(c, cos[700 * half..1300 * half]);
        assert_eq!(s, sin[700 * half..1300 * half]);
    }
}
