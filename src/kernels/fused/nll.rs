//! `-log softmax(logits)[target]` of f32 logit rows in one pass: the log-sum-exp with an
//! online maximum minus the target's logit. candle's log_softmax then a gather made five
//! passes over the rows and wrote them back (with the per-sequence logits, 6% of a segment
//! batch's time on the H100 for 512-token responses). The CPU version is the reference the tests check.

use super::span;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Per row of f32 `logits` `[n, V]`: the NLL of its `targets` entry (u32 `[n]`), f32 `[n]`.
/// A target outside `0..V` gives NaN (callers check token ids against the vocabulary).
pub fn nll_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, _) = logits.dims2()?;
    if logits.dtype() != DType::F32 || targets.dtype() != DType::U32 || targets.dims() != [n] {
        bail!(
            "nll_rows: logits {:?} {:?} and targets {:?} {:?}, want f32 [n, V] and u32 [n]",
            logits.dtype(),
            logits.dims(),
            targets.dtype(),
            targets.dims()
        );
    }
    logits
        .contiguous()?
        .apply_op2_no_bwd(&targets.contiguous()?, &NllRows)
}

/// The NLL of `target` under one row of logits, with the maximum taken out first.
fn nll_row(row: &[f32], target: u32) -> f32 {
    let Some(&x) = row.get(target as usize) else {
        return f32::NAN;
    };
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f32 = row.iter().map(|&v| (v - m).exp()).sum();
    m + s.ln() - x
}

struct NllRows;

impl CustomOp2 for NllRows {
    fn name(&self) -> &'static str {
        "nll-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let (a0, a1) = span(l1, "nll_rows")?;
        let (b0, b1) = span(l2, "nll_rows")?;
        let (CpuStorage::F32(x), CpuStorage::U32(t)) = (s1, s2) else {
            bail!("nll_rows: logits must be f32 and targets u32")
        };
        let out: Vec<f32> = x[a0..a1]
            .par_chunks(v)
            .zip(&t[b0..b1])
            .map(|(row, &t)| nll_row(row, t))
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let (a0, _) = span(l1, "nll_rows")?;
        let (b0, _) = span(l2, "nll_rows")?;
        let out = super::cuda::nll_rows(s1, a0, s2, b0, (n, v))?;
        Ok((out, Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Against a plain f64 log-softmax, on rows whose logits are large (where a softmax
    /// without the maximum taken out overflows) and on a target that is the row's maximum.
    #[test]
    fn nll_rows_is_minus_log_softmax_at_the_target() {
        let dev = Device::Cpu;
        let (n, v) = (4, 1001);
        let x: Vec<f32> = (0..n * v)
            .map(|i| ((i * 7919) % 1009) as f32 / 50.0 + if i < v { 80.0 } else { 0.0 })
            .collect();
        let targets = vec![3u32, 1000, 0, 517];
        let got = nll_rows(
            &Tensor::from_vec(x.clone(), (n, v), &dev).unwrap(),
            &Tensor::from_vec(targets.clone(), n, &dev).unwrap(),
        )
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        for r in 0..n {
            let row: Vec<f64> = x[r * v..(r + 1) * v].iter().map(|&a| a as f64).collect();
            let m = row.iter().copied().fold(f64::MIN, f64::max);
            let lse = m + row.iter().map(|a| (a - m).exp()).sum::<f64>().ln();
            let want = lse - row[targets[r] as usize];
            assert!(
                (got[r] as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
                "row {r}: {} vs {want}",
                got[r]
            );
        }
    }

    /// The old path (candle's log_softmax, then the gather) gives the same numbers.
    #[test]
    fn nll_rows_equals_log_softmax_then_gather() {
        let dev = Device::Cpu;
        let logits = Tensor::from_vec(
            (0..3 * 50)
                .map(|i| ((i * 13) % 17) as f32 - 8.0)
                .collect::<Vec<_>>(),
            (3, 50),
            &dev,
        )
        .unwrap();
        let t = Tensor::new(&[7u32, 0, 49], &dev).unwrap();
        let old = candle_nn::ops::log_softmax(&logits, 1)
            .unwrap()
            .gather(&t.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let new = nll_rows(&logits, &t).unwrap().to_vec1::<f32>().unwrap();
        for (a, b) in new.iter().zip(&old) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn bad_operands_are_errors_and_bad_targets_nan() {
        let dev = Device::Cpu;
        let l = Tensor::zeros((2, 5), DType::F32, &dev).unwrap();
        let t = Tensor::new(&[1u32, 5], &dev).unwrap();
        let got = nll_rows(&l, &t).unwrap().to_vec1::<f32>().unwrap();
        assert!((got[0] - 5f32.ln()).abs() < 1e-6 && got[1].is_nan());
        assert!(nll_rows(&l, &Tensor::new(&[1u32], &dev).unwrap()).is_err());
        assert!(nll_rows(&l.to_dtype(DType::BF16).unwrap(), &t).is_err());
        assert!(nll_rows(&l, &t.to_dtype(DType::F32).unwrap()).is_err());
    }

    /// The CUDA kernel against the CPU version, on a vocabulary of 32000 (vector loads) and
    /// one of 1001 (scalar), with logits spread like a language model's. Needs a CUDA GPU.
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_kernels_nll_rows_equals_the_cpu_one() {
        let gpu = Device::new_cuda(0).expect("a CUDA device");
        let cpu = Device::Cpu;
        for (n, v) in [(37, 32000), (5, 1001)] {
            let x: Vec<f32> = (0..n * v)
                .map(|i| ((i * 7919) % 4093) as f32 / 150.0 - 12.0)
                .collect();
            let t: Vec<u32> = (0..n as u32).map(|r| (r * 977) % v as u32).collect();
            let l = Tensor::from_vec(x, (n, v), &cpu).unwrap();
            let tt = Tensor::from_vec(t, n, &cpu).unwrap();
            let want = nll_rows(&l, &tt).unwrap().to_vec1::<f32>().unwrap();
            let got = nll_rows(&l.to_device(&gpu).unwrap(), &tt.to_device(&gpu).unwrap())
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            // Sums of 32000 exponentials in another order: a few f32 steps apart.
            for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{n}x{v} row {r}: {g} vs {w}"
                );
            }
        }
    }
}
