//! Template and tokens (spec section 2): the pieces encoded separately without special
//! tokens, `S = [BOS] + head + ctx + mid + resp`, truncation from the start of `ctx`, the
//! CAM segments and the self-homologous short-window view.

use crate::input::Sample;
use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

/// The prompt template; `mid = instruction_prefix + x + response_prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub head: String,
    pub instruction_prefix: String,
    pub response_prefix: String,
}

impl Default for Template {
    fn default() -> Self {
        Self {
            head: "### Input:\n".into(),
            instruction_prefix: "\n\n### Instruction:\n".into(),
            response_prefix: "\n\n### Response:\n".into(),
        }
    }
}

/// A sample's token pieces after truncation.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    pub bos: Option<u32>,
    pub head: Vec<u32>,
    pub ctx: Vec<u32>,
    pub mid: Vec<u32>,
    pub resp: Vec<u32>,
    pub truncated: bool,
}

/// Why a sample was not scored after tokenization.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizeError {
    /// `S` exceeds `max_len` even with an empty context.
    TooLong { min_len: usize, max_len: usize },
    /// The response encodes to no tokens.
    EmptyResponse,
    /// The chat template cannot write this sample's prompt (`--template chat`).
    Template(String),
}

impl std::fmt::Display for TokenizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLong { min_len, max_len } => write!(
                f,
                "too long: {min_len} tokens without any context, more than --max-len {max_len}"
            ),
            Self::EmptyResponse => write!(f, "empty response: it encodes to no tokens"),
            Self::Template(why) => write!(f, "{why}"),
        }
    }
}

pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    Ok(tok
        .encode(text, false)
        .map_err(|e| anyhow!("tokenizer failed: {e}"))?
        .get_ids()
        .to_vec())
}

/// Encodes a sample and truncates it to `max_len`; `Ok(Err(..))` is a sample-level problem.
pub fn tokenize(
    tok: &Tokenizer,
    template: &Template,
    sample: &Sample,
    bos: Option<u32>,
    max_len: usize,
) -> Result<std::result::Result<Tokens, TokenizeError>> {
    let mid_text = format!(
        "{}{}{}",
        template.instruction_prefix, sample.instruction, template.response_prefix
    );
    tokenize_pieces(
        tok,
        &template.head,
        &sample.context,
        &mid_text,
        &sample.response,
        bos,
        max_len,
    )
}

/// Encodes the pieces' texts (each without special tokens) and truncates `ctx` to fit
/// `max_len`: what every template comes down to.
pub fn tokenize_pieces(
    tok: &Tokenizer,
    head: &str,
    ctx: &str,
    mid: &str,
    resp: &str,
    bos: Option<u32>,
    max_len: usize,
) -> Result<std::result::Result<Tokens, TokenizeError>> {
    let head = encode(tok, head)?;
    let mut ctx = encode(tok, ctx)?;
    let mid = encode(tok, mid)?;
    let resp = encode(tok, resp)?;
    if resp.is_empty() {
        return Ok(Err(TokenizeError::EmptyResponse));
    }
    let fixed = usize::from(bos.is_some()) + head.len() + mid.len() + resp.len();
    if fixed > max_len {
        return Ok(Err(TokenizeError::TooLong {
            min_len: fixed,
            max_len,
        }));
    }
    let truncated = fixed + ctx.len() > max_len;
    if truncated {
        ctx.drain(..fixed + ctx.len() - max_len);
    }
    Ok(Ok(Tokens {
        bos,
        head,
        ctx,
        mid,
        resp,
        truncated,
    }))
}

impl Tokens {
    fn n_bos(&self) -> usize {
        usize::from(self.bos.is_some())
    }

    /// `|S|`.
    pub fn len(&self) -> usize {
        self.n_bos() + self.head.len() + self.ctx.len() + self.mid.len() + self.resp.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Index in `S` of the first context token.
    pub fn ctx_start(&self) -> usize {
        self.n_bos() + self.head.len()
    }

    /// Index in `S` of the first response token.
    pub fn resp_start(&self) -> usize {
        self.len() - self.resp.len()
    }

    fn join(&self, parts: &[&[u32]]) -> Vec<u32> {
        let mut s = Vec::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + 1);
        s.extend(self.bos);
        for p in parts {
            s.extend_from_slice(p);
        }
        s
    }

