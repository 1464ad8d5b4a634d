//! `gateau score`: stream the input, run the passes, write one record per sample (flushed
//! as it goes), resumable and shardable by line number.

use crate::data::{parse_line, LineReader, RawLine, Sample};
use crate::model;
use crate::models::{two_phase, Models};
use crate::pack::Packer;
use crate::passes::{full_passes, SampleScores};
use crate::progress::Progress;
use crate::record::{ScoreRecord, Status};
use crate::settings::{describe, ScoreSettings};
use crate::template::{tokenize, TokenizeError, Tokens};
use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

/// Lines parsed and tokenized together (in parallel) before their model passes.
const PREFETCH: usize = 32;

/// What a line became before the model passes.
pub(crate) enum Prepared {
    Failed(ScoreRecord),
    Ready(Sample, Tokens),
}

/// Records already in `--out` (for --resume): line -> id key.
pub(crate) struct Existing {
    pub lines: HashMap<u64, String>,
    pub ids: Vec<(String, u64)>,
    /// Kept records that are bad or skipped: the run still finishes with status 2.
    pub problems: u64,
}

/// Opens `--out` for appending; with `resume`, reads what is there and cuts a half-written
/// last line.
pub(crate) fn open_output(path: &Path, resume: bool, overwrite: bool) -> Result<(File, Existing)> {
    let mut existing = Existing {
        lines: HashMap::new(),
        ids: Vec::new(),
        problems: 0,
    };
    let exists = path.exists() && std::fs::metadata(path)?.len() > 0;
    if exists && !resume && !overwrite {
        bail!(
            "--out {} already exists: pass --resume to continue it, or --overwrite to start over",
            path.display()
        );
    }
    if !resume || !exists {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create folder {}", dir.display()))?;
        }
        let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        return Ok((f, existing));
    }
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {} to resume", path.display()))?;
    let mut keep = 0u64;
    let mut reader = BufReader::new(&mut f);
    let mut buf = Vec::new();
    let mut n = 0usize;
    loop {
        buf.clear();
        let got = reader.read_until(b'\n', &mut buf)?;
        if got == 0 || buf.last() != Some(&b'\n') {
            break; // end, or a half-written last line to redo
        }
        n += 1;
        let rec: ScoreRecord = serde_json::from_slice(&buf).with_context(|| {
            format!(
                "{} line {n}: not a score record; cannot resume from it",
                path.display()
            )
        })?;
        let key = rec.id_key();
        // A fresh run checks duplicates among scored samples only; so does a resumed one.
        if rec.status == Status::Ok {
            existing.ids.push((key.clone(), rec.line));
        } else {
            existing.problems += 1;
        }
        existing.lines.insert(rec.line, key);
        keep += got as u64;
    }
    drop(reader);
    f.set_len(keep)?;
    f.seek(SeekFrom::End(0))?;
    Ok((f, existing))
}

