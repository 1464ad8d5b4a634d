//! Model shape, resolved in two stages: the checkpoint's own schema (config.json, see
//! [`crate::checkpoint::hf_config`], or GGUF metadata) becomes one validated [`ModelConfig`].

use super::rope::Rope;
pub use super::rope::{Llama3Scaling, RopeScaling, YarnScaling};
use anyhow::{bail, Result};
use serde::Serialize;

/// The decoder families gateau runs through its one forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }
}

/// Everything the forward pass needs to know about a model.
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
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub family: Family,
    /// Biases on the q, k and v projections (Qwen2; LLaMA/Qwen3 `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on the output projection (LLaMA/Qwen3 `attention_bias`).
    pub o_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Attention limited to this many keys back (Mistral / Qwen `sliding_window` when in use).
    pub sliding_window: Option<usize>,
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
        let mut layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d;
        if self.qkv_bias {
            layer += q + 2 * kv;
        }
        if self.o_bias {
            layer += d;
        }
        if self.qk_norm {
            layer += 2 * self.head_dim as u64;
        }
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

    /// Refuses token ids outside the vocabulary.
    pub fn check_vocab<'t>(&self, mut tokens: impl Iterator<Item = &'t u32>) -> Result<()> {
        if let Some(bad) = tokens.find(|&&x| x as usize >= self.vocab_size) {
            bail!(
                "token id {bad} is outside the model's vocabulary of {}",
                self.vocab_size
            );
        }
        Ok(())
    }

    /// The batch shape `(B, T)` of equal-length sequences scored from `score_from`, or why
    /// it cannot be run.
    pub fn check_batch(&self, tokens: &[Vec<u32>], score_from: usize) -> Result<(usize, usize)> {
        let b = tokens.len();
        let t = tokens.first().map_or(0, |s| s.len());
        if b == 0 || t == 0 {
            bail!("forward pass over an empty batch");
        }
        if tokens.iter().any(|s| s.len() != t) {
            bail!("a batch must hold sequences of one length");
        }
        if score_from == 0 || score_from >= t {
            bail!("scored positions must start in 1..{t}, got {score_from}");
        }
        self.check_window(t)?;
        self.check_vocab(tokens.iter().flatten())?;
        Ok((b, t))
    }

    /// Passes longer than a sliding window would need a banded mask, which no attention
    /// path here implements: refused rather than scored with the wrong attention.
    pub fn check_window(&self, len: usize) -> Result<()> {
        match self.sliding_window {
            Some(w) if len > w => bail!(
                "a pass of {len} tokens exceeds the model's sliding window of {w} tokens \
                 (config.json sliding_window), which gateau does not implement"
            ),
            _ => Ok(()),
        }
    }

    /// The RoPE of this model.
    pub fn rope(&self) -> Rope<'_> {
        Rope {
            theta: self.rope_theta,
            head_dim: self.head_dim,
            max_position_embeddings: self.max_position_embeddings,
            scaling: self.rope_scaling.as_ref(),
        }
    }

    /// The context the model was trained for: `max_position_embeddings`, times the RoPE
    /// factor for `linear` and `dynamic` (whose configs keep the pre-scaling length there);
    /// for `yarn` and `llama3` the larger of it and the original length times the factor
    /// (Qwen2.5 keeps the original there, LLaMA-3.1 and DeepSeek the extended one).
    pub fn context_length(&self) -> usize {
        let m = self.max_position_embeddings;
        let times = |n: usize, f: f64| (n as f64 * f).round() as usize;
        match &self.rope_scaling {
            None => m,
            Some(s @ (RopeScaling::Linear { .. } | RopeScaling::Dynamic { .. })) => {
                times(m, s.factor())
            }
            Some(RopeScaling::Yarn(y)) => {
                m.max(times(y.original_max_position_embeddings, y.factor))
            }
            Some(RopeScaling::Llama3(l)) => {
                m.max(times(l.original_max_position_embeddings, l.factor))
            }
        }
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

    /// RoPE inverse frequencies of a pass within the trained length (scaling applied).
    pub fn inv_freq(&self) -> Vec<f64> {
        self.rope().inv_freq(0)
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
            ..tiny()
        };
        // HF's LlamaForCausalLM reports 6,738,415,616 parameters.
        assert_eq!(c.param_count(), 6_738_415_616);
    }

    #[test]
    fn qwen2_5_0_5b_has_its_published_parameter_count() {
        let c = ModelConfig {
            hidden_size: 896,
            intermediate_size: 4864,
            vocab_size: 151936,
            num_layers: 24,
            num_heads: 14,
            num_kv_heads: 2,
            head_dim: 64,
            family: Family::Qwen2,
            qkv_bias: true,
            ..tiny()
        };
        // Qwen2.5-0.5B's model card: 0.49B; HF's num_parameters() gives 494,032,768.
        assert_eq!(c.param_count(), 494_032_768);
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
            family: Family::Llama,
            qkv_bias: false,
            o_bias: false,
            qk_norm: false,
            sliding_window: None,
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
        c.rope_scaling = Some(RopeScaling::Llama3(Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }));
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
