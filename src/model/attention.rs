//! Causal self-attention computed in chunks of query rows, so that no T x T matrix is ever
//! materialized, with an optional side output: for the query rows from `capture_from` on,
//! the attention probability each key position receives, summed over heads and rows.
//!
//! Scores, softmax and the captured mass are f32 whatever the compute dtype: the CAM
//! statistic is a mean of probabilities around 1e-4, which bf16 scores would distort.

use candle_core::{DType, Device, Tensor, D};

/// Upper bound on the f32 score elements of one chunk (B x H x rows x keys): 16 MiB on the
/// CPU (under glibc's 32 MiB mmap ceiling, so buffers are reused instead of mapped and
/// zeroed for every op), 2 GiB on a GPU (fewer, larger kernels).
fn score_budget(device: &Device) -> usize {
    if device.is_cpu() {
        4 << 20
    } else {
        512 << 20
    }
}

/// Masks of all chunks are cached when they total at most this many elements (the whole
/// causal triangle up to about 8k tokens); longer passes build each mask on the device.
const MASK_CACHE: usize = 32 << 20;

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
    if !device.is_cpu() {
        return device_mask(s, n, e, device);
    }
    let mut m = vec![0f32; n * e];
    for i in 0..n {
        for v in &mut m[i * e + s + i + 1..(i + 1) * e] {
            *v = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (n, e), device)
}

/// The query-row chunks of one forward pass and their causal masks, built once and shared
/// by every layer.
pub struct Plan {
    chunks: Vec<(usize, usize)>,
    /// One mask per chunk, or none when they are built on the fly.
    masks: Option<Vec<Tensor>>,
    capture_from: Option<usize>,
    device: Device,
}

impl Plan {
    /// Chunks sized so that one chunk's f32 scores stay under [`SCORE_BUDGET`].
    pub fn new(
        b: usize,
        h: usize,
        t: usize,
        capture_from: Option<usize>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let rows = (score_budget(device) / (b * h * t).max(1)).max(16);
        Self::with_rows(t, capture_from, rows, device)
    }

    pub fn with_rows(
        t: usize,
        capture_from: Option<usize>,
        rows: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let chunks = row_chunks(t, capture_from.unwrap_or(t), rows);
        let total: usize = chunks.iter().map(|&(s, e)| (e - s) * e).sum();
        let masks = if total <= MASK_CACHE {
            Some(
                chunks
                    .iter()
                    .map(|&(s, e)| causal_mask(s, e - s, e, device))
                    .collect::<candle_core::Result<_>>()?,
            )
        } else {
            None
        };
        Ok(Self {
            chunks,
            masks,
            capture_from,
            device: device.clone(),
        })
    }

    fn mask(&self, i: usize) -> candle_core::Result<Tensor> {
        match &self.masks {
            Some(m) => Ok(m[i].clone()),
            None => {
                let (s, e) = self.chunks[i];
                causal_mask(s, e - s, e, &self.device)
            }
        }
    }
}

/// The same mask from tensor ops, built where it is used (no host loop, no upload).
fn device_mask(s: usize, n: usize, e: usize, device: &Device) -> candle_core::Result<Tensor> {
    let keys = Tensor::arange(0u32, e as u32, device)?.reshape((1, e))?;
    let rows = Tensor::arange(s as u32, (s + n) as u32, device)?.reshape((n, 1))?;
    let future = keys.broadcast_gt(&rows)?;
    let zeros = Tensor::zeros((n, e), DType::F32, device)?;
    let neg = Tensor::full(f32::NEG_INFINITY, (n, e), device)?;
    future.where_cond(&neg, &zeros)
}

/// q: `[B, H, T, hd]`, k and v: `[B, KV, T, hd]` with H a multiple of KV (grouped query:
/// head h reads kv head h / (H / KV)). Rows `>= plan.capture_from` have their
/// probabilities summed into `mass`.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &Plan,
) -> candle_core::Result<AttentionOutput> {
    let (b, h, t, hd) = q.dims4()?;
    let kv = k.dim(1)?;
    let g = h / kv;
    let dtype = q.dtype();
    let scale = 1.0 / (hd as f64).sqrt();
    let split = plan.capture_from.unwrap_or(t);
    let k32 = k.to_dtype(DType::F32)?;
    let mut outs = Vec::new();
    let mut mass: Option<Tensor> = None;
    for (i, &(s, e)) in plan.chunks.iter().enumerate() {
        let mask = plan.mask(i)?;
        let n = e - s;
        // [B, H, n, hd] -> [B, KV, g*n, hd]: the heads of one kv group share one matmul.
        let qc = q
            .narrow(2, s, n)?
            .to_dtype(DType::F32)?
            .contiguous()?
            .reshape((b, kv, g * n, hd))?;
        let kc = k32.narrow(2, 0, e)?.contiguous()?;
        let scores = (qc.matmul(&kc.t()?)? * scale)?.reshape((b, kv, g, n, e))?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
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
    let mass = match (plan.capture_from, mass) {
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
        let plan = |rows| Plan::with_rows(23, Some(9), rows, &dev).unwrap();
        let one = causal_attention(&q, &k, &v, &plan(1000)).unwrap();
        let many = causal_attention(&q, &k, &v, &plan(4)).unwrap();
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
    fn device_mask_equals_the_host_loop() {
        for (st, n, e) in [(0, 5, 5), (3, 4, 7), (10, 1, 11)] {
            let host = causal_mask(st, n, e, &Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let ops = device_mask(st, n, e, &Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(host, ops, "s {st} n {n} e {e}");
        }
    }

    #[test]
    fn masks_built_on_the_fly_equal_cached_ones() {
        let dev = Device::Cpu;
        let cached = Plan::with_rows(40, Some(30), 7, &dev).unwrap();
        let mut lazy = Plan::with_rows(40, Some(30), 7, &dev).unwrap();
        lazy.masks = None;
        for i in 0..cached.chunks.len() {
            let (a, b) = (cached.mask(i).unwrap(), lazy.mask(i).unwrap());
            assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        }
    }

    #[test]
    fn captured_rows_sum_to_heads_times_rows() {
        // Every probability row sums to one, so the mass over keys is H x captured rows.
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 4, 9, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 2, 9, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 2, 9, 8), &dev).unwrap();
        let plan = Plan::new(2, 4, 9, Some(6), &dev).unwrap();
        let r = causal_attention(&q, &k, &v, &plan).unwrap();
        assert_eq!(r.out.dims(), &[2, 4, 9, 8]);
        let total = r.mass.unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
        for t in total {
            assert!((t - 12.0).abs() < 1e-4, "{t}");
        }
    }
}
