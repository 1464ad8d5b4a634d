//! Named model shapes (`--shape`): the configurations of common LLaMA-family models, for
//! `gateau bench`'s random-weight models and memory plans.

use super::ModelConfig;
use clap::ValueEnum;
use serde::Serialize;

/// A named model shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Shape {
    #[value(name = "llama2-7b")]
    Llama2_7b,
    #[value(name = "llama2-13b")]
    Llama2_13b,
    #[value(name = "llama3-8b")]
    Llama3_8b,
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
}

impl Shape {
    pub fn config(self) -> ModelConfig {
        // (hidden, inter, layers, heads, kv, vocab, theta)
        let (d, f, l, h, kv, v, theta) = match self {
            Shape::Llama2_7b => (4096, 11008, 32, 32, 32, 32000, 10000.0),
            Shape::Llama2_13b => (5120, 13824, 40, 40, 40, 32000, 10000.0),
            Shape::Llama3_8b => (4096, 14336, 32, 32, 8, 128256, 500000.0),
            Shape::Smollm2_135m => (576, 1536, 30, 9, 3, 49152, 100000.0),
        };
        ModelConfig {
            hidden_size: d,
            intermediate_size: f,
            vocab_size: v,
            num_layers: l,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: d / h,
            rms_norm_eps: 1e-5,
            rope_theta: theta,
            rope_scaling: None,
            max_position_embeddings: 131072,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            family: super::config::Family::Llama,
            qkv_bias: false,
            o_bias: false,
            qk_norm: false,
            sliding_window: None,
        }
    }
}
