//! `gateau inspect`: one sample's segment view (IS and ATT along the context) with its
//! HMP, CAS, score and rank, as a terminal sparkline, JSON, or a PNG.

use crate::analysis::{analyse, Analysis};
use crate::cli::InspectArgs;
use crate::rank::normalize::cam_norm;
use crate::record::{ScoreRecord, Status};
use crate::settings::{describe, RankSettings};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Segment {
    pub index: usize,
    pub seg_ppl: f64,
    pub seg_attn: f64,
    /// seg_ppl normalized over the sample's segments (--cam-norm); high = less important.
    pub is: f64,
    /// seg_attn normalized the same way.
    pub att: f64,
}

/// Everything `inspect` shows, as printed by `--json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct View {
    pub id: Value,
    pub line: u64,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub method: String,
    /// 1-based position in score order, of `scored`.
    pub rank: Option<usize>,
    pub scored: usize,
    pub selected: bool,
    pub score: Option<f64>,
    pub hmp: Option<f64>,
    pub cas: Option<f64>,
    pub ppl_short: Option<f64>,
    pub ppl_long: Option<f64>,
    pub n_tokens: Option<usize>,
    pub n_ctx: Option<usize>,
    pub segments: Vec<Segment>,
}

pub struct InspectSettings {
    pub rank: RankSettings,
    pub id: String,
    pub out: Option<PathBuf>,
    pub json: bool,
}

impl InspectSettings {
    pub fn resolve(a: &InspectArgs) -> Result<Self> {
        let (rank, _) = RankSettings::resolve(&a.rank, &a.common)?;
        if let Some(o) = &a.out {
            rank.check_output(o, "--out")?;
        }
        Ok(Self {
            rank,
            id: a.id.clone(),
            out: a.out.clone(),
            json: a.json,
        })
    }
}

/// The record whose id is `arg` read as a JSON scalar, else as a plain string.
pub fn find<'a>(a: &'a Analysis, arg: &str) -> Option<&'a ScoreRecord> {
    let as_json = serde_json::from_str::<Value>(arg)
        .ok()
        .filter(|v| !v.is_object() && !v.is_array());
    let text = Value::String(arg.to_string());
    let by = |want: &Value| a.records.values().find(|r| &r.id == want);
    as_json.as_ref().and_then(by).or_else(|| by(&text))
}

