//! The reference forward pass: plain loops in f64 over row-major weights, full attention
//! matrices, for every family gateau runs (q/k/v and output biases, Qwen3's per-head q/k
//! RMSNorm, any RoPE frequencies and YaRN's attention factor on cos and sin). The RoPE
//! frequencies of each scaling type are written out here again from transformers'
//! definitions, independently of src/model/rope.rs.

use std::collections::HashMap;
use std::f64::consts::PI;

/// Weights by HF name: values and shape.
pub type Weights = HashMap<String, (Vec<f32>, Vec<usize>)>;

/// A model for the reference pass.
pub struct RefModel {
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub eps: f64,
    pub tied: bool,
    pub w: Weights,
}

/// Rotation frequencies and the factor on cos and sin of one pass.
pub struct RefRope {
    pub inv_freq: Vec<f64>,
    pub scale: f64,
}

fn plain(theta: f64, d: usize) -> Vec<f64> {
    (0..d / 2)
        .map(|i| theta.powf(-(2.0 * i as f64) / d as f64))
        .collect()
}

impl RefRope {
    pub fn plain(theta: f64, d: usize) -> Self {
        Self {
            inv_freq: plain(theta, d),
            scale: 1.0,
        }
    }

    /// Position interpolation: frequencies over `factor`.
    pub fn linear(theta: f64, d: usize, factor: f64) -> Self {
        Self {
            inv_freq: plain(theta, d).iter().map(|f| f / factor).collect(),
            scale: 1.0,
        }
    }

    /// Dynamic NTK for a pass of `len` positions trained on `max_pos`:
    /// base * (factor * L / max_pos - (factor - 1))^(d / (d - 2)), L = max(len, max_pos).
    pub fn dynamic(theta: f64, d: usize, factor: f64, max_pos: usize, len: usize) -> Self {
        let l = len.max(max_pos) as f64;
        let dd = d as f64;
        let base = theta * (factor * l / max_pos as f64 - (factor - 1.0)).powf(dd / (dd - 2.0));
        Self::plain(base, d)
    }

    /// YaRN with beta_fast 32, beta_slow 1, truncated correction range and the default
    /// attention factor 0.1 ln(factor) + 1.
    pub fn yarn(theta: f64, d: usize, factor: f64, original: usize) -> Self {
        let dd = d as f64;
        let dim_of = |rot: f64| dd * (original as f64 / (rot * 2.0 * PI)).ln() / (2.0 * theta.ln());
        let low = dim_of(32.0).floor().max(0.0);
        let high = dim_of(1.0).ceil().min(dd - 1.0);
        let inv_freq = plain(theta, d)
            .iter()
            .enumerate()
            .map(|(i, &f)| {
                // ramp 0 below `low` (pure extrapolation), 1 above `high` (interpolation).
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                f * (1.0 - ramp) + f / factor * ramp
            })
            .collect();
        Self {
            inv_freq,
            scale: 0.1 * factor.ln() + 1.0,
        }
    }
}

/// Logits and attention probabilities of the reference forward pass.
pub struct Naive {
    /// [T][V]
    pub logits: Vec<Vec<f64>>,
    /// [layer][head][query][key] (0 above the diagonal)
    pub probs: Vec<Vec<Vec<Vec<f64>>>>,
}

fn rms(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * r * *g as f64).collect()
}

fn matvec(w: &[f32], rows: usize, x: &[f64]) -> Vec<f64> {
    let cols = x.len();
    (0..rows)
        .map(|r| (0..cols).map(|c| w[r * cols + c] as f64 * x[c]).sum())
        .collect()
}

impl RefModel {
    fn m(&self, name: &str) -> &Vec<f32> {
        &self.w[name].0
    }

    fn opt(&self, name: &str) -> Option<&Vec<f32>> {
        self.w.get(name).map(|x| &x.0)
    }

