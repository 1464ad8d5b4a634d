//! The CAM attention capture fused into three CUDA kernels (`capture.cu`), for when flash
//! attention computes the layer outputs: the attention probability each key receives from
//! the captured rows, summed over heads and rows, without a score matrix in device memory.
//!
//! The chunked path (attention.rs) writes every captured row's f32 scores and probabilities
//! to device memory and reads them back three times; at 16k tokens on the H100 that was
//! 5 ms a layer, a fifth of the pass. Here a 64 x 64 score tile goes from the tensor cores
//! to shared memory and is reduced there: one kernel finds each row's log-normalizer over
//! slices of the keys, one combines the slices, one sums the probabilities per key.
//!
//! The CPU implementation computes the same slices and formulas in plain loops; the tests
//! check it against the chunked softmax, and the GPU test checks the kernels against it.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows and keys per tile (the kernels' block shape).
pub const TILE: usize = 64;
/// Thread blocks the stats pass aims for: several waves on a 132-SM GPU.
const TARGET_BLOCKS: usize = 2048;

/// Whether [`mass`] runs the fused kernels on this device, dtype and head size.
pub fn available(device: &Device, dtype: DType, head_dim: usize) -> bool {
    cfg!(feature = "cuda")
        && device.is_cuda()
        && matches!(dtype, DType::BF16 | DType::F16)
        && matches!(head_dim, 64 | 128)
}

/// The stats pass splits each row's keys into `slices` runs of `per` key tiles, so that a
/// few hundred captured rows still give the GPU enough blocks.
pub fn slices(b: usize, h: usize, r: usize, t: usize) -> (usize, usize) {
    let tiles = t.div_ceil(TILE).max(1);
    let blocks = (b * h * r.div_ceil(TILE)).max(1);
    let want = TARGET_BLOCKS.div_ceil(blocks).clamp(1, tiles);
    let per = tiles.div_ceil(want);
    (tiles.div_ceil(per), per)
}

/// The attention mass rows `split..T` pay to each key, summed over heads and rows: `[B, T]`
/// f32. `q` `[B, T, H, hd]`, `k` `[B, T, KV, hd]`, H a multiple of KV.
pub fn mass(q: &Tensor, k: &Tensor, split: usize) -> Result<Tensor> {
    let (b, t, h, hd) = q.dims4()?;
    let (kb, kt, kv, khd) = k.dims4()?;
    if (kb, kt, khd) != (b, t, hd) || kv == 0 || h % kv != 0 || split >= t {
        bail!(
            "capture: q {:?}, k {:?}, rows from {split}: shapes do not fit",
            q.dims(),
            k.dims()
        );
    }
    let rows = q.narrow(1, split, t - split)?.contiguous()?;
    rows.apply_op2_no_bwd(&k.contiguous()?, &Capture { split })?
        .sum(0)
}

/// The op on the captured rows `[B, R, H, hd]` and all keys `[B, T, KV, hd]`; its output is
/// the per-head mass `[H, B, T]` (summed over heads by [`mass`], in a fixed order).
struct Capture {
    split: usize,
}

/// Shapes of one capture, as the kernels take them.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    r: usize,
    t: usize,
    h: usize,
    kv: usize,
    hd: usize,
    split: usize,
    /// `log2(e) / sqrt(hd)`: scores in base-2 units, so the kernels use exp2.
    scale2: f32,
}

impl Capture {
    fn dims(&self, l1: &Layout, l2: &Layout) -> Result<Dims> {
        let (b, r, h, hd) = l1.shape().dims4()?;
        let (_, t, kv, _) = l2.shape().dims4()?;
        Ok(Dims {
            b,
            r,
            t,
            h,
            kv,
            hd,
            split: self.split,
            scale2: (std::f64::consts::LOG2_E / (hd as f64).sqrt()) as f32,
        })
    }
}

fn span(l: &Layout) -> Result<(usize, usize)> {
    match l.contiguous_offsets() {
        Some(r) => Ok(r),
        None => bail!("capture: operands must be contiguous"),
    }
}

