//! `gateau bench` on the CPU: a random SmolLM2-shaped model, the three phases of one
//! context and a whole sample, segment batches as `score` would make them, JSON lines
//! that add up.

use crate::common::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Phase {
    ctx: usize,
    phase: String,
    attention: String,
    tokens: usize,
    seconds: f64,
    tokens_per_s: f64,
    tflops: f64,
    matmul_peak_tflops: f64,
    mfu: f64,
}

#[test]
fn bench_times_whole_segment_batches_of_a_real_sample() {
    let dir = tmp();
    let json = dir.path().join("bench.jsonl");
    // ctx 256 with L = 64: a real sample has 4 segments of 1 + 64 + 8 + 32 = 105 tokens;
    // 300 tokens per batch: 2 batches of 2. `--segments 1` times the first whole batch.
    let o = run(&[
        "bench",
        "--shape",
        "smollm2-135m",
        "--device",
        "cpu",
        "--ctx",
        "256",
        "--resp",
        "32",
        "--mid",
        "8",
        "--segment-len",
        "64",
        "--segments",
        "1",
        "--max-batch-tokens",
        "300",
        "--repeat",
        "1",
        "--warmup",
        "0",
        "--json",
        p(&json),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let phases: Vec<Phase> = read_jsonl(&json);
    assert_eq!(phases.len(), 4);
    let full = 1 + 256 + 8 + 32;
    let tokens: Vec<usize> = phases.iter().map(|r| r.tokens).collect();
    // The measured whole sample has a response one token longer (new shapes): both full
    // passes and all 4 segments.
    assert_eq!(tokens, vec![full, full, 2 * 105, 2 * (full + 1) + 4 * 106]);
    assert_eq!(phases[2].phase, "segment passes (batch 2)");
    assert_eq!(phases[3].phase, "whole sample, measured (4 segments)");
    for r in &phases {
        assert_eq!(r.ctx, 256);
        assert_eq!(r.attention, "chunked", "the CPU runs gateau's own kernels");
        assert!(r.seconds > 0.0);
        let rate = r.tokens as f64 / r.seconds;
        assert!((r.tokens_per_s - rate).abs() <= 1e-9 * rate);
        let mfu = r.tflops / r.matmul_peak_tflops;
        assert!((r.mfu - mfu).abs() <= 1e-12 + 1e-9 * mfu);
    }
    let err = stderr(&o);
    assert!(
        err.contains("end to end per sample (4 segments), from the phases")
            && err.contains("end to end per sample (4 segments), measured"),
        "{err}"
    );
}