    /// The full sequence `S`.
    pub fn full(&self) -> Vec<u32> {
        self.join(&[&self.head, &self.ctx, &self.mid, &self.resp])
    }

    /// `[BOS] + head + ctx[start..start+len] + mid + resp`.
    pub fn segment(&self, start: usize, len: usize) -> Vec<u32> {
        self.join(&[
            &self.head,
            &self.ctx[start..start + len],
            &self.mid,
            &self.resp,
        ])
    }

    /// How many tokens at the end of `ctx` the window of width `w` holds.
    pub fn ctx_in_window(&self, w: usize) -> usize {
        let keep = w.saturating_sub(self.n_bos() + self.resp.len());
        keep.saturating_sub(self.mid.len()).min(self.ctx.len())
    }

    /// Self-homologous model A's input: `[BOS] + last tokens of (head+ctx+mid) + resp`,
    /// at most `w` tokens; `[BOS] + resp` alone when `|BOS| + |resp| >= w`.
    pub fn window(&self, w: usize) -> Vec<u32> {
        let keep = w.saturating_sub(self.n_bos() + self.resp.len());
        let prefix: Vec<u32> = [&self.head[..], &self.ctx, &self.mid].concat();
        let cut = prefix.len() - keep.min(prefix.len());
        self.join(&[&prefix[cut..], &self.resp])
    }
}

/// Start offsets (within `ctx`) of the CAM segments: consecutive pieces of `len` tokens, a
/// short last piece dropped, `max` of them kept at indices `floor(k * n / max)`.
pub fn segment_starts(n_ctx: usize, len: usize, max: usize) -> Vec<usize> {
    let n = n_ctx / len.max(1);
    let picked: Vec<usize> = if n > max {
        (0..max).map(|k| k * n / max).collect()
    } else {
        (0..n).collect()
    };
    picked.into_iter().map(|i| i * len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(ctx: usize) -> Tokens {
        Tokens {
            bos: Some(1),
            head: vec![10, 11],
            ctx: (100..100 + ctx as u32).collect(),
            mid: vec![20],
            resp: vec![30, 31],
            truncated: false,
        }
    }

    #[test]
    fn layout_of_s() {
        let t = toks(3);
        assert_eq!(t.full(), vec![1, 10, 11, 100, 101, 102, 20, 30, 31]);
        assert_eq!((t.ctx_start(), t.resp_start(), t.len()), (3, 7, 9));
        assert_eq!(t.segment(1, 2), vec![1, 10, 11, 101, 102, 20, 30, 31]);
    }

    #[test]
    fn window_keeps_the_tail_of_the_prompt() {
        let t = toks(3);
        assert_eq!(t.window(5), vec![1, 102, 20, 30, 31]);
        // |BOS| + |resp| = 3 >= 3: BOS + resp only, even when that exceeds w.
        assert_eq!(t.window(3), vec![1, 30, 31]);
        assert_eq!(t.window(2), vec![1, 30, 31]);
        assert_eq!(t.window(100), t.full());
        // w = 5 leaves 2 prompt tokens after BOS + resp: mid (1) and the last ctx token.
        assert_eq!(t.ctx_in_window(5), 1);
        assert_eq!(t.ctx_in_window(3), 0);
        assert_eq!(t.ctx_in_window(100), 3);
    }

    #[test]
    fn segments_drop_the_short_tail_and_subsample_evenly() {
        assert_eq!(segment_starts(10, 3, 500), vec![0, 3, 6]);
        assert_eq!(segment_starts(2, 3, 500), Vec::<usize>::new());
        // n = 10 pieces, keep 4 at floor(k * 10 / 4) = 0, 2, 5, 7.
        assert_eq!(segment_starts(40, 4, 4), vec![0, 8, 20, 28]);
    }
}
