//! `gateau score`: stream the input, run the passes, write one record per sample (flushed
//! as it goes), resumable and shardable by line number.

use crate::data::{parse_line, LineReader, RawLine, Sample};
use crate::model::{self, LoadedModel};
use crate::passes::{score_sample, ShortModel};
use crate::progress::Progress;
use crate::record::{ScoreRecord, Status};
use crate::settings::{describe, ScoreSettings, ShortSpec};
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
enum Prepared {
    Failed(ScoreRecord),
    Ready(Sample, Tokens),
}

/// Records already in `--out` (for --resume): line -> id key.
struct Existing {
    lines: HashMap<u64, String>,
    ids: Vec<(String, u64)>,
}

/// Opens `--out` for appending; with `resume`, reads what is there and cuts a half-written
/// last line.
fn open_output(path: &Path, resume: bool, overwrite: bool) -> Result<(File, Existing)> {
    let mut existing = Existing {
        lines: HashMap::new(),
        ids: Vec::new(),
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
        }
        existing.lines.insert(rec.line, key);
        keep += got as u64;
    }
    drop(reader);
    f.set_len(keep)?;
    f.seek(SeekFrom::End(0))?;
    Ok((f, existing))
}

fn prepare(raw: &RawLine, lm: &LoadedModel, s: &ScoreSettings) -> Result<Prepared> {
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
    let t = tokenize(&lm.tokenizer, &s.template, &sample, lm.bos, s.max_len)
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
struct Tally {
    scored: u64,
    skipped: u64,
    bad: u64,
    warned: u64,
    truncated: u64,
    tokens: u64,
    reported: Vec<String>,
}

pub fn run(s: ScoreSettings) -> Result<ExitCode> {
    let (device, hint) = model::open_device(&s.device.parse().map_err(|e: String| anyhow!(e))?)?;
    let dtype = crate::settings::resolve_dtype(s.dtype, &device);
    if !s.quiet {
        if let Some(h) = hint {
            eprintln!("gateau: {h}");
        }
        eprintln!("gateau score: settings {}", describe(&s));
        eprintln!("gateau score: device {device:?}, dtype {dtype:?}");
    }
    let started = Instant::now();
    let long = model::load(&s.long_spec(), &device, dtype)?;
    let short_loaded = match &s.short {
        ShortSpec::Model {
            location,
            rope_theta,
        } => {
            let spec = model::ModelSpec {
                location: location.clone(),
                tokenizer: s.tokenizer.clone(),
                rope_theta: *rope_theta,
            };
            let m = model::load(&spec, &device, dtype)?;
            let (a, b) = (
                m.tokenizer.get_vocab_size(true),
                long.tokenizer.get_vocab_size(true),
            );
            if a != b {
                bail!(
                    "--short-model {location} and --long-model {} are not homologous: their \
                     tokenizers have {a} and {b} tokens",
                    s.long_model
                );
            }
            Some(m)
        }
        ShortSpec::Window(_) => None,
    };
    let short = match (&s.short, &short_loaded) {
        (_, Some(m)) => ShortModel::Separate(&m.llama),
        (ShortSpec::Window(w), None) => ShortModel::Window(*w),
        (ShortSpec::Model { .. }, None) => unreachable!("loaded above"),
    };
    if !s.quiet {
        let short_name = short_loaded
            .as_ref()
            .map_or("(window of the long model)", |m| m.source.as_str());
        eprintln!(
            "gateau score: long model {}, short model {short_name}; loaded in {:.1} s",
            long.source,
            started.elapsed().as_secs_f64()
        );
    }

    let (mut out, existing) = open_output(&s.out, s.resume, s.overwrite)?;
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
    for (k, l) in existing.ids {
        seen.entry(k).or_insert(l);
    }
    let mut progress = Progress::new(todo, s.quiet);
    let mut tally = Tally::default();
    let mut reader = LineReader::open(&s.data)?;
    loop {
        let mut chunk = Vec::with_capacity(PREFETCH);
        for raw in reader.by_ref() {
            let raw = raw?;
            if !in_shard(raw.number) {
                continue;
            }
            if let Some(id) = existing.lines.get(&raw.number) {
                // The record must belong to this input: resuming against another file
                // would silently mix datasets.
                if let Ok(sample) = parse_line(&raw) {
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
            .map(|raw| prepare(raw, &long, &s))
            .collect::<Result<_>>()?;
        for p in prepared {
            let (record, tokens) = match p {
                Prepared::Failed(r) => (r, 0),
                Prepared::Ready(sample, t) => score_one(&sample, &t, &long, &short, &s, &mut seen)
                    .with_context(|| format!("{} line {}", s.data.display(), sample.line))?,
            };
            write_record(&mut out, &record, &s.out)?;
            report(&record, &mut tally, &progress, &s)?;
            tally.tokens += tokens as u64;
            progress.advance(tokens as u64);
        }
    }
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
    Ok(if tally.bad + tally.skipped > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn score_one(
    sample: &Sample,
    t: &Tokens,
    long: &LoadedModel,
    short: &ShortModel,
    s: &ScoreSettings,
    seen: &mut HashMap<String, u64>,
) -> Result<(ScoreRecord, usize)> {
    let key = sample.id.to_string();
    if let Some(first) = seen.get(&key) {
        let r = ScoreRecord::failed(
            sample.id.clone(),
            sample.line,
            Status::Bad,
            format!("duplicate id {key} (first on line {first})"),
        );
        return Ok((r, 0));
    }
    seen.insert(key, sample.line);
    let sc = score_sample(&long.llama, short, t, &s.passes())?;
    if !(sc.ppl_long.is_finite() && sc.ppl_short.is_finite())
        || sc.seg_ppl.iter().any(|p| !p.is_finite())
    {
        let r = ScoreRecord::failed(
            sample.id.clone(),
            sample.line,
            Status::Bad,
            "non-finite perplexity (the model's output overflowed)".into(),
        );
        return Ok((r, sc.model_tokens));
    }
    let mut r = ScoreRecord::failed(sample.id.clone(), sample.line, Status::Ok, String::new());
    r.error = None;
    r.warnings = warnings(t, sc.seg_ppl.len(), s.segment_len);
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
    Ok((r, sc.model_tokens))
}

fn write_record(out: &mut File, r: &ScoreRecord, path: &Path) -> Result<()> {
    let mut line = serde_json::to_vec(r)?;
    line.push(b'\n');
    out.write_all(&line)
        .and_then(|_| out.flush())
        .with_context(|| format!("cannot write to {}", path.display()))
}

fn report(r: &ScoreRecord, t: &mut Tally, p: &Progress, s: &ScoreSettings) -> Result<()> {
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
