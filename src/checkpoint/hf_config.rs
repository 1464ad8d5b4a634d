//! config.json in two stages: [`RawConfig`] is the file's own schema (what transformers 4
//! and 5 write, both RoPE spellings), [`read`] validates it into a [`ModelConfig`]. Every
//! key gateau does not support is refused by name, never ignored: a RoPE scaling that was
//! silently dropped once put segment perplexities 15% off.

use crate::model::config::{Family, Llama3Scaling, ModelConfig, RopeScaling, YarnScaling};
use crate::model::rope::yarn_attention_factor;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::path::Path;

/// The supported `architectures` entries and their families.
const ARCHITECTURES: [(&str, Family); 4] = [
    ("LlamaForCausalLM", Family::Llama),
    ("MistralForCausalLM", Family::Mistral),
    ("Qwen2ForCausalLM", Family::Qwen2),
    ("Qwen3ForCausalLM", Family::Qwen3),
];

/// The supported `rope_type` values.
const ROPE_TYPES: &str = "default, linear, dynamic, yarn, llama3";

/// The keys of config.json gateau reads.
#[derive(Debug, Deserialize)]
pub struct RawConfig {
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub rope_theta: Option<f64>,
    /// transformers 4's spelling of the scaling (`type` or `rope_type`, plus its numbers).
    pub rope_scaling: Option<Map<String, Value>>,
    /// transformers 5's spelling: theta, type and numbers in one object.
    pub rope_parameters: Option<Map<String, Value>>,
    pub tie_word_embeddings: Option<bool>,
    pub bos_token_id: Option<u32>,
    pub attention_bias: Option<bool>,
    pub mlp_bias: Option<bool>,
    pub sliding_window: Option<usize>,
    pub use_sliding_window: Option<bool>,
    pub hidden_act: Option<String>,
    pub partial_rotary_factor: Option<f64>,
}

/// Reads and validates an HF `config.json`.
pub fn read(path: &Path) -> Result<ModelConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read model config {}", path.display()))?;
    let raw: RawConfig = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: not a supported config.json (needs hidden_size, intermediate_size, \
             vocab_size, num_hidden_layers, num_attention_heads, rms_norm_eps, \
             max_position_embeddings)",
            path.display()
        )
    })?;
    let cfg = validate(raw).with_context(|| format!("model config {}", path.display()))?;
    cfg.validate()
        .with_context(|| format!("invalid model config {}", path.display()))?;
    Ok(cfg)
}

fn family(raw: &RawConfig) -> Result<Family> {
    let supported = || {
        ARCHITECTURES
            .iter()
            .map(|a| a.0)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let from_arch = match &raw.architectures {
        Some(archs) => {
            let found = archs
                .iter()
                .find_map(|a| ARCHITECTURES.iter().find(|(n, _)| n == a).map(|x| x.1));
            match found {
                Some(f) => Some(f),
                None => bail!(
                    "architectures = {archs:?} is not supported (supported: {})",
                    supported()
                ),
            }
        }
        None => None,
    };
    let from_type = match raw.model_type.as_deref() {
        None => None,
        Some(t) => match ARCHITECTURES.iter().find(|(_, f)| f.name() == t) {
            Some((_, f)) => Some(*f),
            None => bail!(
                "model_type = {t:?} is not supported (supported: llama, mistral, qwen2, qwen3)"
            ),
        },
    };
    match (from_arch, from_type) {
        (Some(a), Some(t)) if a != t => bail!(
            "architectures names a {} model but model_type = {:?}; fix one of them",
            a.name(),
            t.name()
        ),
        (Some(f), _) | (None, Some(f)) => Ok(f),
        // Older LLaMA exports carry neither key.
        (None, None) => Ok(Family::Llama),
    }
}

/// The RoPE object and the key it came from, after both spellings are merged.
fn rope_object(raw: &RawConfig) -> Result<(Option<Map<String, Value>>, &'static str)> {
    match (&raw.rope_parameters, &raw.rope_scaling) {
        (Some(p), Some(s)) => {
            let kind = |m: &Map<String, Value>| rope_type(m).map(str::to_string);
            if kind(p) != kind(s) {
                bail!(
                    "rope_parameters and rope_scaling disagree on the RoPE type ({:?} vs {:?}); \
                     keep one of them",
                    kind(p).unwrap_or_default(),
                    kind(s).unwrap_or_default()
                );
            }
            Ok((Some(p.clone()), "rope_parameters"))
        }
        (Some(p), None) => Ok((Some(p.clone()), "rope_parameters")),
        (None, Some(s)) => Ok((Some(s.clone()), "rope_scaling")),
        (None, None) => Ok((None, "rope_scaling")),
    }
}

fn rope_type(m: &Map<String, Value>) -> Option<&str> {
    m.get("rope_type")
        .or_else(|| m.get("type"))
        .and_then(Value::as_str)
}

fn number(m: &Map<String, Value>, key: &str, field: &str) -> Result<Option<f64>> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| anyhow!("{key}.{field} must be a number, got {v}")),
    }
}

fn need(m: &Map<String, Value>, key: &str, field: &str, kind: &str) -> Result<f64> {
    number(m, key, field)?
        .ok_or_else(|| anyhow!("{key}.{field} is required for RoPE type {kind:?}"))
}

