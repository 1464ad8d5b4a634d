//! GGUF files written from the family fixtures (as llama.cpp's converter lays them out)
//! score as their HF folders: `qwen2`, `qwen3`, and `llama` with linear and YaRN RoPE.

use crate::common::*;
use crate::families::{config, families, score_folder};
use candle_core::Device;
use std::path::Path;

/// A GGUF (f32 tensors, `{arch}.*` metadata, no tokenizer: the folder's is passed) written
/// from a fixture folder as llama.cpp's converter lays it out: Q/K rows permuted for
/// `llama` only, RoPE scaling in `{arch}.rope.scaling.*`.
fn write_gguf(
    folder: &Path,
    arch: &str,
    path: &Path,
    theta: f32,
    scaling: Option<(&str, f32, u32)>,
) {
    use candle_core::quantized::gguf_file::{self, Value as G};
    use candle_core::quantized::{GgmlDType, QTensor};
    let c = config(folder);
    let u = |k: &str| G::U32(c[k].as_u64().unwrap() as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let meta: Vec<(String, G)> = vec![
        ("general.architecture".into(), G::String(arch.into())),
        (key("block_count"), u("num_hidden_layers")),
        (key("embedding_length"), u("hidden_size")),
        (key("feed_forward_length"), u("intermediate_size")),
        (key("attention.head_count"), u("num_attention_heads")),
        (key("attention.head_count_kv"), u("num_key_value_heads")),
        (key("attention.key_length"), u("head_dim")),
        (key("rope.freq_base"), G::F32(theta)),
        (key("attention.layer_norm_rms_epsilon"), G::F32(1e-6)),
        (key("context_length"), u("max_position_embeddings")),
    ];
    let mut meta = meta;
    if let Some((kind, factor, original)) = scaling {
        meta.push((key("rope.scaling.type"), G::String(kind.into())));
        meta.push((key("rope.scaling.factor"), G::F32(factor)));
        meta.push((
            key("rope.scaling.original_context_length"),
            G::U32(original),
        ));
    }
    if c["bos_token_id"].is_u64() {
        meta.push(("tokenizer.ggml.bos_token_id".into(), u("bos_token_id")));
    }
    let heads = |n: &str| match n.contains("q_proj") {
        true => c["num_attention_heads"].as_u64().unwrap() as usize,
        false => c["num_key_value_heads"].as_u64().unwrap() as usize,
    };
    let hf =
        candle_core::safetensors::load(folder.join("model.safetensors"), &Device::Cpu).unwrap();
    let gguf_name = |n: &str| -> String {
        let fixed = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ];
        if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == n) {
            return g.to_string();
        }
        let rest = n.strip_prefix("model.layers.").unwrap();
        let (l, part) = rest.split_once('.').unwrap();
        let g = match part {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            other => {
                let other = other.strip_prefix("self_attn.").unwrap();
                // q_proj.bias -> attn_q.bias, q_norm.weight -> attn_q_norm.weight
                return format!("blk.{l}.attn_{}", other.replace("_proj", ""));
            }
        };
        format!("blk.{l}.{g}")
    };
    let q: Vec<(String, QTensor)> = hf
        .iter()
        .map(|(n, t)| {
            let t = match arch == "llama" && (n.contains("q_proj") || n.contains("k_proj")) {
                true => gateau::checkpoint::gguf::permute(t, heads(n)).unwrap(),
                false => t.clone(),
            };
            (gguf_name(n), QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    let meta_refs: Vec<(&str, &G)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &q_refs).unwrap();
}

#[test]
fn gguf_files_score_as_their_hf_folders() {
    let data = families().join("data.jsonl");
    type Scaling = Option<(&'static str, f32, u32)>;
    let cases: [(&str, &str, f32, Scaling); 4] = [
        ("qwen2", "qwen2", 1e6, None),
        ("qwen3", "qwen3", 1e6, None),
        ("llama-linear", "llama", 1e4, Some(("linear", 4.0, 1024))),
        ("llama-yarn", "llama", 1e4, Some(("yarn", 4.0, 256))),
    ];
    for (name, arch, theta, scaling) in cases {
        let dir = tmp();
        let folder = families().join(name);
        let gguf = dir.path().join(format!("{name}.gguf"));
        write_gguf(&folder, arch, &gguf, theta, scaling);
        let tok = folder.join("tokenizer.json");
        let a = score_folder(&folder, &data, &[]);
        let b = score_folder(&gguf, &data, &["--tokenizer", p(&tok)]);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.n_tokens, x.n_ctx), (y.n_tokens, y.n_ctx), "{name}");
            assert_rel(
                y.ppl_long.unwrap(),
                x.ppl_long.unwrap(),
                1e-6,
                "GGUF ppl_long",
            );
            assert_rel(
                y.ppl_short.unwrap(),
                x.ppl_short.unwrap(),
                1e-6,
                "GGUF ppl_short",
            );
            assert_eq!(
                x.seg_ppl.as_ref().map(Vec::len),
                y.seg_ppl.as_ref().map(Vec::len)
            );
            for (s, t) in y
                .seg_attn
                .as_ref()
                .unwrap()
                .iter()
                .zip(x.seg_attn.as_ref().unwrap())
            {
                assert_rel(*s, *t, 1e-6, "GGUF seg_attn");
            }
        }
    }
}
