//! `gateau score --dry-run`: the input read and tokenized as `score` would (the same
//! intake loop, the models' tokenizers, no weights), then what the run would do: the
//! length histogram, truncations and skips, the tokens of every pass, the memory plan and
//! the time on an H200 from measured phase rates, scaled by FLOPs per token to the
//! models' shapes. Writes no --out.

use super::intake::{duplicate, Intake, Prepared, PREFETCH};
use super::memory::{self, Phases};
use super::output::Existing;
use super::pair::short_spec;
use crate::cli::settings::{ScoreSettings, ShortSpec};
use crate::cli::DTypeArg;
use crate::input::template::{segment_starts, Tokens};
use crate::model::shapes::Shape;
use crate::model::ModelConfig;
use crate::records::Status;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::process::ExitCode;

/// Where the rates below were measured.
pub const SOURCE: &str = "docs/bench/h200-cudnn-2026-12-03-bf16-4ctx.jsonl";
/// The GPU they were measured on.
pub const GPU: &str = "NVIDIA H200 (bf16, cuDNN attention)";
/// Free memory of an H200 before the models are loaded (143,771 MiB total, less the CUDA
/// context), for the memory plan.
pub const GPU_FREE: u64 = 140 << 30;

/// `(sequence tokens, tok/s)` of the llama2-7b shape on the H200, from [`SOURCE`]:
/// "full pass (no capture)".
pub const FULL_RATES: [(usize, f64); 4] = [
    (8769, 37129.8),
    (16961, 32424.2),
    (33345, 25611.0),
    (66113, 18721.2),
];
/// "long full pass + attention capture".
pub const CAPTURE_RATES: [(usize, f64); 4] = [
    (8769, 34621.4),
    (16961, 30482.0),
    (33345, 24396.1),
    (66113, 18109.7),
];
/// "segment passes" (batches of 64 to 86 sequences of 705 tokens): the mean of the four
/// rows (42,680.3, 43,371.8, 42,893.7 and 43,636.1 tok/s).
pub const SEGMENT_RATES: [(usize, f64); 1] = [(705, 43145.5)];

/// Upper edges of the histogram's bands, in tokens of `S`.
pub const BANDS: [usize; 6] = [2048, 4096, 8192, 16384, 32768, 65536];

/// FLOPs of one sequence of `t` tokens, counted as `bench::flops_per_seq` counts them: 2 x
/// parameters but the embedding per token, plus causal attention 2 x layers x hidden x t^2.
pub fn flops_per_seq(cfg: &ModelConfig, t: usize) -> f64 {
    let norms = (2 * cfg.num_layers + 1) * cfg.hidden_size;
    let params = (cfg.matmul_params() + norms as u64) as f64;
    2.0 * params * t as f64 + 2.0 * (cfg.num_layers * cfg.hidden_size) as f64 * (t * t) as f64
}

/// The rate (tok/s) of a pass of `t` tokens through `cfg`: the FLOP rate measured for the
/// llama2-7b shape, interpolated linearly in ln t between the table's lengths (the nearest
/// one outside them), divided by `cfg`'s FLOPs per token at `t`.
pub fn rate(table: &[(usize, f64)], cfg: &ModelConfig, t: usize) -> f64 {
    let base = Shape::Llama2_7b.config();
    let flop_rate = |(n, r): (usize, f64)| r * flops_per_seq(&base, n) / n as f64;
    let t = t.max(1);
    let first = table[0];
    let last = table[table.len() - 1];
    let fr = if t <= first.0 {
        flop_rate(first)
    } else if t >= last.0 {
        flop_rate(last)
    } else {
        let i = table
            .iter()
            .position(|p| p.0 >= t)
            .unwrap_or(table.len() - 1);
        let (a, b) = (table[i - 1], table[i]);
        let x = ((t as f64).ln() - (a.0 as f64).ln()) / ((b.0 as f64).ln() - (a.0 as f64).ln());
        flop_rate(a) + x * (flop_rate(b) - flop_rate(a))
    };
    fr / (flops_per_seq(cfg, t) / t as f64)
}

