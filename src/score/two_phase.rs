//! Phase one of a two-phase `gateau score`: model A alone over every pending sample,
//! ppl_short written to a side file next to `--out` (`<out>.short-pass.jsonl`, one
//! `{"line", "ppl_short", "fingerprint", "line_hash"}` per sample, plus `"nll"` with
//! `--token-nll`; resumable, locked while
//! it is written), read back by phase two. On resume, entries of other settings or of a
//! changed input line are computed again.

use super::intake::{pending_lines, Intake, Prepared, PREFETCH};
use super::output::{side_file, Existing};
use super::pair::{load_short, short_spec, ShortResult};
use super::passes::ppl;
use super::progress::Progress;
use crate::cli::settings::ScoreSettings;
use crate::files::{lock, Named};
use crate::model::Compute;
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;

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

/// A kept phase-one result and the hash of the line it was computed on.
type Done = HashMap<u64, (ShortResult, String)>;

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
    c: &Compute,
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
    let (long_cfg, tokenizer) = crate::checkpoint::describe_model(&s.long_spec())?;
    let short = load_short(s, &spec, tokenizer.get_vocab_size(true), c)?;
    let bos = long_cfg.bos_token_id;
    if !s.quiet {
        eprintln!(
            "gateau score: phase 1 of 2: short model {} ({} samples already done)",
            short.source,
            done.len()
        );
    }
    let todo = pending_lines(s, existing)?
        .filter(|l| !done.contains_key(l))
        .count() as u64;
    let mut progress = Progress::new(todo, s.quiet);
    let mut intake = Intake::open(s, existing, (&tokenizer, bos), PREFETCH)?;
    // A result of another version of this line is computed again.
    let fresh = |done: &Done, raw: &crate::input::RawLine| {
        done.get(&raw.number).is_some_and(|(_, h)| *h == raw.hash())
    };
    loop {
        let Some(chunk) = intake.next_chunk(|raw| fresh(&done, raw))? else {
            break;
        };
        for (raw, p) in chunk {
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
