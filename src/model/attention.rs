//! Causal self-attention computed in chunks of query rows, so that no T x T matrix is ever
//! materialized, with an optional side output: for the query rows from `capture_from` on,
//! the attention probability each key position receives, summed over heads and rows.
//!
//! Scores, softmax and the captured mass are f32 whatever the compute dtype: the CAM
//! statistic is a mean of probabilities around 1e-4, which bf16 scores would distort.

use candle_core::{DType, Device, Tensor, D};

/// Upper bound on the f32 score elements of one chunk (B x H x rows x keys): 64 MiB.
const SCORE_BUDGET: usize = 16 << 20;

/// The attention output `[B, H, T, hd]` and, when asked, the captured mass `[B, T]` (f32).
pub struct AttentionOutput {
    pub out: Tensor,
    pub mass: Option<Tensor>,
}

/// Row ranges `[start, end)` covering `0..t`, never straddling `split`, each at most `rows` long.
pub fn row_chunks(t: usize, split: usize, rows: usize) -> Vec<(usize, usize)> {
    let rows = rows.max(1);
    let mut out = Vec::new();
    for (lo, hi) in [(0, split.min(t)), (split.min(t), t)] {
        let mut s = lo;
        while s < hi {
            let e = (s + rows).min(hi);
            out.push((s, e));
            s = e;
        }
    }
    out
}

/// `0` where key `j <= s + i`, `-inf` elsewhere, shape `[n, e]`.
fn causal_mask(s: usize, n: usize, e: usize, device: &Device) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; n * e];
    for i in 0..n {
        for v in &mut m[i * e + s + i + 1..(i + 1) * e] {
            *v = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (n, e), device)
}

/// q: `[B, H, T, hd]`, k and v: `[B, KV, T, hd]` with H a multiple of KV (grouped query:
/// head h reads kv head h / (H / KV)). Rows `>= capture_from` have their probabilities
/// summed into `mass`.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    capture_from: Option<usize>,
) -> candle_core::Result<AttentionOutput> {
    let (b, h, t, _) = q.dims4()?;
    let rows = (SCORE_BUDGET / (b * h * t).max(1)).max(16);
    chunked_attention(q, k, v, capture_from, rows)
}

/// [`causal_attention`] with an explicit number of query rows per chunk.
pub fn chunked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    capture_from: Option<usize>,
    rows: usize,
) -> candle_core::Result<AttentionOutput> {
    let (b, h, t, hd) = q.dims4()?;
    let kv = k.dim(1)?;
    let g = h / kv;
    let dtype = q.dtype();
    let scale = 1.0 / (hd as f64).sqrt();
    let split = capture_from.unwrap_or(t);
    let k32 = k.to_dtype(DType::F32)?;
    let mut outs = Vec::new();
    let mut mass: Option<Tensor> = None;
    for (s, e) in row_chunks(t, split, rows) {
        let n = e - s;
        // [B, H, n, hd] -> [B, KV, g*n, hd]: the heads of one kv group share one matmul.
        let qc = q
            .narrow(2, s, n)?
            .to_dtype(DType::F32)?
            .contiguous()?
            .reshape((b, kv, g * n, hd))?;
        let kc = k32.narrow(2, 0, e)?.contiguous()?;
        let scores = (qc.matmul(&kc.t()?)? * scale)?.reshape((b, kv, g, n, e))?;
        let scores = scores.broadcast_add(&causal_mask(s, n, e, q.device())?)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        if s >= split {
            let m = probs.sum(D::Minus2)?.sum(2)?.sum(1)?; // [B, e]
            let m = m.pad_with_zeros(1, 0, t - e)?;
            mass = Some(match mass {
                None => m,
                Some(acc) => (acc + m)?,
            });
        }
        let vc = v.narrow(2, 0, e)?.contiguous()?;
        let o = probs
            .reshape((b, kv, g * n, e))?
            .to_dtype(dtype)?
            .matmul(&vc)?
            .reshape((b, h, n, hd))?;
        outs.push(o);
    }
    let out = Tensor::cat(&outs, 2)?;
    let mass = match (capture_from, mass) {
        (Some(_), None) => Some(Tensor::zeros((b, t), DType::F32, q.device())?),
        (_, m) => m,
    };
    Ok(AttentionOutput { out, mass })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_rows_and_respect_split() {
        assert_eq!(row_chunks(10, 7, 3), vec![(0, 3), (3, 6), (6, 7), (7, 10)]);
        assert_eq!(row_chunks(4, 4, 8), vec![(0, 4)]);
        assert_eq!(row_chunks(4, 0, 3), vec![(0, 3), (3, 4)]);
    }

    #[test]
    fn mask_is_causal() {
        let m = causal_mask(2, 2, 4, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0][..3], [0.0, 0.0, 0.0]);
        assert!(m[0][3].is_infinite());
        assert_eq!(m[1], vec![0.0; 4]);
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 6, 23, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 2, 23, 4), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 2, 23, 4), &dev).unwrap();
        let one = chunked_attention(&q, &k, &v, Some(9), 1000).unwrap();
        let many = chunked_attention(&q, &k, &v, Some(9), 4).unwrap();
        let diff = (one.out - many.out)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
        let (a, b) = (one.mass.unwrap(), many.mass.unwrap());
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    }

    #[test]
    fn captured_rows_sum_to_heads_times_rows() {
        // Every probability row sums to one, so the mass over keys is H x captured rows.
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 4, 9, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 2, 9, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 2, 9, 8), &dev).unwrap();
        let r = causal_attention(&q, &k, &v, Some(6)).unwrap();
        assert_eq!(r.out.dims(), &[2, 4, 9, 8]);
        let total = r.mass.unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
        for t in total {
            assert!((t - 12.0).abs() < 1e-4, "{t}");
        }
    }
}
