//! `gateau score`: stream the input, run the passes, write one record per sample (flushed
//! as it goes), resumable and shardable by line number.

use crate::chat::tokenize_sample;
use crate::data::{parse_line, LineReader, RawLine, Sample};
use crate::model;
use crate::models::{two_phase, Models};
use crate::pack::Packer;
use crate::passes::{full_passes, SampleScores};
use crate::progress::Progress;
use crate::provenance::Fingerprint;
use crate::record::{ScoreRecord, Status};
use crate::settings::{describe, ScoreSettings, ShortSpec};
use crate::template::{segment_starts, TokenizeError, Tokens};
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

/// Lines parsed and tokenized together (in parallel) before their model passes.
const PREFETCH: usize = 32;

/// What a line became before the model passes.
pub(crate) enum Prepared {
    Failed(ScoreRecord),
    Ready(Sample, Tokens),
}

pub(crate) use crate::output::Existing;

pub(crate) fn prepare(
    raw: &RawLine,
    tokenizer: &tokenizers::Tokenizer,
    bos: Option<u32>,
    s: &ScoreSettings,
) -> Result<Prepared> {
    let sample = match parse_line(raw) {
        Ok(x) => x,
        Err(e) => {
            let mut r = ScoreRecord::failed(e.id, e.line, Status::Bad, e.reason);
            r.line_hash = Some(raw.hash());
            return Ok(Prepared::Failed(r));
        }
    };
    let t = tokenize_sample(
        tokenizer,
        &s.template,
        s.chat.as_ref(),
        &sample,
        bos,
        s.max_len,
    )
    .with_context(|| format!("{} line {}", s.data.display(), raw.number))?;
    Ok(match t {
        Ok(t) => Prepared::Ready(sample, t),
        Err(e) => {
            let status = match e {
                TokenizeError::TooLong { .. } => Status::Skipped,
                TokenizeError::EmptyResponse | TokenizeError::Template(_) => Status::Bad,
            };
            let mut r = ScoreRecord::failed(sample.id, sample.line, status, e.to_string());
            r.line_hash = Some(sample.line_hash);
            Prepared::Failed(r)
        }
    })
}

fn warnings(t: &Tokens, n_segments: usize, segment_len: usize) -> Vec<String> {
    if t.ctx.is_empty() {
        vec!["no context: cas is null".into()]
    } else if n_segments < 2 {
        vec![format!(
            "context of {} tokens has {n_segments} segment(s) of {segment_len}: cas is null",
            t.ctx.len()
        )]
    } else {
        Vec::new()
    }
}

/// Counts per outcome, for the summary and the exit status.
#[derive(Default)]
pub(crate) struct Tally {
    scored: u64,
    skipped: u64,
    bad: u64,
    warned: u64,
    truncated: u64,
    pub tokens: u64,
    /// Bad or skipped records kept by --resume.
    pub kept_problems: u64,
    /// Records kept by --resume.
    pub kept: u64,
    reported: Vec<String>,
}

/// What must hold before any output file is created: the models and tokenizer can be
/// read, the input is a dataset; gives the run's fingerprint.
pub(crate) fn validate(s: &ScoreSettings, dtype: candle_core::DType) -> Result<Fingerprint> {
    model::describe_model(&s.long_spec())?;
    if let Some(spec) = crate::models::short_spec(s) {
        model::describe_model(&spec)?;
    }
    crate::data::hints::refuse_unreadable(&s.data)?;
    Fingerprint::of(s, dtype)
}

pub fn run(mut s: ScoreSettings) -> Result<ExitCode> {
    if s.devices.len() > 1 {
        return crate::workers::run(s);
    }
    let (device, hint) = model::open_device(&s.device.parse().map_err(|e: String| anyhow!(e))?)?;
    let dtype = crate::settings::resolve_dtype(s.dtype, &device);
    model::configure_matmul(dtype);
    let attention = model::kernel::configure(s.attention)?;
    let long_cfg = model::model_config(&s.long_spec())?;
    let context_warning = crate::models::check_context(&s, &long_cfg)?;
    if !s.quiet {
        if let Some(h) = hint {
            eprintln!("gateau: {h}");
        }
        eprintln!(
            "gateau score: settings {}; long model {}",
            describe(&s),
            crate::models::context_phrase(&long_cfg)
        );
        if let Some(w) = context_warning {
            eprintln!("gateau score: warning: {w}");
        }
        // The kernel choice only steers CUDA passes; on the CPU it would be noise.
        let attention = match device.is_cuda() {
            true => format!(", attention {attention}"),
            false => String::new(),
        };
        eprintln!("gateau score: device {device:?}, dtype {dtype:?}{attention}");
    }
    let started = Instant::now();
    let fp = validate(&s, dtype)?;
    s.fingerprint = fp.text.clone();
    let (output, existing) = crate::output::open(&s, &fp)?;
    let result = score_all(
        &s,
        &device,
        dtype,
        output.file.try_clone()?,
        existing,
        started,
    );
    if result.is_err() {
        output.discard_if_untouched();
    }
    result
}

