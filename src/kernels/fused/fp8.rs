//! `--dtype fp8`: the projections (q|k|v, attention output, gate|up, down) as E4M3 GEMMs with
//! f32 accumulation; everything else (norms, RoPE, attention, softmax, the NLL, the capture)
//! stays bf16/f32.
//!
//! Scaling is per row, the same rule for a weight's rows (its output channels; once, at load)
//! and an activation's rows (its tokens; every call): `amax = max |x[r, :]|`, codes
//! `q = E4M3(x · (448 / amax))` rounded to nearest even and saturated at ±448 (the largest
//! finite E4M3), and the dequantization scale `s[r] = amax · (1/448)`; an all-zero row has
//! `amax = 0`, codes 0 and `s = 0`. A product is `y[i, j] = s_h[i] s_w[j] · Σ_k q_h q_w`
//! (+ the residual for the output projections). Products of two E4M3 values are exact in f32,
//! so the only roundings are the two quantizations and the f32 sum.
//!
//! Per-row scales keep one large row (a token with a massive activation, the attention sink)
//! from pushing every other row's codes towards the subnormals, and they make a token's
//! numbers independent of the other tokens of its pass.
//!
//! On CUDA: two memory passes (row amax, quantize; fused.cu) and one cuBLASLt FP8 GEMM with
//! the scales in its epilogue (`fp8_cuda.rs`). On the CPU the same arithmetic in plain loops
//! (f64 sums), a slow twin for the tests and for checking a GPU run.

use super::span;
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, DType, InplaceOp3, Layout, Module, Result, Shape,
    Tensor, WithDType, D,
};
use candle_nn::Linear;
use float8::F8E4M3;
use rayon::prelude::*;

/// The largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;

/// A projection of a decoder layer: 16-bit (or f32) weights, or E4M3 codes with their scales.
#[derive(Clone)]
pub enum Proj {
    Dense(Linear),
    Fp8(Fp8Linear),
}

/// A weight `[d, k]` as E4M3 codes and its per-channel dequantization scales.
#[derive(Clone)]
pub struct Fp8Linear {
    codes: Tensor,
    /// `[d]` f32, one per output channel, on the weight's device.
    scale: Tensor,
    bias: Option<Tensor>,
}

impl Fp8Linear {
    /// Quantizes `lin`'s weight (per output channel); the bias stays as it is.
    pub fn quantize(lin: &Linear) -> Result<Self> {
        let (codes, scale) = quantize(lin.weight())?;
        Ok(Self {
            codes,
            scale,
            bias: lin.bias().cloned(),
        })
    }

    /// The per-channel dequantization scales (copied to the host).
    pub fn scales(&self) -> Result<Vec<f32>> {
        self.scale.to_vec1::<f32>()
    }

    /// The E4M3 codes `[d, k]`.
    pub fn codes(&self) -> &Tensor {
        &self.codes
    }
}

impl Proj {
    /// `[d, k]`: outputs, inputs.
    pub fn dims(&self) -> Result<(usize, usize)> {
        match self {
            Proj::Dense(l) => l.weight().dims2(),
            Proj::Fp8(f) => f.codes.dims2(),
        }
    }

    /// The same projection with E4M3 weights (an FP8 one unchanged).
    pub fn to_fp8(&self) -> Result<Proj> {
        match self {
            Proj::Dense(l) => Ok(Proj::Fp8(Fp8Linear::quantize(l)?)),
            Proj::Fp8(f) => Ok(Proj::Fp8(f.clone())),
        }
    }

    /// `h · wᵀ (+ bias)` in `h`'s dtype (the unfused path).
    pub fn forward(&self, h: &Tensor) -> Result<Tensor> {
        match self {
            Proj::Dense(l) => l.forward(h),
            Proj::Fp8(f) => linear_f32(h, f)?.to_dtype(h.dtype()),
        }
    }
}

/// Per-row E4M3 quantization of `x [.., k]`: the codes (same shape, `F8E4M3`) and the
/// `[rows]` f32 dequantization scales `max |x[r, :]| · (1/448)`, both on `x`'s device.
pub fn quantize(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let x = x.contiguous()?;
    let k = x.dim(D::Minus1)?;
    let amax = x.apply_op1_no_bwd(&RowAbsMax { k })?;
    let codes = x.apply_op2_no_bwd(&amax, &QuantRows { k })?;
    let scale = (amax * (1.0 / E4M3_MAX) as f64)?;
    Ok((codes, scale))
}

