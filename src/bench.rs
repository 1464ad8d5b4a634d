//! `gateau bench`: random-weight models of named shapes built directly on the device,
//! synthetic samples, and per phase (short full pass, long pass with attention capture,
//! segment passes) the tokens/s, achieved TFLOP/s, the device's measured matmul rate in the
//! same run, MFU, and device memory in use. FLOPs are counted as the PyTorch anchor
//! (../shared/bench/torch_pipeline_bench.py) counts them, so the two compare directly.

use crate::model::{open_device, profile, DeviceChoice, Llama, ModelConfig};
use crate::passes::{batch_ranges, pack_rows};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::ValueEnum;
use serde::Serialize;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Shape {
    #[value(name = "llama2-7b")]
    Llama2_7b,
    #[value(name = "llama2-13b")]
    Llama2_13b,
    #[value(name = "llama3-8b")]
    Llama3_8b,
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
}

impl Shape {
    pub fn config(self) -> ModelConfig {
        // (hidden, inter, layers, heads, kv, vocab, theta)
        let (d, f, l, h, kv, v, theta) = match self {
            Shape::Llama2_7b => (4096, 11008, 32, 32, 32, 32000, 10000.0),
            Shape::Llama2_13b => (5120, 13824, 40, 40, 40, 32000, 10000.0),
            Shape::Llama3_8b => (4096, 14336, 32, 32, 8, 128256, 500000.0),
            Shape::Smollm2_135m => (576, 1536, 30, 9, 3, 49152, 100000.0),
        };
        ModelConfig {
            hidden_size: d,
            intermediate_size: f,
            vocab_size: v,
            num_layers: l,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: d / h,
            rms_norm_eps: 1e-5,
            rope_theta: theta,
            rope_scaling: None,
            max_position_embeddings: 131072,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
        }
    }
}

/// What `gateau bench` runs.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub shape: Shape,
    pub contexts: Vec<usize>,
    pub resp: usize,
    pub mid: usize,
    pub segment_len: usize,
    pub segments: usize,
    /// None: what `gateau score` would pick on the device.
    pub max_batch_tokens: Option<usize>,
    pub repeat: usize,
    pub warmup: usize,
    pub device: DeviceChoice,
    pub dtype: DType,
    pub attention: crate::model::kernel::AttentionKernel,
    pub json: Option<std::path::PathBuf>,
    pub profile: bool,
    pub small_segments: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub shape: Shape,
    pub ctx: usize,
    pub phase: String,
    /// The attention kernel that ran (`--attention`, resolved).
    pub attention: crate::model::kernel::AttentionKernel,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub tflops: f64,
    pub matmul_peak_tflops: f64,
    pub mfu: f64,
    /// Most device memory in use during the timed runs (the driver's figure for the whole
    /// device: weights, activations, CUDA context, cuBLAS workspace).
    pub peak_mem_gb: Option<f64>,
    /// With --profile: seconds per op over one extra, synchronized run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<(String, f64, u64)>>,
}

/// Random weights (N(0, 0.02), norms 1) created on the device.
pub fn random_model(cfg: &ModelConfig, device: &Device, dtype: DType) -> Result<Llama> {
    let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    let mut w = HashMap::new();
    let rand =
        |w: &mut HashMap<String, Tensor>, name: String, shape: (usize, usize)| -> Result<()> {
            w.insert(
                name,
                Tensor::randn(0f32, 0.02, shape, device)?.to_dtype(dtype)?,
            );
            Ok(())
        };
    rand(&mut w, "model.embed_tokens.weight".into(), (v, d))?;
    rand(&mut w, "lm_head.weight".into(), (v, d))?;
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        rand(&mut w, format!("{p}.self_attn.q_proj.weight"), (q, d))?;
        rand(&mut w, format!("{p}.self_attn.k_proj.weight"), (kv, d))?;
        rand(&mut w, format!("{p}.self_attn.v_proj.weight"), (kv, d))?;
        rand(&mut w, format!("{p}.self_attn.o_proj.weight"), (d, q))?;
        rand(&mut w, format!("{p}.mlp.gate_proj.weight"), (f, d))?;
        rand(&mut w, format!("{p}.mlp.up_proj.weight"), (f, d))?;
        rand(&mut w, format!("{p}.mlp.down_proj.weight"), (d, f))?;
        for n in ["input_layernorm", "post_attention_layernorm"] {
            w.insert(format!("{p}.{n}.weight"), Tensor::ones(d, dtype, device)?);
        }
    }
    w.insert("model.norm.weight".into(), Tensor::ones(d, dtype, device)?);
    Llama::load(VarBuilder::from_tensors(w, dtype, device), cfg.clone())
}