/// The run once `--out` is open and locked.
fn score_all(
    s: &ScoreSettings,
    device: &candle_core::Device,
    dtype: candle_core::DType,
    mut out: File,
    existing: Existing,
    started: Instant,
) -> Result<ExitCode> {
    let given = match two_phase(s, device, dtype)? {
        true => Some(crate::short_pass::run(s, device, dtype, &existing)?),
        false => None,
    };
    let two_phases = given.is_some();
    let models = Models::load(s, device, dtype, given)?;
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

    let in_shard = |l: u64| s.shard.is_none_or(|sh| sh.contains(l));
    let n_lines = crate::data::reader::count_lines(&s.data)?;
    let todo = (0..n_lines)
        .filter(|&l| in_shard(l) && !existing.lines.contains(&l))
        .count() as u64;
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
    let mut reader = LineReader::open(&s.data)?;
    loop {
        let mut chunk = Vec::with_capacity(PREFETCH);
        for raw in reader.by_ref() {
            let raw = raw?;
            if !in_shard(raw.number) {
                continue;
            }
            if already_done(&raw, &existing) {
                continue;
            }
            chunk.push(raw);
            if chunk.len() == PREFETCH {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        let prepared: Vec<Prepared> = chunk
            .par_iter()
            .map(|raw| prepare(raw, &long.tokenizer, long.bos, s))
            .collect::<Result<_>>()?;
        for p in prepared {
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
    if two_phases {
        crate::short_pass::done(s);
    }
    Ok(summarize(&tally, &progress, started, s))
}

/// Whether `--resume` keeps a record of this line (the kept records were checked against
/// this input's line hashes when `--out` was opened).
pub(crate) fn already_done(raw: &RawLine, existing: &Existing) -> bool {
    existing.lines.contains(&raw.number)
}

/// Prints the run's summary and gives its exit status.
pub(crate) fn summarize(
    tally: &Tally,
    progress: &Progress,
    started: Instant,
    s: &ScoreSettings,
) -> ExitCode {
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    if !s.quiet {
        eprintln!(
            "gateau score: {} scored, {} skipped, {} bad, {} with warnings, {} truncated; \
             {} model tokens in {secs:.1} s ({:.0} tok/s); records in {}",
            tally.scored,
            tally.skipped,
            tally.bad,
            tally.warned,
            tally.truncated,
            tally.tokens,
            progress.tokens_per_s(),
            s.out.display()
        );
        if !tally.reported.is_empty() {
            eprintln!("gateau score: reported samples:");
            for r in tally.reported.iter().take(50) {
                eprintln!("  {r}");
            }
            if tally.reported.len() > 50 {
                eprintln!(
                    "  ... and {} more (see the records' \"error\" fields)",
                    tally.reported.len() - 50
                );
            }
        }
    }
    if tally.kept_problems > 0 && !s.quiet {
        eprintln!(
            "gateau score: {} bad or skipped records were kept from the interrupted run",
            tally.kept_problems
        );
    }
    let problems = tally.bad + tally.skipped + tally.kept_problems;
    let lines = tally.kept + tally.scored + tally.bad + tally.skipped;
    s.max_bad
        .exit_code("gateau score", problems, lines, s.quiet)
}

/// The record of a sample whose id an earlier scored sample already has (and, if not,
/// the id is remembered). Only ids taken from the input count: a line-number fallback id
/// never makes a duplicate (spec section 8). Samples must come in line order.
pub(crate) fn duplicate(sample: &Sample, seen: &mut HashMap<String, u64>) -> Option<ScoreRecord> {
    if !sample.id_given {
        return None;
    }
    let key = sample.id.to_string();
    if let Some(first) = seen.get(&key) {
        let mut r = ScoreRecord::failed(
            sample.id.clone(),
            sample.line,
            Status::Bad,
            format!("duplicate id {key} (first on line {first})"),
        );
        r.line_hash = Some(sample.line_hash.clone());
        return Some(r);
    }
    seen.insert(key, sample.line);
    None
}

/// A sample waiting for its segment passes, with what its record needs.
pub(crate) type Packed = Packer<(Sample, Tokens)>;

/// The packer of one device: `--pack-below` and the batch budget resolved there.
pub(crate) fn packer(models: &Models) -> Packed {
    Packer::new(models.pack_below, models.batch_tokens)
}

/// Scores one sample; its record comes back at once, or (a small sample) with those of a
/// packed batch, from this call or a later one or from [`flush`].
pub(crate) fn score_one(
    sample: Sample,
    t: Tokens,
    models: &Models,
    s: &ScoreSettings,
    packer: &mut Packed,
) -> Result<Vec<(ScoreRecord, usize)>> {
    let short = models.short_for(sample.line)?;
    let passes = s.passes(models.batch_tokens);
    let p = full_passes(&models.long.llama, &short, &t, &passes)?;
    let line = sample.line;
    let done = packer.add(&models.long.llama, line, (sample, t), p)?;
    Ok(done
        .into_iter()
        .map(|((sample, t), sc)| record_of(&sample, &t, sc, s))
        .collect())
}

/// The records of the samples still waiting in `packer`.
pub(crate) fn flush(
    models: &Models,
    s: &ScoreSettings,
    packer: &mut Packed,
) -> Result<Vec<(ScoreRecord, usize)>> {
    Ok(packer
        .flush(&models.long.llama)?
        .into_iter()
        .map(|((sample, t), sc)| record_of(&sample, &t, sc, s))
        .collect())
}

fn record_of(
    sample: &Sample,
    t: &Tokens,
    sc: SampleScores,
    s: &ScoreSettings,
) -> (ScoreRecord, usize) {
    if !(sc.ppl_long.is_finite() && sc.ppl_short.is_finite())
        || sc.ppl_alone.is_some_and(|p| !p.is_finite())
        || sc.seg_ppl.iter().any(|p| !p.is_finite())
    {
        let mut r = ScoreRecord::failed(
            sample.id.clone(),
            sample.line,
            Status::Bad,
            "non-finite perplexity (the model's output overflowed)".into(),
        );
        r.line_hash = Some(sample.line_hash.clone());
        return (r, sc.model_tokens);
    }
    let mut r = ScoreRecord::failed(sample.id.clone(), sample.line, Status::Ok, String::new());
    r.error = None;
    r.line_hash = Some(sample.line_hash.clone());
    r.warnings = sample.warnings.clone();
    r.warnings
        .extend(warnings(t, sc.seg_ppl.len(), s.segment_len));
    if sample.later_turns > 0 {
        // Spec section 1's wording, whatever the count.
        r.warnings
            .push(format!("{} later turns not scored", sample.later_turns));
    }
    r.source = sample.source.clone();
    r.n_tokens = Some(t.len());
    r.n_ctx = Some(t.ctx.len());
    r.n_resp = Some(t.resp.len());
    r.truncated = Some(t.truncated);
    r.ppl_short = Some(sc.ppl_short);
    r.ppl_long = Some(sc.ppl_long);
    r.seg_ppl = Some(sc.seg_ppl);
    r.seg_attn = Some(sc.seg_attn);
    r.cas = Some(sc.cas);
    r.ppl_alone = sc.ppl_alone;
    r.seg_start = Some(segment_starts(t.ctx.len(), s.segment_len, s.max_segments));
    r.seg_len = Some(s.segment_len);
    r.ctx_short = match s.short {
        ShortSpec::Window(w) => Some(t.ctx_in_window(w)),
        ShortSpec::Model { .. } => None,
    };
    if let Some(n) = sc.token_nll {
        r.nll_short = Some(n.short);
        r.nll_long = Some(n.long);
    }
    (r, sc.model_tokens)
}

/// Writes a finished sample's record and accounts for it.
pub(crate) fn emit(
    out: &mut File,
    record: &ScoreRecord,
    tokens: usize,
    tally: &mut Tally,
    progress: &mut Progress,
    s: &ScoreSettings,
) -> Result<()> {
    write_record(out, record, s)?;
    report(record, tally, progress, s)?;
    tally.tokens += tokens as u64;
    progress.advance(tokens as u64);
    Ok(())
}

/// Writes one record, stamped with where it came from (the run's fingerprint and shard).
pub(crate) fn write_record(out: &mut File, r: &ScoreRecord, s: &ScoreSettings) -> Result<()> {
    let mut r = r.clone();
    r.fingerprint = Some(s.fingerprint.clone());
    r.shard = s.shard.map(|sh| format!("{}/{}", sh.index, sh.count));
    let mut line = serde_json::to_vec(&r)?;
    line.push(b'\n');
    out.write_all(&line)
        .and_then(|_| out.flush())
        .with_context(|| format!("cannot write to {}", s.out.display()))
}

pub(crate) fn report(
    r: &ScoreRecord,
    t: &mut Tally,
    p: &Progress,
    s: &ScoreSettings,
) -> Result<()> {
    let what = match r.status {
        Status::Ok => {
            t.scored += 1;
            if r.truncated == Some(true) {
                t.truncated += 1;
            }
            if r.warnings.is_empty() {
                return Ok(());
            }
            t.warned += 1;
            format!("warning: {}", r.warnings.join("; "))
        }
        Status::Bad => {
            t.bad += 1;
            format!("bad: {}", r.error.as_deref().unwrap_or(""))
        }
        Status::Skipped => {
            t.skipped += 1;
            format!("skipped: {}", r.error.as_deref().unwrap_or(""))
        }
    };
    let msg = format!("{} line {} (id {}): {what}", s.data.display(), r.line, r.id);
    if s.strict {
        bail!("{msg} (--strict)");
    }
    if !s.quiet {
        p.println(&format!("gateau score: {msg}"));
    }
    t.reported.push(msg);
    Ok(())
}
