//! `gateau score --devices A,B,...`: one worker thread per device, each loading its own
//! copy of the models, pulling samples from one queue (longest first, so the last samples
//! to finish are short ones), all records going to one output file.
//!
//! Exactness: a pre-pass parses and tokenizes every pending line in line order, so bad,
//! skipped and duplicate-id samples are decided exactly as in a one-device run; workers
//! then score the rest in any order. Records are written as they finish, each carrying its
//! line, so `--resume` (which keeps records by line) and `--shard` are unchanged.

use super::intake::{count_pending, duplicate, Intake, Prepared};
use super::output::{emit, report, summarize, validate, write_record, Existing, Tally};
use super::pair::Models;
use super::progress::Progress;
use super::sample::{flush, packer, score_one};
use crate::cli::settings::{resolve_dtype, ScoreSettings};
use crate::input::chat::tokenize_sample;
use crate::input::{parse_line, RawLine};
use crate::model::dispatch::Dispatch;
use crate::model::{self, Compute, DeviceChoice};
use crate::records::ScoreRecord;
use anyhow::{anyhow, Context, Result};
use candle_core::Device;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Barrier};
use std::time::Instant;

/// Lines parsed and tokenized together in the pre-pass.
const CHUNK: usize = 256;

/// A sample left for the workers: where its line is, and its length for the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub line: u64,
    pub offset: u64,
    pub len: usize,
    pub tokens: usize,
}

/// Longest first; equal lengths in line order.
pub fn schedule(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| b.tokens.cmp(&a.tokens).then(a.line.cmp(&b.line)));
}

enum Msg {
    /// A worker's models are loaded (its tokenizer and BOS for the pre-pass), or failed.
    Loaded(Result<Box<(tokenizers::Tokenizer, Option<u32>, String)>>),
    Done(Result<Box<(ScoreRecord, usize)>>),
}

fn read_at(f: &mut File, job: &Job) -> Result<RawLine> {
    let mut bytes = vec![0u8; job.len];
    f.seek(SeekFrom::Start(job.offset))?;
    f.read_exact(&mut bytes)?;
    Ok(RawLine {
        number: job.line,
        bytes,
        offset: job.offset,
    })
}

/// Runs `f`, turning a panic into an error: a worker that died silently would leave the
/// main thread waiting, or a sample unscored.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(anyhow!(
            "the worker panicked (a bug in gateau; please report it)"
        ))
    })
}

/// One worker: load, report, wait for the queue, score until it is empty or the run stops.
fn worker(
    (s, dispatch): (&ScoreSettings, &Dispatch),
    choice: DeviceChoice,
    tx: mpsc::Sender<Msg>,
    gate: &Barrier,
    jobs: &std::sync::OnceLock<Vec<Job>>,
    next: &AtomicUsize,
    stop: &AtomicBool,
) {
    let loaded = guarded(|| {
        let (device, _) = model::open_device(&choice)?;
        let dtype = resolve_dtype(s.dtype, &device);
        model::configure_matmul(&device, dtype);
        model::check_fp8(&device)?;
        let c = Compute {
            device,
            dtype,
            dispatch: dispatch.clone(),
            fp8: crate::cli::DTypeArg::is_fp8(s.dtype),
        };
        Models::load(s, &c, None).with_context(|| format!("worker on {choice}"))
    });
    let models = match loaded {
        Ok(m) => {
            let l = &m.long;
            let loaded = Box::new((l.tokenizer.clone(), l.bos, l.source.clone()));
            let _ = tx.send(Msg::Loaded(Ok(loaded)));
            Some(m)
        }
        Err(e) => {
            let _ = tx.send(Msg::Loaded(Err(e)));
            None
        }
    };
    gate.wait();
    let (Some(models), Some(jobs)) = (models, jobs.get()) else {
        return;
    };
    let mut file = match File::open(&s.data) {
        Ok(f) => f,
        Err(e) => {
            let _ = tx.send(Msg::Done(Err(anyhow!(
                "cannot open {}: {e}",
                s.data.display()
            ))));
            return;
        }
    };
    let mut packer = packer(&models);
    let send = |r: Result<Vec<(ScoreRecord, usize)>>| match r {
        Ok(done) => done
            .into_iter()
            .all(|d| tx.send(Msg::Done(Ok(Box::new(d)))).is_ok()),
        Err(e) => tx.send(Msg::Done(Err(e))).is_ok(),
    };
    while !stop.load(Ordering::Relaxed) {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(i) else { break };
        let r = guarded(|| {
            let raw = read_at(&mut file, job)?;
            let sample = parse_line(&raw).map_err(|e| anyhow!("{}", e.reason))?;
            let t = tokenize_sample(
                &models.long.tokenizer,
                &s.template,
                s.chat.as_ref(),
                &sample,
                models.long.bos,
                s.max_len,
            )?
            .map_err(|e| anyhow!("{e}"))?;
            score_one(sample, t, &models, s, &mut packer)
        })
        .with_context(|| format!("{} line {} (on {choice})", s.data.display(), job.line));
        if !send(r) {
            return;
        }
    }
    // The small samples still waiting; a stopped run drops them (they get no record, and
    // the run fails, so --resume scores them).
    if !stop.load(Ordering::Relaxed) {
        let r = guarded(|| flush(&models, s, &mut packer))
            .with_context(|| format!("{} (on {choice})", s.data.display()));
        send(r);
        if let Some(msg) = packer.summary().filter(|_| !s.quiet) {
            eprintln!("gateau score: on {choice}: {msg}");
        }
        for msg in models.bucket_summaries().into_iter().filter(|_| !s.quiet) {
            eprintln!("gateau score: on {choice}: bucket {}: {msg}", s.bucket);
        }
    }
}

