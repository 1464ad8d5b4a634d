//! GGUF (llama.cpp) files of the `llama`, `qwen2` and `qwen3` architectures: config from
//! `{arch}.*` metadata, weights dequantized and renamed to the HF layout, LLaMA's Q/K rows
//! un-permuted back from llama.cpp's interleaved RoPE order (Qwen keeps the halves order,
//! llama.cpp's NEOX RoPE), so that one forward pass serves both formats.

use crate::model::config::{Family, ModelConfig, RopeScaling, YarnScaling};
use crate::model::rope::yarn_attention_factor;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// A GGUF file opened for reading: its metadata and tensor directory.
pub struct GgufFile {
    pub path: std::path::PathBuf,
    pub content: Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut f = std::fs::File::open(path)
            .with_context(|| format!("cannot open GGUF file {}", path.display()))?;
        let content = Content::read(&mut f)
            .map_err(|e| anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn need(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| {
            anyhow!(
                "{}: GGUF metadata key {key:?} is missing",
                self.path.display()
            )
        })
    }

    pub fn u32_of(&self, key: &str) -> Result<Option<u32>> {
        self.get(key)
            .map(|v| v.to_u32().or_else(|_| v.to_i32().map(|x| x as u32)))
            .transpose()
            .map_err(|e| anyhow!("{}: GGUF key {key}: {e}", self.path.display()))
    }

    fn usize_key(&self, key: &str) -> Result<usize> {
        let v = self.need(key)?;
        let n = v
            .to_u32()
            .map(|x| x as u64)
            .or_else(|_| v.to_u64())
            .map_err(|e| anyhow!("{}: GGUF key {key}: {e}", self.path.display()))?;
        Ok(n as usize)
    }

