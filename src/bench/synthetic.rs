//! What `gateau bench` runs on: LLaMA shapes with random weights made on the device,
//! synthetic token sequences, FLOP counts as the PyTorch anchor counts them, and the
//! device's measured matmul rate.

use super::time;
use crate::model::dispatch::Dispatch;
use crate::model::{Llama, ModelConfig};
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;

pub use crate::model::shapes::Shape;

/// Random weights (N(0, 0.02), norms 1) created on the device.
pub fn random_model(
    cfg: &ModelConfig,
    device: &Device,
    dtype: DType,
    dispatch: Dispatch,
) -> Result<Llama> {
    Llama::load(
        VarBuilder::from_tensors(random_weights(cfg, device, dtype)?, dtype, device),
        cfg.clone(),
        dispatch,
    )
}

/// The bench's model as `score` holds it: the 16-bit model of the full passes and, with
/// `--dtype fp8`, its E4M3 twin for the segment passes. Derefs to the full-pass model.
pub struct Pair {
    pub full: Llama,
    pub twin: Option<Llama>,
}

impl Pair {
    /// [`random_model`], with its E4M3 twin when `fp8` (and the twin's scales).
    pub fn random(
        cfg: &ModelConfig,
        device: &Device,
        (dtype, fp8): (DType, bool),
        dispatch: Dispatch,
    ) -> Result<(Self, Option<crate::model::Fp8Scales>)> {
        let full = random_model(cfg, device, dtype, dispatch)?;
        let (twin, scales) = match fp8 {
            true => full.fp8_twin().map(|(t, q)| (Some(t), Some(q)))?,
            false => (None, None),
        };
        Ok((Self { full, twin }, scales))
    }

    /// The model the segment passes run on.
    pub fn seg(&self) -> &Llama {
        self.twin.as_ref().unwrap_or(&self.full)
    }
}

impl std::ops::Deref for Pair {
    type Target = Llama;
    fn deref(&self) -> &Llama {
        &self.full
    }
}

/// The tensors of [`random_model`], by their checkpoint names.
pub fn random_weights(
    cfg: &ModelConfig,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    let mut w = HashMap::new();
    let rand =
        |w: &mut HashMap<String, Tensor>, name: String, shape: (usize, usize)| -> Result<()> {
            w.insert(
                name,
                Tensor::randn(0f32, 0.02, shape, device)?.to_dtype(dtype)?,
            );
            Ok(())
        };
    rand(&mut w, "model.embed_tokens.weight".into(), (v, d))?;
    rand(&mut w, "lm_head.weight".into(), (v, d))?;
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        rand(&mut w, format!("{p}.self_attn.q_proj.weight"), (q, d))?;
        rand(&mut w, format!("{p}.self_attn.k_proj.weight"), (kv, d))?;
        rand(&mut w, format!("{p}.self_attn.v_proj.weight"), (kv, d))?;
        rand(&mut w, format!("{p}.self_attn.o_proj.weight"), (d, q))?;
        rand(&mut w, format!("{p}.mlp.gate_proj.weight"), (f, d))?;
        rand(&mut w, format!("{p}.mlp.up_proj.weight"), (f, d))?;
        rand(&mut w, format!("{p}.mlp.down_proj.weight"), (d, f))?;
        for n in ["input_layernorm", "post_attention_layernorm"] {
            w.insert(format!("{p}.{n}.weight"), Tensor::ones(d, dtype, device)?);
        }
    }
    w.insert("model.norm.weight".into(), Tensor::ones(d, dtype, device)?);
    Ok(w)
}

/// FLOPs of one sequence of length t, as the PyTorch anchor counts them: 2 x parameters
/// (all but the embedding) per token, plus causal attention 2 x layers x hidden x t^2.
pub fn flops_per_seq(cfg: &ModelConfig, t: usize) -> f64 {
    let norms = (2 * cfg.num_layers + 1) * cfg.hidden_size;
    let params = (cfg.matmul_params() + norms as u64) as f64;
    2.0 * params * t as f64 + 2.0 * (cfg.num_layers * cfg.hidden_size) as f64 * (t * t) as f64
}

/// Measured dense matmul rate of the device in `dtype` (8192^3 on GPUs, 1024^3 on CPUs).
pub fn matmul_peak(device: &Device, dtype: DType) -> Result<f64> {
    let n = if device.is_cpu() { 1024 } else { 8192 };
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let reps = if device.is_cpu() { 2 } else { 20 };
    let s = time(device, 1, reps, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / s / 1e12)
}

pub fn synthetic(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    std::iter::once(1)
        .chain((1..n).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            3 + (x % (vocab as u64 - 3)) as u32
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_match_the_anchor_formula_for_llama2_7b() {
        // torch: n_params - embedding = 6,738,415,616 - 131,072,000 (LLaMA-2-7B).
        let c = Shape::Llama2_7b.config();
        let want = 6_607_343_616f64;
        let got = (flops_per_seq(&c, 1) - 2.0 * 32.0 * 4096.0) / 2.0;
        assert_eq!(got, want);
    }

    #[test]
    fn bench_runs_on_the_cpu() {
        let cfg = ModelConfig {
            num_layers: 2,
            ..Shape::Smollm2_135m.config()
        };
        let m = random_model(&cfg, &Device::Cpu, DType::F32, Dispatch::chunked()).unwrap();
        let seq = synthetic(40, cfg.vocab_size, 1);
        let o = m.forward(std::slice::from_ref(&seq), 30, true).unwrap();
        assert_eq!(o.nll[0].len(), 10);
        let total: f32 = o.attention.unwrap()[0].iter().sum();
        assert!((total - 1.0).abs() < 1e-4);
    }
}
