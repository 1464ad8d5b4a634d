//! `gateau inspect`: one sample's segment view (IS and ATT along the context) with its
//! HMP, CAS, score and rank, as a terminal sparkline, JSON, or a PNG.

use crate::cli::settings::RankSettings;
use crate::rank::normalize::cam_norm;
use crate::records::{ScoreRecord, Status};
use crate::report::analysis::{analyse, Analysis};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
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
    /// median(ln seg_ppl) - ln seg_ppl: how much this segment lowers the response's
    /// perplexity against a typical segment (high = important; the recipes' gain).
    #[serde(default)]
    pub importance: f64,
    /// Whether the segment lies wholly before what model A reads (None: not recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub far: Option<bool>,
    /// The segment's text (with a tokenizer: `--long-model`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instruction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    pub segments: Vec<Segment>,
}

pub use crate::cli::settings::InspectSettings;

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
    let median =
        crate::rank::terms::median(&mut seg_ppl.iter().map(|p| p.ln()).collect::<Vec<_>>());
    let far = crate::report::analysis::seg_far(r);
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
                importance: median - seg_ppl[i].ln(),
                far: far.as_ref().and_then(|f| f.get(i).copied()),
                text: None,
            })
            .collect(),
        instruction: None,
        response: None,
    }
}

/// Fills in the instruction, the response and (with a tokenizer) each segment's text.
fn add_text(s: &InspectSettings, r: &ScoreRecord, v: &mut View) -> Result<()> {
    let Some(raw) = crate::input::LineReader::open(&s.rank.data)?
        .filter_map(|l| l.ok())
        .find(|l| l.number == v.line)
    else {
        return Ok(());
    };
    let Ok(sample) = crate::input::parse_line(&raw) else {
        return Ok(());
    };
    v.instruction = Some(sample.instruction.clone());
    v.response = Some(sample.response.clone());
    let Some(spec) = &s.model else {
        return Ok(());
    };
    // The text is a convenience: a tokenizer that cannot be had leaves it out.
    let (cfg, tok) = match crate::checkpoint::describe_model(spec) {
        Ok(m) => m,
        Err(e) => {
            if !s.rank.quiet {
                eprintln!("gateau inspect: no segment text ({e:#}); pass --long-model");
            }
            return Ok(());
        }
    };
    let max_len = s.max_len.unwrap_or(usize::MAX);
    let chat = match s.chat {
        true => match crate::checkpoint::chat_template::for_model(spec) {
            Ok(c) => Some(c),
            Err(e) => {
                if !s.rank.quiet {
                    eprintln!("gateau inspect: no segment text ({e:#})");
                }
                return Ok(());
            }
        },
        false => None,
    };
    let Ok(t) = crate::input::chat::tokenize_sample(
        &tok,
        &s.template,
        chat.as_ref(),
        &sample,
        cfg.bos_token_id,
        max_len,
    )?
    else {
        return Ok(());
    };
    if let (Some(starts), Some(len)) = (&r.seg_start, r.seg_len) {
        for (seg, &st) in v.segments.iter_mut().zip(starts) {
            if let Some(ids) = t.ctx.get(st..st + len) {
                seg.text = tok.decode(ids, false).ok();
            }
        }
    }
    Ok(())
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
    let imp: Vec<f64> = v.segments.iter().map(|s| s.importance).collect();
    // Raw attention shares: the softmax of the paper's ATT is flat to within 1e-3.
    let att: Vec<f64> = v.segments.iter().map(|s| s.seg_attn).collect();
    let total: f64 = att.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    out += &format!(
        "  {} segments, context order left to right (each row scaled to its own min..max)\n",
        v.segments.len()
    );
    out += &format!("  importance {}\n", sparkline(&imp, 80));
    out += &format!("  attention  {}\n", sparkline(&att, 80));
    if let Some(x) = &v.instruction {
        out += &format!("  instruction: {}\n", clip(x, 200));
    }
    if let Some(y) = &v.response {
        out += &format!("  response: {}\n", clip(y, 200));
    }
    let list = |out: &mut String, title: &str, key: &dyn Fn(&Segment) -> f64| {
        let mut by: Vec<&Segment> = v.segments.iter().collect();
        by.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.index.cmp(&b.index)));
        *out += &format!("  {title}:\n");
        for s in by.iter().take(3) {
            let place = match s.far {
                Some(true) => ", beyond model A",
                Some(false) => ", seen by model A",
                None => "",
            };
            *out += &format!(
                "    #{} (importance {:.3}, attention share {:.4}{place}){}\n",
                s.index,
                s.importance,
                s.seg_attn / total,
                s.text
                    .as_ref()
                    .map_or(String::new(), |t| format!(": {}", clip(t, 160)))
            );
        }
    };
    list(&mut out, "most important segments", &|s| s.importance);
    list(&mut out, "most attended segments", &|s| s.seg_attn);
    out
}

/// One line of at most `n` characters.
fn clip(t: &str, n: usize) -> String {
    let flat: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= n {
        flat
    } else {
        flat.chars().take(n).collect::<String>() + "..."
    }
}

pub fn run(s: InspectSettings) -> Result<ExitCode> {
    if !s.rank.quiet {
        eprintln!("{}", s.settings_line());
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
    let mut v = view(&s.rank, &a, r);
    add_text(&s, r, &mut v)?;
    if s.json {
        println!("{}", serde_json::to_string(&v)?);
    } else if let Some(path) = &s.out {
        let title = format!(
            "id {} (line {}): rank {} of {}, score {}, HMG term {}, CAM term {}",
            v.id,
            v.line,
            v.rank.map_or("-".into(), |r| r.to_string()),
            v.scored,
            num(v.score),
            num(v.hmp),
            num(v.cas)
        );
        let imp: Vec<f64> = v.segments.iter().map(|s| s.importance).collect();
        let att: Vec<f64> = v.segments.iter().map(|s| s.seg_attn).collect();
        crate::report::plots::segments(path, &title, &imp, &att)?;
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
