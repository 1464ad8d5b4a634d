//! `gateau score`'s output file: refused when it is an input (by device and inode), locked
//! for the whole run so a second writer fails at once, replaced only with `--overwrite`,
//! and continued with `--resume` only when every record in it was made with this run's
//! settings (fingerprint), from this input (line hashes) and for this shard. A refused
//! resume leaves the file byte for byte as it was.

use crate::cli::settings::ScoreSettings;
use crate::files::{check_outputs, lock, Named};
use crate::input::{parse_line, LineReader};
use crate::records::provenance::{describe_difference, line_hash, Fingerprint};
use crate::records::{ScoreRecord, Status};
use crate::score::progress::Progress;
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Records already in `--out` (for --resume).
#[derive(Debug, Default)]
pub struct Existing {
    /// Input lines that have a record.
    pub lines: HashSet<u64>,
    /// Ids taken from the input of the kept scored records, with their lines (duplicates
    /// are decided among those only).
    pub ids: Vec<(String, u64)>,
    /// Kept records that are bad or skipped.
    pub problems: u64,
}

/// The open, locked `--out`.
#[derive(Debug)]
pub struct ScoreOutput {
    pub file: File,
    path: PathBuf,
    created: bool,
}

impl ScoreOutput {
    /// After a failed run: a file this run created and never wrote to is removed, so a
    /// failure leaves nothing behind.
    pub fn discard_if_untouched(&self) {
        let empty = self.file.metadata().is_ok_and(|m| m.len() == 0);
        if self.created && empty {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The inputs of a score run, for the same-file checks.
fn inputs(s: &ScoreSettings, fp: &Fingerprint) -> Vec<Named> {
    let mut v = vec![Named::new("--data", &s.data)];
    v.extend(s.config.iter().map(|c| Named::new("--config", c)));
    v.extend(fp.files.iter().map(|f| Named::new("a model file", f)));
    v
}

/// Opens and locks `--out` (and checks the phase-one side file's path); with `--resume`,
/// checks and keeps the records there and cuts a half-written last line.
pub(crate) fn open(s: &ScoreSettings, fp: &Fingerprint) -> Result<(ScoreOutput, Existing)> {
    let out = Named::new("--out", &s.out);
    let side = Named::new("the phase-one file", side_file(s));
    check_outputs(&[out.clone(), side], &inputs(s, fp))?;
    let created = std::fs::symlink_metadata(&s.out).is_err();
    if let Some(dir) = s.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    // Opened without truncating: the file is emptied only once this run holds its lock.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&s.out)
        .with_context(|| format!("cannot open --out {}", s.out.display()))?;
    lock(&f, &out, "--out")?;
    let len = f.metadata()?.len();
    if len > 0 && !s.resume && !s.overwrite {
        bail!(
            "--out {} already exists: pass --resume to continue it, or --overwrite to start over",
            s.out.display()
        );
    }
    let mut existing = Existing::default();
    if s.resume && len > 0 {
        let (records, keep) = read_records(&mut f, &s.out)?;
        existing = check_resume(s, &fp.text, &records)?;
        f.set_len(keep)?;
    } else {
        f.set_len(0)?;
    }
    f.seek(SeekFrom::End(0))?;
    let output = ScoreOutput {
        file: f,
        path: s.out.clone(),
        created,
    };
    Ok((output, existing))
}

/// The complete records of the file with their 1-based line numbers, and the length of
/// the part that holds them (a half-written last line is not kept).
fn read_records(f: &mut File, path: &Path) -> Result<(Vec<(usize, ScoreRecord)>, u64)> {
    let mut records = Vec::new();
    let mut keep = 0u64;
    let mut reader = BufReader::new(f);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let got = reader.read_until(b'\n', &mut buf)?;
        if got == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        let n = records.len() + 1;
        let rec: ScoreRecord = serde_json::from_slice(&buf).with_context(|| {
            format!(
                "{} line {n}: not a score record; cannot resume from it (pass --overwrite to \
                 start over)",
                path.display()
            )
        })?;
        records.push((n, rec));
        keep += got as u64;
    }
    Ok((records, keep))
}

/// Every kept record must have this run's fingerprint and shard, and the hash of the
/// input line it names; the first that does not stops the run, naming it and the fix.
fn check_resume(s: &ScoreSettings, fp: &str, records: &[(usize, ScoreRecord)]) -> Result<Existing> {
    let out = s.out.display();
    let shard = s.shard.map(|sh| format!("{}/{}", sh.index, sh.count));
    let mut by_line: HashMap<u64, (usize, &ScoreRecord)> = HashMap::new();
    for (n, r) in records {
        if r.fingerprint.as_deref() != Some(fp) {
            bail!(
                "--resume: {out} line {n} (the record of input line {}) was made with other \
                 settings: {}. Resume with the settings it was made with, or pass --overwrite \
                 instead of --resume to score everything again",
                r.line,
                describe_difference(r.fingerprint.as_deref(), fp)
            );
        }
        let in_shard = s.shard.is_none_or(|sh| sh.contains(r.line));
        if r.shard != shard || !in_shard {
            bail!(
                "--resume: {out} line {n} holds the record of input line {} made with {}, but \
                 this run is {}: it is another shard's file. Resume it with its own --shard, or \
                 give this shard its own --out",
                r.line,
                r.shard
                    .as_ref()
                    .map_or("no --shard".into(), |x| format!("--shard {x}")),
                shard
                    .as_ref()
                    .map_or("not sharded".into(), |x| format!("--shard {x}"))
            );
        }
        if let Some((m, _)) = by_line.insert(r.line, (*n, r)) {
            bail!(
                "--resume: {out} lines {m} and {n} both hold the record of input line {} (two \
                 runs wrote it at once?); pass --overwrite to score again",
                r.line
            );
        }
    }
    let mut existing = Existing::default();
    let mut n_lines = 0u64;
    for raw in LineReader::open(&s.data)? {
        let raw = raw?;
        n_lines += 1;
        let Some((n, r)) = by_line.get(&raw.number) else {
            continue;
        };
        let now = line_hash(&raw);
        if r.line_hash.as_deref() != Some(now.as_str()) {
            bail!(
                "--resume: {out} line {n} scored input line {}, but that line of --data {} is \
                 not the one scored (line hash {} in the record, {now} now): the output belongs \
                 to another input, or the input changed. Pass the --data it was scored on, or \
                 --overwrite to score again",
                raw.number,
                s.data.display(),
                r.line_hash.as_deref().unwrap_or("(none)")
            );
        }
        existing.lines.insert(raw.number);
        if r.status != Status::Ok {
            existing.problems += 1;
        } else if let Ok(sample) = parse_line(&raw) {
            if sample.id_given {
                existing.ids.push((sample.id.to_string(), raw.number));
            }
        }
    }
    if let Some((n, r)) = records.iter().find(|(_, r)| r.line >= n_lines) {
        bail!(
            "--resume: {out} line {n} holds the record of input line {}, but --data {} has \
             only {n_lines} lines: the output belongs to another input. Pass the --data it was \
             scored on, or --overwrite to score again",
            r.line,
            s.data.display()
        );
    }
    existing.ids.sort_by_key(|(_, l)| *l);
    Ok(existing)
}
/// Counts per outcome, for the summary and the exit status.
#[derive(Default)]
pub struct Tally {
    pub scored: u64,
    pub skipped: u64,
    pub bad: u64,
    pub warned: u64,
    pub truncated: u64,
    pub tokens: u64,
    /// Bad or skipped records kept by --resume.
    pub kept_problems: u64,
    /// Records kept by --resume.
    pub kept: u64,
    pub reported: Vec<String>,
}

/// What must hold before any output file is created: the models and tokenizer can be
/// read, the input is a dataset; gives the run's fingerprint.
pub fn validate(s: &ScoreSettings, dtype: candle_core::DType) -> Result<Fingerprint> {
    crate::checkpoint::describe_model(&s.long_spec())?;
    if let Some(spec) = crate::score::pair::short_spec(s) {
        crate::checkpoint::describe_model(&spec)?;
    }
    crate::input::hints::refuse_unreadable(&s.data)?;
    Fingerprint::of(s, dtype)
}

/// Prints the run's summary and gives its exit status.
pub fn summarize(
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

/// Writes a finished sample's record and accounts for it.
pub fn emit(
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
pub fn write_record(out: &mut File, r: &ScoreRecord, s: &ScoreSettings) -> Result<()> {
    let mut r = r.clone();
    r.fingerprint = Some(s.fingerprint.clone());
    r.shard = s.shard.map(|sh| format!("{}/{}", sh.index, sh.count));
    let mut line = serde_json::to_vec(&r)?;
    line.push(b'\n');
    out.write_all(&line)
        .and_then(|_| out.flush())
        .with_context(|| format!("cannot write to {}", s.out.display()))
}

pub fn report(r: &ScoreRecord, t: &mut Tally, p: &Progress, s: &ScoreSettings) -> Result<()> {
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
/// The phase-one side file of a two-phase run: next to `--out`.
pub fn side_file(s: &ScoreSettings) -> PathBuf {
    let mut name = s.out.as_os_str().to_owned();
    name.push(".short-pass.jsonl");
    PathBuf::from(name)
}
