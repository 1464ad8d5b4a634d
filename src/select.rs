//! `gateau select`: read score records (one or more shard files), rank them across the
//! dataset, write the selected input lines byte for byte, and report.

use crate::data::{parse_line, LineReader};
use crate::normalize::cam_norm;
use crate::record::{ScoreRecord, Status};
use crate::report::{Counts, Diagnostics, DuplicateId, Problem, Report, SampleRow, Stats};
use crate::selection::{rank, Candidate, Ranked};
use crate::settings::{describe, SelectSettings};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::ExitCode;

/// Every record of the score files, one per input line (the first wins).
fn read_records(files: &[std::path::PathBuf]) -> Result<(BTreeMap<u64, ScoreRecord>, usize)> {
    let mut by_line = BTreeMap::new();
    let mut total = 0;
    for f in files {
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
            total += 1;
            by_line.entry(r.line).or_insert(r);
        }
    }
    Ok((by_line, total))
}

/// Byte offset and length of every input line, with ids checked against the records.
fn index_data(path: &Path, records: &BTreeMap<u64, ScoreRecord>) -> Result<Vec<(u64, usize)>> {
    let mut offsets = Vec::new();
    let mut pos = 0u64;
    for raw in LineReader::open(path)? {
        let raw = raw?;
        if let Some(r) = records.get(&raw.number) {
            if let Ok(s) = parse_line(&raw) {
                if s.id != r.id && r.status == Status::Ok {
                    bail!(
                        "{} line {} has id {}, but its score record has id {}: the scores \
                         were computed on another file",
                        path.display(),
                        raw.number,
                        s.id,
                        r.id
                    );
                }
            }
        }
        offsets.push((pos, raw.bytes.len()));
        pos += raw.bytes.len() as u64;
    }
    Ok(offsets)
}

fn read_line_at(f: &mut File, (off, len): (u64, usize)) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(&mut buf)?;
    if buf.last() != Some(&b'\n') {
        buf.push(b'\n');
    }
    Ok(buf)
}

pub fn run(s: SelectSettings) -> Result<ExitCode> {
    if !s.quiet {
        eprintln!("gateau select: settings {}", describe(&s));
    }
    let (records, n_records) = read_records(&s.scores)?;
    let offsets = index_data(&s.data, &records)?;
    let n_lines = offsets.len() as u64;
    if let Some((&line, _)) = records.range(n_lines..).next() {
        bail!(
            "score record for line {line}, but {} has only {n_lines} lines: the scores were \
             computed on another file",
            s.data.display()
        );
    }
    let mut counts = Counts {
        lines: n_lines,
        records: n_records,
        ..Counts::default()
    };
    let (mut bad, mut skipped, mut dups) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_of: HashMap<String, usize> = HashMap::new();
    let mut scored: Vec<&ScoreRecord> = Vec::new();
    for r in records.values() {
        let problem = || Problem {
            line: r.line,
            id: r.id.clone(),
            reason: r.error.clone().unwrap_or_default(),
        };
        match r.status {
            Status::Bad => bad.push(problem()),
            Status::Skipped => skipped.push(problem()),
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
                    scored.push(r);
                }
            },
        }
    }
    dups.retain(|d| !d.dropped_lines.is_empty());
    let missing: Vec<u64> = (0..n_lines).filter(|l| !records.contains_key(l)).collect();
    let cands: Vec<Candidate> = scored
        .iter()
        .map(|r| {
            let num = |v: Option<f64>, what: &str| {
                v.with_context(|| format!("score record of line {} has no {what}", r.line))
            };
            Ok(Candidate {
                line: r.line,
                ppl_short: num(r.ppl_short, "ppl_short")?,
                ppl_long: num(r.ppl_long, "ppl_long")?,
                seg_ppl: r.seg_ppl.clone().unwrap_or_default(),
                seg_attn: r.seg_attn.clone().unwrap_or_default(),
            })
        })
        .collect::<Result<_>>()?;
    let ranked = rank(&cands, s.alpha, s.hmg_norm, s.cam_norm);
    let k = s.keep.count(ranked.len());
    counts.scored = ranked.len();
    counts.selected = k;
    counts.bad = bad.len();
    counts.skipped = skipped.len();
    counts.missing = missing.len();
    counts.duplicate_ids = dups.iter().map(|d| d.dropped_lines.len()).sum();
    let problems = counts.bad + counts.skipped + counts.missing + counts.duplicate_ids;
    if s.strict && problems > 0 {
        bail!(
            "{} bad, {} skipped, {} missing and {} duplicate samples (--strict)",
            counts.bad,
            counts.skipped,
            counts.missing,
            counts.duplicate_ids
        );
    }

    write_selection(&s, &ranked[..k], &offsets)?;
    let by_line: HashMap<u64, &ScoreRecord> = scored.iter().map(|r| (r.line, *r)).collect();
    let diagnostics = diagnose(&s, &ranked, &cands);
    let report = Report {
        settings: serde_json::to_value(&s)?,
        counts,
        cutoff_score: k.checked_sub(1).map(|i| ranked[i].score),
        stats: stats(&ranked, &by_line),
        diagnostics,
        bad,
        skipped,
        missing_lines: missing,
        duplicate_ids: dups,
        samples: ranked
            .iter()
            .map(|r| {
                let rec = by_line[&r.line];
                SampleRow {
                    rank: r.rank,
                    line: r.line,
                    id: rec.id.clone(),
                    selected: r.rank < k,
                    score: r.score,
                    hmp: r.hmp,
                    cas: r.cas,
                    ppl_short: rec.ppl_short.unwrap_or(f64::NAN),
                    ppl_long: rec.ppl_long.unwrap_or(f64::NAN),
                    n_tokens: rec.n_tokens,
                }
            })
            .collect(),
    };
    if let Some(path) = &s.report {
        let f = File::create(path)
            .with_context(|| format!("cannot create --report {}", path.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(f), &report)
            .with_context(|| format!("cannot write --report {}", path.display()))?;
    }
    if !s.quiet {
        eprint!("{}", human_summary(&report, &s));
    }
    Ok(if problems > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn write_selection(s: &SelectSettings, chosen: &[Ranked], offsets: &[(u64, usize)]) -> Result<()> {
    let mut order: Vec<u64> = chosen.iter().map(|r| r.line).collect();
    if s.keep_order {
        order.sort_unstable();
    }
    let mut input =
        File::open(&s.data).with_context(|| format!("cannot open {}", s.data.display()))?;
    let tmp = s.out.with_extension("partial");
    let mut w = BufWriter::new(
        File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?,
    );
    for line in order {
        w.write_all(&read_line_at(&mut input, offsets[line as usize])?)?;
    }
    w.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // Renamed into place so a reader never sees half a selection.
    std::fs::rename(&tmp, &s.out)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), s.out.display()))
}