/// `h · wᵀ (+ bias)` in f32, `h` quantized here.
pub fn linear_f32(h: &Tensor, w: &Fp8Linear) -> Result<Tensor> {
    let (d, k) = w.codes.dims2()?;
    if h.dim(D::Minus1)? != k {
        bail!("fp8 linear: input {:?} for a weight [{d}, {k}]", h.dims());
    }
    let (hq, hs) = quantize(h)?;
    let mut dims = h.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = d;
    }
    let op = Fp8Gemm {
        w_scale: w.scale.clone(),
        h_scale: hs,
    };
    let out = hq.apply_op2_no_bwd(&w.codes, &op)?.reshape(dims)?;
    match &w.bias {
        None => Ok(out),
        Some(b) => out.broadcast_add(&b.to_dtype(DType::F32)?),
    }
}

/// `x += h · wᵀ (+ bias)`, `x` the contiguous f32 residual stream.
pub fn linear_add_into(x: &Tensor, h: &Tensor, w: &Fp8Linear) -> Result<()> {
    let (d, k) = w.codes.dims2()?;
    if x.dtype() != DType::F32 || !x.is_contiguous() || x.dim(D::Minus1)? != d {
        bail!("fp8 linear: the residual stream must be contiguous f32 [.., {d}]");
    }
    if h.dim(D::Minus1)? != k || h.elem_count() / k != x.elem_count() / d {
        bail!(
            "fp8 linear: input {:?} for a stream {:?}",
            h.dims(),
            x.dims()
        );
    }
    if w.bias.is_some() {
        return super::add_into(x, &linear_f32(h, w)?);
    }
    let (hq, hs) = quantize(h)?;
    let op = Fp8Gemm {
        w_scale: w.scale.clone(),
        h_scale: hs,
    };
    x.inplace_op3(&hq, &w.codes, &op)
}

/// The E4M3 code of `v` (round to nearest even, saturating): float8 ports the conversion of
/// CUDA's cuda_fp8.hpp, the one the kernels use.
fn e4m3(v: f32) -> F8E4M3 {
    F8E4M3::from_f32(v)
}

/// `448 / amax`, 0 for an all-zero row (whose codes are then 0).
fn inverse_scale(amax: f32) -> f32 {
    if amax > 0.0 {
        E4M3_MAX / amax
    } else {
        0.0
    }
}

/// The rows of `k` elements of `l`'s contiguous span: its bounds and the row count.
fn rows(l: &Layout, k: usize, what: &str) -> Result<(usize, usize, usize)> {
    let (a, b) = span(l, what)?;
    if k == 0 || (b - a) % k != 0 {
        bail!("{what}: {} elements are not rows of {k}", b - a);
    }
    Ok((a, b, (b - a) / k))
}

/// `[rows]` f32: max |x| of each row of `k` elements.
struct RowAbsMax {
    k: usize,
}

impl CustomOp1 for RowAbsMax {
    fn name(&self) -> &'static str {
        "row-absmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        fn go<T: WithDType>(x: &[T], k: usize) -> Vec<f32> {
            x.par_chunks(k)
                .map(|r| {
                    r.iter()
                        .map(|v| (v.to_f64() as f32).abs())
                        .fold(0.0, f32::max)
                })
                .collect()
        }
        let (a, b, n) = rows(l, self.k, "row-absmax")?;
        let m = match s {
            CpuStorage::F32(x) => go(&x[a..b], self.k),
            CpuStorage::BF16(x) => go(&x[a..b], self.k),
            CpuStorage::F16(x) => go(&x[a..b], self.k),
            other => bail!("row-absmax: unsupported dtype {:?}", other.dtype()),
        };
        Ok((CpuStorage::F32(m), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (a, b, n) = rows(l, self.k, "row-absmax")?;
        let out = super::fp8_cuda::row_absmax(s, (a, b), self.k)?;
        Ok((out, Shape::from(n)))
    }
}

/// E4M3 codes of each row of `k` elements times `448 / amax[row]`.
struct QuantRows {
    k: usize,
}

