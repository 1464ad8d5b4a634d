//! The one intake loop of `gateau score`: the input's pending lines in line order (lines
//! of other shards and lines kept by `--resume` are passed over), parsed and tokenized a
//! chunk at a time in parallel, each line becoming a sample ready for its passes or the
//! record of why it is not; `--limit` stops it after the first N pending lines; and the
//! duplicate-id rule, which needs line order.

use super::output::Existing;
use crate::cli::settings::ScoreSettings;
use crate::input::chat::tokenize_sample;
use crate::input::template::{TokenizeError, Tokens};
use crate::input::{parse_line, LineReader, RawLine, Sample};
use crate::records::{ScoreRecord, Status};
use anyhow::{Context, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use tokenizers::Tokenizer;

/// Lines parsed and tokenized together (in parallel) before their model passes.
pub const PREFETCH: usize = 32;

/// What a line became before the model passes.
pub enum Prepared {
    Failed(ScoreRecord),
    Ready(Sample, Tokens),
}

pub fn prepare(
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

/// The pending lines of one input, prepared a chunk at a time.
pub struct Intake<'a> {
    reader: LineReader,
    s: &'a ScoreSettings,
    existing: &'a Existing,
    tokenizer: &'a Tokenizer,
    bos: Option<u32>,
    chunk: usize,
    /// Pending lines met so far (counted against `--limit`).
    met: u64,
}

impl<'a> Intake<'a> {
    /// Opens `--data`; lines come `chunk` at a time, tokenized by model B's tokenizer.
    pub fn open(
        s: &'a ScoreSettings,
        existing: &'a Existing,
        (tokenizer, bos): (&'a Tokenizer, Option<u32>),
        chunk: usize,
    ) -> Result<Self> {
        Ok(Self {
            reader: LineReader::open(&s.data)?,
            s,
            existing,
            tokenizer,
            bos,
            chunk,
            met: 0,
        })
    }

    /// Whether this run scores `line`: in the shard, and not kept by `--resume`.
    pub fn pending(s: &ScoreSettings, existing: &Existing, line: u64) -> bool {
        s.shard.is_none_or(|sh| sh.contains(line)) && !existing.lines.contains(&line)
    }

    /// The next chunk of pending lines that `skip` does not pass over, each with what it
    /// became; None once the input is read.
    pub fn next_chunk(
        &mut self,
        skip: impl Fn(&RawLine) -> bool,
    ) -> Result<Option<Vec<(RawLine, Prepared)>>> {
        let mut chunk = Vec::with_capacity(self.chunk);
        let limit = self.s.limit.unwrap_or(u64::MAX);
        while self.met < limit {
            let Some(raw) = self.reader.next() else {
                break;
            };
            let raw = raw?;
            if !Self::pending(self.s, self.existing, raw.number) {
                continue;
            }
            // `skip` passes over a line that still counts against --limit (two-phase
            // runs skip lines phase one already did: both phases see the same N lines).
            self.met += 1;
            if skip(&raw) {
                continue;
            }
            chunk.push(raw);
            if chunk.len() == self.chunk {
                break;
            }
        }
        if chunk.is_empty() {
            return Ok(None);
        }
        let prepared: Vec<Prepared> = chunk
            .par_iter()
            .map(|raw| prepare(raw, self.tokenizer, self.bos, self.s))
            .collect::<Result<_>>()?;
        Ok(Some(chunk.into_iter().zip(prepared).collect()))
    }
}

/// The line numbers this run scores: pending ones, the first `--limit` of them.
pub fn pending_lines<'a>(
    s: &'a ScoreSettings,
    existing: &'a Existing,
) -> Result<impl Iterator<Item = u64> + 'a> {
    let n_lines = crate::input::reader::count_lines(&s.data)?;
    Ok((0..n_lines)
        .filter(move |&l| Intake::pending(s, existing, l))
        .take(s.limit.map_or(usize::MAX, |n| n as usize)))
}

/// How many lines of the input this run scores.
pub fn count_pending(s: &ScoreSettings, existing: &Existing) -> Result<u64> {
    Ok(pending_lines(s, existing)?.count() as u64)
}

/// The record of a sample whose id an earlier scored sample already has (and, if not,
/// the id is remembered). Only ids taken from the input count: a line-number fallback id
/// never makes a duplicate (spec section 8). Samples must come in line order.
pub fn duplicate(sample: &Sample, seen: &mut HashMap<String, u64>) -> Option<ScoreRecord> {
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