    fn f64_key(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| v.to_f32().map(|x| x as f64).or_else(|_| v.to_f64()))
            .transpose()
            .map_err(|e| anyhow!("{}: GGUF key {key}: {e}", self.path.display()))
    }

    pub fn string_key(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| v.to_string().map(|s| s.as_str()))
            .transpose()
            .map_err(|e| anyhow!("{}: GGUF key {key}: {e}", self.path.display()))
    }

    /// The family named by `general.architecture`.
    pub fn family(&self) -> Result<Family> {
        let arch = self.string_key("general.architecture")?.unwrap_or("(none)");
        Ok(match arch {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            "qwen3" => Family::Qwen3,
            other => bail!(
                "{}: GGUF general.architecture = {other:?} is not supported (supported: llama, \
                 qwen2, qwen3)",
                self.path.display()
            ),
        })
    }

    /// The model shape from `{arch}.*` keys.
    pub fn config(&self) -> Result<ModelConfig> {
        let p = self.path.display();
        let family = self.family()?;
        let a = family.name();
        let k = |key: &str| format!("{a}.{key}");
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            bail!("{p}: per-frequency RoPE factors (rope_freqs.weight) are not supported");
        }
        let hidden = self.usize_key(&k("embedding_length"))?;
        let heads = self.usize_key(&k("attention.head_count"))?;
        let kv = match self.get(&k("attention.head_count_kv")) {
            Some(_) => self.usize_key(&k("attention.head_count_kv"))?,
            None => heads,
        };
        let head_dim = match self.get(&k("attention.key_length")) {
            Some(_) => self.usize_key(&k("attention.key_length"))?,
            None => hidden / heads.max(1),
        };
        if let Some(rot) = self.u32_of(&k("rope.dimension_count"))? {
            if rot as usize != head_dim {
                bail!("{p}: partial rotary embeddings ({rot} of {head_dim}) are not supported");
            }
        }
        let embd = self
            .content
            .tensor_infos
            .get("token_embd.weight")
            .ok_or_else(|| anyhow!("{p}: tensor token_embd.weight is missing"))?;
        let vocab = match self.get(&k("vocab_size")) {
            Some(_) => self.usize_key(&k("vocab_size"))?,
            None => embd.shape.dims()[0],
        };
        let cfg = ModelConfig {
            hidden_size: hidden,
            intermediate_size: self.usize_key(&k("feed_forward_length"))?,
            vocab_size: vocab,
            num_layers: self.usize_key(&k("block_count"))?,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            rms_norm_eps: self
                .f64_key(&k("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_theta: self.f64_key(&k("rope.freq_base"))?.unwrap_or(10000.0),
            rope_scaling: self.rope_scaling(a)?,
            max_position_embeddings: self.usize_key(&k("context_length"))?,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            bos_token_id: self.u32_of("tokenizer.ggml.bos_token_id")?,
            family,
            qkv_bias: family == Family::Qwen2,
            o_bias: false,
            qk_norm: family == Family::Qwen3,
            sliding_window: None,
        };
        cfg.validate()
            .with_context(|| format!("{p}: invalid model shape"))?;
        Ok(cfg)
    }

    /// `{arch}.rope.scaling.*`: none, linear or yarn (what llama.cpp's converter writes).
    fn rope_scaling(&self, a: &str) -> Result<Option<RopeScaling>> {
        let kind = self.string_key(&format!("{a}.rope.scaling.type"))?;
        let factor = self.f64_key(&format!("{a}.rope.scaling.factor"))?;
        Ok(match (kind, factor) {
            (None | Some("none"), _) => None,
            (Some("linear"), Some(f)) => Some(RopeScaling::Linear { factor: f }),
            (Some("yarn"), Some(f)) => {
                let orig = self.u32_of(&format!("{a}.rope.scaling.original_context_length"))?;
                let orig = match orig {
                    Some(o) => o as usize,
                    None => self.usize_key(&format!("{a}.context_length"))?,
                };
                Some(RopeScaling::Yarn(YarnScaling {
                    factor: f,
                    original_max_position_embeddings: orig,
                    attention_factor: yarn_attention_factor(f, None, None),
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                    truncate: true,
                }))
            }
            (Some(other), _) => bail!(
                "{}: GGUF {a}.rope.scaling.type = {other:?} (with factor {factor:?}) is not \
                 supported (supported: none, linear, yarn)",
                self.path.display()
            ),
        })
    }

    /// All weights, dequantized on `device` to `dtype`, under HF names.
    pub fn tensors(
        &self,
        cfg: &ModelConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<HashMap<String, Tensor>> {
        let mut f = std::fs::File::open(&self.path)
            .with_context(|| format!("cannot open GGUF file {}", self.path.display()))?;
        let mut out = HashMap::new();
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let family = cfg.family.name();
            let Some(hf) = hf_name(name) else {
                bail!(
                    "{}: unexpected tensor {name:?} for a {family} model",
                    self.path.display()
                );
            };
            let expected = match hf.rsplit('.').nth(1) {
                Some("q_norm" | "k_norm") => cfg.qk_norm,
                _ if hf.ends_with(".bias") => cfg.qkv_bias,
                _ => true,
            };
            if !expected {
                bail!(
                    "{}: tensor {name:?} is not part of a {family} model in gateau",
                    self.path.display()
                );
            }
            // Dequantized on the CPU, where candle supports every GGUF type, then moved.
            let q = self
                .content
                .tensor(&mut f, name, &Device::Cpu)
                .with_context(|| format!("{}: cannot read tensor {name}", self.path.display()))?;
            let ty = q.dtype();
            let w = q.dequantize(&Device::Cpu).map_err(|e| {
                anyhow!(
                    "{}: tensor {name} has quantization {ty:?}, which cannot be dequantized: {e}",
                    self.path.display()
                )
            })?;
            let llama = cfg.family == Family::Llama;
            let w = if llama && name.ends_with("attn_q.weight") {
                unpermute(&w, cfg.num_heads)?
            } else if llama && name.ends_with("attn_k.weight") {
                unpermute(&w, cfg.num_kv_heads)?
            } else {
                w
            };
            out.insert(hf, w.to_dtype(dtype)?.to_device(device)?);
        }
        Ok(out)
    }
}

/// GGUF tensor name -> HF checkpoint name.
fn hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (idx, part) = rest.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{idx}.{hf}"))
}

/// Undoes llama.cpp's conversion permutation of Q/K rows: within each head, rows were
/// reordered from [first half, second half] to interleaved pairs.
pub fn unpermute(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    w.reshape((n_head, out / n_head / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// The forward permutation llama.cpp's converter applies (used by tests to write GGUF).
pub fn permute(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    w.reshape((n_head, 2, out / n_head / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf_layout() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").unwrap(),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert!(hf_name("blk.x.attn_q.weight").is_none());
        assert!(hf_name("blk.0.attn_qkv.weight").is_none());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // One head of 4 rows: llama.cpp stores rows [0, 2, 1, 3] (pairs (i, i + d/2)).
        let w = Tensor::arange(0f32, 8.0, &Device::Cpu)
            .unwrap()
            .reshape((4, 2))
            .unwrap();
        let p = permute(&w, 1).unwrap();
        assert_eq!(
            p.to_vec2::<f32>().unwrap(),
            vec![vec![0., 1.], vec![4., 5.], vec![2., 3.], vec![6., 7.]]
        );
        assert_eq!(
            unpermute(&p, 1).unwrap().to_vec2::<f32>().unwrap(),
            w.to_vec2::<f32>().unwrap()
        );
    }
}