fn stats(ranked: &[Ranked], by_line: &HashMap<u64, &ScoreRecord>) -> BTreeMap<String, Stats> {
    let mut m = BTreeMap::new();
    let rec = |r: &Ranked| by_line[&r.line];
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

fn spread(v: &[f64]) -> f64 {
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    hi - lo
}

fn diagnose(s: &SelectSettings, ranked: &[Ranked], cands: &[Candidate]) -> Diagnostics {
    let sh = crate::normalize::softmax(&ranked.iter().map(|r| r.hmp).collect::<Vec<_>>());
    let sc = crate::normalize::softmax(&ranked.iter().map(|r| r.cas_filled).collect::<Vec<_>>());
    let hmg_term_std = Stats::of(sh.iter().map(|x| s.alpha * x)).std;
    let cam_term_std = Stats::of(sc.iter().map(|x| (1.0 - s.alpha) * x)).std;
    let with_segments: Vec<&Candidate> = cands.iter().filter(|c| c.seg_ppl.len() >= 2).collect();
    let mean = |f: &dyn Fn(&Candidate) -> f64| {
        if with_segments.is_empty() {
            0.0
        } else {
            with_segments.iter().map(|c| f(c)).sum::<f64>() / with_segments.len() as f64
        }
    };
    let att_spread_mean = mean(&|c| spread(&cam_norm(&c.seg_attn, s.cam_norm)));
    let is_spread_mean = mean(&|c| spread(&cam_norm(&c.seg_ppl, s.cam_norm)));
    let mut notes = Vec::new();
    if cam_term_std > hmg_term_std {
        notes.push(format!(
            "the CAM term varies more than the HMG term ({cam_term_std:.3e} vs {hmg_term_std:.3e}): \
             CAS dominates the ranking even at alpha {}",
            s.alpha
        ));
    }
    if !with_segments.is_empty() && att_spread_mean < 1e-3 {
        notes.push(format!(
            "ATT is nearly uniform within samples (mean spread {att_spread_mean:.1e}): CAS mostly \
             measures how uneven the segment perplexities are; --cam-norm l1 keeps the attention signal"
        ));
    }
    Diagnostics {
        hmg_term_std,
        cam_term_std,
        att_spread_mean,
        is_spread_mean,
        notes,
    }
}

fn human_summary(r: &Report, s: &SelectSettings) -> String {
    let c = &r.counts;
    let mut out = format!(
        "gateau select: kept {} of {} scored samples ({} lines; {} bad, {} skipped, {} missing, \
         {} duplicate ids) -> {}\n",
        c.selected,
        c.scored,
        c.lines,
        c.bad,
        c.skipped,
        c.missing,
        c.duplicate_ids,
        s.out.display()
    );
    if let Some(cut) = r.cutoff_score {
        out += &format!(
            "  cut-off score {cut:.6} (alpha {}, hmg {:?}, cam {:?})\n",
            s.alpha, s.hmg_norm, s.cam_norm
        );
    }
    out += "  rank  line  id                     score     HMP      CAS     ppl_short ppl_long\n";
    for row in r.samples.iter().filter(|x| x.selected).take(5) {
        let id = row.id.to_string();
        let id: String = id.chars().take(20).collect();
        out += &format!(
            "  {:>4}  {:>4}  {:<20} {:.6} {:>+7.3} {:>8} {:>9.3} {:>8.3}\n",
            row.rank + 1,
            row.line,
            id,
            row.score,
            row.hmp,
            row.cas.map_or("null".into(), |v| format!("{v:.4}")),
            row.ppl_short,
            row.ppl_long
        );
    }
    for n in &r.diagnostics.notes {
        out += &format!("  note: {n}\n");
    }
    out
}
