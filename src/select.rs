//! `gateau select`: read score records (one or more shard files), rank them across the
//! dataset, write the selected input lines byte for byte, and report.

use crate::analysis::{analyse, Analysis};
use crate::normalize::cam_norm;
use crate::report::{Diagnostics, Report, Stats};
use crate::selection::{Candidate, Ranked};
use crate::settings::{describe, RankSettings, SelectSettings};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::process::ExitCode;

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
    let r = &s.rank;
    if !r.quiet {
        eprintln!("gateau select: settings {}", describe(&s));
    }
    let a = analyse(r)?;
    write_selection(&s, &a.ranked[..a.k], &a.offsets)?;
    let report = build_report(&s, &a)?;
    if let Some(path) = &s.report {
        crate::files::write_atomic(path, |f| {
            serde_json::to_writer_pretty(BufWriter::new(f), &report)
                .with_context(|| format!("cannot write --report {}", path.display()))
        })?;
    }
    if let Some(dir) = &s.report_dir {
        crate::summary::write_dir(r, &a, dir, crate::summary::DEFAULT_BINS)?;
    }
    if !r.quiet {
        eprint!("{}", human_summary(&report, &s));
        if let Some(dir) = &s.report_dir {
            eprintln!("  plots and summary in {}", dir.display());
        }
    }
    Ok(r.max_bad.exit_code(
        "gateau select",
        a.problems() as u64,
        a.counts.lines,
        r.quiet,
    ))
}

fn build_report(s: &SelectSettings, a: &Analysis) -> Result<Report> {
    Ok(Report {
        settings: serde_json::to_value(s)?,
        counts: a.counts.clone(),
        cutoff_score: a.cutoff(),
        stats: stats(a),
        diagnostics: diagnose(&s.rank, a),
        bad: a.bad.clone(),
        skipped: a.skipped.clone(),
        missing_lines: a.missing.clone(),
        duplicate_ids: a.duplicates.clone(),
        samples: a.rows(),
    })
}

fn write_selection(s: &SelectSettings, chosen: &[Ranked], offsets: &[(u64, usize)]) -> Result<()> {
    let mut order: Vec<u64> = chosen.iter().map(|r| r.line).collect();
    if s.keep_order {
        order.sort_unstable();
    }
    let data = &s.rank.data;
    let mut input = File::open(data).with_context(|| format!("cannot open {}", data.display()))?;
    // Renamed into place so a reader never sees half a selection.
    crate::files::write_atomic(&s.out, |f| {
        let mut w = BufWriter::new(f);
        for line in order {
            w.write_all(&read_line_at(&mut input, offsets[line as usize])?)?;
        }
        w.flush()
            .with_context(|| format!("cannot write --out {}", s.out.display()))
    })
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
        .filter_map(crate::selection::ifd)
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

fn spread(v: &[f64]) -> f64 {
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    hi - lo
}

fn diagnose(s: &RankSettings, a: &Analysis) -> Diagnostics {
    let (ranked, cands) = (&a.ranked, &a.candidates);
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
    let mut out = format!("gateau select: {} -> {}\n", c.sentence(), s.out.display());
    if let Some(cut) = r.cutoff_score {
        out += &format!(
            "  cut-off score {cut:.6} (method {}, alpha {}, hmg {:?}, cam {:?})\n",
            s.rank.method.name(),
            s.rank.alpha,
            s.rank.hmg_norm,
            s.rank.cam_norm
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
