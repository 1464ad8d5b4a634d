//! `gateau bench --mix NAME` / `--lengths FILE`: whole samples over a length distribution,
//! each scored once as `gateau score` scores it (the per-context "whole sample, measured"
//! path), with seconds per sample, the total, samples per hour and tokens/s. The built-in
//! `longalign` mix is a documented approximation of LongAlign-10k, drawn deterministically
//! (stratified, own PRNG). `--print torch-args` names the PyTorch anchor's runs at
//! representative lengths of the same mix (scripts/mix-table.py interpolates between them).

use super::{score_whole, setup, BenchSettings};
use crate::cli::settings::MixSource;
use crate::cli::{MixName, MixPrint};
use crate::model::dispatch::AttentionKernel;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::process::ExitCode;

/// One sample of a mix: whole-sample tokens (BOS, context, instruction, response) and
/// response tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixSample {
    pub tokens: usize,
    pub resp: usize,
}

/// The `longalign` mix's whole-sample lengths: bands `[lo, hi)` and their shares, an
/// approximation of LongAlign-10k (8k-64k, most samples short), not measured from it.
pub const LONGALIGN_BANDS: [(usize, usize, f64); 3] =
    [(8192, 16384, 0.5), (16384, 32768, 0.3), (32768, 65536, 0.2)];
/// The `longalign` mix's response lengths, `[lo, hi)`, log-uniform.
pub const LONGALIGN_RESP: (usize, usize) = (64, 2048);

/// splitmix64: small, fast, and the same on every platform.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

/// The value at quantile `u` in [0, 1) of the log-uniform distribution on [lo, hi).
fn log_uniform((lo, hi): (usize, usize), u: f64) -> usize {
    let x = lo as f64 * (hi as f64 / lo as f64).powf(u);
    (x.floor() as usize).clamp(lo, hi - 1)
}

/// `n` split by `shares` (largest remainder, ties to the earlier band).
fn band_counts(n: usize, shares: &[f64]) -> Vec<usize> {
    let total: f64 = shares.iter().sum();
    let exact: Vec<f64> = shares.iter().map(|s| n as f64 * s / total).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let left = n - counts.iter().sum::<usize>();
    for &i in order.iter().take(left) {
        counts[i] += 1;
    }
    counts
}

/// The built-in `longalign` mix: `n` samples, stratified (each band its share of `n`, one
/// draw per equal-probability slice within it; the responses likewise over their range),
/// responses paired at random, in shuffled order. The same `n` and `seed` give the same mix.
pub fn longalign(n: usize, seed: u64) -> Vec<MixSample> {
    let mut rng = SplitMix(seed);
    let shares: Vec<f64> = LONGALIGN_BANDS.iter().map(|b| b.2).collect();
    let mut tokens = Vec::with_capacity(n);
    for (&(lo, hi, _), c) in LONGALIGN_BANDS.iter().zip(band_counts(n, &shares)) {
        for j in 0..c {
            tokens.push(log_uniform((lo, hi), (j as f64 + rng.unit()) / c as f64));
        }
    }
    let mut resp: Vec<usize> = (0..n)
        .map(|j| log_uniform(LONGALIGN_RESP, (j as f64 + rng.unit()) / n as f64))
        .collect();
    rng.shuffle(&mut resp);
    let mut out: Vec<MixSample> = tokens
        .into_iter()
        .zip(resp)
        .map(|(tokens, resp)| MixSample { tokens, resp })
        .collect();
    rng.shuffle(&mut out);
    out
}

/// A --lengths file: one sample per line, `TOKENS RESPONSE`, blank lines and `#` comments
/// skipped. Each sample must leave at least one segment of context after BOS, the `mid`
/// instruction tokens and its response. Errors name `origin:line`.
pub fn parse_lengths(
    text: &str,
    origin: &str,
    (mid, segment_len): (usize, usize),
) -> Result<Vec<MixSample>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{origin}:{}", i + 1);
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [tokens, resp] = fields[..] else {
            bail!("{at}: {line:?}: want two numbers, TOKENS RESPONSE (e.g. `16384 512`)");
        };
        let number = |f: &str, what: &str| -> Result<usize> {
            f.parse()
                .with_context(|| format!("{at}: {what} {f:?} is not a whole number of tokens"))
        };
        let x = MixSample {
            tokens: number(tokens, "TOKENS")?,
            resp: number(resp, "RESPONSE")?,
        };
        check(x, &at, (mid, segment_len))?;
        out.push(x);
    }
    if out.is_empty() {
        bail!("{origin}: no samples (one per line: TOKENS RESPONSE)");
    }
    Ok(out)
}

