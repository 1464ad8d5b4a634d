//! The model passes of one sample (spec sections 3-5): the long model's full pass with
//! attention capture, the short model's pass (separate checkpoint or short window), and
//! the CAM segment passes batched under a token budget.

use crate::input::template::{segment_starts, Tokens};
use crate::model::dispatch::BatchPlan;
use crate::model::Llama;
use crate::rank::normalize::{cas, CamNorm};
use anyhow::{bail, Result};

/// Model A of HMG.
pub enum ShortModel<'a> {
    /// A separate checkpoint reading all of `S`.
    Separate(&'a Llama),
    /// Model B itself restricted to a window of this many tokens.
    Window(usize),
    /// Model A's perplexity (and per-token NLL, when kept) computed beforehand (two-phase
    /// runs).
    Given { ppl: f64, nll: Option<&'a [f32]> },
}

#[derive(Debug, Clone)]
pub struct PassSettings {
    pub segment_len: usize,
    pub max_segments: usize,
    /// Most tokens in one batched segment forward pass.
    pub max_batch_tokens: usize,
    /// Also run the response alone (`[BOS] + resp`) through model B, for IFD.
    pub with_ifd: bool,
    /// Keep the per-token response NLL of both models (`score --token-nll`).
    pub token_nll: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SampleScores {
    pub ppl_short: f64,
    pub ppl_long: f64,
    pub seg_ppl: Vec<f64>,
    pub seg_attn: Vec<f64>,
    pub cas: Option<f64>,
    /// PPL_B of the response after BOS only (with `with_ifd`).
    pub ppl_alone: Option<f64>,
    /// Per-token response NLL under model A and model B (with `token_nll`).
    pub token_nll: Option<TokenNll>,
    /// Tokens run through the models for this sample (all passes).
    pub model_tokens: usize,
}

/// The per-token response NLL of both models, in response order. Model A's may lack the
/// first response token (a window with nothing before the response, spec section 8).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenNll {
    pub short: Vec<f32>,
    pub long: Vec<f32>,
}

/// `exp(mean NLL)`, accumulated in f64.
pub fn ppl(nll: &[f32]) -> f64 {
    let sum: f64 = nll.iter().map(|&x| x as f64).sum();
    (sum / nll.len().max(1) as f64).exp()
}

/// Splits `n` equal-length sequences into as few batches of at most `budget` tokens as
/// possible (at least one sequence per batch), of sizes that differ by at most one: a
/// last batch of a few sequences runs its matrix products far below the GPU's rate.
pub fn batch_ranges(n: usize, seq_len: usize, budget: usize) -> Vec<std::ops::Range<usize>> {
    let per = (budget / seq_len.max(1)).max(1);
    let batches = n.div_ceil(per);
    let mut start = 0;
    (0..batches)
        .map(|i| {
            let size = n / batches + usize::from(i < n % batches);
            start += size;
            start - size..start
        })
        .collect()
}

/// The `(B, T)` shape of each batch [`batch_ranges`] makes of `n` sequences of `seq_len`.
pub fn batch_shapes(n: usize, seq_len: usize, budget: usize) -> Vec<(usize, usize)> {
    batch_ranges(n, seq_len, budget)
        .iter()
        .map(|r| (r.len(), seq_len))
        .collect()
}

/// Consecutive sequences of the given lengths grouped into rows of at most `budget` tokens
/// (a longer sequence gets a row of its own), in order.
pub fn pack_rows(
    lens: impl IntoIterator<Item = usize>,
    budget: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut rows: Vec<std::ops::Range<usize>> = Vec::new();
    let mut tokens = 0;
    for (i, n) in lens.into_iter().enumerate() {
        match rows.last_mut() {
            Some(r) if tokens + n <= budget => {
                r.end = i + 1;
                tokens += n;
            }
            _ => {
                rows.push(i..i + 1);
                tokens = n;
            }
        }
    }
    rows
}

/// Response perplexities of equal-length sequences whose responses start at `resp_start`.
pub fn batched_ppl(
    model: &Llama,
    seqs: &[Vec<u32>],
    resp_start: usize,
    budget: usize,
) -> Result<Vec<f64>> {
    let Some(first) = seqs.first() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(seqs.len());
    let batches = batch_ranges(seqs.len(), first.len(), budget);
    let plan = model.plan(batches.iter().map(|r| (r.len(), first.len())));
    for r in batches {
        let o = model.forward_planned(&seqs[r], resp_start, false, &plan)?;
        out.extend(o.nll.iter().map(|n| ppl(n)));
    }
    Ok(out)
}

/// Segment perplexities of several samples' segment sequences packed into rows of at most
/// `budget` tokens (a sequence longer than the budget gets a row of its own), one vector
/// per sample in the order given, and the number of forward passes.
pub fn packed_ppl(
    model: &Llama,
    samples: &[&Pending],
    budget: usize,
) -> Result<(Vec<Vec<f64>>, usize)> {
    let all: Vec<(usize, &[u32], usize)> = samples
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.seqs.iter().map(move |q| (i, q.as_slice(), p.seg_from)))
        .collect();
    let mut out: Vec<Vec<f64>> = samples
        .iter()
        .map(|p| Vec::with_capacity(p.seqs.len()))
        .collect();
    let rows = pack_rows(all.iter().map(|x| x.1.len()), budget);
    for r in &rows {
        let row: Vec<(&[u32], usize)> = all[r.clone()].iter().map(|x| (x.1, x.2)).collect();
        for (x, nll) in all[r.clone()].iter().zip(model.forward_packed(&row)?) {
            out[x.0].push(ppl(&nll));
        }
    }
    let passes = rows.len();
    Ok((out, passes))
}