pub fn run(mut s: ScoreSettings) -> Result<std::process::ExitCode> {
    if s.phases == crate::score::memory::Phases::Two {
        anyhow::bail!(
            "--phases two runs on one device; for several, run one process per device with \
             --shard I/N (each may use two phases)"
        );
    }
    let dispatch = Dispatch::resolve(s.attention)?.with_bucket(s.bucket);
    let names: Vec<String> = s.devices.iter().map(|d| d.to_string()).collect();
    let started = Instant::now();
    // One fingerprint for every record: the workers must compute in one dtype.
    let mut dtypes = Vec::new();
    for &c in &s.devices {
        // Resolved as `resolve_dtype` will on each worker's device, without opening it.
        let dtype = match (s.dtype, c) {
            (Some(_), _) | (None, DeviceChoice::Cpu) => resolve_dtype(s.dtype, &Device::Cpu),
            (None, _) => candle_core::DType::BF16,
        };
        if !dtypes.contains(&dtype) {
            dtypes.push(dtype);
        }
    }
    if dtypes.len() > 1 {
        anyhow::bail!(
            "--devices {}: the devices would compute in {dtypes:?} (bf16 on CUDA, f32 on the \
             CPU by default), and the records would not be comparable; pass --dtype",
            names.join(",")
        );
    }
    if !s.quiet {
        let on = format!("{} workers: {}", s.devices.len(), names.join(", "));
        let attention = s.devices.iter().any(|d| *d != DeviceChoice::Cpu);
        let kernel = attention.then_some(&dispatch);
        eprintln!("{}", s.settings_line(&on, dtypes[0], kernel));
    }
    let fp = validate(&s, dtypes[0])?;
    s.fingerprint = fp.text.clone();
    let (output, existing) = crate::score::output::open(&s, &fp)?;
    let result = score_all((&s, &dispatch), output.file.try_clone()?, existing, started);
    if result.is_err() {
        output.discard_if_untouched();
    }
    result
}

