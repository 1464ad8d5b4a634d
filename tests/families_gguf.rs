//! GGUF files written from the family fixtures (as llama.cpp's converter lays them out)
//! score as their HF folders: `qwen2`, `qwen3`, and `llama` with linear and YaRN RoPE; with
//! the tokenizer inside (GPT-2-style BPE, `tokenizer.ggml.pre` default or qwen2) they need no
//! tokenizer.json; a SentencePiece (`llama` kind) vocabulary encodes as worked by hand.

use crate::common::*;
use crate::families::{compare, config, families, score_folder};
use candle_core::Device;
use serde_json::Value;
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
    pre: Option<&str>,
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
    if let Some(pre) = pre {
        meta.extend(gpt2_tokenizer_meta(&folder.join("tokenizer.json"), pre));
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
        write_gguf(&folder, arch, &gguf, theta, scaling, None);
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

/// A byte-level BPE tokenizer.json as GGUF metadata, the way llama.cpp's converter writes
/// it: tokens by id, `a b` merges, special tokens as control tokens.
fn gpt2_tokenizer_meta(
    tokenizer: &Path,
    pre: &str,
) -> Vec<(String, candle_core::quantized::gguf_file::Value)> {
    use candle_core::quantized::gguf_file::Value as G;
    let t: Value = serde_json::from_str(&std::fs::read_to_string(tokenizer).unwrap()).unwrap();
    let vocab = t["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (piece, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = piece.clone();
    }
    let special: Vec<u64> = t["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["special"].as_bool() == Some(true))
        .map(|a| a["id"].as_u64().unwrap())
        .collect();
    let types = (0..tokens.len() as u64)
        .map(|i| G::I32(if special.contains(&i) { 3 } else { 1 }))
        .collect();
    let merges = t["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => G::String(s.clone()),
            pair => G::String(format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            )),
        })
        .collect();
    vec![
        ("tokenizer.ggml.model".into(), G::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), G::String(pre.into())),
        (
            "tokenizer.ggml.tokens".into(),
            G::Array(tokens.into_iter().map(G::String).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), G::Array(types)),
        ("tokenizer.ggml.merges".into(), G::Array(merges)),
    ]
}

/// With its tokenizer inside, a GGUF needs no tokenizer.json: qwen3's (pre `default`, the
/// GPT-2 split of its folder's tokenizer.json) scores as its folder; qwen2's (pre `qwen2`,
/// Qwen2's own split) scores as the transformers reference of its folder.
#[test]
fn gguf_tokenizers_inside_the_file_score_without_a_tokenizer_json() {
    let data = families().join("data.jsonl");
    let dir = tmp();
    let qwen3 = families().join("qwen3");
    let g3 = dir.path().join("qwen3.gguf");
    write_gguf(&qwen3, "qwen3", &g3, 1e6, None, Some("default"));
    let a = score_folder(&qwen3, &data, &[]);
    let b = score_folder(&g3, &data, &[]);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.n_tokens, x.n_ctx, x.n_resp),
            (y.n_tokens, y.n_ctx, y.n_resp)
        );
        assert_rel(
            y.ppl_long.unwrap(),
            x.ppl_long.unwrap(),
            1e-6,
            "qwen3 GGUF ppl_long",
        );
    }
    let qwen2 = families().join("qwen2");
    let g2 = dir.path().join("qwen2.gguf");
    write_gguf(&qwen2, "qwen2", &g2, 1e6, None, Some("qwen2"));
    let got = score_folder(&g2, &data, &[]);
    let want: Vec<Value> = read_jsonl(&qwen2.join("reference.jsonl"));
    let (ppl, attn, cas) = compare("qwen2 GGUF", &got, &want);
    assert!(
        ppl < 1e-4 && attn < 1e-4 && cas < 1e-5,
        "{ppl:.2e} {attn:.2e} {cas:.2e}"
    );
}

/// A SentencePiece vocabulary (`llama` kind: merges from the piece scores, a `▁` prefix,
/// byte fallback) encodes as worked by hand. Ids: 0 <unk>, 1 <s>, 2 </s>, 3..=258 the
/// bytes, 259 ▁, 260 a, 261 b, 262 c, 263 ▁a, 264 ab, 265 ▁ab, 266 bc. Merges rank by the
/// merged piece's score: ▁ab (▁+ab, ▁a+b), ▁a, ab, bc. "ab abc" is "▁ab▁abc": ▁+a merges
/// first (its rank beats a+b), twice; then ▁a+b, twice: ▁ab ▁ab c. "é" has no piece: ▁,
/// then its UTF-8 bytes C3 A9 as byte tokens.
#[test]
fn a_sentencepiece_gguf_vocabulary_encodes_as_worked_by_hand() {
    use candle_core::quantized::gguf_file::{self, Value as G};
    use gateau::checkpoint::{gguf::GgufFile, gguf_tokenizer};
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    for (piece, score) in [
        ("\u{2581}", -10.0),
        ("a", -11.0),
        ("b", -12.0),
        ("c", -13.0),
        ("\u{2581}a", -2.0),
        ("ab", -3.0),
        ("\u{2581}ab", -1.0),
        ("bc", -4.0),
    ] {
        tokens.push(piece.into());
        types.push(1);
        scores.push(score);
    }
    let meta: Vec<(&str, G)> = vec![
        ("general.architecture", G::String("llama".into())),
        ("tokenizer.ggml.model", G::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            G::Array(tokens.iter().cloned().map(G::String).collect()),
        ),
        (
            "tokenizer.ggml.scores",
            G::Array(scores.into_iter().map(G::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            G::Array(types.into_iter().map(G::I32).collect()),
        ),
        ("tokenizer.ggml.unknown_token_id", G::U32(0)),
    ];
    let dir = tmp();
    let path = dir.path().join("spm.gguf");
    let refs: Vec<(&str, &G)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &refs, &[]).unwrap();
    let tok = gguf_tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let ids = |s: &str| tok.encode(s, false).unwrap().get_ids().to_vec();
    assert_eq!(ids("ab abc"), [265, 265, 262]);
    assert_eq!(ids("\u{e9}"), [259, 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(tok.decode(&[265, 265, 262], true).unwrap(), "ab abc");
}