/// theta and scaling from the merged RoPE object.
fn rope(raw: &RawConfig) -> Result<(f64, Option<RopeScaling>)> {
    let (obj, key) = rope_object(raw)?;
    let top_theta = raw.rope_theta;
    let Some(m) = obj else {
        return Ok((top_theta.unwrap_or(10000.0), None));
    };
    if m.values().any(Value::is_object) {
        bail!("{key}: per-layer-type RoPE parameters are not supported");
    }
    let theta = number(&m, key, "rope_theta")?
        .or(top_theta)
        .unwrap_or(10000.0);
    if let Some(p) = number(&m, key, "partial_rotary_factor")? {
        if p != 1.0 {
            bail!("{key}.partial_rotary_factor = {p}: partial rotary embeddings are not supported");
        }
    }
    let kind = rope_type(&m).unwrap_or("default");
    let positive = |field: &str| -> Result<f64> {
        let v = need(&m, key, field, kind)?;
        if v.is_nan() || v <= 0.0 {
            bail!("{key}.{field} must be positive, got {v}");
        }
        Ok(v)
    };
    let count =
        |field: &str| -> Result<Option<usize>> { Ok(number(&m, key, field)?.map(|v| v as usize)) };
    let scaling = match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: positive("factor")?,
        }),
        "dynamic" => Some(RopeScaling::Dynamic {
            factor: positive("factor")?,
        }),
        "yarn" => {
            // transformers 5 fills a missing original length with max_position_embeddings
            // and a missing factor with their ratio.
            let original = count("original_max_position_embeddings")?
                .unwrap_or(raw.max_position_embeddings);
            let factor = match number(&m, key, "factor")? {
                Some(f) => f,
                None => raw.max_position_embeddings as f64 / original.max(1) as f64,
            };
            let attention_factor = match number(&m, key, "attention_factor")? {
                Some(a) => a,
                None => yarn_attention_factor(
                    factor,
                    number(&m, key, "mscale")?,
                    number(&m, key, "mscale_all_dim")?,
                ),
            };
            let truncate = match m.get("truncate") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(v) => bail!("{key}.truncate must be true or false, got {v}"),
            };
            Some(RopeScaling::Yarn(YarnScaling {
                factor,
                original_max_position_embeddings: original,
                attention_factor,
                beta_fast: number(&m, key, "beta_fast")?.unwrap_or(32.0),
                beta_slow: number(&m, key, "beta_slow")?.unwrap_or(1.0),
                truncate,
            }))
        }
        "llama3" => Some(RopeScaling::Llama3(Llama3Scaling {
            factor: positive("factor")?,
            low_freq_factor: positive("low_freq_factor")?,
            high_freq_factor: positive("high_freq_factor")?,
            original_max_position_embeddings: count("original_max_position_embeddings")?
                .ok_or_else(|| {
                    anyhow!("{key}.original_max_position_embeddings is required for RoPE type \"llama3\"")
                })?,
        })),
        other => {
            let field = if m.contains_key("rope_type") { "rope_type" } else { "type" };
            bail!("{key}.{field} = {other:?} is not supported (supported: {ROPE_TYPES})")
        }
    };
    Ok((theta, scaling))
}

/// The validated shape of `raw`.
pub fn validate(raw: RawConfig) -> Result<ModelConfig> {
    let family = family(&raw)?;
    if let Some(act) = raw.hidden_act.as_deref() {
        if act != "silu" {
            bail!("hidden_act = {act:?} is not supported (supported: silu)");
        }
    }
    if raw.mlp_bias == Some(true) {
        bail!("mlp_bias = true is not supported (supported: false)");
    }
    if let Some(p) = raw.partial_rotary_factor {
        if p != 1.0 {
            bail!("partial_rotary_factor = {p}: partial rotary embeddings are not supported");
        }
    }
    let (rope_theta, rope_scaling) = rope(&raw)?;
    let attention_bias = raw.attention_bias.unwrap_or(false);
    let (qkv_bias, o_bias) = match family {
        // Qwen2's projections always carry q/k/v biases and never an output bias.
        Family::Qwen2 => (true, false),
        Family::Mistral => (false, false),
        Family::Llama | Family::Qwen3 => (attention_bias, attention_bias),
    };
    // Qwen configs keep a sliding_window value that applies only with use_sliding_window.
    let sliding_window = match family {
        Family::Qwen2 | Family::Qwen3 => raw
            .sliding_window
            .filter(|_| raw.use_sliding_window == Some(true)),
        Family::Mistral => raw.sliding_window,
        Family::Llama => None,
    };
    let head_dim = raw
        .head_dim
        .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1));
    Ok(ModelConfig {
        hidden_size: raw.hidden_size,
        intermediate_size: raw.intermediate_size,
        vocab_size: raw.vocab_size,
        num_layers: raw.num_hidden_layers,
        num_heads: raw.num_attention_heads,
        num_kv_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
        head_dim,
        rms_norm_eps: raw.rms_norm_eps,
        rope_theta,
        rope_scaling,
        max_position_embeddings: raw.max_position_embeddings,
        tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
        bos_token_id: raw.bos_token_id,
        family,
        qkv_bias,
        o_bias,
        qk_norm: family == Family::Qwen3,
        sliding_window,
    })
}
