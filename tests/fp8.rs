//! `--dtype fp8` on the CPU (the slow twin of the CUDA path): the family fixtures through the
//! binary near their float32 transformers references and away from the bf16 records (so the
//! projections really are E4M3), the run's dtype in the settings line and in every record's
//! fingerprint (a bf16 resume of an fp8 file is refused), the quantization logged, and the
//! size rule of cuBLASLt's FP8 GEMMs.

use crate::common::*;
use crate::families::{compare, families, score_args};
use candle_core::{DType, Device};
use gateau::bench::random_model;
use gateau::model::dispatch::Dispatch;
use gateau::model::ModelConfig;
use gateau::records::ScoreRecord;
use serde_json::Value;

fn score(fam: &str, dtype: &str, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let dir = families().join(fam);
    let mut args = score_args(&dir, &families().join("data.jsonl"), out);
    let at = args.iter().position(|a| a == "--dtype").unwrap();
    args[at + 1] = dtype.into();
    args.retain(|a| a != "--quiet");
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&a)
}

/// fp8 against the f32 reference: perplexities within 8%, segment attention within 3%, CAS
/// within 0.1 on these tiny random models (hidden size 64; E4M3 keeps 3 mantissa bits of
/// every projection input and weight in the segment passes). The full passes stay bf16, so
/// ppl_long, ppl_short and seg_attn are the bf16 records' own numbers, while every
/// sample's segment perplexities differ from them (the segment projections were
/// quantized). Measured here: qwen3 3.4% / 0.05% / 8e-6, llama-linear 3.2% / 0.05% / 3e-5.
#[test]
fn fp8_scores_the_families_near_their_reference() {
    for fam in ["qwen3", "llama-linear"] {
        let dir = tmp();
        let out = dir.path().join("fp8.jsonl");
        let o = score(fam, "fp8", &out, &[]);
        assert!(o.status.success(), "{fam}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains("bf16 on cpu") || err.contains("fp8"), "{err}");
        assert!(err.contains(", fp8"), "the settings line names fp8: {err}");
        assert!(
            err.contains("projections quantized to E4M3, per-channel scales"),
            "the quantization is logged: {err}"
        );
        let got: Vec<ScoreRecord> = read_jsonl(&out);
        let want: Vec<Value> = read_jsonl(&families().join(fam).join("reference.jsonl"));
        let (ppl, attn, cas) = compare(fam, &got, &want);
        eprintln!("{fam} fp8 vs reference: ppl {ppl:.2e}, seg_attn {attn:.2e}, cas {cas:.2e}");
        assert!(
            ppl < 0.08 && attn < 0.03 && cas < 0.1,
            "{fam}: {ppl} {attn} {cas}"
        );
        for r in &got {
            let fp = r.fingerprint.as_deref().unwrap();
            assert!(fp.contains("dtype=fp8"), "{fp}");
        }
        // The full passes are bf16's; the segment passes are not.
        let out16 = dir.path().join("bf16.jsonl");
        let o = score(fam, "bf16", &out16, &["--quiet"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let b16: Vec<ScoreRecord> = read_jsonl(&out16);
        assert_eq!(got.len(), b16.len());
        for (a, b) in got.iter().zip(&b16) {
            let line = a.line;
            assert_eq!(
                (a.ppl_long, a.ppl_short),
                (b.ppl_long, b.ppl_short),
                "line {line}"
            );
            assert_eq!(a.seg_attn, b.seg_attn, "{fam} line {line}");
            assert_ne!(
                a.seg_ppl, b.seg_ppl,
                "{fam} line {line}: segments not in fp8"
            );
        }
        // Resuming the fp8 file in bf16 is refused and names the dtype.
        let o = score(fam, "bf16", &out, &["--resume", "--quiet"]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains("dtype"), "{}", stderr(&o));
        // So is resuming a file of the earlier fp8 (E4M3 in every pass), whose fingerprint
        // said `dtype=fp8`.
        let old = dir.path().join("old-fp8.jsonl");
        let text = std::fs::read_to_string(&out).unwrap();
        std::fs::write(&old, text.replace("dtype=fp8-segments", "dtype=fp8")).unwrap();
        let o = score(fam, "fp8", &old, &["--resume", "--quiet"]);
        assert!(!o.status.success(), "an old fp8 file was resumed");
        assert!(stderr(&o).contains("dtype"), "{}", stderr(&o));
    }
}

/// Activation scales are per token, so fp8 packs small samples as bf16 does, and a packed
/// sample's records are those of the same sample scored alone.
#[test]
fn fp8_records_do_not_depend_on_packing() {
    let dir = tmp();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let pack = ["--pack-below", "1000000", "--max-batch-tokens", "1000000"];
    // The same segment batches in both (one per sample): only the packing differs.
    let alone = ["--pack-below", "0", "--max-batch-tokens", "1000000"];
    let o = score("llama-linear", "fp8", &a, &alone);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("packed into"), "{}", stderr(&o));
    let o = score("llama-linear", "fp8", &b, &pack);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("packed into"), "{}", stderr(&o));
    let (a, b): (Vec<ScoreRecord>, Vec<ScoreRecord>) = (read_jsonl(&a), read_jsonl(&b));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.ppl_long, x.ppl_short),
            (y.ppl_long, y.ppl_short),
            "line {}",
            x.line
        );
        assert_eq!(x.seg_ppl, y.seg_ppl, "line {}", x.line);
        assert_eq!(x.seg_attn, y.seg_attn, "line {}", x.line);
    }
}

/// cuBLASLt's FP8 GEMMs need sizes that are multiples of 16; the CPU twin keeps the rule so
/// that a model accepted here runs on the GPU.
#[test]
fn fp8_refuses_projection_sizes_off_the_16_grid() {
    let base = ModelConfig {
        num_layers: 1,
        vocab_size: 256,
        ..gateau::model::shapes::Shape::Smollm2_135m.config()
    };
    let ok = random_model(&base, &Device::Cpu, DType::BF16, Dispatch::chunked()).unwrap();
    let (_, q) = ok.fp8_twin().unwrap();
    assert_eq!(q.projections, 4);
    assert!(q.min > 0.0 && q.min <= q.max);
    let odd = ModelConfig {
        intermediate_size: base.intermediate_size + 4,
        ..base
    };
    let m = random_model(&odd, &Device::Cpu, DType::BF16, Dispatch::chunked()).unwrap();
    let Err(e) = m.fp8_twin() else {
        panic!("a gate|up of {} rows was quantized", odd.intermediate_size)
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("multiples of 16") && e.contains("gate|up"),
        "{e}"
    );
}