/// FLOPs of one sequence of length t, as the PyTorch anchor counts them: 2 x parameters
/// (all but the embedding) per token, plus causal attention 2 x layers x hidden x t^2.
pub fn flops_per_seq(cfg: &ModelConfig, t: usize) -> f64 {
    let norms = (2 * cfg.num_layers + 1) * cfg.hidden_size;
    let params = (cfg.matmul_params() + norms as u64) as f64;
    2.0 * params * t as f64 + 2.0 * (cfg.num_layers * cfg.hidden_size) as f64 * (t * t) as f64
}

fn time<F: FnMut() -> Result<()>>(
    device: &Device,
    warmup: usize,
    repeat: usize,
    mut f: F,
) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    device.synchronize()?;
    let t = Instant::now();
    for _ in 0..repeat {
        f()?;
    }
    device.synchronize()?;
    Ok(t.elapsed().as_secs_f64() / repeat as f64)
}

/// Measured dense matmul rate of the device in `dtype` (8192^3 on GPUs, 1024^3 on CPUs).
pub fn matmul_peak(device: &Device, dtype: DType) -> Result<f64> {
    let n = if device.is_cpu() { 1024 } else { 8192 };
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?.to_dtype(dtype)?;
    let reps = if device.is_cpu() { 2 } else { 20 };
    let s = time(device, 1, reps, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / s / 1e12)
}

fn synthetic(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    std::iter::once(1)
        .chain((1..n).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            3 + (x % (vocab as u64 - 3)) as u32
        }))
        .collect()
}

pub fn run(s: BenchSettings) -> Result<ExitCode> {
    let (device, hint) = open_device(&s.device)?;
    if let Some(h) = hint {
        eprintln!("gateau: {h}");
    }
    if s.contexts.is_empty() {
        bail!("--ctx needs at least one context length");
    }
    let cfg = s.shape.config();
    crate::model::configure_matmul(s.dtype);
    let attention = crate::model::kernel::configure(s.attention)?;
    let peak = matmul_peak(&device, s.dtype)?;
    eprintln!(
        "gateau bench: {:?} on {device:?} {:?}, attention {attention}: matmul {peak:.1} TFLOP/s",
        s.shape, s.dtype
    );
    let model = random_model(&cfg, &device, s.dtype)?;
    let budget = s.max_batch_tokens.unwrap_or_else(|| {
        let width = s.dtype.size_in_bytes() as u64;
        crate::memory::default_batch_tokens(&cfg, width, crate::model::free_memory(&device))
    });
    eprintln!("gateau bench: segment batches of up to {budget} tokens");
    let mut results = Vec::new();
    for &ctx in &s.contexts {
        let t = 1 + ctx + s.mid + s.resp;
        let seq = synthetic(t, cfg.vocab_size, ctx as u64);
        let from = t - s.resp;
        let one = std::slice::from_ref(&seq);
        let ts = 1 + s.segment_len + s.mid + s.resp;
        let segs: Vec<Vec<u32>> = (0..s.segments)
            .map(|i| synthetic(ts, cfg.vocab_size, i as u64))
            .collect();
        let batches = batch_ranges(segs.len(), ts, budget);
        let per = batches.iter().map(|r| r.len()).max().unwrap_or(0);
        let phases: [(String, usize, f64, Work); 3] = [
            (
                "full pass (no capture)".into(),
                t,
                flops_per_seq(&cfg, t),
                Box::new(|| model.forward(one, from, false).map(|_| ())),
            ),
            (
                "long full pass + attention capture".into(),
                t,
                flops_per_seq(&cfg, t),
                Box::new(|| model.forward(one, from, true).map(|_| ())),
            ),
            (
                format!("segment passes (batch {per})"),
                ts * s.segments,
                flops_per_seq(&cfg, ts) * s.segments as f64,
                Box::new(|| {
                    for r in &batches {
                        model.forward(&segs[r.clone()], ts - s.resp, false)?;
                    }
                    Ok(())
                }),
            ),
        ];
        for (name, tokens, flops, work) in phases {
            let r = measure(&s, &device, peak, (ctx, name), (tokens, flops), &work)?;
            results.push(r);
        }
        // A whole sample at this context: both full passes plus its segment passes
        // (ctx / L of them, at most 500), at the rates just measured.
        let n = results.len();
        let (short, long, seg) = (&results[n - 3], &results[n - 2], &results[n - 1]);
        let n_seg = (ctx / s.segment_len).min(500);
        let e2e =
            short.seconds + long.seconds + seg.seconds / s.segments.max(1) as f64 * n_seg as f64;
        eprintln!("  ctx {ctx:>6}  end to end per sample ({n_seg} segments): {e2e:.3} s");
    }
    if s.small_segments > 0 {
        results.extend(small_samples(&s, &model, &device, (peak, budget))?);
    }
    let lines: Vec<String> = results
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<_, _>>()?;
    for l in &lines {
        println!("{l}");
    }
    if let Some(p) = &s.json {
        std::fs::write(p, lines.join("\n") + "\n")?;
    }
    Ok(ExitCode::SUCCESS)
}

