//! `gateau select`: read score records (one or more shard files), rank them across the
//! dataset, write the selected input lines byte for byte, and report.

use crate::cli::settings::SelectSettings;
use crate::rank::selection::Ranked;
use crate::report::analysis::{analyse, Analysis};
use crate::report::json::Report;
use crate::report::notes::diagnose;
use anyhow::{Context, Result};
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
        eprintln!("{}", s.settings_line());
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
        crate::report::summary::write_dir(r, &a, dir, crate::report::summary::DEFAULT_BINS, None)?;
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
        stats: crate::report::analysis::stats(a),
        diagnostics: diagnose(&a.candidates, &a.ranked, &s.rank.ranking()),
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
    if s.out == std::path::Path::new("-") {
        let mut w = BufWriter::new(std::io::stdout().lock());
        for line in order {
            w.write_all(&read_line_at(&mut input, offsets[line as usize])?)?;
        }
        return w.flush().context("cannot write --out - (standard output)");
    }
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

fn human_summary(r: &Report, s: &SelectSettings) -> String {
    let c = &r.counts;
    let to = match s.out == std::path::Path::new("-") {
        true => "standard output".to_string(),
        false => s.out.display().to_string(),
    };
    let mut out = format!("gateau select: {} -> {to}\n", c.sentence());
    if let Some(cut) = r.cutoff_score {
        out += &format!(
            "  cut-off score {cut:.6} (method {}, recipe {}, alpha {})\n",
            s.rank.method.name(),
            s.rank.recipe.describe(),
            s.rank.alpha,
        );
    }
    out += "  rank  line  id                     score     HMG      CAM     ppl_short ppl_long\n";
    for row in r.samples.iter().filter(|x| x.selected).take(5) {
        let id = row.id.to_string();
        let id: String = id.chars().take(20).collect();
        out += &format!(
            "  {:>4}  {:>4}  {:<20} {:.6} {:>+7.3} {:>8} {:>9.3} {:>8.3}\n",
            row.rank,
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