/// A sample's context tokens, or an error naming `at` when it holds no whole segment.
fn check(x: MixSample, at: &str, (mid, segment_len): (usize, usize)) -> Result<usize> {
    if x.resp == 0 {
        bail!("{at}: a response of 0 tokens");
    }
    let ctx = x.tokens.saturating_sub(1 + mid + x.resp);
    if ctx < segment_len {
        bail!(
            "{at}: {} tokens with a {}-token response leave {ctx} context tokens after BOS and \
             the {mid} --mid tokens: at least one --segment-len segment ({segment_len}) needed",
            x.tokens,
            x.resp
        );
    }
    Ok(ctx)
}

/// The mix's name (for the JSON lines), its description and its samples.
pub fn resolve(src: &MixSource, s: &BenchSettings) -> Result<(String, String, Vec<MixSample>)> {
    let shape = (s.mid, s.segment_len);
    match src {
        MixSource::Builtin {
            name: MixName::Longalign,
            samples,
            seed,
        } => {
            let mix = longalign(*samples, *seed);
            for (i, x) in mix.iter().enumerate() {
                check(*x, &format!("--mix longalign sample {}", i + 1), shape)?;
            }
            let what = format!(
                "longalign, {samples} samples (seed {seed}): an approximation of \
                 LongAlign-10k, 8k-64k tokens (50% 8k-16k, 30% 16k-32k, 20% 32k-64k, \
                 log-uniform in each), responses log-uniform 64-2k"
            );
            Ok(("longalign".into(), what, mix))
        }
        MixSource::File(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--lengths {}: cannot read", p.display()))?;
            let origin = p.display().to_string();
            let mix = parse_lengths(&text, &origin, shape)?;
            let what = format!("{origin}, {} samples", mix.len());
            Ok((origin, what, mix))
        }
    }
}

/// Representative samples for the PyTorch anchor, as (context, response): `k` evenly spaced
/// quantiles of the whole-sample lengths paired with the same quantiles of the responses
/// (so the shortest and longest sample and response lengths are all measured); `k` = 0 or
/// at least the mix's size: every sample's own lengths. Sorted, without repeats.
pub fn anchor_points(mix: &[MixSample], k: usize, mid: usize) -> Vec<(usize, usize)> {
    let n = mix.len();
    let points: Vec<(usize, usize)> = if k == 0 || k >= n {
        mix.iter().map(|x| (x.tokens, x.resp)).collect()
    } else {
        let mut t: Vec<usize> = mix.iter().map(|x| x.tokens).collect();
        let mut r: Vec<usize> = mix.iter().map(|x| x.resp).collect();
        t.sort_unstable();
        r.sort_unstable();
        (0..k)
            .map(|q| match k {
                1 => (n - 1) / 2,
                _ => (q * (n - 1) + (k - 1) / 2) / (k - 1),
            })
            .map(|i| (t[i], r[i]))
            .collect()
    };
    // The i-th smallest response is at most the i-th smallest total less the overhead, so
    // every quantile pair leaves at least as much context as some sample of the mix.
    let mut out: Vec<(usize, usize)> = points
        .into_iter()
        .map(|(t, r)| (t - 1 - mid - r, r))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[derive(Serialize)]
struct SampleLine<'a> {
    phase: &'static str,
    mix: &'a str,
    /// 1-based, in the mix's order.
    sample: usize,
    /// As --shape spells it.
    shape: &'a str,
    dtype: &'static str,
    attention: AttentionKernel,
    tokens: usize,
    ctx: usize,
    mid: usize,
    resp: usize,
    segment_len: usize,
    segments: usize,
    segment_tokens: usize,
    model_tokens: usize,
    seconds: f64,
    /// Whole-sample tokens per second.
    tokens_per_s: f64,
    tflops: f64,
    mfu: f64,
}

