//! Rotary position embedding of `[B, T, H, hd]` queries or keys (the halves convention:
//! `x[i]` and `x[i + hd/2]` rotate together by angle `i`), from f32 cos/sin tables, in f32
//! arithmetic with one rounding to the storage type. On CUDA one vectorized pass (candle's
//! `rope_thd` made 2-byte accesses at a third of the memory bandwidth and rounded each
//! product in bf16); the CPU version is the reference the tests check.

use super::span;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// `x` `[B, T, H, hd]` rotated by position `t` (its index in dimension 1) with `cos` and
/// `sin` `[T, hd / 2]` in f32; the result has the dtype of `x`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, t, _, hd) = x.dims4()?;
    if hd % 2 != 0 {
        bail!("rope: head size {hd} is odd");
    }
    for (name, tab) in [("cos", cos), ("sin", sin)] {
        if tab.dtype() != DType::F32 || tab.dims() != [t, hd / 2] {
            bail!(
                "rope: {name} table {:?} {:?}, want f32 [{t}, {}]",
                tab.dtype(),
                tab.dims(),
                hd / 2
            );
        }
    }
    x.contiguous()?
        .apply_op3_no_bwd(&cos.contiguous()?, &sin.contiguous()?, &Rope)
}

struct Rope;

/// `out = rope(x)` on the CPU: `x` as `[rows x heads, hd]` chunks, position `row % t`.
fn rotate<T: WithDType>(
    x: &[T],
    cos: &[f32],
    sin: &[f32],
    (t, heads, hd): (usize, usize, usize),
) -> Vec<T> {
    let half = hd / 2;
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(hd)
        .zip(x.par_chunks(hd))
        .enumerate()
        .for_each(|(rh, (o, x))| {
            let p = (rh / heads) % t;
            let (c, s) = (
                &cos[p * half..(p + 1) * half],
                &sin[p * half..(p + 1) * half],
            );
            for i in 0..half {
                let (a, b) = (x[i].to_f64() as f32, x[i + half].to_f64() as f32);
                o[i] = T::from_f64((a * c[i] - b * s[i]) as f64);
                o[i + half] = T::from_f64((a * s[i] + b * c[i]) as f64);
            }
        });
    out
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, t, heads, hd) = l1.shape().dims4()?;
        let (a0, a1) = span(l1, "rope")?;
        let (c0, c1) = span(l2, "rope")?;
        let (d0, d1) = span(l3, "rope")?;
        let (CpuStorage::F32(cos), CpuStorage::F32(sin)) = (s2, s3) else {
            bail!("rope: the tables must be f32")
        };
        let (cos, sin) = (&cos[c0..c1], &sin[d0..d1]);
        let dims = (t, heads, hd);
        let out = match s1 {
            CpuStorage::F32(x) => CpuStorage::F32(rotate(&x[a0..a1], cos, sin, dims)),
            CpuStorage::BF16(x) => CpuStorage::BF16(rotate(&x[a0..a1], cos, sin, dims)),
            CpuStorage::F16(x) => CpuStorage::F16(rotate(&x[a0..a1], cos, sin, dims)),
            other => bail!("rope: unsupported dtype {:?}", other.dtype()),
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
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, t, heads, hd) = l1.shape().dims4()?;
        let (a0, _) = span(l1, "rope")?;
        let tables = ((s2, span(l2, "rope")?.0), (s3, span(l3, "rope")?.0));
        let out = super::cuda::rope(s1, a0, tables, (b * t, t, heads, hd))?;
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attention::tests::max_diff;
    use candle_core::Device;

    fn tables(t: usize, half: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut c, mut s) = (Vec::new(), Vec::new());
        for p in 0..t {
            for i in 0..half {
                let a = p as f64 / 10_000f64.powf(2.0 * i as f64 / (2 * half) as f64);
                c.push(a.cos() as f32);
                s.push(a.sin() as f32);
            }
        }
        (c, s)
    }

    /// Against candle's own rope_thd on f32 (the formula the model used before), and the
    /// rotation written out by hand for one pair.
    #[test]
    fn rope_matches_candles_rope_thd() {
        let dev = Device::Cpu;
        let (b, t, h, hd) = (2, 5, 3, 8);
        let x: Vec<f32> = (0..b * t * h * hd)
            .map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5)
            .collect();
        let (c, s) = tables(t, hd / 2);
        let xt = Tensor::from_vec(x.clone(), (b, t, h, hd), &dev).unwrap();
        let ct = Tensor::from_vec(c.clone(), (t, hd / 2), &dev).unwrap();
        let st = Tensor::from_vec(s.clone(), (t, hd / 2), &dev).unwrap();
        let got = rope(&xt, &ct, &st).unwrap();
        let want = candle_nn::rotary_emb::rope_thd(&xt, &ct, &st).unwrap();
        let diff = max_diff(&got, &want);
        assert!(diff < 1e-6, "{diff}");
        // Batch 1, position 3, head 2, pair 1: (x[1], x[5]) turned by angle 3 / 10000^(2/8).
        let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (batch, pos, head) = (1, 3, 2);
        let base = ((batch * t + pos) * h + head) * hd;
        let a = 3.0f64 / 10_000f64.powf(0.25);
        let (x1, x5) = (x[base + 1] as f64, x[base + 5] as f64);
        assert!((g[base + 1] as f64 - (x1 * a.cos() - x5 * a.sin())).abs() < 1e-6);
        assert!((g[base + 5] as f64 - (x1 * a.sin() + x5 * a.cos())).abs() < 1e-6);
    }

    /// bf16 and f16 inputs: the f32 rotation of the stored values, rounded once.
    #[test]
    fn rope_rounds_once_in_16_bits() {
        let dev = Device::Cpu;
        let (b, t, h, hd) = (1, 7, 2, 16);
        let x: Vec<f32> = (0..b * t * h * hd)
            .map(|i| ((i * 53) % 31) as f32 / 5.0 - 3.0)
            .collect();
        let (c, s) = tables(t, hd / 2);
        let ct = Tensor::from_vec(c, (t, hd / 2), &dev).unwrap();
        let st = Tensor::from_vec(s, (t, hd / 2), &dev).unwrap();
        for dt in [DType::BF16, DType::F16] {
            let xt = Tensor::from_vec(x.clone(), (b, t, h, hd), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let exact = rope(&xt.to_dtype(DType::F32).unwrap(), &ct, &st).unwrap();
            let want = exact.to_dtype(dt).unwrap().to_dtype(DType::F32).unwrap();
            let got = rope(&xt, &ct, &st).unwrap();
            assert_eq!(got.dtype(), dt);
            let (got, want) = (
                got.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(got, want, "{dt:?}");
        }
    }

    #[test]
    fn tables_of_the_wrong_shape_or_dtype_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 4, 2, 8), DType::F32, &dev).unwrap();
        let ok = Tensor::zeros((4, 4), DType::F32, &dev).unwrap();
        assert!(rope(&x, &ok, &ok).is_ok());
        assert!(rope(&x, &Tensor::zeros((3, 4), DType::F32, &dev).unwrap(), &ok).is_err());
        assert!(rope(&x, &ok, &ok.to_dtype(DType::BF16).unwrap()).is_err());
        let odd = Tensor::zeros((1, 4, 2, 7), DType::F32, &dev).unwrap();
        assert!(rope(&odd, &ok, &ok).is_err());
    }

    /// The CUDA kernel against the CPU version: vectorized heads (hd 128 and 64) and the
    /// scalar path (hd 6), with a batch whose positions restart per sequence. Needs a CUDA
    /// GPU: `cargo test --features cuda -- --ignored`.
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_kernels_rope_equals_the_cpu_one() {
        let gpu = Device::new_cuda(0).expect("a CUDA device");
        let cpu = Device::Cpu;
        for (b, t, h, hd) in [(2, 37, 5, 128), (1, 300, 3, 64), (3, 11, 2, 6)] {
            let x: Vec<f32> = (0..b * t * h * hd)
                .map(|i| ((i * 7919) % 2003) as f32 / 300.0 - 3.3)
                .collect();
            let (c, s) = tables(t, hd / 2);
            let ct = Tensor::from_vec(c, (t, hd / 2), &cpu).unwrap();
            let st = Tensor::from_vec(s, (t, hd / 2), &cpu).unwrap();
            for dt in [DType::F32, DType::BF16, DType::F16] {
                let xt = Tensor::from_vec(x.clone(), (b, t, h, hd), &cpu)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap();
                let on = |t: &Tensor| t.to_device(&gpu).unwrap();
                let flat = |t: Tensor| {
                    t.to_device(&cpu)
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                };
                let want = flat(rope(&xt, &ct, &st).unwrap());
                let got = flat(rope(&on(&xt), &on(&ct), &on(&st)).unwrap());
                // The same f32 formula; fused multiply-adds on the GPU move the f32 result
                // by an ulp of the products (inputs up to 3.3: < 1e-6 absolute, large
                // against a result near 0), and so its rounding to dt by one step.
                let step = match dt {
                    DType::F32 => 1e-6,
                    DType::BF16 => 1.0 / 128.0,
                    _ => 1.0 / 1024.0,
                };
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= step * w.abs() + 1e-6,
                        "{dt:?} {b}x{t}x{h}x{hd} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }
}
