//! `--bucket`: padding the attention of single-sequence passes up to a bucket length changes
//! no record. Through the binary on every family fixture (dynamic NTK RoPE included), with a
//! separate short model and with IFD, and through the library on the split path (the
//! layout the fused GPU kernels take) in f32 and in bf16 with f16 heads.

use crate::common::*;
use crate::families::{families, score_args, FAMILIES};
use candle_core::DType;
use gateau::checkpoint::{self as model, ModelSpec};
use gateau::model::bucket::Bucket;
use gateau::model::dispatch::BatchPlan;

/// Scores the families' data with `model` and `extra` flags: the records file's bytes and
/// the run's stderr.
fn score(model: &std::path::Path, extra: &[&str]) -> (Vec<u8>, String) {
    let dir = tmp();
    let out = dir.path().join("scores.jsonl");
    let data = families().join("data.jsonl");
    let mut args = score_args(model, &data, &out);
    args.retain(|a| a != "--quiet");
    if extra.contains(&"--short-model") {
        let w = args.iter().position(|a| a == "--short-window").unwrap();
        args.drain(w..w + 2);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&a);
    assert!(o.status.success(), "{}: {}", model.display(), stderr(&o));
    (std::fs::read(&out).unwrap(), stderr(&o))
}

/// Every record byte for byte the same with `--bucket 64` as with `--bucket 0`, and the
/// bucketed run did pad (its summary line says how much; no sample here is a multiple of
/// 64 tokens long).
fn same_records(model: &std::path::Path, extra: &[&str]) -> String {
    let off = score(model, &[&["--bucket", "0"], extra].concat());
    let on = score(model, &[&["--bucket", "64"], extra].concat());
    assert!(
        !off.1.contains("passes padded"),
        "--bucket 0 padded: {}",
        off.1
    );
    assert!(
        on.1.contains("gateau score: bucket 64: long model: ") && on.1.contains("passes padded"),
        "{}: no padding reported: {}",
        model.display(),
        on.1
    );
    assert!(!off.0.is_empty());
    assert!(
        off.0 == on.0,
        "{}: records differ\n--bucket 0:\n{}\n--bucket 64:\n{}",
        model.display(),
        String::from_utf8_lossy(&off.0),
        String::from_utf8_lossy(&on.0)
    );
    on.1
}

#[test]
fn bucketed_records_equal_unbucketed_in_every_family() {
    for name in FAMILIES {
        same_records(&families().join(name), &[]);
    }
}

/// Dynamic NTK's frequencies depend on the pass length: they come from the real length
/// (RoPE is applied before the padding), so its records do not change either; the same for
/// a separate short model's full pass and the IFD pass (`[BOS] + response`).
#[test]
fn bucketed_records_equal_with_a_short_model_and_ifd() {
    let dynamic = families().join("llama-dynamic");
    let linear = families().join("llama-linear");
    let log = same_records(
        &dynamic,
        &["--short-model", p(&linear), "--with-ifd", "--token-nll"],
    );
    assert!(log.contains("bucket 64: short model: "), "{log}");
}

fn tokens(seed: u64, n: usize) -> Vec<u32> {
    let mut r = Rng::new(seed);
    std::iter::once(BOS)
        .chain((1..n).map(|_| r.below(256) as u32))
        .collect()
}

/// The split path (q, k, v in the `[B, T, H, hd]` layout, the capture on the side, f16
/// heads with bf16 weights) pads inside the dispatch: NLL and captured attention bit for
/// bit those of the unpadded pass, at lengths below, at and above a multiple of 64.
#[test]
fn split_path_padding_changes_no_number() {
    for dtype in [DType::F32, DType::BF16] {
        let dir = tmp();
        let tiny = Tiny::random(31, 4, 2, false);
        tiny.write(dir.path(), false);
        let spec = ModelSpec {
            location: p(dir.path()).to_string(),
            tokenizer: None,
            rope_theta: None,
        };
        let mut m = model::load(&spec, &cpu(dtype)).unwrap();
        m.llama.set_split_attention(true);
        for (n, padded) in [(97, 128), (128, 128), (150, 192)] {
            let seq = tokens(5, n);
            let from = n - 30;
            m.llama.set_bucket(Bucket::Off);
            assert_eq!(m.llama.attention_len((1, n), &BatchPlan::none()), n);
            let plain = m.llama.forward(std::slice::from_ref(&seq), from, true);
            m.llama.set_bucket(Bucket::Tokens(64));
            let len = m.llama.attention_len((1, n), &BatchPlan::none());
            assert_eq!(len, padded, "{n} tokens");
            assert_eq!(m.llama.attention_len((2, n), &BatchPlan::none()), n);
            let bucketed = m.llama.forward(std::slice::from_ref(&seq), from, true);
            let (plain, bucketed) = (plain.unwrap(), bucketed.unwrap());
            assert_eq!(plain.nll, bucketed.nll, "{dtype:?}, {n} tokens: nll");
            assert_eq!(
                plain.attention, bucketed.attention,
                "{dtype:?}, {n} tokens: attention"
            );
            assert_eq!(bucketed.attention.unwrap()[0].len(), n);
        }
        let summary = m.llama.bucket_summary().unwrap();
        assert!(
            summary.starts_with("2 of 6 single-sequence passes padded (+"),
            "{summary}"
        );
    }
}
