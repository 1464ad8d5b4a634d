//! Score records read back and ranked: what `select`, `report`, `inspect` and `compare`
//! share. Reads every shard file through [`crate::records::verify::load`] (one fingerprint, line
//! hashes of this input, no missing lines unless allowed), sorts out bad, skipped, missing
//! and duplicate samples, and ranks the rest by a method.

use crate::cli::settings::RankSettings;
use crate::rank::selection::{rank_with, Candidate, Method, Missing, Ranked};
use crate::records::{ScoreRecord, Status};
use crate::report::json::{Counts, DuplicateId, Problem, SampleRow, Stats};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};

/// The scored samples of a dataset, ranked.
pub struct Analysis {
    pub records: BTreeMap<u64, ScoreRecord>,
    /// Byte offset and length of every input line.
    pub offsets: Vec<(u64, usize)>,
    pub counts: Counts,
    pub bad: Vec<Problem>,
    pub skipped: Vec<Problem>,
    pub missing: Vec<u64>,
    pub duplicates: Vec<DuplicateId>,
    /// The scored samples (first of each id), in line order.
    pub candidates: Vec<Candidate>,
    /// Those samples in score order under the chosen method.
    pub ranked: Vec<Ranked>,
    /// How many of `ranked` are selected.
    pub k: usize,
}

impl Analysis {
    pub fn record(&self, line: u64) -> &ScoreRecord {
        &self.records[&line]
    }

    pub fn problems(&self) -> usize {
        let c = &self.counts;
        c.bad + c.skipped + c.missing + c.duplicate_ids
    }

    /// Score of the last selected sample.
    pub fn cutoff(&self) -> Option<f64> {
        self.k.checked_sub(1).map(|i| self.ranked[i].score)
    }

    /// Ranks the same candidates by another method, keeping the cut's size rule.
    pub fn rerank(&self, s: &RankSettings, method: Method) -> Result<Vec<Ranked>> {
        rank_with(&self.candidates, method, &s.ranking()).map_err(|m| match m {
            Missing::PplAlone(line) => anyhow::anyhow!(
                "--method {}: the score record of line {line} has no ppl_alone; score with \
                 `gateau score --with-ifd` to use IFD",
                method.name()
            ),
            Missing::TokenNll(line) => anyhow::anyhow!(
                "--recipe {}: the score record of line {line} has no nll_short / nll_long; \
                 score with `gateau score --token-nll`, or use --recipe long-range",
                s.recipe.describe()
            ),
        })
    }

    /// Every scored sample in score order, with its parts and whether it is selected.
    pub fn rows(&self) -> Vec<SampleRow> {
        self.ranked
            .iter()
            .map(|r| {
                let rec = self.record(r.line);
                SampleRow {
                    rank: r.rank + 1,
                    line: r.line,
                    id: rec.id.clone(),
                    selected: r.rank < self.k,
                    score: r.score,
                    hmp: r.hmp,
                    cas: r.cas,
                    ppl_short: rec.ppl_short.unwrap_or(f64::NAN),
                    ppl_long: rec.ppl_long.unwrap_or(f64::NAN),
                    n_tokens: rec.n_tokens,
                }
            })
            .collect()
    }

    /// Whether every scored sample has what `method` needs.
    pub fn supports(&self, method: Method) -> bool {
        method != Method::Ifd || self.candidates.iter().all(|c| c.ppl_alone.is_some())
    }
}