pub(crate) fn prepare(
    raw: &RawLine,
    tokenizer: &tokenizers::Tokenizer,
    bos: Option<u32>,
    s: &ScoreSettings,
) -> Result<Prepared> {
    let sample = match parse_line(raw) {
        Ok(x) => x,
        Err(e) => {
            return Ok(Prepared::Failed(ScoreRecord::failed(
                e.id,
                e.line,
                Status::Bad,
                e.reason,
            )))
        }
    };
    let t = tokenize(tokenizer, &s.template, &sample, bos, s.max_len)
        .with_context(|| format!("{} line {}", s.data.display(), raw.number))?;
    Ok(match t {
        Ok(t) => Prepared::Ready(sample, t),
        Err(e) => {
            let status = match e {
                TokenizeError::TooLong { .. } => Status::Skipped,
                TokenizeError::EmptyResponse => Status::Bad,
            };
            Prepared::Failed(ScoreRecord::failed(
                sample.id,
                sample.line,
                status,
                e.to_string(),
            ))
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
    reported: Vec<String>,
}

pub fn run(s: ScoreSettings) -> Result<ExitCode> {
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
    let (mut out, existing) = open_output(&s.out, s.resume, s.overwrite)?;
    let given = match two_phase(&s, &device, dtype)? {
        true => Some(crate::short_pass::run(&s, &device, dtype, &existing)?),
        false => None,
    };
    let two_phases = given.is_some();
    let models = Models::load(&s, &device, dtype, given)?;
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
        .filter(|&l| in_shard(l) && !existing.lines.contains_key(&l))
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
            if already_done(&raw, &existing, &s)? {
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
            .map(|raw| prepare(raw, &long.tokenizer, long.bos, &s))
            .collect::<Result<_>>()?;
        for p in prepared {
            let done = match p {
                Prepared::Failed(r) => vec![(r, 0)],
                Prepared::Ready(sample, t) => match duplicate(&sample, &mut seen) {
                    Some(r) => vec![(r, 0)],
                    None => {
                        let line = sample.line;
                        score_one(sample, t, &models, &s, &mut packer)
                            .with_context(|| format!("{} line {line}", s.data.display()))?
                    }
                },
            };
            for (record, tokens) in done {
                emit(&mut out, &record, tokens, &mut tally, &mut progress, &s)?;
            }
        }
    }
    for (record, tokens) in
        flush(&models, &s, &mut packer).with_context(|| format!("{}", s.data.display()))?
    {
        emit(&mut out, &record, tokens, &mut tally, &mut progress, &s)?;
    }
    if let Some(msg) = packer.summary().filter(|_| !s.quiet) {
        progress.println(&format!("gateau score: {msg}"));
    }
    if two_phases {
        crate::short_pass::done(&s);
    }
    Ok(summarize(&tally, &progress, started, &s))
}

/// Whether `--resume` keeps a record of this line; the record must belong to this input
/// (resuming against another file would silently mix datasets).
pub(crate) fn already_done(raw: &RawLine, existing: &Existing, s: &ScoreSettings) -> Result<bool> {
    let Some(id) = existing.lines.get(&raw.number) else {
        return Ok(false);
    };
    if let Ok(sample) = parse_line(raw) {
        if &sample.id.to_string() != id {
            bail!(
                "--resume: {} has id {id} for line {}, but {} line {} has id {}; \
                 the output belongs to another input",
                s.out.display(),
                raw.number,
                s.data.display(),
                raw.number,
                sample.id
            );
        }
    }
    Ok(true)
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
    if tally.bad + tally.skipped + tally.kept_problems > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// The record of a sample whose id an earlier scored sample already has (and, if not,
/// the id is remembered). Samples must come in line order.
pub(crate) fn duplicate(sample: &Sample, seen: &mut HashMap<String, u64>) -> Option<ScoreRecord> {
    let key = sample.id.to_string();
    if let Some(first) = seen.get(&key) {
        return Some(ScoreRecord::failed(
            sample.id.clone(),
            sample.line,
            Status::Bad,
            format!("duplicate id {key} (first on line {first})"),
        ));
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
        let r = ScoreRecord::failed(
            sample.id.clone(),
            sample.line,
            Status::Bad,
            "non-finite perplexity (the model's output overflowed)".into(),
        );
        return (r, sc.model_tokens);
    }
    let mut r = ScoreRecord::failed(sample.id.clone(), sample.line, Status::Ok, String::new());
    r.error = None;
    r.warnings = warnings(t, sc.seg_ppl.len(), s.segment_len);
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
    write_record(out, record, &s.out)?;
    report(record, tally, progress, s)?;
    tally.tokens += tokens as u64;
    progress.advance(tokens as u64);
    Ok(())
}

pub(crate) fn write_record(out: &mut File, r: &ScoreRecord, path: &Path) -> Result<()> {
    let mut line = serde_json::to_vec(r)?;
    line.push(b'\n');
    out.write_all(&line)
        .and_then(|_| out.flush())
        .with_context(|| format!("cannot write to {}", path.display()))
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
