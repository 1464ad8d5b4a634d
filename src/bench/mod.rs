//! `gateau bench`: random-weight models of named shapes built directly on the device,
//! synthetic samples, and per phase (short full pass, long pass with attention capture,
//! segment passes) the tokens/s, achieved TFLOP/s, the device's measured matmul rate in the
//! same run, MFU, and device memory in use. FLOPs are counted as the PyTorch anchor
//! (../shared/bench/torch_pipeline_bench.py) counts them, so the two compare directly.

use crate::input::template::Tokens;
use crate::kernels::profile;
use crate::model::dispatch::{AttentionKernel, Dispatch};
use crate::model::{open_device, Llama};
use crate::score::passes::{
    batch_ranges, batch_shapes, pack_rows, score_sample, PassSettings, ShortModel,
};
use anyhow::{bail, Result};
use candle_core::Device;
use serde::Serialize;
use std::process::ExitCode;
use std::time::Instant;

mod mix;
mod synthetic;

/// Segments per sample at the most, as in configs/paper.json (`max_segments`).
const MAX_SEGMENTS: usize = 500;
pub use synthetic::{
    flops_per_seq, matmul_peak, random_model, random_weights, synthetic, Pair, Shape,
};

pub use crate::cli::settings::BenchSettings;

#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub shape: Shape,
    pub ctx: usize,
    pub phase: String,
    /// `--dtype`: bf16, f16, f32, fp8.
    pub dtype: String,
    /// The attention kernel that ran (`--attention`, resolved).
    pub attention: crate::model::dispatch::AttentionKernel,
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