/// A sample after its full passes, its segment passes still to run (alone, or packed with
/// other small samples' by [`packed_ppl`]).
#[derive(Debug, Clone)]
pub struct Pending {
    ppl_short: f64,
    ppl_long: f64,
    ppl_alone: Option<f64>,
    token_nll: Option<TokenNll>,
    seg_attn: Vec<f64>,
    /// The segment sequences, all of one length, responses from `seg_from` on.
    seqs: Vec<Vec<u32>>,
    seg_from: usize,
    model_tokens: usize,
}

impl Pending {
    /// Tokens of this sample's segment passes.
    pub fn segment_tokens(&self) -> usize {
        self.seqs.iter().map(|q| q.len()).sum()
    }

    /// Runs the segment passes alone, batched under `budget` tokens.
    pub fn run_segments(self, model: &Llama, budget: usize) -> Result<SampleScores> {
        let seg_ppl = batched_ppl(model, &self.seqs, self.seg_from, budget)?;
        Ok(self.finish(seg_ppl))
    }

    /// The sample's scores once its segment perplexities are known.
    pub fn finish(self, seg_ppl: Vec<f64>) -> SampleScores {
        let cas = cas(&seg_ppl, &self.seg_attn, CamNorm::Softmax);
        SampleScores {
            ppl_short: self.ppl_short,
            ppl_long: self.ppl_long,
            seg_ppl,
            seg_attn: self.seg_attn,
            cas,
            ppl_alone: self.ppl_alone,
            token_nll: self.token_nll,
            model_tokens: self.model_tokens,
        }
    }
}

/// Runs every pass of one sample: the full passes on `long`, the segment passes on
/// `segments` (`long` itself, or its E4M3 twin under `--dtype fp8`).
pub fn score_sample(
    (long, segments): (&Llama, &Llama),
    short: &ShortModel,
    t: &Tokens,
    s: &PassSettings,
) -> Result<SampleScores> {
    full_passes(long, short, t, s)?.run_segments(segments, s.max_batch_tokens)
}