type Work<'a> = Box<dyn Fn() -> Result<()> + 'a>;

/// Times one phase (warm-up, repeats, peak memory, optional per-op profile) and prints it.
fn measure(
    s: &BenchSettings,
    device: &Device,
    peak: f64,
    (ctx, name): (usize, String),
    (tokens, flops): (usize, f64),
    work: &Work,
) -> Result<PhaseResult> {
    crate::model::release_cached_memory(device)?;
    profile::start(false);
    let secs = time(device, s.warmup, s.repeat, work);
    let peak_bytes = profile::stop().peak_bytes;
    let secs = secs?;
    let ops = if s.profile {
        profile::start(true);
        let r = work();
        let p = profile::stop();
        r?;
        Some(p.ops)
    } else {
        None
    };
    let r = PhaseResult {
        shape: s.shape,
        ctx,
        phase: name,
        attention: crate::model::kernel::current(),
        tokens,
        seconds: secs,
        tokens_per_s: tokens as f64 / secs,
        tflops: flops / secs / 1e12,
        matmul_peak_tflops: peak,
        mfu: flops / secs / 1e12 / peak,
        peak_mem_gb: peak_bytes.map(|b| b as f64 / 1e9),
        profile: ops,
    };
    eprintln!(
        "  ctx {ctx:>6}  {:<34} {:>9.0} tok/s {:>7.1} TFLOP/s  MFU {:>5.1}%  {:.3} s  peak {}",
        r.phase,
        r.tokens_per_s,
        r.tflops,
        100.0 * r.mfu,
        r.seconds,
        r.peak_mem_gb.map_or("n/a".into(), |g| format!("{g:.1} GB"))
    );
    if let Some(ops) = &r.profile {
        // Nested ops (`outer/inner`) are part of their outer op's time.
        let total: f64 = ops.iter().filter(|o| !o.0.contains('/')).map(|o| o.1).sum();
        for (op, sec, calls) in ops {
            eprintln!(
                "      {op:<24} {:>9.1} ms {:>5.1}%  ({calls} calls)",
                sec * 1e3,
                100.0 * sec / total.max(1e-12)
            );
        }
    }
    Ok(r)
}