/// One kind of pass, summed over the samples.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseTotal {
    pub phase: String,
    pub passes: u64,
    pub tokens: u64,
    pub seconds: f64,
    /// tokens / seconds: the rate this estimate used, over these passes.
    pub tok_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Band {
    pub band: String,
    pub samples: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// Lines this run would score (in the shard, within --limit).
    pub lines: u64,
    pub ready: u64,
    pub truncated: u64,
    /// Too long even without context.
    pub skipped_too_long: u64,
    /// Bad lines (not JSON, no usable shape, empty response, duplicate id, template).
    pub bad: u64,
    /// The first few problems, "line N: why".
    pub examples: Vec<String>,
    /// Sum of |S| over the ready samples.
    pub tokens: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryPlan {
    pub dtype: String,
    pub long_weights_bytes: u64,
    pub short_weights_bytes: Option<u64>,
    pub activation_bytes_per_token: u64,
    /// Both models (when separate) and one --max-len pass.
    pub one_phase_bytes: u64,
    pub gpu_free_bytes: u64,
    pub phases: String,
    /// --max-batch-tokens as given, or what `score` picks on the stated GPU.
    pub batch_tokens: usize,
    pub batch_tokens_given: bool,
    pub batch_tokens_cpu: usize,
    pub pack_below_gpu: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub gpu: String,
    pub source: String,
    pub basis: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub data: String,
    pub counts: Counts,
    pub histogram: Vec<Band>,
    pub phases: Vec<PhaseTotal>,
    pub memory: MemoryPlan,
    pub estimate: Estimate,
}

fn band_names() -> Vec<String> {
    let k = |n: usize| format!("{}k", n / 1024);
    let mut v = vec![format!("<{}", k(BANDS[0]))];
    v.extend(BANDS.windows(2).map(|w| format!("{}-{}", k(w[0]), k(w[1]))));
    v.push(format!(">={}", k(BANDS[BANDS.len() - 1])));
    v
}

/// Which band `n` tokens fall in.
pub fn band_of(n: usize) -> usize {
    BANDS.iter().position(|&e| n < e).unwrap_or(BANDS.len())
}

/// The passes of one sample: (phase, model, rate table, sequence length, passes).
type Pass<'a> = (
    &'static str,
    &'a ModelConfig,
    &'static [(usize, f64)],
    usize,
    u64,
);

/// Adds one sample's passes, as `score::passes::full_passes` builds them.
fn passes_of<'a>(
    t: &Tokens,
    s: &ScoreSettings,
    long: &'a ModelConfig,
    short: Option<&'a ModelConfig>,
) -> Vec<Pass<'a>> {
    let mut v: Vec<Pass> = vec![(
        "long full pass + attention capture",
        long,
        &CAPTURE_RATES[..],
        t.len(),
        1,
    )];
    match (&s.short, short) {
        (ShortSpec::Window(w), _) => v.push((
            "short window pass",
            long,
            &FULL_RATES[..],
            t.window(*w).len(),
            1,
        )),
        (_, Some(c)) => v.push(("short model full pass", c, &FULL_RATES[..], t.len(), 1)),
        (_, None) => {}
    }
    if s.with_ifd {
        v.push((
            "response alone (IFD)",
            long,
            &FULL_RATES[..],
            t.window(0).len(),
            1,
        ));
    }
    let n = segment_starts(t.ctx.len(), s.segment_len, s.max_segments).len();
    if n > 0 {
        // [BOS] + head + segment + mid + resp, as Tokens::segment builds it.
        let len = t.len() - t.ctx.len() + s.segment_len;
        v.push(("segment passes", long, &SEGMENT_RATES[..], len, n as u64));
    }
    v
}

