//! Score files checked against the input they claim to score, in one place for every
//! reader (`select`, `report`, `inspect`, `compare`, and any later one): all records made
//! with one fingerprint, each record's line hash that of its `--data` line, and no line of
//! `--data` without a record unless `--allow-missing`. Records of a gateau before
//! fingerprints (no `fingerprint`, no `line_hash`) are checked by id as before.

use crate::input::{parse_line, LineReader};
use crate::records::provenance::first_difference;
use crate::records::{ScoreRecord, Status};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// The records of a set of score files, checked against their input.
#[derive(Debug)]
pub struct Scores {
    /// One record per input line (the first of the files that has one).
    pub records: BTreeMap<u64, ScoreRecord>,
    /// Records read in all.
    pub n_records: usize,
    /// Byte offset and length of every input line (a byte-order mark excluded).
    pub offsets: Vec<(u64, usize)>,
    /// Lines whose id is their line number (no id of their own): never duplicates.
    pub fallback_ids: HashSet<u64>,
    /// Input lines without a record (empty unless `allow_missing`).
    pub missing: Vec<u64>,
}

/// Where a record was read: file and 1-based line.
fn at(files: &[PathBuf], (f, n): (usize, usize)) -> String {
    format!("{} line {n}", files[f].display())
}

/// How two records' fingerprints differ, in words.
fn unlike(first: Option<&str>, second: Option<&str>) -> String {
    let old = "has no fingerprint (written by a gateau older than fingerprints)";
    match (first, second) {
        (Some(a), Some(b)) => match first_difference(a, b) {
            Some((k, va, vb)) => format!("{k} differs ({va} in the first, {vb} in the second)"),
            None => "their fingerprints differ".into(),
        },
        (Some(_), None) => format!("the second {old}"),
        (None, _) => format!("the first {old}"),
    }
}

/// Reads every score file and checks it against `data` (see the module doc); the first
/// problem is an error naming the files, the line and the fix.
pub fn load(files: &[PathBuf], data: &Path, allow_missing: bool) -> Result<Scores> {
    let mut records = BTreeMap::new();
    let mut origin: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    let mut first_fp: Option<(Option<String>, (usize, usize))> = None;
    let mut n_records = 0;
    for (fi, f) in files.iter().enumerate() {
        let reader = BufReader::new(
            File::open(f).with_context(|| format!("cannot open score file {}", f.display()))?,
        );
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line.with_context(|| format!("cannot read {}", f.display()))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let r: ScoreRecord = serde_json::from_slice(&line).with_context(|| {
                format!(
                    "{} line {}: not a score record (a score run still writing, or cut off? \
                     finish it with `gateau score --resume`)",
                    f.display(),
                    i + 1
                )
            })?;
            n_records += 1;
            let here = (fi, i + 1);
            match &first_fp {
                None => first_fp = Some((r.fingerprint.clone(), here)),
                Some((fp, there)) if *fp != r.fingerprint => bail!(
                    "{} and {} were not scored alike: {}. Records of other settings must not be \
                     ranked together: score them again with one set of settings",
                    at(files, *there),
                    at(files, here),
                    unlike(fp.as_deref(), r.fingerprint.as_deref())
                ),
                Some(_) => {}
            }
            origin.entry(r.line).or_insert(here);
            records.entry(r.line).or_insert(r);
        }
    }
    let (offsets, fallback_ids) = check_lines(files, data, &records, &origin)?;
    let n_lines = offsets.len() as u64;
    if let Some((&line, _)) = records.range(n_lines..).next() {
        bail!(
            "{}: score record for input line {line}, but --data {} has only {n_lines} lines: \
             the scores were computed on another file",
            at(files, origin[&line]),
            data.display()
        );
    }
    let missing: Vec<u64> = (0..n_lines).filter(|l| !records.contains_key(l)).collect();
    if !missing.is_empty() && !allow_missing {
        bail!(
            "{}",
            missing_message(files, data, &records, &missing, n_lines)
        );
    }
    Ok(Scores {
        records,
        n_records,
        offsets,
        fallback_ids,
        missing,
    })
}

/// Byte offset and length of each input line.
type Offsets = Vec<(u64, usize)>;