/// The run once `--out` is open and locked.
fn score_all(
    (s, dispatch): (&ScoreSettings, &Dispatch),
    mut out: File,
    existing: Existing,
    started: Instant,
) -> Result<std::process::ExitCode> {
    let todo = count_pending(s, &existing)?;
    let mut seen: HashMap<String, u64> = HashMap::new();
    for (k, l) in &existing.ids {
        seen.entry(k.clone()).or_insert(*l);
    }
    let (tx, rx) = mpsc::channel::<Msg>();
    let gate = Barrier::new(s.devices.len() + 1);
    let jobs = std::sync::OnceLock::new();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut tally = Tally {
        kept_problems: existing.problems,
        kept: existing.lines.len() as u64,
        ..Tally::default()
    };
    let result = std::thread::scope(|scope| -> Result<Progress> {
        for &choice in &s.devices {
            let tx = tx.clone();
            let (gate, jobs, next, stop) = (&gate, &jobs, &next, &stop);
            scope.spawn(move || worker((s, dispatch), choice, tx, gate, jobs, next, stop));
        }
        drop(tx);
        // Every worker reports once, loaded or not; the gate opens only after the queue is
        // built (or the run is given up), so no worker waits forever.
        let mut first = None;
        let mut failed = None;
        for _ in 0..s.devices.len() {
            match rx.recv() {
                Ok(Msg::Loaded(Ok(t))) => {
                    first.get_or_insert(t);
                }
                Ok(Msg::Loaded(Err(e))) => {
                    failed.get_or_insert(e);
                }
                _ => {
                    failed.get_or_insert(anyhow!("a worker stopped before loading its models"));
                }
            }
        }
        let mut progress = Progress::new(todo, s.quiet);
        let built = match (failed, first) {
            (Some(e), _) => Err(e),
            (None, None) => Err(anyhow!("no worker loaded its models")),
            (None, Some(loaded)) => {
                let (tok, bos, source) = *loaded;
                if !s.quiet {
                    eprintln!(
                        "gateau score: long model {source}; models loaded in {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                let lm = (&tok, bos);
                pre_pass(
                    s,
                    lm,
                    &existing,
                    &mut seen,
                    &mut out,
                    &mut tally,
                    &mut progress,
                )
            }
        };
        let queue = match built {
            Ok(q) => q,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                gate.wait();
                return Err(e);
            }
        };
        let expected = queue.len();
        let _ = jobs.set(queue);
        gate.wait();
        let mut received = 0;
        for msg in rx {
            received += 1;
            let Msg::Done(r) = msg else { continue };
            let step = r.and_then(|done| {
                let (record, tokens) = *done;
                emit(&mut out, &record, tokens, &mut tally, &mut progress, s)
            });
            if let Err(e) = step {
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        if received != expected {
            anyhow::bail!(
                "{} of {expected} samples got no record (a worker stopped); run again with \
                 --resume to score them",
                expected - received
            );
        }
        Ok(progress)
    });
    let progress = result?;
    Ok(summarize(&tally, &progress, started, s))
}

/// Parses and tokenizes every pending line in line order: failures and duplicates are
/// written at once, the rest become jobs, longest first.
fn pre_pass(
    s: &ScoreSettings,
    lm: (&tokenizers::Tokenizer, Option<u32>),
    existing: &Existing,
    seen: &mut HashMap<String, u64>,
    out: &mut File,
    tally: &mut Tally,
    progress: &mut Progress,
) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    let mut intake = Intake::open(s, existing, lm, CHUNK)?;
    while let Some(chunk) = intake.next_chunk(|_| false)? {
        for (raw, p) in chunk {
            let record = match p {
                Prepared::Failed(r) => r,
                Prepared::Ready(sample, t) => match duplicate(&sample, seen) {
                    Some(r) => r,
                    None => {
                        jobs.push(Job {
                            line: raw.number,
                            offset: raw.offset,
                            len: raw.bytes.len(),
                            tokens: t.len(),
                        });
                        continue;
                    }
                },
            };
            write_record(out, &record, s)?;
            report(&record, tally, progress, s)?;
            progress.advance(0);
        }
    }
    if jobs.is_empty() && !s.quiet {
        eprintln!("gateau score: nothing left for the workers");
    }
    schedule(&mut jobs);
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_first_then_line_order() {
        let j = |line, tokens| Job {
            line,
            offset: 0,
            len: 0,
            tokens,
        };
        let mut v = vec![j(0, 5), j(1, 9), j(2, 5), j(3, 7)];
        schedule(&mut v);
        assert_eq!(v.iter().map(|x| x.line).collect::<Vec<_>>(), [1, 3, 0, 2]);
    }
}