pub fn estimate(s: &ScoreSettings) -> Result<DryRun> {
    let (long_cfg, tokenizer) = crate::checkpoint::describe_model(&s.long_spec())?;
    let short_cfg = match short_spec(s) {
        Some(spec) => Some(crate::checkpoint::describe_model(&spec)?.0),
        None => None,
    };
    let existing = Existing::default();
    let mut intake = Intake::open(s, &existing, (&tokenizer, long_cfg.bos_token_id), PREFETCH)?;
    let mut counts = Counts::default();
    let mut hist = vec![0u64; BANDS.len() + 1];
    let mut order: Vec<&'static str> = Vec::new();
    let mut totals: HashMap<&'static str, (u64, u64, f64)> = HashMap::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    while let Some(chunk) = intake.next_chunk(|_| false)? {
        for (_, p) in chunk {
            counts.lines += 1;
            let failed = match p {
                Prepared::Failed(r) => Some(r),
                Prepared::Ready(sample, t) => match duplicate(&sample, &mut seen) {
                    Some(r) => Some(r),
                    None => {
                        counts.ready += 1;
                        counts.truncated += u64::from(t.truncated);
                        counts.tokens += t.len() as u64;
                        hist[band_of(t.len())] += 1;
                        for (phase, cfg, table, len, n) in
                            passes_of(&t, s, &long_cfg, short_cfg.as_ref())
                        {
                            if !totals.contains_key(phase) {
                                order.push(phase);
                            }
                            let e = totals.entry(phase).or_default();
                            e.0 += n;
                            e.1 += n * len as u64;
                            e.2 += n as f64 * len as f64 / rate(table, cfg, len);
                        }
                        None
                    }
                },
            };
            if let Some(r) = failed {
                match r.status {
                    Status::Skipped => counts.skipped_too_long += 1,
                    _ => counts.bad += 1,
                }
                if counts.examples.len() < 5 {
                    let why = r.error.as_deref().unwrap_or("");
                    counts.examples.push(format!("line {}: {why}", r.line));
                }
            }
        }
    }
    let phases: Vec<PhaseTotal> = order
        .iter()
        .map(|p| {
            let (passes, tokens, seconds) = totals[p];
            PhaseTotal {
                phase: p.to_string(),
                passes,
                tokens,
                seconds,
                tok_per_s: tokens as f64 / seconds,
            }
        })
        .collect();
    let seconds = phases.iter().map(|p| p.seconds).sum();
    let basis = format!(
        "measured tok/s of the llama2-7b shape per phase and sequence length, interpolated in \
         ln(length) (the nearest measured length outside {}..{} tokens), scaled by FLOPs per \
         token to the long model's shape ({} layers, hidden {}){}; one GPU, model loading \
         not counted (models far smaller than 7B do not keep the GPU busy and run slower \
         than this)",
        FULL_RATES[0].0,
        FULL_RATES[3].0,
        long_cfg.num_layers,
        long_cfg.hidden_size,
        match &short_cfg {
            Some(c) => format!(
                " and the short model's ({} layers, hidden {})",
                c.num_layers, c.hidden_size
            ),
            None => String::new(),
        }
    );
    Ok(DryRun {
        data: match s.stdin {
            Some(_) => "-".into(),
            None => s.data.display().to_string(),
        },
        counts,
        histogram: band_names()
            .into_iter()
            .zip(hist)
            .map(|(band, samples)| Band { band, samples })
            .collect(),
        phases,
        memory: plan(s, &long_cfg, short_cfg.as_ref()),
        estimate: Estimate {
            gpu: GPU.into(),
            source: SOURCE.into(),
            basis,
            seconds,
        },
    })
}

/// What `score` would pick on the stated GPU.
fn plan(s: &ScoreSettings, long: &ModelConfig, short: Option<&ModelConfig>) -> MemoryPlan {
    let (dtype, width) = match s.dtype {
        Some(DTypeArg::F32) => ("f32", 4),
        Some(DTypeArg::F16) => ("f16", 2),
        // bf16 weights, plus the E4M3 twin of the long model's projections (below).
        Some(DTypeArg::Fp8) => ("fp8", 2),
        _ => ("bf16", 2),
    };
    let mut models = vec![long];
    models.extend(short);
    let twin = match s.dtype {
        Some(DTypeArg::Fp8) => memory::fp8_twin_bytes(long),
        _ => 0,
    };
    let need = memory::needed(&models, width, s.max_len) + twin;
    let two = match (s.phases, short) {
        (_, None) | (Phases::One, _) => false,
        (Phases::Two, _) => true,
        (Phases::Auto, Some(_)) => need > GPU_FREE,
    };
    // The batch budget is picked with the models of the (last) phase loaded.
    let loaded: u64 = twin
        + match two {
            true => memory::weight_bytes(long, width),
            false => models.iter().map(|c| memory::weight_bytes(c, width)).sum(),
        };
    let picked = memory::default_batch_tokens(long, width, Some(GPU_FREE.saturating_sub(loaded)));
    MemoryPlan {
        dtype: dtype.into(),
        long_weights_bytes: memory::weight_bytes(long, width),
        short_weights_bytes: short.map(|c| memory::weight_bytes(c, width)),
        activation_bytes_per_token: long.activation_bytes_per_token(width),
        one_phase_bytes: need,
        gpu_free_bytes: GPU_FREE,
        phases: match two {
            true => "two".into(),
            false => "one".into(),
        },
        batch_tokens: s.max_batch_tokens.unwrap_or(picked),
        batch_tokens_given: s.max_batch_tokens.is_some(),
        batch_tokens_cpu: s.max_batch_tokens.unwrap_or(memory::CPU_BATCH_TOKENS),
        pack_below_gpu: s.pack_below.unwrap_or(memory::GPU_PACK_BELOW),
    }
}

