//! Causal self-attention computed in chunks of query rows, so that no T x T matrix is ever
//! materialized, with an optional side output: for the query rows from `capture_from` on,
//! the attention probability each key position receives, summed over heads and rows.
//!
//! Scores, softmax and the captured mass are f32 whatever the compute dtype: the CAM
//! statistic is a mean of probabilities around 1e-4, which bf16 scores would distort.

use super::capture;
use super::profile::op;
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

/// `0` where key `j <= i`, `-inf` elsewhere, shape `[n, n]`: the diagonal block of a chunk
/// (keys before the chunk's first row are all visible and need no mask).
fn triangle(n: usize, device: &Device) -> candle_core::Result<Tensor> {
    if !device.is_cpu() {
        return device_mask(0, n, n, device);
    }
    let mut m = vec![0f32; n * n];
    for i in 0..n {
        for v in &mut m[i * n + i + 1..(i + 1) * n] {
            *v = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (n, n), device)
}

/// The query-row chunks of one forward pass and their diagonal masks, built once and
/// shared by every layer.
pub struct Plan {
    chunks: Vec<(usize, usize)>,
    /// One triangle per distinct chunk height.
    masks: Vec<(usize, Tensor)>,
    capture_from: Option<usize>,
    /// Rows from here on are padding (see `model::bucket`): chunked apart from the real
    /// rows and never captured.
    real: usize,
}

impl Plan {
    /// Chunks sized so that one chunk's f32 scores stay under the device's budget.
    pub fn new(
        b: usize,
        h: usize,
        t: usize,
        capture_from: Option<usize>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Self::padded(b, h, t, t, capture_from, device)
    }

    /// The plan of a pass of `real` rows whose operands carry padding rows up to `t`: the
    /// real rows are chunked exactly as in [`Plan::new`] for `real` rows (so their results
    /// are that pass's, bit for bit), the padding rows after them in chunks of their own.
    pub fn padded(
        b: usize,
        h: usize,
        t: usize,
        real: usize,
        capture_from: Option<usize>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let rows = (score_budget(device) / (b * h * real).max(1)).max(16);
        Self::with_rows_padded(t, real, capture_from, rows, device)
    }

    pub fn with_rows(
        t: usize,
        capture_from: Option<usize>,
        rows: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Self::with_rows_padded(t, t, capture_from, rows, device)
    }

    fn with_rows_padded(
        t: usize,
        real: usize,
        capture_from: Option<usize>,
        rows: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let real = real.min(t);
        let mut chunks = row_chunks(real, capture_from.unwrap_or(real), rows);
        let pad = row_chunks(t - real, t - real, rows);
        chunks.extend(pad.into_iter().map(|(s, e)| (s + real, e + real)));
        let mut masks: Vec<(usize, Tensor)> = Vec::new();
        for &(s, e) in &chunks {
            if !masks.iter().any(|m| m.0 == e - s) {
                masks.push((e - s, triangle(e - s, device)?));
            }
        }
        Ok(Self {
            chunks,
            masks,
            capture_from,
            real,
        })
    }

    fn mask(&self, n: usize) -> &Tensor {
        &self
            .masks
            .iter()
            .find(|m| m.0 == n)
            .expect("a mask per chunk height")
            .1
    }
}

/// The same triangle from tensor ops, built where it is used (no host loop, no upload).
fn device_mask(s: usize, n: usize, e: usize, device: &Device) -> candle_core::Result<Tensor> {
    let keys = Tensor::arange(0u32, e as u32, device)?.reshape((1, e))?;
    let rows = Tensor::arange(s as u32, (s + n) as u32, device)?.reshape((n, 1))?;
    let future = keys.broadcast_gt(&rows)?;
    let zeros = Tensor::zeros((n, e), DType::F32, device)?;
    let neg = Tensor::full(f32::NEG_INFINITY, (n, e), device)?;
    future.where_cond(&neg, &zeros)
}

/// Causal probabilities of chunk `(s, e)`: `[B, KV, g, n, e]` f32. `q32` is the f32 query
/// `[B, H, T, hd]` already multiplied by the softmax scale (one pass over `n x hd` instead
/// of one over the `n x e` scores), `k32` the f32 keys `[B, KV, T, hd]`.
/// Row `r` of `q32` is query position `q_off + r`.
fn chunk_probs(
    q32: &Tensor,
    q_off: usize,
    k32: &Tensor,
    plan: &Plan,
    (s, e): (usize, usize),
) -> candle_core::Result<Tensor> {
    let (b, h, _, hd) = q32.dims4()?;
    let kv = k32.dim(1)?;
    let g = h / kv;
    let n = e - s;
    // [B, H, n, hd] -> [B, KV, g*n, hd]: the heads of one kv group share one matmul.
    let qc = q32
        .narrow(2, s - q_off, n)?
        .contiguous()?
        .reshape((b, kv, g * n, hd))?;
    let kc = k32.narrow(2, 0, e)?.contiguous()?;
    let scores = qc.matmul(&kc.t()?)?.reshape((b, kv, g, n, e))?;
    // Only the diagonal block has future keys; mask it in place.
    let diag = scores.narrow(4, s, n)?.broadcast_add(plan.mask(n))?;
    scores.slice_set(&diag, 4, s)?;
    candle_nn::ops::softmax_last_dim(&scores)
}

fn f32_inputs(q: &Tensor, k: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let scale = 1.0 / (q.dim(3)? as f64).sqrt();
    Ok(((q.to_dtype(DType::F32)? * scale)?, k.to_dtype(DType::F32)?))
}

/// The attention mass the rows `>= capture_from` pay to every key, summed over heads and
/// rows, `[B, T]` f32: the capture alone, for when a fused kernel computes the layer output.
/// `q` may be a strided view (e.g. a transposed `[B, T, H, hd]` tensor); only its captured
/// rows are converted to f32.
pub fn capture_mass(q: &Tensor, k: &Tensor, plan: &Plan) -> candle_core::Result<Tensor> {
    let (b, _, t, _) = q.dims4()?;
    let real = plan.real.min(t);
    let split = plan.capture_from.unwrap_or(real).min(real);
    let (q32, k32) = f32_inputs(&q.narrow(2, split, real - split)?, k)?;
    let mut mass = Tensor::zeros((b, t), DType::F32, q.device())?;
    let dev = q.device();
    for &(s, e) in plan.chunks.iter().filter(|c| c.0 >= split && c.0 < real) {
        let probs = op(dev, "capture_probs", || {
            chunk_probs(&q32, split, &k32, plan, (s, e))
        })?;
        // The column sum over the chunk's rows as a GEMM with a ones vector: a reduction
        // over a strided axis reads uncoalesced (measured on the H100: 108 ms -> 20 ms a
        // 16k pass). With bf16 weights the GEMM may run in TF32, rounding each probability
        // to 11 significant bits, unbiased, before the f32 sum; f32 runs stay exact.
        let m = op(dev, "capture_sum", || {
            let (b, kv, g, n, e) = probs.dims5()?;
            let ones = Tensor::ones((1, g * n), DType::F32, dev)?;
            ones.broadcast_matmul(&probs.reshape((b * kv, g * n, e))?)?
                .reshape((b, kv, e))?
                .sum(1)
        })?;
        mass = (mass + m.pad_with_zeros(1, 0, t - e)?)?;
    }
    Ok(mass)
}

/// [`capture_mass`] for q `[B, T, H, hd]` and k `[B, T, KV, hd]` (the flash layout): the
/// fused kernels of capture.rs where they exist (CUDA, 16-bit, head size 64 or 128), else
/// the chunked f32 softmax on transposed views.
pub fn capture_mass_thd(q: &Tensor, k: &Tensor, plan: &Plan) -> candle_core::Result<Tensor> {
    let t = q.dim(1)?;
    match plan.capture_from {
        Some(split) if split < t && capture::available(q.device(), q.dtype(), q.dim(3)?) => {
            capture::mass(q, k, split)
        }
        _ => capture_mass(&q.transpose(1, 2)?, &k.transpose(1, 2)?, plan),
    }
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
    let dtype = q.dtype();
    let split = plan.capture_from.unwrap_or(t);
    let (q32, k32) = f32_inputs(q, k)?;
    let mut outs = Vec::new();
    let mut mass: Option<Tensor> = None;
    for &(s, e) in &plan.chunks {
        let n = e - s;
        let probs = chunk_probs(&q32, 0, &k32, plan, (s, e))?;
        if s >= split && s < plan.real {
            let m = probs.sum(D::Minus2)?.sum(2)?.sum(1)?; // [B, e]
            let m = m.pad_with_zeros(1, 0, t - e)?;
            mass = Some(match mass {
                None => m,
                Some(acc) => (acc + m)?,
            });
        }
        let vc = v.narrow(2, 0, e)?.contiguous()?;
        let o = probs
            .reshape((b, kv, (h / kv) * n, e))?
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

/// [`causal_attention`] run on `len >= T` rows: q, k and v `[B, H, T, hd]` get zero rows
/// appended up to `len` (`plan` made by [`Plan::padded`] for them), and the output and mass
/// are cut back to the `T` real rows, which the causal mask keeps from the appended ones.
pub fn causal_attention_padded(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    plan: &Plan,
    len: usize,
) -> candle_core::Result<AttentionOutput> {
    let t = q.dim(2)?;
    if len <= t {
        return causal_attention(q, k, v, plan);
    }
    let pad = |x: &Tensor| x.pad_with_zeros(2, 0, len - t);
    let a = causal_attention(&pad(q)?, &pad(k)?, &pad(v)?, plan)?;
    Ok(AttentionOutput {
        out: a.out.narrow(2, 0, t)?,
        mass: a.mass.map(|m| m.narrow(1, 0, t)).transpose()?,
    })
}

/// gateau's chunked kernels in the `[B, T, H, hd]` layout.
pub fn chunked_causal(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    chunked_causal_real(q, k, v, q.dim(1)?)
}

/// [`chunked_causal`] of operands whose rows from `real` on are padding: the real rows are
/// chunked as in a pass of `real` rows, so their outputs are that pass's, bit for bit.
pub fn chunked_causal_real(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    real: usize,
) -> candle_core::Result<Tensor> {
    let (b, t, h, _) = q.dims4()?;
    let heads = |x: &Tensor| x.transpose(1, 2)?.contiguous();
    let plan = Plan::padded(b, h, t, real, None, q.device())?;
    causal_attention(&heads(q)?, &heads(k)?, &heads(v)?, &plan)?
        .out
        .transpose(1, 2)?
        .contiguous()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn chunks_cover_rows_and_respect_split() {
        assert_eq!(row_chunks(10, 7, 3), vec![(0, 3), (3, 6), (6, 7), (7, 10)]);
        assert_eq!(row_chunks(4, 4, 8), vec![(0, 4)]);
        assert_eq!(row_chunks(4, 0, 3), vec![(0, 3), (3, 4)]);
    }

    #[test]
    fn triangle_is_causal() {
        let m = triangle(3, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m[0][0], 0.0);
        assert!(m[0][1].is_infinite() && m[0][2].is_infinite() && m[1][2].is_infinite());
        assert_eq!(m[2], vec![0.0; 3]);
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
        for n in [1, 5, 9] {
            let host = triangle(n, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
            let ops = device_mask(0, n, n, &Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(host, ops, "n {n}");
        }
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn capture_alone_and_the_thd_layout_equal_the_full_kernel() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (2, 6, 21, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (2, 3, 21, 4), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (2, 3, 21, 4), &dev).unwrap();
        let plan = Plan::with_rows(21, Some(13), 5, &dev).unwrap();
        let full = causal_attention(&q, &k, &v, &plan).unwrap();
        let mass = capture_mass(&q, &k, &plan).unwrap();
        assert!(max_diff(&mass, full.mass.as_ref().unwrap()) < 1e-6);
        let thd = |x: &Tensor| x.transpose(1, 2).unwrap().contiguous().unwrap();
        let out = chunked_causal(&thd(&q), &thd(&k), &thd(&v)).unwrap();
        assert!(max_diff(&out, &thd(&full.out)) < 1e-6);
    }

    /// Zero rows appended after the last position change no real row's output or mass, bit
    /// for bit, when the real rows are chunked as in the unpadded pass (`Plan::padded`);
    /// with `rows` 4, 23 real rows chunked 9 + 14 and the 18 padding rows after them.
    #[test]
    fn padding_at_the_end_changes_nothing() {
        let dev = Device::Cpu;
        let (t, len) = (23, 41);
        let q = Tensor::randn(0f32, 1.0, (1, 6, t, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 2, t, 4), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 2, t, 4), &dev).unwrap();
        let plain = Plan::with_rows(t, Some(9), 4, &dev).unwrap();
        let padded = Plan::with_rows_padded(len, t, Some(9), 4, &dev).unwrap();
        assert_eq!(padded.chunks[..plain.chunks.len()], plain.chunks[..]);
        assert_eq!(padded.chunks.last(), Some(&(39, 41)));
        let a = causal_attention(&q, &k, &v, &plain).unwrap();
        let b = causal_attention_padded(&q, &k, &v, &padded, len).unwrap();
        let flat = |x: &Tensor| x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(b.out.dims(), a.out.dims());
        assert_eq!(flat(&a.out), flat(&b.out));
        assert_eq!(
            flat(a.mass.as_ref().unwrap()),
            flat(b.mass.as_ref().unwrap())
        );
        // The capture alone skips the padding rows too.
        let qp = q.pad_with_zeros(2, 0, len - t).unwrap();
        let kp = k.pad_with_zeros(2, 0, len - t).unwrap();
        let m = capture_mass(&qp, &kp, &padded)
            .unwrap()
            .narrow(1, 0, t)
            .unwrap();
        assert_eq!(flat(&m), flat(&capture_mass(&q, &k, &plain).unwrap()));
        // Through the plan the model makes: the same chunks for the real rows.
        let made = Plan::padded(1, 6, len, t, Some(9), &dev).unwrap();
        let alone = Plan::new(1, 6, t, Some(9), &dev).unwrap();
        assert_eq!(made.chunks[..alone.chunks.len()], alone.chunks[..]);
        assert_eq!(made.real, t);
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
