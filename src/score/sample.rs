//! One sample through its passes to its record: the full passes at once, the segment
//! passes alone or packed with other small samples' (`batching`), then the record.

use super::batching::Packer;
use super::pair::Models;
use super::passes::{full_passes, SampleScores};
use crate::cli::settings::{ScoreSettings, ShortSpec};
use crate::input::template::{segment_starts, Tokens};
use crate::input::Sample;
use crate::records::{ScoreRecord, Status};
use anyhow::Result;

/// A sample waiting for its segment passes, with what its record needs.
pub type Packed = Packer<(Sample, Tokens)>;

/// The packer of one device: `--pack-below` and the batch budget resolved there.
pub fn packer(models: &Models) -> Packed {
    Packer::new(models.pack_below, models.batch_tokens)
}

/// Scores one sample; its record comes back at once, or (a small sample) with those of a
/// packed batch, from this call or a later one or from [`flush`].
pub fn score_one(
    sample: Sample,
    t: Tokens,
    models: &Models,
    s: &ScoreSettings,
    packer: &mut Packed,
) -> Result<Vec<(ScoreRecord, usize)>> {
    let short = models.short_for(sample.line)?;
    let passes = s.passes(models.batch_tokens);
    let p = full_passes(&models.long.llama, &short, &t, &passes)?;
    let line = sample.line;
    let done = packer.add(models.long.segment_model(), line, (sample, t), p)?;
    Ok(done
        .into_iter()
        .map(|((sample, t), sc)| record_of(&sample, &t, sc, s))
        .collect())
}

/// The records of the samples still waiting in `packer`.
pub fn flush(
    models: &Models,
    s: &ScoreSettings,
    packer: &mut Packed,
) -> Result<Vec<(ScoreRecord, usize)>> {
    Ok(packer
        .flush(models.long.segment_model())?
        .into_iter()
        .map(|((sample, t), sc)| record_of(&sample, &t, sc, s))
        .collect())
}

fn record_of(
    sample: &Sample,
    t: &Tokens,
    sc: SampleScores,
    s: &ScoreSettings,
) -> (ScoreRecord, usize) {
    if !(sc.ppl_long.is_finite() && sc.ppl_short.is_finite())
        || sc.ppl_alone.is_some_and(|p| !p.is_finite())
        || sc.seg_ppl.iter().any(|p| !p.is_finite())
    {
        let mut r = ScoreRecord::failed(
            sample.id.clone(),
            sample.line,
            Status::Bad,
            "non-finite perplexity (the model's output overflowed)".into(),
        );
        r.line_hash = Some(sample.line_hash.clone());
        return (r, sc.model_tokens);
    }
    let mut r = ScoreRecord::failed(sample.id.clone(), sample.line, Status::Ok, String::new());
    r.error = None;
    r.line_hash = Some(sample.line_hash.clone());
    r.warnings = sample.warnings.clone();
    r.warnings
        .extend(warnings(t, sc.seg_ppl.len(), s.segment_len));
    if sample.later_turns > 0 {
        // Spec section 1's wording, whatever the count.
        r.warnings
            .push(format!("{} later turns not scored", sample.later_turns));
    }
    r.source = sample.source.clone();
    r.n_tokens = Some(t.len());
    r.n_ctx = Some(t.ctx.len());
    r.n_resp = Some(t.resp.len());
    r.truncated = Some(t.truncated);
    r.ppl_short = Some(sc.ppl_short);
    r.ppl_long = Some(sc.ppl_long);
    r.seg_ppl = Some(sc.seg_ppl);
    r.seg_attn = Some(sc.seg_attn);
    r.cas = Some(sc.cas);
    r.ppl_alone = sc.ppl_alone;
    r.seg_start = Some(segment_starts(t.ctx.len(), s.segment_len, s.max_segments));
    r.seg_len = Some(s.segment_len);
    r.ctx_short = match s.short {
        ShortSpec::Window(w) => Some(t.ctx_in_window(w)),
        ShortSpec::Model { .. } => None,
    };
    if let Some(n) = sc.token_nll {
        r.nll_short = Some(n.short);
        r.nll_long = Some(n.long);
    }
    (r, sc.model_tokens)
}

fn warnings(t: &Tokens, n_segments: usize, segment_len: usize) -> Vec<String> {
    if t.ctx.is_empty() {
        vec!["no context: cas is null".into()]
    } else if n_segments < 2 {
        vec![format!(
            "context of {} tokens has {n_segments} segment(s) of {segment_len}: cas is null",
            t.ctx.len()
        )]
    } else {
        Vec::new()
    }
}