impl CustomOp2 for QuantRows {
    fn name(&self) -> &'static str {
        "quant-rows-e4m3"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn go<T: WithDType>(x: &[T], k: usize, amax: &[f32]) -> Vec<F8E4M3> {
            x.par_chunks(k)
                .zip(amax.par_iter())
                .flat_map_iter(|(r, &a)| {
                    let inv = inverse_scale(a);
                    r.iter().map(move |v| e4m3(v.to_f64() as f32 * inv))
                })
                .collect()
        }
        let CpuStorage::F32(amax) = s2 else {
            bail!("quant-rows-e4m3: amax must be f32")
        };
        let (a, b, n) = rows(l1, self.k, "quant-rows-e4m3")?;
        if amax.len() != n {
            bail!("quant-rows-e4m3: {} amax for {n} rows", amax.len());
        }
        let q = match s1 {
            CpuStorage::F32(x) => go(&x[a..b], self.k, amax),
            CpuStorage::BF16(x) => go(&x[a..b], self.k, amax),
            CpuStorage::F16(x) => go(&x[a..b], self.k, amax),
            other => bail!("quant-rows-e4m3: unsupported dtype {:?}", other.dtype()),
        };
        Ok((CpuStorage::F8E4M3(q), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (a, b, _) = rows(l1, self.k, "quant-rows-e4m3")?;
        let out = super::fp8_cuda::quant_rows_e4m3(s1, (a, b), self.k, s2)?;
        Ok((out, l1.shape().clone()))
    }
}

/// The E4M3 GEMM `s_h[i] s_w[j] · (h_q · w_qᵀ)[i, j]`: out of place (f32) or added into the
/// stream. `w_scale` is `[d]`, `h_scale` `[m]`.
struct Fp8Gemm {
    w_scale: Tensor,
    h_scale: Tensor,
}

impl Fp8Gemm {
    /// `x[m, d] += s_h[i] s_w[j] · h[m, k] · w[d, k]ᵀ` with f64 sums of the exact products.
    fn cpu(
        &self,
        x: &mut [f32],
        h: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
    ) -> Result<()> {
        let (d, k) = w.1.shape().dims2()?;
        let (CpuStorage::F8E4M3(hq), CpuStorage::F8E4M3(wq)) = (h.0, w.0) else {
            bail!("fp8 gemm: operands must be E4M3");
        };
        let (h0, h1) = span(h.1, "fp8 gemm")?;
        let (w0, w1) = span(w.1, "fp8 gemm")?;
        let (hq, wq) = (&hq[h0..h1], &wq[w0..w1]);
        let sw = self.w_scale.to_vec1::<f32>()?;
        let sh = self.h_scale.to_vec1::<f32>()?;
        if sw.len() != d || sh.len() * k != hq.len() || x.len() != sh.len() * d {
            bail!(
                "fp8 gemm: {} weight and {} row scales for [{}, {k}] x [{d}, {k}]",
                sw.len(),
                sh.len(),
                hq.len() / k.max(1)
            );
        }
        x.par_chunks_mut(d)
            .zip(hq.par_chunks(k))
            .zip(sh.par_iter())
            .for_each(|((x, h), &s)| {
                for (j, x) in x.iter_mut().enumerate() {
                    let row = &wq[j * k..(j + 1) * k];
                    let dot: f64 = h
                        .iter()
                        .zip(row)
                        .map(|(a, b)| a.to_f64() * b.to_f64())
                        .sum();
                    *x = (*x as f64 + s as f64 * sw[j] as f64 * dot) as f32;
                }
            });
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn scales(&self) -> Result<[u64; 2]> {
        let ptr = |t: &Tensor| -> Result<u64> {
            let (st, l) = t.storage_and_layout();
            match &*st {
                candle_core::Storage::Cuda(c) => super::fp8_cuda::device_ptr(c, l.start_offset()),
                _ => bail!("fp8 gemm: the scales must be on the GPU"),
            }
        };
        Ok([ptr(&self.w_scale)?, ptr(&self.h_scale)?])
    }
}

impl CustomOp2 for Fp8Gemm {
    fn name(&self) -> &'static str {
        "fp8-gemm-out"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (d, k) = l2.shape().dims2()?;
        let m = l1.shape().elem_count() / k;
        let mut out = vec![0f32; m * d];
        self.cpu(&mut out, (s1, l1), (s2, l2))?;
        Ok((CpuStorage::F32(out), Shape::from((m, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (d, k) = l2.shape().dims2()?;
        let m = l1.shape().elem_count() / k;
        let (h0, w0) = (span(l1, "fp8 gemm")?.0, span(l2, "fp8 gemm")?.0);
        let out = super::fp8_cuda::gemm_out((s1, h0), (s2, w0), self.scales()?, (m, k, d))?;
        Ok((out, Shape::from((m, d))))
    }
}

impl InplaceOp3 for Fp8Gemm {
    fn name(&self) -> &'static str {
        "fp8-gemm-add"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (a0, a1) = span(l1, "fp8 gemm")?;
        let CpuStorage::F32(x) = s1 else {
            bail!("fp8 gemm: the residual stream must be f32")
        };
        self.cpu(&mut x[a0..a1], (s2, l2), (s3, l3))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (d, k) = l3.shape().dims2()?;
        let m = l1.shape().elem_count() / d;
        let (x0, h0, w0) = (
            span(l1, "fp8 gemm")?.0,
            span(l2, "fp8 gemm")?.0,
            span(l3, "fp8 gemm")?.0,
        );
        let scales = self.scales()?;
        super::fp8_cuda::gemm_add(s1, x0, (s2, h0), (s3, w0), scales, (m, k, d))
    }
}

#[cfg(test)]
#[path = "fp8_tests.rs"]
mod tests;
