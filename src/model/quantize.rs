//! `--dtype fp8`: a twin of a loaded model whose projections (q|k|v, attention output,
//! gate|up, down) are E4M3 codes with per-channel scales, quantized once, at load. The twin
//! runs the segment passes; the 16-bit model keeps its weights for the full passes. The
//! arithmetic is `kernels::fused::fp8`'s.

use super::layer::Layer;
use super::Llama;
use anyhow::{bail, Result};
use std::sync::atomic::AtomicBool;

/// What [`Llama::fp8_twin`] quantized, for the log.
#[derive(Debug, Clone, Copy)]
pub struct Fp8Scales {
    pub projections: usize,
    /// The smallest and largest per-channel dequantization scale (max |w[j, :]| / 448).
    pub min: f32,
    pub max: f32,
}

impl std::fmt::Display for Fp8Scales {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} projections quantized to E4M3, per-channel scales {:.3e} to {:.3e}",
            self.projections, self.min, self.max
        )
    }
}

/// Quantizes every layer's projections; the scales' range, for the log.
fn to_fp8(layers: &mut [Layer]) -> Result<Fp8Scales> {
    let names = ["q|k|v", "output", "gate|up", "down"];
    let mut scales = Vec::new();
    for (i, layer) in layers.iter_mut().enumerate() {
        let projs = [&layer.qkv, &layer.o, &layer.gate_up, &layer.down];
        for (name, p) in names.iter().zip(projs) {
            let (d, k) = p.dims()?;
            if d % 16 != 0 || k % 16 != 0 {
                bail!(
                    "--dtype fp8: layer {i}'s {name} projection is {d} x {k}; FP8 GEMMs need \
                     both sizes to be multiples of 16 (use --dtype bf16)"
                );
            }
        }
        scales.push(layer.quantize_fp8()?);
    }
    let min = scales.iter().map(|s| s.0).fold(f32::INFINITY, f32::min);
    let max = scales.iter().map(|s| s.1).fold(0f32, f32::max);
    Ok(Fp8Scales {
        projections: 4 * scales.len(),
        min,
        max,
    })
}

impl Llama {
    /// A twin of this model whose projections are E4M3; the embedding, norms, head and
    /// attention dispatch are this model's own tensors, shared. `--dtype fp8` runs the
    /// segment passes on it and the full passes on this model.
    pub fn fp8_twin(&self) -> Result<(Self, Fp8Scales)> {
        let mut layers = self.layers.clone();
        let scales = to_fp8(&mut layers)?;
        let twin = Self {
            cfg: self.cfg.clone(),
            embed: self.embed.clone(),
            layers,
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
            device: self.device.clone(),
            dtype: self.dtype,
            split: self.split,
            dispatch: self.dispatch.clone(),
            f16_heads: self.f16_heads,
            warned: AtomicBool::new(false),
            bucket_stats: self.bucket_stats.clone(),
            rope: self.rope.clone(),
        };
        Ok((twin, scales))
    }
}

#[cfg(test)]
mod tests {
    use crate::model::bucket::Bucket;
    use crate::model::dispatch::Dispatch;
    use crate::model::shapes::Shape;
    use crate::model::Llama;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    /// The run-end bucket line reads the 16-bit model's stats only; the twin's passes must
    /// land there too.
    #[test]
    fn the_twins_passes_count_in_the_models_bucket_line() {
        let mut c = Shape::Smollm2_135m.config();
        (c.hidden_size, c.intermediate_size, c.num_layers) = (64, 128, 1);
        (c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size) = (4, 2, 16, 96);
        // Zero weights: only the passes' lengths matter here.
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let mut m = Llama::load(vb, c, Dispatch::chunked()).unwrap();
        m.set_bucket(Bucket::Tokens(64));
        let (twin, _) = m.fp8_twin().unwrap();
        let seq = |n: u32| vec![(0..n).map(|i| i % 90).collect::<Vec<u32>>()];
        m.forward(&seq(10), 5, false).unwrap();
        twin.forward(&seq(20), 5, false).unwrap();
        twin.forward(&seq(64), 5, false).unwrap();
        let line = m.bucket_summary().unwrap();
        assert!(
            line.starts_with("2 of 3 single-sequence passes padded (+98 attention tokens"),
            "{line}"
        );
    }
}
