//! Phase one of a two-phase `gateau score`: model A alone over every pending sample,
//! ppl_short written to a side file next to `--out` (`<out>.short-pass.jsonl`, one
//! `{"line", "ppl_short", "fingerprint", "line_hash"}` per sample, plus `"nll"` with
//! `--token-nll`; resumable, locked while
//! it is written), read back by phase two. On resume, entries of other settings or of a
//! changed input line are computed again.

use crate::data::LineReader;
use crate::files::{lock, Named};
use crate::model;
use crate::models::{load_short, short_spec};
use crate::passes::ppl;
use crate::progress::Progress;
use crate::score::{already_done, prepare, Existing, Prepared};
use crate::settings::ScoreSettings;
use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    line: u64,
    ppl_short: f64,
    #[serde(default)]
    fingerprint: Option<String>,
    #[serde(default)]
    line_hash: Option<String>,
    /// Per-token response NLL (with `--token-nll`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nll: Option<Vec<f32>>,
}

/// Model A's numbers for one sample, from phase one.
#[derive(Debug, Clone)]
pub struct ShortResult {
    pub ppl: f64,
    pub nll: Option<Vec<f32>>,
}

/// A kept phase-one result and the hash of the line it was computed on.
type Done = HashMap<u64, (ShortResult, String)>;

pub fn side_file(s: &ScoreSettings) -> PathBuf {
    let mut name = s.out.as_os_str().to_owned();
    name.push(".short-pass.jsonl");
    PathBuf::from(name)
}

/// Entries of this run's settings already in the side file (a cut last line is ignored
/// and rewritten), and how many others were dropped.
fn read_side(f: &File, path: &Path, fingerprint: &str) -> Result<(Done, usize)> {
    let mut out = HashMap::new();
    let mut dropped = 0;
    for line in BufReader::new(f).lines() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if let Ok(e) = serde_json::from_str::<Entry>(&line) {
            match (e.fingerprint.as_deref() == Some(fingerprint), e.line_hash) {
                (true, Some(h)) => {
                    let r = ShortResult {
                        ppl: e.ppl_short,
                        nll: e.nll,
                    };
                    out.insert(e.line, (r, h));
                }
                _ => dropped += 1,
            }
        }
    }
    Ok((out, dropped))
}

fn write_entry(side: &mut File, path: &Path, e: &Entry) -> Result<()> {
    writeln!(side, "{}", serde_json::to_string(e)?)
        .and_then(|_| side.flush())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Runs phase one; returns ppl_short by line for every pending sample that tokenized.
pub(crate) fn run(
    s: &ScoreSettings,
    device: &Device,
    dtype: DType,
    existing: &Existing,
) -> Result<HashMap<u64, ShortResult>> {
    let path = side_file(s);
    let mut side = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    lock(&side, &Named::new("the phase-one file", &path), "--out")?;
    let (mut done, dropped) = if s.resume {
        read_side(&side, &path, &s.fingerprint)?
    } else {
        (HashMap::new(), 0)
    };
    if dropped > 0 && !s.quiet {
        eprintln!(
            "gateau score: {dropped} phase-one results in {} were made with other settings \
             (or by an older gateau): computing them again",
            path.display()
        );
    }
    // Rewritten whole, so a cut last line never sits before new entries.
    side.set_len(0)?;
    side.seek(SeekFrom::Start(0))?;
    let mut lines: Vec<_> = done.iter().collect();
    lines.sort_by_key(|(l, _)| **l);
    for (line, (r, h)) in lines {
        let e = Entry {
            line: *line,
            ppl_short: r.ppl,
            fingerprint: Some(s.fingerprint.clone()),
            line_hash: Some(h.clone()),
            nll: r.nll.clone(),
        };
        write_entry(&mut side, &path, &e)?;
    }
    let spec = short_spec(s).ok_or_else(|| anyhow!("two phases need --short-model"))?;
    // Tokens come from model B's tokenizer, as in a one-phase run.
    let (long_cfg, tokenizer) = model::describe_model(&s.long_spec())?;
    let short = load_short(s, &spec, tokenizer.get_vocab_size(true), device, dtype)?;
    let bos = long_cfg.bos_token_id;
    if !s.quiet {
        eprintln!(
            "gateau score: phase 1 of 2: short model {} ({} samples already done)",
            short.source,
            done.len()
        );
    }
    let in_shard = |l: u64| s.shard.is_none_or(|sh| sh.contains(l));
    let n_lines = crate::data::reader::count_lines(&s.data)?;
    let todo = (0..n_lines)
        .filter(|&l| in_shard(l) && !existing.lines.contains(&l) && !done.contains_key(&l))
        .count() as u64;
    let mut progress = Progress::new(todo, s.quiet);
    let mut reader = LineReader::open(&s.data)?;
    loop {
        let mut chunk = Vec::with_capacity(32);
        for raw in reader.by_ref() {
            let raw = raw?;
            // A result of another version of this line is computed again.
            let fresh = done.get(&raw.number).is_some_and(|(_, h)| *h == raw.hash());
            if !in_shard(raw.number) || fresh || already_done(&raw, existing) {
                continue;
            }
            chunk.push(raw);
            if chunk.len() == 32 {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        let prepared: Vec<Prepared> = chunk
            .par_iter()
            .map(|raw| prepare(raw, &tokenizer, bos, s))
            .collect::<Result<_>>()?;
        for (raw, p) in chunk.iter().zip(prepared) {
            let mut tokens = 0;
            // Bad and skipped lines are recorded in phase two.
            if let Prepared::Ready(_, t) = p {
                let full = t.full();
                let o = short
                    .llama
                    .forward(std::slice::from_ref(&full), t.resp_start(), false)
                    .with_context(|| format!("{} line {}", s.data.display(), raw.number))?;
                let nll = &o.nll[0];
                let r = ShortResult {
                    ppl: ppl(nll),
                    nll: s.token_nll.then(|| nll.clone()),
                };
                let e = Entry {
                    line: raw.number,
                    ppl_short: r.ppl,
                    fingerprint: Some(s.fingerprint.clone()),
                    line_hash: Some(raw.hash()),
                    nll: r.nll.clone(),
                };
                write_entry(&mut side, &path, &e)?;
                done.insert(raw.number, (r, raw.hash()));
                tokens = full.len();
            }
            progress.advance(tokens as u64);
        }
    }
    progress.finish();
    if !s.quiet {
        eprintln!("gateau score: phase 2 of 2: long model {}", s.long_model);
    }
    Ok(done.into_iter().map(|(l, (r, _))| (l, r)).collect())
}

/// The side file is an intermediate: gone once phase two has finished.
pub fn done(s: &ScoreSettings) {
    let _ = std::fs::remove_file(side_file(s));
}