pub fn view(s: &RankSettings, a: &Analysis, r: &ScoreRecord) -> View {
    let ranked = a.ranked.iter().find(|x| x.line == r.line);
    let (seg_ppl, seg_attn) = (
        r.seg_ppl.clone().unwrap_or_default(),
        r.seg_attn.clone().unwrap_or_default(),
    );
    let (is, att) = (
        cam_norm(&seg_ppl, s.cam_norm),
        cam_norm(&seg_attn, s.cam_norm),
    );
    View {
        id: r.id.clone(),
        line: r.line,
        status: r.status,
        error: r.error.clone(),
        method: s.method.name().into(),
        rank: ranked.map(|x| x.rank + 1),
        scored: a.ranked.len(),
        selected: ranked.is_some_and(|x| x.rank < a.k),
        score: ranked.map(|x| x.score),
        hmp: ranked.map(|x| x.hmp),
        cas: ranked.and_then(|x| x.cas),
        ppl_short: r.ppl_short,
        ppl_long: r.ppl_long,
        n_tokens: r.n_tokens,
        n_ctx: r.n_ctx,
        segments: (0..seg_ppl.len().min(seg_attn.len()))
            .map(|i| Segment {
                index: i,
                seg_ppl: seg_ppl[i],
                seg_attn: seg_attn[i],
                is: is[i],
                att: att[i],
            })
            .collect(),
    }
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Values averaged into at most `width` columns, each drawn as one of eight bar heights
/// between the row's minimum and maximum.
pub fn sparkline(v: &[f64], width: usize) -> String {
    if v.is_empty() {
        return String::new();
    }
    let cols = v.len().min(width.max(1));
    let col: Vec<f64> = (0..cols)
        .map(|c| {
            let (s, e) = (
                c * v.len() / cols,
                ((c + 1) * v.len() / cols).max(c * v.len() / cols + 1),
            );
            v[s..e].iter().sum::<f64>() / (e - s) as f64
        })
        .collect();
    let lo = col.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = col.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    col.iter()
        .map(|&x| {
            let t = if hi > lo { (x - lo) / (hi - lo) } else { 0.5 };
            BARS[((t * 7.0).round() as usize).min(7)]
        })
        .collect()
}

fn num(v: Option<f64>) -> String {
    v.map_or("null".into(), |x| format!("{x:.6}"))
}

pub fn text(v: &View) -> String {
    let mut out = format!("sample id {} (line {}): {:?}", v.id, v.line, v.status);
    if let Some(e) = &v.error {
        out += &format!(" ({e})");
    }
    out += "\n";
    if let Some(rank) = v.rank {
        out += &format!(
            "  rank {rank} of {} by {} -> {}\n  score {}  HMP {}  CAS {}\n  ppl_short {}  ppl_long {}  tokens {}  context {}\n",
            v.scored,
            v.method,
            if v.selected { "selected" } else { "not selected" },
            num(v.score),
            num(v.hmp),
            num(v.cas),
            num(v.ppl_short),
            num(v.ppl_long),
            v.n_tokens.map_or("?".into(), |n| n.to_string()),
            v.n_ctx.map_or("?".into(), |n| n.to_string()),
        );
    }
    if v.segments.is_empty() {
        out += "  no segments (no context, or shorter than one segment)\n";
        return out;
    }
    let is: Vec<f64> = v.segments.iter().map(|s| s.is).collect();
    let att: Vec<f64> = v.segments.iter().map(|s| s.att).collect();
    out += &format!(
        "  {} segments, context order left to right (each row scaled to its own min..max)\n",
        v.segments.len()
    );
    out += &format!("  IS  {}\n", sparkline(&is, 80));
    out += &format!("  ATT {}\n", sparkline(&att, 80));
    let mut by_att: Vec<&Segment> = v.segments.iter().collect();
    by_att.sort_by(|a, b| b.att.total_cmp(&a.att).then(a.index.cmp(&b.index)));
    out += "  most attended segments: ";
    out += &by_att
        .iter()
        .take(5)
        .map(|s| format!("#{} (ATT {:.4}, IS {:.4})", s.index, s.att, s.is))
        .collect::<Vec<_>>()
        .join(", ");
    out += "\n";
    out
}

pub fn run(s: InspectSettings) -> Result<ExitCode> {
    if !s.rank.quiet {
        eprintln!("gateau inspect: settings {}", describe(&s.rank));
    }
    let a = analyse(&s.rank)?;
    let Some(r) = find(&a, &s.id) else {
        bail!(
            "no sample with id {} in {} (ids are matched as JSON values, then as strings)",
            s.id,
            s.rank
                .scores
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let v = view(&s.rank, &a, r);
    if s.json {
        println!("{}", serde_json::to_string(&v)?);
    } else if let Some(path) = &s.out {
        let title = format!(
            "id {} (line {}): rank {} of {}, score {}, HMP {}, CAS {}",
            v.id,
            v.line,
            v.rank.map_or("-".into(), |r| r.to_string()),
            v.scored,
            num(v.score),
            num(v.hmp),
            num(v.cas)
        );
        let is: Vec<f64> = v.segments.iter().map(|s| s.is).collect();
        let att: Vec<f64> = v.segments.iter().map(|s| s.att).collect();
        crate::plots::segments(path, &title, &is, &att)?;
        if !s.rank.quiet {
            eprintln!("gateau inspect: wrote {}", path.display());
        }
    } else {
        print!("{}", text(&v));
    }
    Ok(if r.status == Status::Ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_and_buckets() {
        assert_eq!(sparkline(&[0.0, 1.0, 0.5], 80), "▁█▅");
        // Six values into three columns: means 0, 1, 2.
        assert_eq!(sparkline(&[0.0, 0.0, 1.0, 1.0, 2.0, 2.0], 3), "▁▅█");
        assert_eq!(sparkline(&[3.0, 3.0], 80), "▅▅");
    }
}
