//! Model shape, resolved in two stages: the checkpoint's own schema (config.json as candle
//! reads it, or GGUF `llama.*` metadata) becomes one validated [`ModelConfig`].

use anyhow::{bail, Context, Result};
use candle_transformers::models::llama::{Llama3RopeType, LlamaConfig};
use serde::Serialize;
use std::path::Path;

/// LLaMA-3 style frequency-dependent RoPE scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Everything the forward pass needs to know about a LLaMA-family model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
}

impl ModelConfig {
    /// Parameters, embedding and head included.
    pub fn param_count(&self) -> u64 {
        let (d, f, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let (q, kv) = (
            (self.num_heads * self.head_dim) as u64,
            (self.num_kv_heads * self.head_dim) as u64,
        );
        let layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_layers as u64 * layer + d + head
    }

    /// Bytes of activations alive at once per token of a pass in a `width`-byte dtype, an
    /// upper bound: the f32 residual stream and its f32 update, the normed input, the f32
    /// q|k|v projection and its heads, and the MLP's gate, up and product (attention
    /// scores are bounded separately, by the chunk budget).
    pub fn activation_bytes_per_token(&self, width: u64) -> u64 {
        let d = self.hidden_size as u64;
        let qkv = ((self.num_heads + 2 * self.num_kv_heads) * self.head_dim) as u64;
        8 * d + 4 * qkv + width * (d + qkv + 3 * self.intermediate_size as u64)
    }

    /// Reads an HF `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        let raw: LlamaConfig = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a LLaMA-family config.json (needs hidden_size, intermediate_size, \
                 vocab_size, num_hidden_layers, num_attention_heads, rms_norm_eps, \
                 max_position_embeddings)",
                path.display()
            )
        })?;
        // candle's schema has no architecture field: look at it ourselves so a Mistral or
        // Qwen checkpoint is refused instead of producing wrong numbers.
        let value: serde_json::Value = serde_json::from_str(&text)?;
        if let Some(archs) = value.get("architectures").and_then(|a| a.as_array()) {
            let ok = archs.iter().any(|a| a.as_str() == Some("LlamaForCausalLM"));
            if !ok {
                bail!(
                    "{}: architectures = {:?}; gateau supports LlamaForCausalLM checkpoints only",
                    path.display(),
                    archs
                );
            }
        }
        if let Some(kind) = value
            .get("rope_scaling")
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(|t| t.as_str())
        {
            if kind != "llama3" && kind != "default" {
                bail!(
                    "{}: rope_scaling type {kind:?} is not supported (only \"llama3\")",
                    path.display()
                );
            }
        }
        let head_dim = value
            .get("head_dim")
            .and_then(|h| h.as_u64())
            .map(|h| h as usize)
            .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1));
        let cfg = Self {
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            vocab_size: raw.vocab_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads: raw.num_key_value_heads(),
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: raw.rope_theta as f64,
            rope_scaling: raw.rope_scaling.and_then(|s| match s.rope_type {
                Llama3RopeType::Llama3 => Some(Llama3Scaling {
                    factor: s.factor as f64,
                    low_freq_factor: s.low_freq_factor as f64,
                    high_freq_factor: s.high_freq_factor as f64,
                    original_max_position_embeddings: s.original_max_position_embeddings,
                }),
                Llama3RopeType::Default => None,
            }),
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: raw.bos_token_id,
        };
        cfg.validate()
            .with_context(|| format!("invalid model config {}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_layers == 0 {
            bail!("heads, kv heads and layers must be positive");
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            bail!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads,
                self.num_kv_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) || self.head_dim == 0 {
            bail!("head dimension {} must be even and positive", self.head_dim);
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            bail!("rope_theta must be positive, got {}", self.rope_theta);
        }
        Ok(())
    }

    /// Parameters that take part in matrix products per token (no embedding lookup).
    pub fn matmul_params(&self) -> u64 {
        let (d, f) = (self.hidden_size as u64, self.intermediate_size as u64);
        let (q, kv) = (
            (self.num_heads * self.head_dim) as u64,
            (self.num_kv_heads * self.head_dim) as u64,
        );
        let per_layer = d * q + 2 * d * kv + q * d + 3 * d * f;
        per_layer * self.num_layers as u64 + d * self.vocab_size as u64
    }

    /// RoPE inverse frequencies `theta^(-2i/d)`, with LLaMA-3 scaling applied.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim;
        let base: Vec<f64> = (0..d / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / d as f64))
            .collect();
        let Some(s) = &self.rope_scaling else {
            return base;
        };
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
                    let smooth = (old / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * scaled / s.factor + smooth * scaled
                } else {
                    scaled
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama2_7b_has_its_published_parameter_count() {
        let c = ModelConfig {
            hidden_size: 4096,
            intermediate_size: 11008,
            vocab_size: 32000,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 32,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            rope_scaling: None,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
        };
        // HF's LlamaForCausalLM reports 6,738,415,616 parameters.
        assert_eq!(c.param_count(), 6_738_415_616);
    }

    fn tiny() -> ModelConfig {
        ModelConfig {
            hidden_size: 8,
            intermediate_size: 16,
            vocab_size: 10,
            num_layers: 1,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
        }
    }

    #[test]
    fn inv_freq_matches_definition() {
        let f = tiny().inv_freq();
        assert_eq!(f.len(), 2);
        assert!((f[0] - 1.0).abs() < 1e-15);
        assert!(
            (f[1] - 0.01).abs() < 1e-15,
            "10000^(-2/4) = 0.01, got {}",
            f[1]
        );
    }

    #[test]
    fn llama3_scaling_divides_low_frequencies_only() {
        let mut c = tiny();
        c.head_dim = 64;
        c.rope_theta = 500000.0;
        let plain = c.inv_freq();
        c.rope_scaling = Some(Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        });
        let scaled = c.inv_freq();
        // Highest frequency: wavelength 2*pi < 8192/4, untouched.
        assert_eq!(plain[0], scaled[0]);
        // Lowest frequency: wavelength far above 8192, divided by the factor.
        let last = plain.len() - 1;
        assert!((scaled[last] - plain[last] / 8.0).abs() <= 1e-12 * plain[last]);
    }

    #[test]
    fn matmul_params_counts_gqa_projections() {
        // q: 8x8, k,v: 8x4 each, o: 8x8, mlp: 3*8*16, head: 8*10
        assert_eq!(tiny().matmul_params(), 64 + 64 + 64 + 384 + 80);
    }
}