/// The passes over the whole sample: the long model's (with the attention capture), the
/// short model's, and the response alone (IFD); the segment sequences are made, not run.
pub fn full_passes(
    long: &Llama,
    short: &ShortModel,
    t: &Tokens,
    s: &PassSettings,
) -> Result<Pending> {
    let full = t.full();
    let rs = t.resp_start();
    if rs == 0 {
        bail!("nothing precedes the response: the model has no BOS and the prompt is empty");
    }
    let starts = segment_starts(t.ctx.len(), s.segment_len, s.max_segments);
    let seqs: Vec<Vec<u32>> = starts
        .iter()
        .map(|&st| t.segment(st, s.segment_len))
        .collect();
    // The segment batches, planned now: the long pass builds their attention graphs
    // while the GPU runs it (where they pay for one; packed runs use none).
    let plan = match seqs.first() {
        Some(q) => long.plan(batch_shapes(seqs.len(), q.len(), s.max_batch_tokens)),
        None => BatchPlan::none(),
    };
    let mut model_tokens = full.len();
    let mut out = long.forward_planned(std::slice::from_ref(&full), rs, true, &plan)?;
    let nll_long = out.nll.swap_remove(0);
    let ppl_long = ppl(&nll_long);
    let attention = out.attention.and_then(|mut a| a.pop()).unwrap_or_default();

    let (ppl_short, nll_short) = match short {
        ShortModel::Separate(m) => {
            model_tokens += full.len();
            let nll = m
                .forward(std::slice::from_ref(&full), rs, false)?
                .nll
                .swap_remove(0);
            (ppl(&nll), Some(nll))
        }
        ShortModel::Window(w) => {
            let nll = windowed_nll(long, t, *w, &mut model_tokens)?;
            (ppl(&nll), Some(nll))
        }
        ShortModel::Given { ppl, nll } => (*ppl, nll.map(<[f32]>::to_vec)),
    };
    // `[BOS] + resp` is the window of width 0 (spec section 8's rule for tiny windows).
    let ppl_alone = if s.with_ifd {
        Some(ppl(&windowed_nll(long, t, 0, &mut model_tokens)?))
    } else {
        None
    };
    let token_nll = match (s.token_nll, nll_short) {
        (false, _) => None,
        (true, Some(short)) => Some(TokenNll {
            short,
            long: nll_long,
        }),
        (true, None) => bail!(
            "--token-nll: the short-model phase kept no per-token NLL for this sample (its \
             side file predates --token-nll); score again without --resume"
        ),
    };

    model_tokens += seqs.iter().map(|q| q.len()).sum::<usize>();
    let base = t.ctx_start();
    let seg_attn: Vec<f64> = starts
        .iter()
        .map(|&st| {
            let keys = &attention[base + st..base + st + s.segment_len];
            keys.iter().map(|&a| a as f64).sum::<f64>() / s.segment_len as f64
        })
        .collect();
    Ok(Pending {
        ppl_short,
        ppl_long,
        ppl_alone,
        token_nll,
        seg_attn,
        seqs,
        seg_from: t.resp_start() - t.ctx.len() + s.segment_len,
        model_tokens,
    })
}

/// Per-token response NLL under `model` reading only the last `w` tokens (spec 4b).
pub fn windowed_nll(
    model: &Llama,
    t: &Tokens,
    w: usize,
    model_tokens: &mut usize,
) -> Result<Vec<f32>> {
    let view = t.window(w);
    *model_tokens += view.len();
    if view.len() < 2 {
        bail!("the response alone is one token and nothing precedes it (no BOS)");
    }
    // Without BOS and prompt, the first response token has nothing to condition on and
    // is left out of the mean.
    let from = (view.len() - t.resp.len()).max(1);
    Ok(model
        .forward(std::slice::from_ref(&view), from, false)?
        .nll
        .swap_remove(0))
}

impl crate::cli::settings::ScoreSettings {
    /// The pass settings with the batch budget resolved for one worker's device.
    pub fn passes(&self, max_batch_tokens: usize) -> PassSettings {
        PassSettings {
            segment_len: self.segment_len,
            max_segments: self.max_segments,
            max_batch_tokens,
            with_ifd: self.with_ifd,
            token_nll: self.token_nll,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppl_is_exp_mean_nll() {
        let p = ppl(&[1.0, 3.0]);
        assert!((p - 2f64.exp()).abs() < 1e-12);
    }

    #[test]
    fn batches_respect_the_budget() {
        assert_eq!(batch_ranges(5, 100, 250), vec![0..2, 2..4, 4..5]);
        // 23 of 705 tokens fit 16,384: 32 sequences go 16 + 16, not 23 + 9.
        assert_eq!(batch_ranges(32, 705, 16384), vec![0..16, 16..32]);
        assert_eq!(batch_ranges(10, 1, 4), vec![0..4, 4..7, 7..10]);
        assert_eq!(batch_ranges(2, 1000, 10), vec![0..1, 1..2]);
        assert!(batch_ranges(0, 10, 10).is_empty());
        assert_eq!(
            batch_shapes(5, 100, 250),
            vec![(2, 100), (2, 100), (1, 100)]
        );
    }

    #[test]
    fn packed_rows_fill_the_budget_in_order() {
        assert_eq!(pack_rows([3, 4, 2, 9, 1, 1], 9), vec![0..3, 3..4, 4..6]);
        assert_eq!(pack_rows([12, 5], 10), vec![0..1, 1..2]);
        assert_eq!(pack_rows([5, 5, 5], 10), vec![0..2, 2..3]);
        assert!(pack_rows([], 10).is_empty());
    }
}
