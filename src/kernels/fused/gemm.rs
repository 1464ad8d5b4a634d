//! Products of 16-bit weights with f32 results, on CUDA one cuBLAS GEMM each (16-bit inputs,
//! f32 accumulation, f32 output):
//! - `x += h · wᵀ` for the two products that feed the f32 residual stream (attention output
//!   and MLP down projections), the stream itself as the output (`beta = 1`). candle's
//!   matmul wrote the product in the 16-bit dtype and `add_into` added it in a second pass:
//!   one rounding of every residual update to 8 significant bits (bf16) and one more pass
//!   over `[T, D]`.
//! - `h · wᵀ` in f32 for the q|k|v projection, whose heads are then rounded once, to the
//!   attention dtype (see `qkv.rs`), instead of to bf16 by the GEMM and again by RoPE.

use super::fp8::{self, Proj};
use super::span;
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp2, DType, InplaceOp3, Layout, Module, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

/// `x += lin(h)`: `x` the contiguous f32 residual stream `[.., D]`, `h` `[.., K]`, the
/// weight `[D, K]`. Fused on CUDA for bf16/f16 weights without a bias; E4M3 weights through
/// the FP8 GEMM (`fp8.rs`) on every device; elsewhere the product and [`super::add_into`].
pub fn linear_add_into(x: &Tensor, h: &Tensor, lin: &Proj) -> Result<()> {
    let lin = match lin {
        Proj::Fp8(f) => return fp8::linear_add_into(x, h, f),
        Proj::Dense(l) => l,
    };
    let w = lin.weight();
    let fused = x.device().is_cuda()
        && matches!(h.dtype(), DType::BF16 | DType::F16)
        && lin.bias().is_none();
    if !fused {
        return super::add_into(x, &lin.forward(h)?);
    }
    gemm_add(x, h, w)
}

/// `lin(h)` in f32: fused on CUDA for bf16/f16 weights (a bias, as Qwen2's q|k|v carry,
/// added in f32 after the product); E4M3 weights through the FP8 GEMM on every device;
/// elsewhere the product in the weights' dtype, widened.
pub fn linear_f32(h: &Tensor, lin: &Proj) -> Result<Tensor> {
    let lin = match lin {
        Proj::Fp8(f) => return fp8::linear_f32(h, f),
        Proj::Dense(l) => l,
    };
    let fused = h.device().is_cuda() && matches!(h.dtype(), DType::BF16 | DType::F16);
    if !fused {
        return lin.forward(h)?.to_dtype(DType::F32);
    }
    let out = gemm_out(h, lin.weight())?;
    match lin.bias() {
        None => Ok(out),
        Some(b) => out.broadcast_add(&b.to_dtype(DType::F32)?),
    }
}

/// `h · wᵀ` in f32 on any device (the CPU version is a plain loop, for the tests).
pub fn gemm_out(h: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (d, k) = w.dims2()?;
    if h.dtype() != w.dtype() || h.dim(D::Minus1)? != k {
        bail!(
            "gemm_out: input {:?} {:?} and weight {:?} {:?}",
            h.dtype(),
            h.dims(),
            w.dtype(),
            w.dims()
        );
    }
    let mut dims = h.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = d;
    }
    h.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &GemmOut)?
        .reshape(dims)
}

/// `x += h · wᵀ` on any device (the CPU version is a plain loop, for the tests).
pub fn gemm_add(x: &Tensor, h: &Tensor, w: &Tensor) -> Result<()> {
    let (d, k) = w.dims2()?;
    if x.dtype() != DType::F32 || !x.is_contiguous() || x.dim(D::Minus1)? != d {
        bail!("gemm_add: the residual stream must be contiguous f32 [.., {d}]");
    }
    if h.dtype() != w.dtype() || h.dim(D::Minus1)? != k || h.elem_count() / k != x.elem_count() / d
    {
        bail!(
            "gemm_add: input {:?} {:?} and weight {:?} {:?} for a stream {:?}",
            h.dtype(),
            h.dims(),
            w.dtype(),
            w.dims(),
            x.dims()
        );
    }
    x.inplace_op3(&h.contiguous()?, &w.contiguous()?, &GemmAdd)
}

