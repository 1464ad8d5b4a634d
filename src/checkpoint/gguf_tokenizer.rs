//! A Hugging Face tokenizer built from GGUF `tokenizer.ggml.*` metadata, the way the
//! reference library converts it: byte-level BPE for the `gpt2` kind (SmolLM2, LLaMA-3) and
//! SentencePiece-style BPE with byte fallback for the `llama` kind (LLaMA-2).

use super::gguf::GgufFile;
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use tokenizers::Tokenizer;

const GPT2_REGEX_PRES: &[&str] = &["default", "gpt-2", "gpt2", "smollm"];
const LLAMA3_PRES: &[&str] = &["llama-bpe", "llama3", "llama-v3"];
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 and Qwen3 (llama.cpp's `qwen2` pre-tokenizer): as LLaMA-3's, digits one by one.
const QWEN2_PRES: &[&str] = &["qwen2"];
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

fn strings(g: &GgufFile, key: &str) -> Result<Vec<String>> {
    let v = g
        .get(key)
        .ok_or_else(|| anyhow!("{}: GGUF key {key} is missing", g.path.display()))?;
    v.to_vec()
        .map_err(|e| anyhow!("{}: {key}: {e}", g.path.display()))?
        .iter()
        .map(|x| x.to_string().cloned())
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(|e| anyhow!("{}: {key}: {e}", g.path.display()))
}

fn numbers(g: &GgufFile, key: &str) -> Result<Option<Vec<f64>>> {
    let Some(v) = g.get(key) else { return Ok(None) };
    let items = v
        .to_vec()
        .map_err(|e| anyhow!("{}: {key}: {e}", g.path.display()))?;
    items
        .iter()
        .map(|x| {
            x.to_f32()
                .map(|f| f as f64)
                .or_else(|_| x.to_i32().map(|i| i as f64))
                .or_else(|_| x.to_u32().map(|i| i as f64))
        })
        .collect::<candle_core::Result<Vec<_>>>()
        .map(Some)
        .map_err(|e| anyhow!("{}: {key}: {e}", g.path.display()))
}

fn added_tokens(tokens: &[String], types: &[f64]) -> Vec<Value> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (_, &t))| t as i64 == CONTROL || t as i64 == USER_DEFINED)
        .map(|(id, (content, &t))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": t as i64 != CONTROL,
                   "special": t as i64 == CONTROL})
        })
        .collect()
}

fn vocab_map(tokens: &[String]) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        // A repeated piece keeps its first id, as a Python dict comprehension over
        // enumerate would keep the last: ids are what the model saw, so prefer the first.
        m.entry(t.clone()).or_insert(json!(i));
    }
    m
}

/// Builds the tokenizer for a GGUF file.
pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
    let p = g.path.display();
    let kind = g.string_key("tokenizer.ggml.model")?.unwrap_or("(none)");
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let types = numbers(g, "tokenizer.ggml.token_type")?.unwrap_or_else(|| vec![1.0; tokens.len()]);
    let spec = match kind {
        "gpt2" => gpt2_json(g, &tokens, &types)?,
        "llama" => llama_json(g, &tokens, &types)?,
        other => bail!(
            "{p}: GGUF tokenizer kind {other:?} is not supported (gpt2 or llama); \
             pass --tokenizer tokenizer.json"
        ),
    };
    Tokenizer::from_bytes(serde_json::to_vec(&spec)?)
        .map_err(|e| anyhow!("{p}: cannot build the tokenizer from GGUF metadata: {e}"))
}

fn gpt2_json(g: &GgufFile, tokens: &[String], types: &[f64]) -> Result<Value> {
    let pre = g.string_key("tokenizer.ggml.pre")?.unwrap_or("default");
    let byte_level = |regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
               "use_regex": regex})
    };
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
             "invert": false},
            byte_level(false)]})
    };
    let pre_tokenizer = if GPT2_REGEX_PRES.contains(&pre) {
        byte_level(true)
    } else if LLAMA3_PRES.contains(&pre) {
        split(LLAMA3_REGEX)
    } else if QWEN2_PRES.contains(&pre) {
        split(QWEN2_REGEX)
    } else {
        bail!(
            "{}: GGUF pre-tokenizer {pre:?} is not supported ({}, {} or {}); pass --tokenizer \
             tokenizer.json",
            g.path.display(),
            GPT2_REGEX_PRES.join(", "),
            LLAMA3_PRES.join(", "),
            QWEN2_PRES.join(", ")
        );
    };
    let merges: Vec<Value> = strings(g, "tokenizer.ggml.merges")?
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| anyhow!("{}: malformed merge {m:?}", g.path.display()))
        })
        .collect::<Result<_>>()?;
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added_tokens(tokens, types),
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab_map(tokens), "merges": merges}
    }))
}

/// SentencePiece BPE merges recovered from the vocabulary and scores, as the reference
/// converter does: every split of a piece into two known pieces, ranked by the piece score.
pub fn spm_merges(tokens: &[String], scores: &[f64]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(String, String, f64)> = Vec::new();
    for (piece, &score) in tokens.iter().zip(scores) {
        let mut local = Vec::new();
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                local.push((li, ri, l.to_string(), r.to_string()));
            }
        }
        local.sort_by_key(|x| (x.0, x.1));
        merges.extend(local.into_iter().map(|(_, _, l, r)| (l, r, score)));
    }
    // Stable sort, highest score first, like Python's sorted(..., reverse=True).
    merges.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

fn llama_json(g: &GgufFile, tokens: &[String], types: &[f64]) -> Result<Value> {
    let scores = numbers(g, "tokenizer.ggml.scores")?
        .ok_or_else(|| anyhow!("{}: tokenizer.ggml.scores is missing", g.path.display()))?;
    let unk = g
        .u32_of("tokenizer.ggml.unknown_token_id")?
        .and_then(|i| tokens.get(i as usize).cloned());
    let prefix = match g.get("tokenizer.ggml.add_space_prefix") {
        Some(v) => v.to_bool().unwrap_or(true),
        None => true,
    };
    let merges: Vec<Value> = spm_merges(tokens, &scores)
        .into_iter()
        .map(|(a, b)| json!([a, b]))
        .collect();
    let mut normalizers = Vec::new();
    if prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added_tokens(tokens, types),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": if prefix { 1 } else { 0 }, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab_map(tokens), "merges": merges}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spm_merges_rank_by_merged_piece_score() {
        let t: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let s = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5];
        let m = spm_merges(&t, &s);
        // "abc" (score -0.5) splits as a+bc and ab+c, ordered by the left id then right id;
        // then "ab" (-1.0), then "bc" (-2.0).
        let want = [("a", "bc"), ("ab", "c"), ("a", "b"), ("b", "c")];
        let got: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(got, want);
    }
}