/// The CPU twin of the kernels: the same key slices, the same base-2 formulas, f32.
fn cpu_mass(q: &[f32], k: &[f32], d: Dims) -> Vec<f32> {
    let Dims {
        b,
        r,
        t,
        h,
        kv,
        hd,
        split,
        scale2,
    } = d;
    let (_, per) = slices(b, h, r, t);
    let span_keys = per * TILE;
    let dot = |bi: usize, row: usize, hi: usize, j: usize| -> f32 {
        let qo = ((bi * r + row) * h + hi) * hd;
        let ko = ((bi * t + j) * kv + hi / (h / kv)) * hd;
        q[qo..qo + hd]
            .iter()
            .zip(&k[ko..ko + hd])
            .map(|(a, b)| a * b)
            .sum::<f32>()
            * scale2
    };
    let mut out = vec![0f32; h * b * t];
    out.par_chunks_mut(t).enumerate().for_each(|(hb, out)| {
        let (hi, bi) = (hb / b, hb % b);
        for row in 0..r {
            let p = split + row;
            // Per slice: max and sum of exp2 over the slice's visible keys; then merged.
            let mut parts = Vec::new();
            for lo in (0..=p).step_by(span_keys) {
                let hi_key = (lo + span_keys).min(p + 1);
                let s: Vec<f32> = (lo..hi_key).map(|j| dot(bi, row, hi, j)).collect();
                let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                parts.push((m, s.iter().map(|v| (v - m).exp2()).sum::<f32>()));
            }
            let mx = parts.iter().map(|p| p.0).fold(f32::NEG_INFINITY, f32::max);
            let l: f32 = parts.iter().map(|&(m, l)| l * (m - mx).exp2()).sum();
            let c = mx + l.log2();
            for (j, o) in out.iter_mut().enumerate().take(p + 1) {
                *o += (dot(bi, row, hi, j) - c).exp2();
            }
        }
    });
    out
}