/// `x[m, d] += h[m, k] · w[d, k]ᵀ` with f64 sums: the reference the CUDA tests check.
fn cpu_gemm(
    x: &mut [f32],
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> Result<()> {
    fn go<T: candle_core::WithDType>(x: &mut [f32], h: &[T], w: &[T], (d, k): (usize, usize)) {
        x.par_chunks_mut(d).zip(h.par_chunks(k)).for_each(|(x, h)| {
            for (j, x) in x.iter_mut().enumerate() {
                let row = &w[j * k..(j + 1) * k];
                let dot: f64 = h
                    .iter()
                    .zip(row)
                    .map(|(a, b)| a.to_f64() * b.to_f64())
                    .sum();
                *x = (*x as f64 + dot) as f32;
            }
        });
    }
    let (d, k) = l3.shape().dims2()?;
    let (b0, b1) = span(l2, "gemm")?;
    let (c0, c1) = span(l3, "gemm")?;
    match (s2, s3) {
        (CpuStorage::BF16(h), CpuStorage::BF16(w)) => go(x, &h[b0..b1], &w[c0..c1], (d, k)),
        (CpuStorage::F16(h), CpuStorage::F16(w)) => go(x, &h[b0..b1], &w[c0..c1], (d, k)),
        (CpuStorage::F32(h), CpuStorage::F32(w)) => go(x, &h[b0..b1], &w[c0..c1], (d, k)),
        (h, _) => bail!("gemm: unsupported dtype {:?}", h.dtype()),
    }
    Ok(())
}

struct GemmOut;

impl CustomOp2 for GemmOut {
    fn name(&self) -> &'static str {
        "gemm-out"
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
        cpu_gemm(&mut out, (s1, l1), (s2, l2))?;
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
        let h0 = span(l1, "gemm_out")?.0;
        let w0 = span(l2, "gemm_out")?.0;
        let out = super::cuda::gemm_out((s1, h0), (s2, w0), (m, k, d))?;
        Ok((out, Shape::from((m, d))))
    }
}

struct GemmAdd;