pub fn run(s: BenchSettings) -> Result<ExitCode> {
    if let Some(m) = &s.mix {
        return mix::run(&s, m);
    }
    if s.contexts.is_empty() {
        bail!("--ctx needs at least one context length");
    }
    let (device, model, peak, budget) = setup(&s)?;
    let cfg = model.config().clone();
    let mut results = Vec::new();
    for &ctx in &s.contexts {
        let t = 1 + ctx + s.mid + s.resp;
        let seq = synthetic(t, cfg.vocab_size, ctx as u64);
        let from = t - s.resp;
        let one = std::slice::from_ref(&seq);
        let ts = 1 + s.segment_len + s.mid + s.resp;
        // A whole sample at this context has ctx / L segments (at most 500), batched as
        // `score` batches them; its first batches, at least --segments segments, are timed,
        // announced with the whole sample's batches so that the kernels are chosen as in a
        // real run.
        let n_seg = (ctx / s.segment_len).min(MAX_SEGMENTS);
        let sample = batch_ranges(n_seg, ts, budget);
        let mut batches = Vec::new();
        let mut timed = 0;
        for r in &sample {
            if timed >= s.segments {
                break;
            }
            timed += r.len();
            batches.push(r.clone());
        }
        let segs: Vec<Vec<u32>> = (0..timed)
            .map(|i| synthetic(ts, cfg.vocab_size, i as u64))
            .collect();
        let per = batches.iter().map(|r| r.len()).max().unwrap_or(0);
        let plan = model.plan(batch_shapes(n_seg, ts, budget));
        let d = model.dispatch();
        let seg = model.seg();
        let kernels = [
            d.kernel_for(1, t, &plan),
            d.kernel_for(1, t, &plan),
            d.kernel_for(per, ts, &plan),
        ];
        let phases: [(String, usize, f64, Work); 3] = [
            (
                "full pass (no capture)".into(),
                t,
                flops_per_seq(&cfg, t),
                Box::new(|| model.forward_planned(one, from, false, &plan).map(|_| ())),
            ),
            (
                "long full pass + attention capture".into(),
                t,
                flops_per_seq(&cfg, t),
                Box::new(|| model.forward_planned(one, from, true, &plan).map(|_| ())),
            ),
            (
                format!("segment passes (batch {per})"),
                ts * timed,
                flops_per_seq(&cfg, ts) * timed as f64,
                Box::new(|| {
                    for r in &batches {
                        seg.forward_planned(&segs[r.clone()], ts - s.resp, false, &plan)?;
                    }
                    Ok(())
                }),
            ),
        ];
        for ((name, tokens, flops, work), kernel) in phases.into_iter().zip(kernels) {
            let r = measure(
                &s,
                (&device, kernel),
                peak,
                (ctx, name),
                (tokens, flops),
                &work,
            )?;
            results.push(r);
        }
        drop(plan);
        // A whole sample at this context from the rates just measured (warm caches, as
        // the PyTorch anchor's figures are), then one measured as `score` runs it.
        let n = results.len();
        let (short, long, seg) = (&results[n - 3], &results[n - 2], &results[n - 1]);
        let e2e = short.seconds + long.seconds + seg.seconds / timed.max(1) as f64 * n_seg as f64;
        eprintln!(
            "  ctx {ctx:>6}  end to end per sample ({n_seg} segments), from the phases: {e2e:.3} s"
        );
        let r = whole_sample(&s, &model, &device, ctx, (peak, budget))?;
        eprintln!(
            "  ctx {ctx:>6}  end to end per sample ({n_seg} segments), measured: {:.3} s",
            r.seconds
        );
        results.push(r);
    }
    if s.small_segments > 0 {
        results.extend(small_samples(&s, model.seg(), &device, (peak, budget))?);
    }
    if let Some(b) = model.bucket_summary() {
        eprintln!("gateau bench: bucket {}: {b}", s.bucket);
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

/// The device, the random-weight model of `s.shape`, the measured matmul rate and the
/// segment batch budget, announced on stderr.
fn setup(s: &BenchSettings) -> Result<(Device, Pair, f64, usize)> {
    let (device, hint) = open_device(&s.device)?;
    if let Some(h) = hint {
        eprintln!("gateau: {h}");
    }
    let cfg = s.shape.config();
    crate::model::configure_matmul(&device, s.dtype);
    if s.fp8 {
        crate::model::check_fp8(&device)?;
    }
    let dispatch = Dispatch::resolve(s.attention)?.with_bucket(s.bucket);
    let attention = dispatch.describe().to_string();
    let peak = matmul_peak(&device, s.dtype)?;
    eprintln!(
        "gateau bench: {} on {}, {}, attention {attention}, bucket {}: matmul {peak:.1} TFLOP/s",
        crate::rank::recipe::value_name(s.shape),
        crate::cli::settings::device_name(&device),
        s.dtype_label(),
        s.bucket
    );
    // MFU stays against the bf16 matmul rate measured above: FP8's own peak is about twice
    // it, so an FP8 segment phase can pass 100%.
    let (model, fp8) = Pair::random(&cfg, &device, (s.dtype, s.fp8), dispatch)?;
    if let Some(q) = fp8 {
        eprintln!("gateau bench: fp8 (segment passes): {q}");
    }
    let budget = s.max_batch_tokens.unwrap_or_else(|| {
        let width = s.dtype.size_in_bytes() as u64;
        crate::score::memory::default_batch_tokens(&cfg, width, crate::model::free_memory(&device))
    });
    eprintln!("gateau bench: segment batches of up to {budget} tokens");
    Ok((device, model, peak, budget))
}

/// One whole sample measured as `score` runs it ([`crate::score::passes::score_sample`], the
/// model as both long and short model): the long pass with the capture, during which the
/// segment batches' cuDNN graphs are built, the short pass, then the segment passes. Its
/// response is one token longer than the phases', so every shape is new and each graph is
/// built as in a real run, where lengths vary.
fn whole_sample(
    s: &BenchSettings,
    model: &Pair,
    device: &Device,
    ctx: usize,
    (peak, budget): (f64, usize),
) -> Result<PhaseResult> {
    let w = score_whole(s, model, device, (ctx, s.resp + 1, 11 + ctx as u64), budget)?;
    let name = format!("whole sample, measured ({} segments)", w.segments);
    Ok(PhaseResult::new(
        s,
        (ctx, name),
        (w.model_tokens, w.flops),
        w.seconds,
        (peak, model.dispatch().current()),
    ))
}

/// What scoring one whole sample took.
struct Scored {
    seconds: f64,
    /// Tokens of the whole sample (BOS, context, instruction, response).
    tokens: usize,
    segments: usize,
    /// Tokens of each segment sequence.
    segment_tokens: usize,
    /// Tokens through the models: both full passes and every segment pass.
    model_tokens: usize,
    flops: f64,
}

/// One sample of `ctx` context and `resp` response tokens (synthetic, the context drawn
/// with `seed`) scored as `score` scores it, timed between device synchronizations.
fn score_whole(
    s: &BenchSettings,
    model: &Pair,
    device: &Device,
    (ctx, resp, seed): (usize, usize, u64),
    budget: usize,
) -> Result<Scored> {
    let cfg = model.config();
    // synthetic() starts with BOS (1); the parts take what follows it.
    let part = |n: usize, seed: u64| synthetic(n + 1, cfg.vocab_size, seed)[1..].to_vec();
    let t = Tokens {
        bos: Some(1),
        head: Vec::new(),
        ctx: part(ctx, seed),
        mid: part(s.mid, 12),
        resp: part(resp, 13),
        truncated: false,
    };
    let passes = PassSettings {
        segment_len: s.segment_len,
        max_segments: MAX_SEGMENTS,
        max_batch_tokens: budget,
        with_ifd: false,
        token_nll: false,
    };
    device.synchronize()?;
    let start = Instant::now();
    let short = ShortModel::Separate(model);
    let scores = score_sample((model, model.seg()), &short, &t, &passes)?;
    device.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    let segments = scores.seg_ppl.len();
    let segment_tokens = t.segment(0, s.segment_len).len();
    let flops =
        2.0 * flops_per_seq(cfg, t.len()) + segments as f64 * flops_per_seq(cfg, segment_tokens);
    Ok(Scored {
        seconds,
        tokens: t.len(),
        segments,
        segment_tokens,
        model_tokens: scores.model_tokens,
        flops,
    })
}

impl PhaseResult {
    /// A phase's figures from its work (`tokens`, `flops`) and time, against the
    /// measured matmul rate `peak`.
    fn new(
        s: &BenchSettings,
        (ctx, phase): (usize, String),
        (tokens, flops): (usize, f64),
        seconds: f64,
        (peak, attention): (f64, AttentionKernel),
    ) -> Self {
        Self {
            dtype: s.dtype_label().into(),
            shape: s.shape,
            ctx,
            phase,
            attention,
            tokens,
            seconds,
            tokens_per_s: tokens as f64 / seconds,
            tflops: flops / seconds / 1e12,
            matmul_peak_tflops: peak,
            mfu: flops / seconds / 1e12 / peak,
            peak_mem_gb: None,
            profile: None,
        }
    }
}

type Work<'a> = Box<dyn Fn() -> Result<()> + 'a>;

/// Times one phase (warm-up, repeats, peak memory, optional per-op profile) and prints it.
fn measure(
    s: &BenchSettings,
    (device, kernel): (&Device, AttentionKernel),
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
    let ops = match s.profile {
        true => Some(profile::profiled(device, work)?.ops),
        false => None,
    };
    let r = PhaseResult {
        peak_mem_gb: peak_bytes.map(|b| b as f64 / 1e9),
        profile: ops,
        ..PhaseResult::new(s, (ctx, name), (tokens, flops), secs, (peak, kernel))
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
            (device, model.dispatch().current()),
            peak,
            (ctx, format!("{m} small samples, one per batch")),
            (tokens, flops),
            &alone,
        )?,
        measure(
            s,
            (device, model.dispatch().current()),
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
    use crate::model::{DeviceChoice, ModelConfig};
    use candle_core::DType;

    #[test]
    fn small_sample_phases_time_the_same_work() {
        let shape = Shape::Smollm2_135m;
        let cfg = ModelConfig {
            num_layers: 1,
            ..shape.config()
        };
        let m = random_model(&cfg, &Device::Cpu, DType::F32, Dispatch::chunked()).unwrap();
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
            fp8: false,
            attention: crate::model::dispatch::AttentionKernel::Auto,
            bucket: crate::model::bucket::Bucket::Auto,
            json: None,
            profile: true,
            small_segments: 3,
            mix: None,
            print: None,
            anchor_points: 4,
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
