//! `gateau score`: stream the input, run the passes, write one record per sample (flushed
//! as it goes), resumable and shardable by line number.

pub mod batching;
pub mod estimate;
pub mod intake;
pub mod memory;
pub mod output;
pub mod pair;
pub mod passes;
pub mod progress;
pub mod sample;
pub mod two_phase;
pub mod workers;

use crate::cli::settings::{device_name, resolve_dtype, ScoreSettings};
use crate::model::dispatch::Dispatch;
use crate::model::{self, Compute, ModelConfig};
use anyhow::{Context, Result};
use intake::{count_pending, duplicate, Intake, Prepared, PREFETCH};
use output::{emit, summarize, validate, Existing, Tally};
use pair::{two_phase, Models};
use progress::Progress;
use sample::{flush, packer, score_one};
use std::collections::HashMap;
use std::fs::File;
use std::process::ExitCode;
use std::time::Instant;

pub fn run(mut s: ScoreSettings) -> Result<ExitCode> {
    if s.dry_run {
        return estimate::run(s);
    }
    if s.devices.len() > 1 {
        return crate::score::workers::run(s);
    }
    let (device, hint) = model::open_device(&s.device)?;
    let dtype = resolve_dtype(s.dtype, &device);
    model::check_fp8(&device)?;
    model::configure_matmul(&device, dtype);
    let dispatch = Dispatch::resolve(s.attention)?.with_bucket(s.bucket);
    let long_cfg: ModelConfig = crate::checkpoint::model_config(&s.long_spec())?;
    let context_warning = crate::score::pair::check_context(&s, &long_cfg)?;
    if !s.quiet {
        if let Some(h) = hint {
            eprintln!("gateau: {h}");
        }
        // The kernel choice only steers CUDA passes; on the CPU it would be noise.
        let attention = device.is_cuda().then_some(&dispatch);
        eprintln!(
            "{}",
            s.settings_line(&device_name(&device), dtype, attention)
        );
        eprintln!(
            "gateau score: long model {}",
            crate::score::pair::context_phrase(&long_cfg)
        );
        if let Some(w) = context_warning {
            eprintln!("gateau score: warning: {w}");
        }
    }
    let started = Instant::now();
    let fp = validate(&s, dtype)?;
    s.fingerprint = fp.text.clone();
    let (output, existing) = crate::score::output::open(&s, &fp)?;
    let compute = Compute {
        device,
        dtype,
        dispatch,
        fp8: crate::cli::DTypeArg::is_fp8(s.dtype),
    };
    let result = score_all(&s, &compute, output.file.try_clone()?, existing, started);
    if result.is_err() {
        output.discard_if_untouched();
    }
    result
}

/// The run once `--out` is open and locked.
fn score_all(
    s: &ScoreSettings,
    c: &Compute,
    mut out: File,
    existing: Existing,
    started: Instant,
) -> Result<ExitCode> {
    let given = match two_phase(s, &c.device, c.dtype, c.fp8)? {
        true => Some(two_phase::run(s, c, &existing)?),
        false => None,
    };
    let two_phases = given.is_some();
    let models = Models::load(s, c, given)?;
    let long = &models.long;
    if !s.quiet {
        eprintln!(
            "gateau score: long model {}, short model {}; loaded in {:.1} s; segment batches \
             of up to {} tokens",
            long.source,
            models.short_name(),
            started.elapsed().as_secs_f64(),
            models.batch_tokens
        );
    }

    let todo = count_pending(s, &existing)?;
    if !s.quiet && s.resume {
        eprintln!(
            "gateau score: resuming {}: {} records kept, {todo} samples to score",
            s.out.display(),
            existing.lines.len()
        );
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    for (k, l) in &existing.ids {
        seen.entry(k.clone()).or_insert(*l);
    }
    let mut progress = Progress::new(todo, s.quiet);
    let mut tally = Tally {
        kept_problems: existing.problems,
        kept: existing.lines.len() as u64,
        ..Tally::default()
    };
    let mut packer = packer(&models);
    let mut intake = Intake::open(s, &existing, (&long.tokenizer, long.bos), PREFETCH)?;
    while let Some(chunk) = intake.next_chunk(|_| false)? {
        for (_, p) in chunk {
            let done = match p {
                Prepared::Failed(r) => vec![(r, 0)],
                Prepared::Ready(sample, t) => match duplicate(&sample, &mut seen) {
                    Some(r) => vec![(r, 0)],
                    None => {
                        let line = sample.line;
                        score_one(sample, t, &models, s, &mut packer)
                            .with_context(|| format!("{} line {line}", s.data.display()))?
                    }
                },
            };
            for (record, tokens) in done {
                emit(&mut out, &record, tokens, &mut tally, &mut progress, s)?;
            }
        }
    }
    for (record, tokens) in
        flush(&models, s, &mut packer).with_context(|| format!("{}", s.data.display()))?
    {
        emit(&mut out, &record, tokens, &mut tally, &mut progress, s)?;
    }
    if let Some(msg) = packer.summary().filter(|_| !s.quiet) {
        progress.println(&format!("gateau score: {msg}"));
    }
    for msg in models.bucket_summaries().into_iter().filter(|_| !s.quiet) {
        progress.println(&format!("gateau score: bucket {}: {msg}", s.bucket));
    }
    if two_phases {
        two_phase::done(s);
    }
    Ok(summarize(&tally, &progress, started, s))
}
