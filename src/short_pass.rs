//! Phase one of a two-phase `gateau score`: model A alone over every pending sample,
//! ppl_short written to a side file next to `--out` (`<out>.short-pass.jsonl`, one
//! `{"line", "ppl_short"}` per sample, plus `"nll"` with `--token-nll`; resumable), read
//! back by phase two.

use crate::data::LineReader;
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
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    line: u64,
    ppl_short: f64,
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

pub fn side_file(s: &ScoreSettings) -> PathBuf {
    let mut name = s.out.as_os_str().to_owned();
    name.push(".short-pass.jsonl");
    PathBuf::from(name)
}

/// Entries already in the side file (a cut last line is ignored and rewritten).
fn read_side(path: &PathBuf) -> Result<HashMap<u64, ShortResult>> {
    let mut out = HashMap::new();
    let Ok(f) = File::open(path) else {
        return Ok(out);
    };
    for line in BufReader::new(f).lines() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if let Ok(e) = serde_json::from_str::<Entry>(&line) {
            out.insert(
                e.line,
                ShortResult {
                    ppl: e.ppl_short,
                    nll: e.nll,
                },
            );
        }
    }
    Ok(out)
}

fn entry(line: u64, r: &ShortResult) -> Result<String> {
    Ok(serde_json::to_string(&Entry {
        line,
        ppl_short: r.ppl,
        nll: r.nll.clone(),
    })?)
}

/// Runs phase one; returns model A's numbers by line for every pending sample that
/// tokenized.
pub(crate) fn run(
    s: &ScoreSettings,
    device: &Device,
    dtype: DType,
    existing: &Existing,
) -> Result<HashMap<u64, ShortResult>> {
    let path = side_file(s);
    let mut done = if s.resume {
        read_side(&path)?
    } else {
        HashMap::new()
    };
    // Rewritten whole, so a cut last line never sits before new entries.
    let mut side =
        File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    for (line, r) in &done {
        writeln!(side, "{}", entry(*line, r)?)?;
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
        .filter(|&l| in_shard(l) && !existing.lines.contains_key(&l) && !done.contains_key(&l))
        .count() as u64;
    let mut progress = Progress::new(todo, s.quiet);
    let mut reader = LineReader::open(&s.data)?;
    loop {
        let mut chunk = Vec::with_capacity(32);
        for raw in reader.by_ref() {
            let raw = raw?;
            if !in_shard(raw.number)
                || done.contains_key(&raw.number)
                || already_done(&raw, existing, s)?
            {
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
                writeln!(side, "{}", entry(raw.number, &r)?)
                    .and_then(|_| side.flush())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                done.insert(raw.number, r);
                tokens = full.len();
            }
            progress.advance(tokens as u64);
        }
    }
    progress.finish();
    if !s.quiet {
        eprintln!("gateau score: phase 2 of 2: long model {}", s.long_model);
    }
    Ok(done)
}

/// The side file is an intermediate: gone once phase two has finished.
pub fn done(s: &ScoreSettings) {
    let _ = std::fs::remove_file(side_file(s));
}