impl CustomOp2 for Capture {
    fn name(&self) -> &'static str {
        "attention-capture"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn f32s(s: &CpuStorage, (a, b): (usize, usize)) -> Result<Vec<f32>> {
            Ok(match s {
                CpuStorage::F32(v) => v[a..b].to_vec(),
                CpuStorage::BF16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
                CpuStorage::F16(v) => v[a..b].iter().map(|x| x.to_f32()).collect(),
                other => bail!("capture: unsupported dtype {:?}", other.dtype()),
            })
        }
        let d = self.dims(l1, l2)?;
        let out = cpu_mass(&f32s(s1, span(l1)?)?, &f32s(s2, span(l2)?)?, d);
        Ok((CpuStorage::F32(out), Shape::from((d.h, d.b, d.t))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = self.dims(l1, l2)?;
        let out = cuda::mass(s1, span(l1)?, s2, span(l2)?, d)?;
        Ok((out, Shape::from((d.h, d.b, d.t))))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launches of capture.cu's kernels (one PTX module, loaded once per device).
    use super::{slices, Dims, TILE};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaFunction, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{bail, CudaDevice, CudaStorage, DType, Result};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/capture.ptx"));
    const THREADS: u32 = 128;

    fn func(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
        Ok(dev
            .get_or_load_custom_func(name, "gateau_capture", PTX)?
            .into_cuda_function())
    }

    fn grid(x: usize, y: usize, z: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (x as u32, y as u32, z as u32),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    pub fn mass(
        q: &CudaStorage,
        qs: (usize, usize),
        k: &CudaStorage,
        ks: (usize, usize),
        d: Dims,
    ) -> Result<CudaStorage> {
        if q.dtype() != k.dtype() {
            bail!("capture: q is {:?}, k is {:?}", q.dtype(), k.dtype());
        }
        match q.dtype() {
            DType::BF16 => go::<half::bf16>("bf16", q, qs, k, ks, d),
            DType::F16 => go::<half::f16>("f16", q, qs, k, ks, d),
            other => bail!("capture: no kernel for {other:?}"),
        }
    }

    fn go<T: CudaDType + DeviceRepr>(
        suffix: &str,
        q: &CudaStorage,
        (q0, q1): (usize, usize),
        k: &CudaStorage,
        (k0, k1): (usize, usize),
        d: Dims,
    ) -> Result<CudaStorage> {
        // The kernels read 16-byte vectors: every row must start on a 16-byte boundary.
        if !q0.is_multiple_of(8) || !k0.is_multiple_of(8) || !d.hd.is_multiple_of(8) {
            bail!("capture: operands not 16-byte aligned (offsets {q0}, {k0})");
        }
        let dev = q.device().clone();
        let qv = q.as_cuda_slice::<T>()?.slice(q0..q1);
        let kv = k.as_cuda_slice::<T>()?.slice(k0..k1);
        let (nslices, per) = slices(d.b, d.h, d.r, d.t);
        let n = d.b * d.h * d.r;
        // SAFETY (allocations): the stats kernel writes every (slice, row) entry, the merge
        // every row, the column kernel every (head, batch, key); nothing is read unwritten.
        let m = unsafe { dev.alloc::<f32>(nslices * n)? };
        let l = unsafe { dev.alloc::<f32>(nslices * n)? };
        let c = unsafe { dev.alloc::<f32>(n)? };
        let out = unsafe { dev.alloc::<f32>(d.h * d.b * d.t)? };
        let i = |v: usize| v as i32;
        let (b, r, t, h, kvh, split) = (i(d.b), i(d.r), i(d.t), i(d.h), i(d.kv), i(d.split));
        let (per, ns, ni) = (i(per), i(nslices), i(n));
        let stream = dev.cuda_stream();

        let f = func(&dev, &format!("capture_stats_{suffix}_{}", d.hd))?;
        let mut a = stream.launch_builder(&f);
        a.arg(&qv).arg(&kv).arg(&m).arg(&l);
        a.arg(&b).arg(&r).arg(&t).arg(&h).arg(&kvh).arg(&split);
        a.arg(&d.scale2).arg(&per);
        // SAFETY: q holds B x R x H x hd and k B x T x KV x hd elements, the kernel reads
        // rows < R and keys < T only; m and l hold slices x B x H x R.
        unsafe { a.launch(grid(d.r.div_ceil(TILE), d.h, d.b * nslices)) }.w()?;

        let f = func(&dev, "capture_merge")?;
        let mut a = stream.launch_builder(&f);
        a.arg(&m).arg(&l).arg(&c).arg(&ni).arg(&ns);
        // SAFETY: n rows in c, slices x n in m and l; grid-stride over n.
        unsafe { a.launch(grid(n.div_ceil(THREADS as usize).clamp(1, 1 << 16), 1, 1)) }.w()?;

        let f = func(&dev, &format!("capture_cols_{suffix}_{}", d.hd))?;
        let mut a = stream.launch_builder(&f);
        a.arg(&qv).arg(&kv).arg(&c).arg(&out);
        a.arg(&b).arg(&r).arg(&t).arg(&h).arg(&kvh).arg(&split);
        a.arg(&d.scale2);
        // SAFETY: as for stats; out holds H x B x T and each (head, batch, key < T) is
        // written once.
        unsafe { a.launch(grid(d.t.div_ceil(TILE), d.h, d.b)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::{capture_mass, Plan};

    /// The chunked path's mass (f32 softmax over scores of f32 copies) for thd inputs.
    fn chunked(q: &Tensor, k: &Tensor, split: usize) -> Vec<Vec<f32>> {
        let t = q.dim(1).unwrap();
        let heads = |x: &Tensor| {
            x.to_dtype(DType::F32)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let plan = Plan::with_rows(t, Some(split), 7, &Device::Cpu).unwrap();
        capture_mass(&heads(q), &heads(k), &plan)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    }

    fn inputs(b: usize, t: usize, h: usize, kv: usize, hd: usize, dt: DType) -> (Tensor, Tensor) {
        let dev = Device::Cpu;
        // Scaled up so that the rows' distributions are peaked, as trained models' are.
        let q = (Tensor::randn(0f32, 1.0, (b, t, h, hd), &dev).unwrap() * 2.5).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, t, kv, hd), &dev).unwrap();
        (q.to_dtype(dt).unwrap(), k.to_dtype(dt).unwrap())
    }

    fn assert_close(got: &[Vec<f32>], want: &[Vec<f32>], tol: f32, what: &str) {
        for (bi, (g, w)) in got.iter().zip(want).enumerate() {
            for (j, (a, e)) in g.iter().zip(w).enumerate() {
                assert!(
                    (a - e).abs() <= tol * e.abs() + 1e-6,
                    "{what}: batch {bi} key {j}: {a} vs {e}"
                );
            }
        }
    }

    #[test]
    fn slices_cover_the_keys_and_fill_the_gpu() {
        // 16k tokens, 512 rows, 32 heads: 256 stats blocks, so 8 slices of 32 key tiles.
        assert_eq!(slices(1, 32, 512, 16_384), (8, 32));
        // Few key tiles: never more slices than tiles.
        assert_eq!(slices(1, 1, 10, 100), (2, 1));
        assert_eq!(slices(1, 32, 65_536, 65_536), (1, 1024));
        for (b, h, r, t) in [(2, 9, 77, 300), (1, 4, 700, 2000), (3, 32, 5, 64)] {
            let (n, per) = slices(b, h, r, t);
            assert!(
                n * per * TILE >= t && (n - 1) * per * TILE < t,
                "{b} {h} {r} {t}"
            );
        }
    }

    #[test]
    fn cpu_twin_equals_the_chunked_softmax() {
        // Odd sizes, grouped heads, several slices (the merge), and rows from 0.
        for (b, t, h, kv, hd, split) in [
            (2, 300, 6, 2, 64, 150),
            (1, 700, 4, 4, 128, 60),
            (1, 130, 3, 1, 16, 0),
        ] {
            let (q, k) = inputs(b, t, h, kv, hd, DType::F32);
            let got = mass(&q, &k, split).unwrap().to_vec2::<f32>().unwrap();
            let want = chunked(&q, &k, split);
            assert_close(&got, &want, 1e-4, &format!("t {t} h {h}/{kv} hd {hd}"));
            // Each captured row's probabilities sum to one, per head.
            let total: f32 = got.iter().flatten().sum();
            let rows = (b * h * (t - split)) as f32;
            assert!((total - rows).abs() < 1e-3 * rows, "{total} vs {rows}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let (q, k) = inputs(1, 10, 4, 3, 16, DType::F32);
        assert!(mass(&q, &k, 5).is_err(), "4 heads over 3 kv heads");
        let (q, k) = inputs(1, 10, 4, 2, 16, DType::F32);
        assert!(mass(&q, &k, 10).is_err(), "no captured row");
        assert!(mass(&q, &k.narrow(1, 0, 9).unwrap(), 5).is_err());
    }

    /// The kernels against the CPU twin and the chunked f32 softmax, on the same 16-bit
    /// inputs widened exactly. Needs a CUDA GPU: `cargo test --features cuda -- --ignored`.
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_kernels_equal_the_f32_softmax() {
        let gpu = Device::new_cuda(0).expect("a CUDA device");
        for dt in [DType::BF16, DType::F16] {
            for (b, t, h, kv, hd, split) in [
                (2, 300, 6, 2, 64, 150),
                (1, 2000, 4, 4, 128, 1300),
                (1, 4133, 32, 8, 128, 3621),
                (1, 200, 9, 3, 64, 0),
            ] {
                let (q, k) = inputs(b, t, h, kv, hd, dt);
                let on = |x: &Tensor| x.to_device(&gpu).unwrap();
                let got = mass(&on(&q), &on(&k), split)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                let what = format!("{dt:?} t {t} h {h}/{kv} hd {hd} rows from {split}");
                assert_close(&got, &chunked(&q, &k, split), 2e-4, &what);
                let twin = mass(&q, &k, split).unwrap().to_vec2::<f32>().unwrap();
                assert_close(&got, &twin, 2e-4, &what);
            }
        }
    }
}
