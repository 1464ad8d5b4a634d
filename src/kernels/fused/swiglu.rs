//! The MLP's `silu(gate) * up` from the f32 output of the fused gate|up projection, in
//! one pass, rounded once to the matmul dtype. Gate and up come out of their GEMM in f32
//! instead of being rounded to bf16 first: on the CPU, rounding them alone moved the
//! example's CAS by up to 0.006 and its segment perplexities by 0.1% on average.

use super::span;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// `gu` `[.., 2F]` f32 (gate's outputs, then up's) into `silu(gate) * up` `[.., F]` in
/// `dtype`.
pub fn silu_mul_halves(gu: &Tensor, dtype: DType) -> Result<Tensor> {
    let w = gu.dim(D::Minus1)?;
    if gu.dtype() != DType::F32 || w % 2 != 0 {
        bail!(
            "silu_mul_halves: input {:?} {:?}, want f32 [.., 2F]",
            gu.dtype(),
            gu.dims()
        );
    }
    gu.contiguous()?.apply_op1_no_bwd(&SiluMulHalves(dtype))
}

struct SiluMulHalves(DType);

fn halves<T: candle_core::WithDType>(gu: &[f32], f: usize) -> Vec<T> {
    let mut out = vec![T::zero(); gu.len() / 2];
    out.par_chunks_mut(f)
        .zip(gu.par_chunks(2 * f))
        .for_each(|(o, row)| {
            let (g, u) = row.split_at(f);
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = T::from_f64(f64::from(super::silu_f32(g) * u));
            }
        });
    out
}

impl CustomOp1 for SiluMulHalves {
    fn name(&self) -> &'static str {
        "silu-mul-halves"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut dims = l.shape().dims().to_vec();
        let f = dims.last().copied().unwrap_or(0) / 2;
        if let Some(last) = dims.last_mut() {
            *last = f;
        }
        let (a0, a1) = span(l, "silu_mul_halves")?;
        let CpuStorage::F32(x) = s else {
            bail!("silu_mul_halves: the input must be f32")
        };
        let x = &x[a0..a1];
        let out = match self.0 {
            DType::F32 => CpuStorage::F32(halves(x, f)),
            DType::BF16 => CpuStorage::BF16(halves(x, f)),
            DType::F16 => CpuStorage::F16(halves(x, f)),
            other => bail!("silu_mul_halves: unsupported dtype {other:?}"),
        };
        Ok((out, Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let mut dims = l.shape().dims().to_vec();
        let f = dims.last().copied().unwrap_or(0) / 2;
        if let Some(last) = dims.last_mut() {
            *last = f;
        }
        let rows = l.shape().elem_count() / (2 * f).max(1);
        let (a0, _) = span(l, "silu_mul_halves")?;
        let out = super::cuda::silu_mul_halves(s, a0, (rows, f), self.0)?;
        Ok((out, Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn input(rows: usize, f: usize, dev: &Device) -> Tensor {
        let x: Vec<f32> = (0..rows * 2 * f)
            .map(|i| ((i * 7919) % 211) as f32 / 30.0 - 3.5)
            .collect();
        Tensor::from_vec(x, (1, rows, 2 * f), dev).unwrap()
    }

    /// Each output is the exact `silu(g) * u` of its row's halves rounded once to the dtype
    /// (f32 arithmetic may land one step of the dtype away near a tie).
    #[test]
    fn halves_are_silu_of_gate_times_up_rounded_once() {
        let dev = Device::Cpu;
        let (rows, f) = (3, 1000);
        let x = input(rows, f, &dev);
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (dt, ulp) in [
            (DType::F32, 1e-6),
            (DType::BF16, 1.0 / 128.0),
            (DType::F16, 1e-3),
        ] {
            let got = silu_mul_halves(&x, dt).unwrap();
            assert_eq!((got.dims(), got.dtype()), (&[1, rows, f][..], dt));
            let got = got.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
            let got = got.to_vec1::<f32>().unwrap();
            for r in 0..rows {
                for i in 0..f {
                    let (g, u) = (xs[r * 2 * f + i] as f64, xs[r * 2 * f + f + i] as f64);
                    let exact = g / (1.0 + (-g).exp()) * u;
                    let want = Tensor::new(&[exact as f32], &dev)
                        .unwrap()
                        .to_dtype(dt)
                        .unwrap();
                    let want = want.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap()[0];
                    let err = (got[r * f + i] - want).abs() as f64;
                    assert!(
                        err <= ulp * (want.abs() as f64).max(1e-4) + 1e-7,
                        "{dt:?} [{r}, {i}]: {} vs {want}",
                        got[r * f + i]
                    );
                }
            }
        }
        assert!(silu_mul_halves(&x.narrow(2, 0, 9).unwrap(), DType::F32).is_err());
        assert!(silu_mul_halves(&x.to_dtype(DType::BF16).unwrap(), DType::F32).is_err());
    }

    /// The kernel against the CPU version: vectors (F = 11008) and the scalar path (F odd),
    /// in each output dtype.
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_kernels_silu_mul_halves_equals_the_cpu_one() {
        let gpu = Device::new_cuda(0).expect("a CUDA device");
        let cpu = Device::Cpu;
        for (rows, f) in [(5, 11008), (7, 333)] {
            let x = input(rows, f, &cpu);
            for (dt, ulp) in [
                (DType::F32, 1e-6),
                (DType::BF16, 1.0 / 128.0),
                (DType::F16, 1e-3),
            ] {
                let want = silu_mul_halves(&x, dt)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                let got = silu_mul_halves(&x.to_device(&gpu).unwrap(), dt)
                    .unwrap()
                    .to_device(&cpu)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap();
                let (w, g) = (
                    want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                );
                for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                    // expf and Rust's exp may differ in the last f32 bit: one dt step.
                    assert!(
                        (a - b).abs() <= ulp * b.abs() + 1e-6,
                        "{dt:?} {f} {i}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