/// Reads, checks and ranks (`--strict` turns any bad, skipped, missing or duplicate
/// sample into an error).
pub fn analyse(s: &RankSettings) -> Result<Analysis> {
    let loaded = crate::records::verify::load(&s.scores, &s.data, s.allow_missing)?;
    let (records, n_records, offsets) = (loaded.records, loaded.n_records, loaded.offsets);
    let n_lines = offsets.len() as u64;
    let (mut bad, mut skipped, mut dups) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_of: HashMap<String, usize> = HashMap::new();
    let mut candidates = Vec::new();
    for r in records.values() {
        let problem = || Problem {
            line: r.line,
            id: r.id.clone(),
            reason: r.error.clone().unwrap_or_default(),
        };
        match r.status {
            Status::Bad => bad.push(problem()),
            Status::Skipped => skipped.push(problem()),
            // A line-number id is no duplicate of anything (spec section 8).
            Status::Ok if loaded.fallback_ids.contains(&r.line) => candidates.push(candidate(r)?),
            Status::Ok => match first_of.get(&r.id_key()) {
                Some(&i) => {
                    let d: &mut DuplicateId = &mut dups[i];
                    d.dropped_lines.push(r.line);
                }
                None => {
                    first_of.insert(r.id_key(), dups.len());
                    dups.push(DuplicateId {
                        id: r.id.clone(),
                        kept_line: r.line,
                        dropped_lines: Vec::new(),
                    });
                    candidates.push(candidate(r)?);
                }
            },
        }
    }
    dups.retain(|d| !d.dropped_lines.is_empty());
    let missing = loaded.missing;
    let counts = Counts {
        lines: n_lines,
        records: n_records,
        scored: candidates.len(),
        selected: 0,
        bad: bad.len(),
        skipped: skipped.len(),
        missing: missing.len(),
        duplicate_ids: dups.iter().map(|d| d.dropped_lines.len()).sum(),
    };
    let mut a = Analysis {
        records,
        offsets,
        counts,
        bad,
        skipped,
        missing,
        duplicates: dups,
        candidates,
        ranked: Vec::new(),
        k: 0,
    };
    if s.strict && a.problems() > 0 {
        let c = &a.counts;
        bail!(
            "{} bad, {} skipped, {} missing and {} duplicate samples (--strict)",
            c.bad,
            c.skipped,
            c.missing,
            c.duplicate_ids
        );
    }
    a.ranked = a.rerank(s, s.method)?;
    a.k = s.keep.count(a.ranked.len());
    a.counts.selected = a.k;
    Ok(a)
}

fn candidate(r: &ScoreRecord) -> Result<Candidate> {
    let num = |v: Option<f64>, what: &str| {
        v.with_context(|| format!("score record of line {} has no {what}", r.line))
    };
    Ok(Candidate {
        line: r.line,
        ppl_short: num(r.ppl_short, "ppl_short")?,
        ppl_long: num(r.ppl_long, "ppl_long")?,
        seg_ppl: r.seg_ppl.clone().unwrap_or_default(),
        seg_attn: r.seg_attn.clone().unwrap_or_default(),
        ppl_alone: r.ppl_alone,
        seg_far: seg_far(r),
        nll: r.nll_short.clone().zip(r.nll_long.clone()),
    })
}

/// Per segment: does it end before the first context token model A reads? Every segment
/// does when model A is a separate checkpoint (it reads all of `S`); None for records
/// that do not say where their segments are.
pub fn seg_far(r: &ScoreRecord) -> Option<Vec<bool>> {
    let (starts, len, n_ctx) = (r.seg_start.as_ref()?, r.seg_len?, r.n_ctx?);
    let seen_from = n_ctx - r.ctx_short.unwrap_or(0).min(n_ctx);
    Some(starts.iter().map(|&st| st + len <= seen_from).collect())
}
/// Quantiles of every score component over the scored samples.
pub fn stats(a: &Analysis) -> BTreeMap<String, Stats> {
    let mut m = BTreeMap::new();
    let rec = |r: &Ranked| a.record(r.line);
    let ranked = &a.ranked;
    m.insert("score".into(), Stats::of(ranked.iter().map(|r| r.score)));
    m.insert("hmp".into(), Stats::of(ranked.iter().map(|r| r.hmp)));
    m.insert("cas".into(), Stats::of(ranked.iter().filter_map(|r| r.cas)));
    m.insert(
        "ppl_short".into(),
        Stats::of(ranked.iter().filter_map(|r| rec(r).ppl_short)),
    );
    m.insert(
        "ppl_long".into(),
        Stats::of(ranked.iter().filter_map(|r| rec(r).ppl_long)),
    );
    let ifd: Vec<f64> = a
        .candidates
        .iter()
        .filter_map(crate::rank::selection::ifd)
        .collect();
    if !ifd.is_empty() {
        m.insert("ifd".into(), Stats::of(ifd));
    }
    m.insert(
        "n_tokens".into(),
        Stats::of(
            ranked
                .iter()
                .filter_map(|r| rec(r).n_tokens.map(|n| n as f64)),
        ),
    );
    m
}