#[derive(Serialize)]
struct TotalLine<'a> {
    phase: &'static str,
    mix: &'a str,
    description: &'a str,
    samples: usize,
    shape: &'a str,
    dtype: &'static str,
    /// The kernels that ran, comma-separated (`attention_setting`: what --attention asked).
    attention: String,
    attention_setting: AttentionKernel,
    device: String,
    mid: usize,
    segment_len: usize,
    max_batch_tokens: usize,
    tokens: usize,
    model_tokens: usize,
    /// The sum of the samples' seconds.
    seconds: f64,
    samples_per_hour: f64,
    tokens_per_s: f64,
    tflops: f64,
    matmul_peak_tflops: f64,
    mfu: f64,
    /// (tokens, response) per sample, in order.
    lengths: Vec<[usize; 2]>,
}

/// `gateau bench --mix` / `--lengths`: print what --print asks, or time every sample.
pub fn run(s: &BenchSettings, src: &MixSource) -> Result<ExitCode> {
    let (name, what, mix) = resolve(src, s)?;
    match s.print {
        Some(MixPrint::Lengths) => {
            for x in &mix {
                println!("{} {}", x.tokens, x.resp);
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(MixPrint::TorchArgs) => {
            for (c, r) in anchor_points(&mix, s.anchor_points, s.mid) {
                println!(
                    "--ctx {c} --resp {r} --mid {} --seg-len {}",
                    s.mid, s.segment_len
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    let (device, model, peak, budget) = setup(s)?;
    let mut sorted: Vec<usize> = mix.iter().map(|x| x.tokens).collect();
    sorted.sort_unstable();
    eprintln!(
        "gateau bench: mix {what}; {} to {} tokens, median {}",
        sorted[0],
        sorted[sorted.len() - 1],
        sorted[sorted.len() / 2]
    );
    for i in 0..s.warmup {
        // Untimed, small and of its own shapes: kernels loaded, allocator warm.
        score_whole(
            s,
            &model,
            &device,
            (4 * s.segment_len, s.resp, 7 + i as u64),
            budget,
        )?;
    }
    eprintln!(
        "  {:>6} {:>7} {:>7} {:>8} {:>8} {:>9} {:>8}  attention",
        "sample", "tokens", "context", "response", "segments", "seconds", "tok/s"
    );
    let dtype = s.dtype_label();
    let shape = crate::rank::recipe::value_name(s.shape);
    let mut lines = Vec::new();
    let mut kernels: Vec<AttentionKernel> = Vec::new();
    let (mut seconds, mut model_tokens, mut flops) = (0.0, 0, 0.0);
    for (i, x) in mix.iter().enumerate() {
        let ctx = x.tokens - 1 - s.mid - x.resp;
        let w = score_whole(s, &model, &device, (ctx, x.resp, 1000 + i as u64), budget)?;
        let attention = model.dispatch().current();
        if !kernels.contains(&attention) {
            kernels.push(attention);
        }
        eprintln!(
            "  {:>6} {:>7} {:>7} {:>8} {:>8} {:>9.3} {:>8.0}  {attention}",
            i + 1,
            w.tokens,
            ctx,
            x.resp,
            w.segments,
            w.seconds,
            w.tokens as f64 / w.seconds
        );
        (seconds, model_tokens, flops) = (
            seconds + w.seconds,
            model_tokens + w.model_tokens,
            flops + w.flops,
        );
        lines.push(serde_json::to_string(&SampleLine {
            phase: "mix sample",
            mix: &name,
            sample: i + 1,
            shape: &shape,
            dtype,
            attention,
            tokens: w.tokens,
            ctx,
            mid: s.mid,
            resp: x.resp,
            segment_len: s.segment_len,
            segments: w.segments,
            segment_tokens: w.segment_tokens,
            model_tokens: w.model_tokens,
            seconds: w.seconds,
            tokens_per_s: w.tokens as f64 / w.seconds,
            tflops: w.flops / w.seconds / 1e12,
            mfu: w.flops / w.seconds / 1e12 / peak,
        })?);
    }
    let n = mix.len();
    let tokens: usize = mix.iter().map(|x| x.tokens).sum();
    let per_hour = 3600.0 * n as f64 / seconds;
    eprintln!(
        "  mix {name}: {n} samples, {tokens} tokens in {seconds:.3} s: {per_hour:.1} samples \
         per hour, {:.0} tokens/s ({}, {dtype})",
        tokens as f64 / seconds,
        shape
    );
    let attention: Vec<String> = kernels.iter().map(|k| k.to_string()).collect();
    lines.push(serde_json::to_string(&TotalLine {
        phase: "mix total",
        mix: &name,
        description: &what,
        samples: n,
        shape: &shape,
        dtype,
        attention: attention.join(","),
        attention_setting: s.attention,
        device: crate::cli::settings::device_name(&device),
        mid: s.mid,
        segment_len: s.segment_len,
        max_batch_tokens: budget,
        tokens,
        model_tokens,
        seconds,
        samples_per_hour: per_hour,
        tokens_per_s: tokens as f64 / seconds,
        tflops: flops / seconds / 1e12,
        matmul_peak_tflops: peak,
        mfu: flops / seconds / 1e12 / peak,
        lengths: mix.iter().map(|x| [x.tokens, x.resp]).collect(),
    })?);
    for l in &lines {
        println!("{l}");
    }
    if let Some(p) = &s.json {
        std::fs::write(p, lines.join("\n") + "\n")?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longalign_is_deterministic_in_bounds_mostly_short() {
        let a = longalign(20, 1);
        assert_eq!(a, longalign(20, 1));
        assert_ne!(a, longalign(20, 2));
        assert_eq!(a.len(), 20);
        assert!(a
            .iter()
            .all(|x| (8192..65536).contains(&x.tokens) && (64..2048).contains(&x.resp)));
        let mut t: Vec<usize> = a.iter().map(|x| x.tokens).collect();
        t.sort_unstable();
        assert!(t[10] < 24_000, "median {}", t[10]);
        // 10 / 6 / 4 per band.
        let band = |lo, hi| t.iter().filter(|&&x| (lo..hi).contains(&x)).count();
        assert_eq!(
            [band(8192, 16384), band(16384, 32768), band(32768, 65536)],
            [10, 6, 4]
        );
        let mut r: Vec<usize> = a.iter().map(|x| x.resp).collect();
        r.sort_unstable();
        assert!(r[0] < 128 && r[19] > 1024, "responses {r:?}");
        r.dedup();
        assert!(r.len() >= 18, "responses vary: {r:?}");
    }

    #[test]
    fn band_counts_split_by_largest_remainder() {
        assert_eq!(band_counts(20, &[0.5, 0.3, 0.2]), [10, 6, 4]);
        assert_eq!(band_counts(7, &[0.5, 0.3, 0.2]), [4, 2, 1]);
        assert_eq!(band_counts(1, &[0.5, 0.3, 0.2]), [1, 0, 0]);
        assert_eq!(longalign(1, 3).len(), 1);
    }

    #[test]
    fn lengths_files_parse_and_bad_lines_name_their_line() {
        let text = "# tokens response\n16384 512\n\n  9000\t64  # short\n";
        let m = parse_lengths(text, "mix.txt", (64, 128)).unwrap();
        assert_eq!(
            m,
            [
                MixSample {
                    tokens: 16384,
                    resp: 512
                },
                MixSample {
                    tokens: 9000,
                    resp: 64
                }
            ]
        );
        for (text, want) in [
            (
                "16384 512\n16384\n",
                "mix.txt:2: \"16384\": want two numbers",
            ),
            (
                "1e4 512\n",
                "mix.txt:1: TOKENS \"1e4\" is not a whole number",
            ),
            ("\n\n16384 x\n", "mix.txt:3: RESPONSE \"x\""),
            (
                "500 512\n",
                "mix.txt:1: 500 tokens with a 512-token response leave 0",
            ),
            ("16384 0\n", "mix.txt:1: a response of 0 tokens"),
            ("# nothing\n", "mix.txt: no samples"),
        ] {
            let e = format!(
                "{:#}",
                parse_lengths(text, "mix.txt", (64, 128)).unwrap_err()
            );
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn anchor_points_span_the_mix() {
        let m = longalign(20, 1);
        let p = anchor_points(&m, 4, 64);
        assert_eq!(p.len(), 4);
        let t = |&(c, r): &(usize, usize)| c + 1 + 64 + r;
        let (tmin, tmax) = (
            m.iter().map(|x| x.tokens).min(),
            m.iter().map(|x| x.tokens).max(),
        );
        assert_eq!(p.iter().map(t).min(), tmin);
        assert_eq!(p.iter().map(t).max(), tmax);
        assert_eq!(p.iter().map(|x| x.1).min(), m.iter().map(|x| x.resp).min());
        assert_eq!(p.iter().map(|x| x.1).max(), m.iter().map(|x| x.resp).max());
        assert_eq!(anchor_points(&m, 0, 64).len(), 20);
        assert_eq!(anchor_points(&m, 1, 64).len(), 1);
    }
}
