//! GGUF files written here from a tiny model (Q/K rows permuted as llama.cpp's converter
//! does, tokenizer in `tokenizer.ggml.*`): the same records as the HF folder, and clear
//! errors for what is not supported.

use crate::common::*;
use crate::score_cli::{score, Fixture};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use gateau::checkpoint::gguf::permute;
use gateau::records::ScoreRecord;
use std::path::Path;

fn write_gguf(t: &Tiny, path: &Path, arch: &str) {
    let mut tokens: Vec<String> = bytes_to_unicode().iter().map(|c| c.to_string()).collect();
    // One merge that the test texts never use (bytes 0 and 1), so ids stay byte values.
    tokens.extend(["<s>", "</s>", "\u{100}\u{101}", "<unused>"].map(String::from));
    let types: Vec<Value> = (0..VOCAB)
        .map(|i| Value::I32(if i == 256 || i == 257 { 3 } else { 1 }))
        .collect();
    let u = |v: usize| Value::U32(v as u32);
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String(arch.into())),
        ("llama.block_count", u(t.layers)),
        ("llama.embedding_length", u(t.hidden)),
        ("llama.feed_forward_length", u(t.inter)),
        ("llama.attention.head_count", u(t.heads)),
        ("llama.attention.head_count_kv", u(t.kv_heads)),
        ("llama.rope.freq_base", Value::F32(t.rope_theta as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(t.eps as f32),
        ),
        ("llama.context_length", u(4096)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        (
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("\u{100} \u{101}".into())]),
        ),
        ("tokenizer.ggml.bos_token_id", u(BOS as usize)),
    ];
    let hf = t.tensors();
    let mut q: Vec<(String, QTensor)> = Vec::new();
    let mut put = |name: String, w: &candle_core::Tensor| {
        q.push((name, QTensor::quantize(w, GgmlDType::F32).unwrap()));
    };
    put("token_embd.weight".into(), &hf["model.embed_tokens.weight"]);
    put("output_norm.weight".into(), &hf["model.norm.weight"]);
    if !t.tied {
        put("output.weight".into(), &hf["lm_head.weight"]);
    }
    for l in 0..t.layers {
        let g = |n: &str| &hf[&format!("model.layers.{l}.{n}.weight")];
        put(format!("blk.{l}.attn_norm.weight"), g("input_layernorm"));
        put(
            format!("blk.{l}.ffn_norm.weight"),
            g("post_attention_layernorm"),
        );
        put(
            format!("blk.{l}.attn_q.weight"),
            &permute(g("self_attn.q_proj"), t.heads).unwrap(),
        );
        put(
            format!("blk.{l}.attn_k.weight"),
            &permute(g("self_attn.k_proj"), t.kv_heads).unwrap(),
        );
        put(format!("blk.{l}.attn_v.weight"), g("self_attn.v_proj"));
        put(format!("blk.{l}.attn_output.weight"), g("self_attn.o_proj"));
        put(format!("blk.{l}.ffn_gate.weight"), g("mlp.gate_proj"));
        put(format!("blk.{l}.ffn_up.weight"), g("mlp.up_proj"));
        put(format!("blk.{l}.ffn_down.weight"), g("mlp.down_proj"));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &q_refs).unwrap();
}

#[test]
fn gguf_scores_equal_the_hf_folder() {
    let f = Fixture::new(3);
    let gguf = f.path("tiny.gguf");
    write_gguf(&f.long, &gguf, "llama");
    let (a, b) = (f.path("folder.jsonl"), f.path("gguf.jsonl"));
    assert!(score(&f.args(&a)).status.success());
    let mut args = f.args(&b);
    let at = args.iter().position(|x| x == "--long-model").unwrap();
    args[at + 1] = p(&gguf).into();
    let o = score(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let (ra, rb): (Vec<ScoreRecord>, Vec<ScoreRecord>) = (read_jsonl(&a), read_jsonl(&b));
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!((x.line, x.n_tokens, x.n_ctx), (y.line, y.n_tokens, y.n_ctx));
        assert_rel(
            y.ppl_long.unwrap(),
            x.ppl_long.unwrap(),
            1e-5,
            "GGUF ppl_long",
        );
        assert_rel(
            y.ppl_short.unwrap(),
            x.ppl_short.unwrap(),
            1e-5,
            "GGUF ppl_short",
        );
        for (s, t) in y
            .seg_attn
            .as_ref()
            .unwrap()
            .iter()
            .zip(x.seg_attn.as_ref().unwrap())
        {
            assert_rel(*s, *t, 1e-5, "GGUF seg_attn");
        }
    }
}

#[test]
fn unsupported_gguf_architecture_is_named() {
    let f = Fixture::new(1);
    let gguf = f.path("other.gguf");
    write_gguf(&f.long, &gguf, "qwen2");
    let mut args = f.args(&f.path("x.jsonl"));
    let at = args.iter().position(|x| x == "--long-model").unwrap();
    args[at + 1] = p(&gguf).into();
    let o = score(&args);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("qwen2") && err.contains("other.gguf"), "{err}");
}