/// A duration in seconds, for people.
pub fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        _ if secs < 60.0 => format!("{secs:.1} s"),
        0..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s / 60 % 60),
    }
}

/// The summary as text.
pub fn text(d: &DryRun) -> String {
    let c = &d.counts;
    let mut o = format!(
        "gateau score --dry-run: {} lines of {}: {} to score ({} truncated to --max-len), {} \
         skipped (too long), {} bad\n",
        c.lines, d.data, c.ready, c.truncated, c.skipped_too_long, c.bad
    );
    for e in &c.examples {
        o += &format!("  {e}\n");
    }
    o += "  length |S| (tokens)  samples\n";
    for b in &d.histogram {
        o += &format!("  {:<19} {:>8}\n", b.band, b.samples);
    }
    o += &format!("  {} tokens in all samples\n", c.tokens);
    o += "  pass                                  passes       tokens     tok/s   time\n";
    for p in &d.phases {
        o += &format!(
            "  {:<36} {:>8} {:>12} {:>9.0}   {}\n",
            p.phase,
            p.passes,
            p.tokens,
            p.tok_per_s,
            duration(p.seconds)
        );
    }
    let m = &d.memory;
    let short = m.short_weights_bytes.map_or(String::new(), |b| {
        format!(" + short model {}", memory::gb(b))
    });
    o += &format!(
        "  memory ({}): long model {}{short}, {} bytes a token of activations; one phase \
         needs {} of the GPU's {} free: {}; segment batches of {} tokens ({}; \
         {} on the CPU); --pack-below {}\n",
        m.dtype,
        memory::gb(m.long_weights_bytes),
        m.activation_bytes_per_token,
        memory::gb(m.one_phase_bytes),
        memory::gb(m.gpu_free_bytes),
        match m.phases.as_str() {
            "two" => "two phases",
            _ => "one phase",
        },
        m.batch_tokens,
        match m.batch_tokens_given {
            true => "--max-batch-tokens",
            false => "picked from free memory",
        },
        m.batch_tokens_cpu,
        m.pack_below_gpu
    );
    let e = &d.estimate;
    o += &format!(
        "  estimated time on one {}: {}\n  basis: {}; rates from {}\n",
        e.gpu,
        duration(e.seconds),
        e.basis,
        e.source
    );
    o
}

/// `gateau score --dry-run`: the summary on stdout, and as JSON to `--json`.
pub fn run(s: ScoreSettings) -> Result<ExitCode> {
    let d = estimate(&s)?;
    print!("{}", text(&d));
    if let Some(path) = &s.json {
        crate::files::write_atomic(path, |f| {
            serde_json::to_writer_pretty(std::io::BufWriter::new(f), &d)
                .with_context(|| format!("cannot write --json {}", path.display()))
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_match_the_bench() {
        let c = Shape::Llama2_13b.config();
        for t in [1, 705, 8769] {
            assert_eq!(flops_per_seq(&c, t), crate::bench::flops_per_seq(&c, t));
        }
    }

    #[test]
    fn rates_are_the_table_at_its_lengths_and_scale_by_flops() {
        let c7 = Shape::Llama2_7b.config();
        for (n, r) in FULL_RATES {
            assert!((rate(&FULL_RATES, &c7, n) - r).abs() < 1e-6 * r);
        }
        // Outside the table: the nearest length's FLOP rate.
        let fr = |t: usize| rate(&CAPTURE_RATES, &c7, t) * flops_per_seq(&c7, t) / t as f64;
        assert!((fr(100) - fr(8769)).abs() < 1e-3 * fr(8769));
        assert!((fr(200_000) - fr(66113)).abs() < 1e-3 * fr(66113));
        // Between two lengths: between their rates.
        let mid = rate(&FULL_RATES, &c7, 24000);
        assert!(mid < FULL_RATES[1].1 && mid > FULL_RATES[2].1);
        let c13 = Shape::Llama2_13b.config();
        let ratio = rate(&SEGMENT_RATES, &c7, 705) / rate(&SEGMENT_RATES, &c13, 705);
        let want = flops_per_seq(&c13, 705) / flops_per_seq(&c7, 705);
        assert!((ratio - want).abs() < 1e-9);
    }

    #[test]
    fn bands() {
        assert_eq!(band_of(0), 0);
        assert_eq!(band_of(2047), 0);
        assert_eq!(band_of(2048), 1);
        assert_eq!(band_of(65535), 5);
        assert_eq!(band_of(65536), 6);
        assert_eq!(band_names()[0], "<2k");
        assert_eq!(band_names()[6], ">=64k");
    }
}