/// Offsets of every input line and the lines with fallback ids; each record must be of
/// the line it names (its line hash, or for old records its id).
fn check_lines(
    files: &[PathBuf],
    data: &Path,
    records: &BTreeMap<u64, ScoreRecord>,
    origin: &BTreeMap<u64, (usize, usize)>,
) -> Result<(Offsets, HashSet<u64>)> {
    let mut offsets = Vec::new();
    let mut fallback = HashSet::new();
    for raw in LineReader::open(data)? {
        let raw = raw?;
        offsets.push((raw.offset, raw.bytes.len()));
        let Some(r) = records.get(&raw.number) else {
            continue;
        };
        let fix = "the scores were computed on another file or another version of it: pass \
                   the --data they were scored on, or score this one";
        match &r.line_hash {
            Some(h) if *h != raw.hash() => bail!(
                "{} is the record of input line {}, but that line of --data {} is not the one \
                 scored (line hash {h} in the record, {} now): {fix}",
                at(files, origin[&raw.number]),
                raw.number,
                data.display(),
                raw.hash()
            ),
            Some(_) => {}
            None => {
                if let Ok(s) = parse_line(&raw) {
                    if s.id != r.id && r.status == Status::Ok {
                        bail!(
                            "{} line {} has id {}, but its score record ({}) has id {}: {fix}",
                            data.display(),
                            raw.number,
                            s.id,
                            at(files, origin[&raw.number]),
                            r.id
                        );
                    }
                }
            }
        }
        // Only an id equal to the line number can be a fallback one.
        if r.status == Status::Ok && r.id == raw.number {
            if let Ok(s) = parse_line(&raw) {
                if !s.id_given {
                    fallback.insert(raw.number);
                }
            }
        }
    }
    Ok((offsets, fallback))
}

/// "lines 3-5, 9 and 12" for sorted line numbers (at most `max` runs, then a count).
pub fn ranges(lines: &[u64], max: usize) -> String {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &l in lines {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == l => *end = l,
            _ => runs.push((l, l)),
        }
    }
    let shown: Vec<String> = runs
        .iter()
        .take(max)
        .map(|&(a, b)| match b - a {
            0 => a.to_string(),
            _ => format!("{a}-{b}"),
        })
        .collect();
    let mut text = format!(
        "{} {}",
        if lines.len() == 1 { "line" } else { "lines" },
        shown.join(", ")
    );
    if runs.len() > max {
        let rest: u64 = runs[max..].iter().map(|(a, b)| b - a + 1).sum();
        text += &format!(" and {rest} more");
    }
    text
}

/// Which shards, or which line ranges, have no records, and what to do.
fn missing_message(
    files: &[PathBuf],
    data: &Path,
    records: &BTreeMap<u64, ScoreRecord>,
    missing: &[u64],
    n_lines: u64,
) -> String {
    let shards: BTreeSet<(u64, u64)> = records
        .values()
        .filter_map(|r| {
            let (i, n) = r.shard.as_deref()?.split_once('/')?;
            Some((i.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    let counts: BTreeSet<u64> = shards.iter().map(|s| s.1).collect();
    let mut parts = Vec::new();
    let mut rest: Vec<u64> = missing.to_vec();
    if let (1, Some(&n)) = (counts.len(), counts.first()) {
        let absent: Vec<u64> = (0..n.min(n_lines))
            .filter(|i| !shards.contains(&(*i, n)))
            .collect();
        for i in &absent {
            let file = crate::cli::settings::sibling(data, &format!(".scores.{i}-of-{n}.jsonl"));
            parts.push(format!(
                "shard {i}/{n} has no records (its file, {} by default, is not among --scores)",
                file.display()
            ));
        }
        rest.retain(|l| !absent.contains(&(l % n)));
    }
    if !rest.is_empty() {
        parts.push(format!(
            "{} have no record (a score run that has not finished? finish it with `gateau \
             score --resume`)",
            ranges(&rest, 8)
        ));
    }
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    format!(
        "{} of the {n_lines} lines of --data {} have no score record in --scores {}: {}. Pass \
         every shard's file to --scores, or --allow-missing to rank the scored lines only",
        missing.len(),
        data.display(),
        names.join(" "),
        parts.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ranges() {
        assert_eq!(ranges(&[3], 8), "line 3");
        assert_eq!(ranges(&[1, 2, 3, 7, 9, 10], 8), "lines 1-3, 7, 9-10");
        assert_eq!(ranges(&[1, 3, 5, 6], 2), "lines 1, 3 and 2 more");
    }
}