impl InplaceOp3 for GemmAdd {
    fn name(&self) -> &'static str {
        "gemm-add"
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
        let (a0, a1) = span(l1, "gemm_add")?;
        let CpuStorage::F32(x) = s1 else {
            bail!("gemm_add: the residual stream must be f32")
        };
        cpu_gemm(&mut x[a0..a1], (s2, l2), (s3, l3))
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
        let x0 = span(l1, "gemm_add")?.0;
        let h0 = span(l2, "gemm_add")?.0;
        let w0 = span(l3, "gemm_add")?.0;
        super::cuda::gemm_add(s1, x0, (s2, h0), (s3, w0), (m, k, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::tests::max_diff;
    use candle_core::Device;
    use candle_nn::Linear;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919) % 211) as f32 / 100.0 - 1.05)
            .collect()
    }

    /// The CPU loop against the unfused path (matmul, then add) on f32.
    #[test]
    fn gemm_add_is_the_product_added() {
        let dev = Device::Cpu;
        let (m, k, d) = (6, 33, 10);
        let x0 = Tensor::from_vec(values(m * d, 1), (2, 3, d), &dev).unwrap();
        let h = Tensor::from_vec(values(m * k, 2), (2, 3, k), &dev).unwrap();
        let w = Tensor::from_vec(values(d * k, 3), (d, k), &dev).unwrap();
        let want = (&x0 + h.broadcast_matmul(&w.t().unwrap()).unwrap()).unwrap();
        let x = x0.copy().unwrap();
        gemm_add(&x, &h, &w).unwrap();
        assert!(max_diff(&x, &want) < 1e-5, "{}", max_diff(&x, &want));
        // linear_add_into on the CPU takes the unfused path: the same numbers.
        let y = x0.copy().unwrap();
        linear_add_into(&y, &h, &Proj::Dense(Linear::new(w.clone(), None))).unwrap();
        assert!(max_diff(&y, &x) < 1e-5);
        // The product alone, into a fresh f32 tensor of the input's leading shape; from
        // bf16 operands, the product of the widened values.
        let want = h.broadcast_matmul(&w.t().unwrap()).unwrap();
        let got = gemm_out(&h, &w).unwrap();
        assert_eq!(got.dims(), [2, 3, d]);
        assert!(max_diff(&got, &want) < 1e-5);
        let (hb, wb) = (
            h.to_dtype(DType::BF16).unwrap(),
            w.to_dtype(DType::BF16).unwrap(),
        );
        let wide = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let want = wide(&hb).broadcast_matmul(&wide(&wb).t().unwrap()).unwrap();
        let got = gemm_out(&hb, &wb).unwrap();
        assert_eq!(got.dtype(), DType::F32);
        assert!(max_diff(&got, &want) < 1e-5);
        let lin = linear_f32(&h, &Proj::Dense(Linear::new(w.clone(), None))).unwrap();
        assert!(max_diff(&lin, &gemm_out(&h, &w).unwrap()) < 1e-5);
    }

    #[test]
    fn mismatched_operands_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((4, 10), DType::F32, &dev).unwrap();
        let h = Tensor::zeros((4, 3), DType::BF16, &dev).unwrap();
        let w = Tensor::zeros((10, 3), DType::BF16, &dev).unwrap();
        assert!(gemm_add(&x, &h, &w).is_ok());
        assert!(gemm_add(&x, &h, &w.to_dtype(DType::F16).unwrap()).is_err());
        assert!(gemm_add(&x, &h.narrow(0, 0, 3).unwrap(), &w).is_err());
        assert!(gemm_add(&x.to_dtype(DType::BF16).unwrap(), &h, &w).is_err());
        assert!(gemm_add(&x, &h, &Tensor::zeros((9, 3), DType::BF16, &dev).unwrap()).is_err());
    }

    /// cuBLAS against the CPU loop, bf16 and f16, on a 7B layer's shapes cut down (K and
    /// D not multiples of the tile sizes): accumulating into a stream that is not zero, and
    /// the product alone.
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_kernels_gemm_equals_the_cpu_loop() {
        let gpu = Device::new_cuda(0).expect("a CUDA device");
        let cpu = Device::Cpu;
        for (m, k, d) in [(1037, 4096, 576), (300, 1536, 4096), (5, 100, 37)] {
            for dt in [DType::BF16, DType::F16] {
                let x = Tensor::from_vec(values(m * d, 1), (1, m, d), &cpu).unwrap();
                let h = Tensor::from_vec(values(m * k, 2), (1, m, k), &cpu)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap();
                let w = Tensor::from_vec(values(d * k, 3), (d, k), &cpu)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap();
                let xg = x.to_device(&gpu).unwrap();
                let on = |t: &Tensor| t.to_device(&gpu).unwrap();
                let lin = Proj::Dense(Linear::new(on(&w), None));
                // Product alone and accumulated: the same cuBLAS call with beta 0 and 1.
                let prod = linear_f32(&on(&h), &lin).unwrap().to_device(&cpu).unwrap();
                let prod = (&x + prod).unwrap();
                linear_add_into(&xg, &on(&h), &lin).unwrap();
                assert_eq!(prod.dims(), xg.dims());
                let prod = prod.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                gemm_add(&x, &h, &w).unwrap();
                let got = xg.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let want = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                // f32 accumulation of exact products in another order, through tensor
                // cores that align partial sums by truncation: measured up to 2.2e-5 of
                // sum |h w| at K = 4096 (f16). The bound is the textbook one for a K-term f32
                // sum, K x 2^-24 of sum |h w| (2.4e-4 at K = 4096); a wrong layout or a lost
                // term is off by whole terms.
                let mag = Tensor::zeros((1, m, d), DType::F32, &cpu).unwrap();
                gemm_add(&mag, &h.abs().unwrap(), &w.abs().unwrap()).unwrap();
                let mag = mag.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let tol = k as f32 * f32::EPSILON / 2.0 * mag[i] + 1e-6;
                    assert!(
                        (g - w).abs() <= tol,
                        "{dt:?} {m}x{k}x{d} [{i}]: {g} vs {w} (sum |terms| {})",
                        mag[i]
                    );
                    // x + product rounds once more in f32: one step of |x| beyond.
                    let p = prod[i];
                    assert!(
                        (p - w).abs() <= tol + w.abs() * f32::EPSILON,
                        "product [{i}]"
                    );
                }
            }
        }
    }
}
