//! Shared test helpers: tiny random LLaMA models written as HF folders, a byte-level
//! tokenizer (token id = byte value, so tests can tokenize without the tokenizers crate),
//! their plain-loop f64 reference forward pass (crate::naive), and a runner for the binary.

pub use crate::naive::{Naive, RefModel, RefRope, Weights};
use candle_core::{Device, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

pub const BOS: u32 = 256;
pub const VOCAB: usize = 260;

/// Deterministic uniform numbers in [-1, 1) (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A tiny LLaMA: shape plus weights as plain row-major vectors.
#[derive(Clone)]
pub struct Tiny {
    pub hidden: usize,
    pub inter: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub rope_theta: f64,
    pub tied: bool,
    pub eps: f64,
    pub w: HashMap<String, (Vec<f32>, Vec<usize>)>,
}

impl Tiny {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    pub fn random(seed: u64, heads: usize, kv_heads: usize, tied: bool) -> Self {
        let (hidden, inter, layers) = (32, 48, 2);
        let hd = hidden / heads;
        let mut rng = Rng::new(seed);
        let mut w = HashMap::new();
        let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
            let n = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| offset + scale * rng.uniform()).collect();
            w.insert(name, (v, shape));
        };
        put(
            "model.embed_tokens.weight".into(),
            vec![VOCAB, hidden],
            1.0,
            0.0,
        );
        for l in 0..layers {
            let p = format!("model.layers.{l}");
            put(
                format!("{p}.input_layernorm.weight"),
                vec![hidden],
                0.2,
                1.0,
            );
            put(
                format!("{p}.post_attention_layernorm.weight"),
                vec![hidden],
                0.2,
                1.0,
            );
            // Large Q/K scales make attention clearly non-uniform.
            put(
                format!("{p}.self_attn.q_proj.weight"),
                vec![heads * hd, hidden],
                0.6,
                0.0,
            );
            put(
                format!("{p}.self_attn.k_proj.weight"),
                vec![kv_heads * hd, hidden],
                0.6,
                0.0,
            );
            put(
                format!("{p}.self_attn.v_proj.weight"),
                vec![kv_heads * hd, hidden],
                0.3,
                0.0,
            );
            put(
                format!("{p}.self_attn.o_proj.weight"),
                vec![hidden, heads * hd],
                0.3,
                0.0,
            );
            put(
                format!("{p}.mlp.gate_proj.weight"),
                vec![inter, hidden],
                0.3,
                0.0,
            );
            put(
                format!("{p}.mlp.up_proj.weight"),
                vec![inter, hidden],
                0.3,
                0.0,
            );
            put(
                format!("{p}.mlp.down_proj.weight"),
                vec![hidden, inter],
                0.3,
                0.0,
            );
        }
        put("model.norm.weight".into(), vec![hidden], 0.2, 1.0);
        if !tied {
            put("lm_head.weight".into(), vec![VOCAB, hidden], 0.5, 0.0);
        }
        Self {
            hidden,
            inter,
            layers,
            heads,
            kv_heads,
            rope_theta: 10000.0,
            tied,
            eps: 1e-5,
            w,
        }
    }

    pub fn config_json(&self) -> serde_json::Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": self.hidden,
            "intermediate_size": self.inter,
            "vocab_size": VOCAB,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "rms_norm_eps": self.eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": self.tied,
            "bos_token_id": BOS,
            "eos_token_id": BOS + 1
        })
    }

    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.w
            .iter()
            .map(|(k, (v, s))| {
                (
                    k.clone(),
                    Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu).unwrap(),
                )
            })
            .collect()
    }

    /// Writes config.json, tokenizer.json and weights (sharded into two files if asked).
    pub fn write(&self, dir: &Path, sharded: bool) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), self.config_json().to_string()).unwrap();
        std::fs::write(
            dir.join("tokenizer.json"),
            byte_tokenizer_json().to_string(),
        )
        .unwrap();
        let all = self.tensors();
        if !sharded {
            candle_core::safetensors::save(&all, dir.join("model.safetensors")).unwrap();
            return;
        }
        let mut parts: [HashMap<String, Tensor>; 2] = Default::default();
        let mut map = serde_json::Map::new();
        for (k, t) in all {
            let i = usize::from(k.contains("layers.1") || k.starts_with("lm_head"));
            let file = format!("model-0000{}-of-00002.safetensors", i + 1);
            map.insert(k.clone(), json!(file));
            parts[i].insert(k, t);
        }
        for (i, p) in parts.iter().enumerate() {
            let file = format!("model-0000{}-of-00002.safetensors", i + 1);
            candle_core::safetensors::save(p, dir.join(file)).unwrap();
        }
        let index = json!({"metadata": {}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

/// GPT-2's byte -> printable char table.
pub fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in bs.iter().zip(cs) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

/// Byte-level BPE without merges: token id = byte value; <s> = 256, </s> = 257.
pub fn byte_tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    for (b, c) in bytes_to_unicode().iter().enumerate() {
        vocab.insert(c.to_string(), json!(b));
    }
    vocab.insert("<s>".into(), json!(256));
    vocab.insert("</s>".into(), json!(257));
    let special = |id: u32, s: &str| {
        json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(256, "<s>"), special(257, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    })
}

/// The reference tokenizer: one token per byte.
pub fn bytes(s: &str) -> Vec<u32> {
    s.bytes().map(u32::from).collect()
}

impl Tiny {
    /// The reference forward pass (crate::naive) with plain RoPE of base `rope_theta`.
    pub fn naive(&self, tokens: &[u32], rope_theta: f64) -> Naive {
        let model = RefModel {
            hidden: self.hidden,
            inter: self.inter,
            layers: self.layers,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim(),
            vocab: VOCAB,
            eps: self.eps,
            tied: self.tied,
            w: self.w.clone(),
        };
        model.forward(tokens, &RefRope::plain(rope_theta, self.head_dim()))
    }
}

pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

pub fn assert_rel(a: f64, b: f64, tol: f64, what: &str) {
    assert!(
        rel(a, b) <= tol,
        "{what}: {a} vs reference {b} (relative {:.2e} > {tol:.0e})",
        rel(a, b)
    );
}

/// A fresh temporary folder.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn gateau() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gateau"));
    c.env_remove("GATEAU_CONFIG").env("HF_HUB_OFFLINE", "1");
    c
}

/// Runs the binary with args, returning its output (never panics on a failing status).
pub fn run(args: &[&str]) -> Output {
    gateau().args(args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Reads a JSONL file into typed values.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// CPU compute in `dtype` with gateau's chunked attention (the only kind the CPU has).
pub fn cpu(dtype: candle_core::DType) -> gateau::model::Compute {
    gateau::model::Compute {
        device: Device::Cpu,
        dtype,
        dispatch: gateau::model::dispatch::Dispatch::chunked(),
        fp8: false,
    }
}