    /// Plain loops, f64, full attention matrices: the definition, not the implementation.
    /// Biases and q/k norms are used where the weights hold them.
    pub fn forward(&self, tokens: &[u32], rope: &RefRope) -> Naive {
        let (d, hd, nh, nkv) = (self.hidden, self.head_dim, self.heads, self.kv_heads);
        let t = tokens.len();
        let emb = self.m("model.embed_tokens.weight");
        let mut x: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&tok| (0..d).map(|i| emb[tok as usize * d + i] as f64).collect())
            .collect();
        let rotate = |v: &mut [f64], pos: usize| {
            for (i, f) in rope.inv_freq.iter().enumerate() {
                let a = pos as f64 * f;
                let (c, s) = (a.cos() * rope.scale, a.sin() * rope.scale);
                let (x1, x2) = (v[i], v[i + hd / 2]);
                v[i] = x1 * c - x2 * s;
                v[i + hd / 2] = x2 * c + x1 * s;
            }
        };
        let mut probs = Vec::new();
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            let h: Vec<Vec<f64>> = x
                .iter()
                .map(|r| rms(r, self.m(&format!("{p}.input_layernorm.weight")), self.eps))
                .collect();
            let proj = |name: &str, rows: usize| -> Vec<Vec<f64>> {
                let w = self.m(&format!("{p}.self_attn.{name}.weight"));
                let b = self.opt(&format!("{p}.self_attn.{name}.bias"));
                h.iter()
                    .map(|r| {
                        let mut y = matvec(w, rows, r);
                        if let Some(b) = b {
                            y.iter_mut().zip(b).for_each(|(y, b)| *y += *b as f64);
                        }
                        y
                    })
                    .collect()
            };
            let mut q = proj("q_proj", nh * hd);
            let mut k = proj("k_proj", nkv * hd);
            let v = proj("v_proj", nkv * hd);
            let norm_heads = |rows: &mut Vec<Vec<f64>>, n: usize, which: &str| {
                if let Some(w) = self.opt(&format!("{p}.self_attn.{which}.weight")) {
                    for r in rows.iter_mut() {
                        for hh in 0..n {
                            let normed = rms(&r[hh * hd..(hh + 1) * hd], w, self.eps);
                            r[hh * hd..(hh + 1) * hd].copy_from_slice(&normed);
                        }
                    }
                }
            };
            norm_heads(&mut q, nh, "q_norm");
            norm_heads(&mut k, nkv, "k_norm");
            for pos in 0..t {
                for hh in 0..nh {
                    rotate(&mut q[pos][hh * hd..(hh + 1) * hd], pos);
                }
                for hh in 0..nkv {
                    rotate(&mut k[pos][hh * hd..(hh + 1) * hd], pos);
                }
            }
            let mut out = vec![vec![0.0; nh * hd]; t];
            let mut lp = vec![vec![vec![0.0; t]; t]; nh];
            for hh in 0..nh {
                let kh = hh / (nh / nkv);
                for i in 0..t {
                    let s: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..hd)
                                .map(|e| q[i][hh * hd + e] * k[j][kh * hd + e])
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for j in 0..=i {
                        let pj = (s[j] - m).exp() / z;
                        lp[hh][i][j] = pj;
                        for e in 0..hd {
                            out[i][hh * hd + e] += pj * v[j][kh * hd + e];
                        }
                    }
                }
            }
            probs.push(lp);
            let o_bias = self.opt(&format!("{p}.self_attn.o_proj.bias"));
            for i in 0..t {
                let o = matvec(self.m(&format!("{p}.self_attn.o_proj.weight")), d, &out[i]);
                for e in 0..d {
                    x[i][e] += o[e] + o_bias.map_or(0.0, |b| b[e] as f64);
                }
                let h2 = rms(
                    &x[i],
                    self.m(&format!("{p}.post_attention_layernorm.weight")),
                    self.eps,
                );
                let g = matvec(
                    self.m(&format!("{p}.mlp.gate_proj.weight")),
                    self.inter,
                    &h2,
                );
                let u = matvec(self.m(&format!("{p}.mlp.up_proj.weight")), self.inter, &h2);
                let act: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let dn = matvec(self.m(&format!("{p}.mlp.down_proj.weight")), d, &act);
                for e in 0..d {
                    x[i][e] += dn[e];
                }
            }
        }
        let head = match self.tied || !self.w.contains_key("lm_head.weight") {
            true => self.m("model.embed_tokens.weight"),
            false => self.m("lm_head.weight"),
        };
        let logits = x
            .iter()
            .map(|r| {
                matvec(
                    head,
                    self.vocab,
                    &rms(r, self.m("model.norm.weight"), self.eps),
                )
            })
            .collect();
        Naive { logits, probs }
    }
}

impl Naive {
    /// -log softmax(logits[p - 1])[tokens[p]] for p in from..T.
    pub fn nll(&self, tokens: &[u32], from: usize) -> Vec<f64> {
        (from..tokens.len())
            .map(|p| {
                let l = &self.logits[p - 1];
                let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + l.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                lse - l[tokens[p] as usize]
            })
            .collect()
    }

    pub fn ppl(&self, tokens: &[u32], from: usize) -> f64 {
        let n = self.nll(tokens, from);
        (n.iter().sum::<f64>() / n.len() as f64).exp()
    }

    /// Mean over layers, heads and query rows from..T of the probability on each key.
    pub fn mass(&self, from: usize) -> Vec<f64> {
        let t = self.probs[0][0].len();
        let mut m = vec![0.0; t];
        let mut n = 0.0;
        for layer in &self.probs {
            for head in layer {
                for row in &head[from..] {
                    for (j, p) in row.iter().enumerate() {
                        m[j] += p;
                    }
                    n += 1.0;
                }
            }
        }
        m.iter().map(|v| v / n).collect()
    }
}
