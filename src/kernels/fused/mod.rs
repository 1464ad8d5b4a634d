//! A decoder layer's element-wise steps, each fused into one memory pass: the residual
//! addition into the f32 stream (no cast pass) and RMSNorm straight to the matmul dtype (no
//! f32 intermediate) here, the others in their own files. Unfused,
//! these were the casts, additions, norms and activations that took about a quarter of a
//! 16k-token bf16 pass on the H100. The arithmetic is f32 whatever the storage type.
//!
//! In their own files, on the same pattern: the attention heads from the f32 q|k|v
//! projection, rotated (`qkv_heads`), the MLP's `silu(gate) * up` from the f32 gate|up
//! projection (`silu_mul_halves`), the NLL of logit rows (`nll_rows`), and the 16-bit
//! products with f32 results (`linear_add_into` into the residual stream, `linear_f32`).
//!
//! CPU and CUDA implement the same formulas (the CUDA kernels are `fused.cu`, compiled to
//! PTX by build.rs); the CPU versions are what the tests check against plain loops.

use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp2, DType, InplaceOp2, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

/// Rows (or elements) per rayon task on the CPU.
const CPU_CHUNK: usize = 1 << 14;

/// `x += y` in place: `x` the f32 residual stream, `y` a sublayer's output of the same shape
/// in any float dtype.
pub fn add_into(x: &Tensor, y: &Tensor) -> Result<()> {
    if x.dtype() != DType::F32 || !x.is_contiguous() {
        bail!("add_into: the residual stream must be contiguous f32");
    }
    if x.dims() != y.dims() {
        bail!("add_into: shapes {:?} and {:?} differ", x.dims(), y.dims());
    }
    x.inplace_op2(&y.contiguous()?, &AddInto)
}

/// RMSNorm over the last dimension of f32 `x` with f32 weight `w`, returned in `dtype`.
pub fn rms_norm_to(x: &Tensor, w: &Tensor, eps: f32, dtype: DType) -> Result<Tensor> {
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        bail!("rms_norm_to: input and weight must be f32");
    }
    let d = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [d] {
        bail!("rms_norm_to: weight {:?} for rows of {d}", w.dims());
    }
    x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &RmsNormTo { eps, dtype })
}

fn span(l: &Layout, what: &str) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(r) => Ok(r),
        None => bail!("{what}: operand must be contiguous"),
    }
}

fn silu_f32(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

struct AddInto;

impl InplaceOp2 for AddInto {
    fn name(&self) -> &'static str {
        "add-into"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        fn add<T: WithDType>(x: &mut [f32], y: &[T]) {
            x.par_chunks_mut(CPU_CHUNK)
                .zip(y.par_chunks(CPU_CHUNK))
                .for_each(|(x, y)| {
                    for (a, &b) in x.iter_mut().zip(y) {
                        *a += b.to_f64() as f32;
                    }
                });
        }
        let (a0, a1) = span(l1, "add_into")?;
        let (b0, b1) = span(l2, "add_into")?;
        let CpuStorage::F32(x) = s1 else {
            bail!("add_into: the residual stream must be f32")
        };
        let x = &mut x[a0..a1];
        match s2 {
            CpuStorage::F32(y) => add(x, &y[b0..b1]),
            CpuStorage::BF16(y) => add(x, &y[b0..b1]),
            CpuStorage::F16(y) => add(x, &y[b0..b1]),
            other => bail!("add_into: unsupported dtype {:?}", other.dtype()),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        cuda::add_into(s1, span(l1, "add_into")?, s2, span(l2, "add_into")?)
    }
}

struct RmsNormTo {
    eps: f32,
    dtype: DType,
}

impl CustomOp2 for RmsNormTo {
    fn name(&self) -> &'static str {
        "rms-norm-to"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn norm<T: WithDType>(x: &[f32], w: &[f32], d: usize, eps: f32) -> Vec<T> {
            let mut out = vec![T::zero(); x.len()];
            out.par_chunks_mut(d)
                .zip(x.par_chunks(d))
                .for_each(|(o, r)| {
                    let m = (r.iter().map(|v| v * v).sum::<f32>() / d as f32 + eps).sqrt();
                    for ((o, &v), &g) in o.iter_mut().zip(r).zip(w) {
                        *o = T::from_f64((v / m * g) as f64);
                    }
                });
            out
        }
        let (a0, a1) = span(l1, "rms_norm_to")?;
        let (b0, b1) = span(l2, "rms_norm_to")?;
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
            bail!("rms_norm_to: input and weight must be f32")
        };
        let (x, w) = (&x[a0..a1], &w[b0..b1]);
        let d = w.len();
        let out = match self.dtype {
            DType::F32 => CpuStorage::F32(norm(x, w, d, self.eps)),
            DType::BF16 => CpuStorage::BF16(norm(x, w, d, self.eps)),
            DType::F16 => CpuStorage::F16(norm(x, w, d, self.eps)),
            other => bail!("rms_norm_to: unsupported output dtype {other:?}"),
        };
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = l2.shape().elem_count();
        let x = span(l1, "rms_norm_to")?;
        let out = cuda::rms_norm_to(s1, x, s2, span(l2, "rms_norm_to")?, d, self.eps, self.dtype)?;
        Ok((out, l1.shape().clone()))
    }
}

/// Head counts and size of one layer's attention.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
}

