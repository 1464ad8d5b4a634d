//! An independent implementation of ../shared/spec/scoring.md sections 2-5 for the tiny
//! models: byte tokens, the reference forward pass, and the formulas written out again
//! (nothing from gateau's library).

use crate::common::*;

pub enum RefShort<'a> {
    Window(usize),
    Model(&'a Tiny, f64),
}

#[derive(Debug)]
pub struct RefScores {
    pub n_tokens: usize,
    pub n_ctx: usize,
    pub truncated: bool,
    pub ppl_short: f64,
    pub ppl_long: f64,
    pub seg_ppl: Vec<f64>,
    pub seg_attn: Vec<f64>,
    pub cas: Option<f64>,
}

fn softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = x.iter().map(|v| (v - m).exp()).sum();
    x.iter().map(|v| (v - m).exp() / z).collect()
}

pub fn reference(
    long: &Tiny,
    short: &RefShort,
    (c, x, y): (&str, &str, &str),
    seg_len: usize,
    max_segments: usize,
    max_len: usize,
) -> RefScores {
    let head = bytes("### Input:\n");
    let mut ctx = bytes(c);
    let mid = bytes(&format!("\n\n### Instruction:\n{x}\n\n### Response:\n"));
    let resp = bytes(y);
    let fixed = 1 + head.len() + mid.len() + resp.len();
    let truncated = fixed + ctx.len() > max_len;
    if truncated {
        ctx = ctx[fixed + ctx.len() - max_len..].to_vec();
    }
    let s: Vec<u32> = [
        vec![BOS],
        head.clone(),
        ctx.clone(),
        mid.clone(),
        resp.clone(),
    ]
    .concat();
    let rs = s.len() - resp.len();
    let nl = long.naive(&s, long.rope_theta);
    let ppl_long = nl.ppl(&s, rs);
    let mass = nl.mass(rs);
    let ppl_short = match short {
        RefShort::Model(m, theta) => m.naive(&s, *theta).ppl(&s, rs),
        RefShort::Window(w) => {
            let prefix = [head.clone(), ctx.clone(), mid.clone()].concat();
            let keep = w.saturating_sub(1 + resp.len()).min(prefix.len());
            let v: Vec<u32> = [
                vec![BOS],
                prefix[prefix.len() - keep..].to_vec(),
                resp.clone(),
            ]
            .concat();
            long.naive(&v, long.rope_theta)
                .ppl(&v, v.len() - resp.len())
        }
    };
    let n = ctx.len() / seg_len;
    let idx: Vec<usize> = if n > max_segments {
        (0..max_segments).map(|k| k * n / max_segments).collect()
    } else {
        (0..n).collect()
    };
    let mut seg_ppl = Vec::new();
    let mut seg_attn = Vec::new();
    for i in idx {
        let piece = &ctx[i * seg_len..(i + 1) * seg_len];
        let q: Vec<u32> = [
            vec![BOS],
            head.clone(),
            piece.to_vec(),
            mid.clone(),
            resp.clone(),
        ]
        .concat();
        seg_ppl.push(
            long.naive(&q, long.rope_theta)
                .ppl(&q, q.len() - resp.len()),
        );
        let at = 1 + head.len() + i * seg_len;
        seg_attn.push(mass[at..at + seg_len].iter().sum::<f64>() / seg_len as f64);
    }
    let cas = (seg_ppl.len() >= 2).then(|| {
        let (a, b) = (softmax(&seg_ppl), softmax(&seg_attn));
        let dot: f64 = a.iter().zip(&b).map(|(p, q)| p * q).sum();
        let na: f64 = a.iter().map(|p| p * p).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|p| p * p).sum::<f64>().sqrt();
        dot / (na * nb)
    });
    RefScores {
        n_tokens: s.len(),
        n_ctx: ctx.len(),
        truncated,
        ppl_short,
        ppl_long,
        seg_ppl,
        seg_attn,
        cas,
    }
}