/// The segment passes of small samples (`--small-segments` segments each, responses of
/// differing lengths): each sample's batch alone, as without `--pack-below`, then the same
/// sequences packed into rows of up to `--max-batch-tokens` (what `--pack-below` does).
fn small_samples(
    s: &BenchSettings,
    model: &Llama,
    device: &Device,
    (peak, budget): (f64, usize),
) -> Result<Vec<PhaseResult>> {
    let cfg = model.config();
    let k = s.small_segments;
    // Responses from resp/2 to resp in 8 steps, so the packed rows mix lengths.
    let lens: Vec<usize> = (0..8)
        .map(|i| 1 + s.segment_len + s.mid + s.resp / 2 + i * s.resp / 16)
        .collect();
    let per_sample = k * lens.iter().sum::<usize>() / lens.len();
    let m = (2 * budget / per_sample.max(1)).max(2);
    let samples: Vec<(Vec<Vec<u32>>, usize)> = (0..m)
        .map(|i| {
            let ts = lens[i % lens.len()];
            let seqs = (0..k)
                .map(|j| synthetic(ts, cfg.vocab_size, (1000 * i + j) as u64))
                .collect();
            (seqs, 1 + s.segment_len + s.mid)
        })
        .collect();
    let tokens: usize = samples.iter().map(|x| x.0.len() * x.0[0].len()).sum();
    let flops: f64 = samples
        .iter()
        .map(|x| flops_per_seq(cfg, x.0[0].len()) * k as f64)
        .sum();
    let ctx = k * s.segment_len;
    let alone: Work = Box::new(|| {
        for (seqs, from) in &samples {
            model.forward(seqs, *from, false)?;
        }
        Ok(())
    });
    let packed: Work = Box::new(|| {
        let all: Vec<(&[u32], usize)> = samples
            .iter()
            .flat_map(|(seqs, from)| seqs.iter().map(move |q| (q.as_slice(), *from)))
            .collect();
        for r in pack_rows(all.iter().map(|x| x.0.len()), budget) {
            model.forward_packed(&all[r])?;
        }
        Ok(())
    });
    Ok(vec![
        measure(
            s,
            device,
            peak,
            (ctx, format!("{m} small samples, one per batch")),
            (tokens, flops),
            &alone,
        )?,
        measure(
            s,
            device,
            peak,
            (ctx, format!("{m} small samples, packed")),
            (tokens, flops),
            &packed,
        )?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_match_the_anchor_formula_for_llama2_7b() {
        // torch: n_params - embedding = 6,738,415,616 - 131,072,000 (LLaMA-2-7B).
        let c = Shape::Llama2_7b.config();
        let want = 6_607_343_616f64;
        let got = (flops_per_seq(&c, 1) - 2.0 * 32.0 * 4096.0) / 2.0;
        assert_eq!(got, want);
    }

    #[test]
    fn bench_runs_on_the_cpu() {
        let cfg = ModelConfig {
            num_layers: 2,
            ..Shape::Smollm2_135m.config()
        };
        let m = random_model(&cfg, &Device::Cpu, DType::F32).unwrap();
        let seq = synthetic(40, cfg.vocab_size, 1);
        let o = m.forward(std::slice::from_ref(&seq), 30, true).unwrap();
        assert_eq!(o.nll[0].len(), 10);
        let total: f32 = o.attention.unwrap()[0].iter().sum();
        assert!((total - 1.0).abs() < 1e-4);
    }

    #[test]
    fn small_sample_phases_time_the_same_work() {
        let shape = Shape::Smollm2_135m;
        let cfg = ModelConfig {
            num_layers: 1,
            ..shape.config()
        };
        let m = random_model(&cfg, &Device::Cpu, DType::F32).unwrap();
        let s = BenchSettings {
            shape,
            contexts: vec![],
            resp: 16,
            mid: 2,
            segment_len: 8,
            segments: 0,
            max_batch_tokens: Some(200),
            repeat: 1,
            warmup: 0,
            device: DeviceChoice::Cpu,
            dtype: DType::F32,
            attention: crate::model::kernel::AttentionKernel::Auto,
            json: None,
            profile: true,
            small_segments: 3,
        };
        let r = small_samples(&s, &m, &Device::Cpu, (1.0, 200)).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].tokens, r[1].tokens);
        assert_eq!(r[0].ctx, 24);
        // 2 x 200 / (3 x ~23) samples, 3 sequences of 19..26 tokens each.
        assert!(r[0].tokens > 300 && r[0].tokens < 600, "{}", r[0].tokens);
        assert!(r.iter().all(|x| x.mfu > 0.0 && x.profile.is_some()));
    }
}