impl HeadShape {
    pub(super) fn width(&self) -> usize {
        (self.nh + 2 * self.nkv) * self.hd
    }
}

#[cfg(feature = "cuda")]
mod cuda;
pub mod fp8;
#[cfg(feature = "cuda")]
mod fp8_cuda;
mod gemm;
mod nll;
mod qkv;
mod swiglu;

pub use gemm::{linear_add_into, linear_f32};
pub use nll::nll_rows;
pub use qkv::{any_overflow, qkv_heads, Heads};
pub use swiglu::silu_mul_halves;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Deterministic values in [-3, 3) without a random crate.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0
            })
            .collect()
    }

    #[test]
    fn add_into_adds_every_dtype_in_f32() {
        let dev = Device::Cpu;
        let (a, b) = (values(3 * 40_000, 1), values(3 * 40_000, 2));
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let x = Tensor::from_vec(a.clone(), (3, 40_000), &dev).unwrap();
            let y = Tensor::from_vec(b.clone(), (3, 40_000), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            // The addend as the op sees it: the value rounded to dt, widened exactly.
            let yr = y
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            add_into(&x, &y).unwrap();
            let got = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in 0..a.len() {
                assert_eq!(got[i], a[i] + yr[i], "{dt:?} element {i}");
            }
        }
    }

    #[test]
    fn rms_norm_to_matches_the_formula() {
        let dev = Device::Cpu;
        let (rows, d, eps) = (5, 96, 1e-5f32);
        let x = values(rows * d, 3);
        let w = values(d, 4);
        let xt = Tensor::from_vec(x.clone(), (rows, d), &dev).unwrap();
        let wt = Tensor::from_vec(w.clone(), d, &dev).unwrap();
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let got = rms_norm_to(&xt, &wt, eps, dt).unwrap();
            assert_eq!(got.dtype(), dt);
            let got = got.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
            // Rounding to dt is the only error allowed beyond f32 noise.
            let tol = match dt {
                DType::F32 => 1e-6,
                DType::BF16 => 4e-3,
                _ => 5e-4,
            };
            for r in 0..rows {
                let row = &x[r * d..(r + 1) * d];
                let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                for j in 0..d {
                    let want = row[j] as f64 * inv * w[j] as f64;
                    let err = (got[r][j] as f64 - want).abs();
                    assert!(
                        err <= tol * want.abs().max(1e-3),
                        "{dt:?} [{r},{j}] {} vs {want}",
                        got[r][j]
                    );
                }
            }
        }
    }

    /// The CUDA kernels against the CPU implementations, on lengths with a tail after the
    /// vectors and on views that start off the vector alignment (the scalar path). Needs a
    /// CUDA GPU: `cargo test --features cuda -- --ignored`.
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_kernels_equal_the_cpu_ones() {
        let gpu = Device::new_cuda(0).expect("a CUDA device");
        let cpu = Device::Cpu;
        let n = 8 * 4099 + 5;
        let flat = |t: &Tensor| {
            t.to_device(&cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        for dt in [DType::F32, DType::BF16, DType::F16] {
            let ulp = match dt {
                DType::F32 => 1e-6,
                DType::BF16 => 1.0 / 128.0,
                _ => 1.0 / 1024.0,
            };
            for skip in [0, 1] {
                let mk = |seed, dev: &Device, dtype| {
                    Tensor::from_vec(values(n + 1, seed), n + 1, dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                        .narrow(0, skip, n)
                        .unwrap()
                };
                let what = format!("{dt:?}, views from element {skip}");
                let (xc, xg) = (mk(1, &cpu, DType::F32), mk(1, &gpu, DType::F32));
                add_into(&xc, &mk(2, &cpu, dt)).unwrap();
                add_into(&xg, &mk(2, &gpu, dt)).unwrap();
                assert_eq!(flat(&xc), flat(&xg), "add_into {what}");
                // Rows read as float4 into registers (4096, 576), and the loop for rows not
                // a multiple of 4 or longer than the registers hold (4098, 9000).
                for d in [4096, 576, 4098, 9000] {
                    let rows = 7;
                    let x = Tensor::from_vec(values(rows * d, 5), (rows, d), &cpu).unwrap();
                    let w = Tensor::from_vec(values(d, 6), d, &cpu).unwrap();
                    let on = |t: &Tensor| t.to_device(&gpu).unwrap();
                    let got = flat(&rms_norm_to(&on(&x), &on(&w), 1e-5, dt).unwrap());
                    let want = flat(&rms_norm_to(&x, &w, 1e-5, dt).unwrap());
                    // The GPU sums the squares in another order: a few f32 steps apart in
                    // the norm (bounded here by 3e-5 relative), then one dt step at most.
                    let tol = if dt == DType::F32 { 3e-5 } else { ulp };
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= tol * b.abs() + 1e-6,
                            "rms_norm_to d {d} {what} {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn shape_and_dtype_mismatches_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        assert!(add_into(&x, &Tensor::zeros((2, 3), DType::F32, &dev).unwrap()).is_err());
        assert!(add_into(&x.to_dtype(DType::BF16).unwrap(), &x).is_err());
        assert!(rms_norm_to(
            &x,
            &Tensor::zeros(3, DType::F32, &dev).unwrap(),
            1e-5,
            DType::F32
        )
        .is_err());
    }
}
