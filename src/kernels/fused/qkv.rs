//! The attention heads from the f32 output of the fused q|k|v projection: q and k rotated
//! (RoPE, the halves convention: `x[i]` and `x[i + hd/2]` rotate together by angle `i`, f32
//! tables and arithmetic), v converted, all rounded once to the attention dtype in one pass
//! (the projection's bf16 output and candle's RoPE rounded twice, RoPE's products once
//! more each). On bf16 weights the heads go to attention in f16: its 11
//! significant bits against bf16's 8 (rounding q, k and v to bf16 alone moved the example's
//! CAS by up to 0.014 on the CPU), and flash attention then rounds its probabilities to
//! f16 too. f16's range ends at 65,504: a value beyond it sets the overflow flag, and the
//! model runs that pass again with bf16 heads (see `Llama`).

use super::span;
use candle_core::{
    bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType, D,
};
use rayon::prelude::*;

use super::HeadShape;

/// q `[B, T, nh, hd]`, k and v `[B, T, nkv, hd]`, contiguous views of one buffer, and the
/// overflow flag `[1]` f32 (1 when a finite value became infinite in `dtype`, else 0) in
/// storage of its own: a view, or candle's `copy` of one (which copies the whole buffer),
/// would keep a layer's heads alive as long as its flag (measured: +57 GB in a 64k-token
/// pass that keeps its 32 layers' flags).
pub struct Heads {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub overflow: Tensor,
}

/// `qkv` `[B, T, (nh + 2 nkv) hd]` f32 (q's heads, then k's, then v's) into [`Heads`] in
/// `dtype`, q and k rotated by position `t` with f32 `cos`, `sin` `[T, hd / 2]`.
pub fn qkv_heads(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    shape: HeadShape,
    dtype: DType,
) -> Result<Heads> {
    let (b, t, w) = qkv.dims3()?;
    let HeadShape { nh, nkv, hd } = shape;
    if qkv.dtype() != DType::F32 || w != shape.width() || hd % 2 != 0 {
        bail!(
            "qkv_heads: input {:?} {:?} for {nh} + 2 x {nkv} heads of {hd}",
            qkv.dtype(),
            qkv.dims()
        );
    }
    for (name, tab) in [("cos", cos), ("sin", sin)] {
        if tab.dtype() != DType::F32 || tab.dims() != [t, hd / 2] {
            bail!(
                "qkv_heads: {name} table {:?} {:?}, want f32 [{t}, {}]",
                tab.dtype(),
                tab.dims(),
                hd / 2
            );
        }
    }
    let op = QkvHeads { shape, dtype };
    let flat = qkv
        .contiguous()?
        .apply_op3_no_bwd(&cos.contiguous()?, &sin.contiguous()?, &op)?;
    let rows = b * t;
    let part = |from: usize, heads: usize| {
        flat.narrow(0, from, rows * heads * hd)?
            .reshape((b, t, heads, hd))
    };
    Ok(Heads {
        q: part(0, nh)?,
        k: part(rows * nh * hd, nkv)?,
        v: part(rows * (nh + nkv) * hd, nkv)?,
        overflow: own_f32(&flat.narrow(0, rows * w, 1)?)?,
    })
}

/// `x` in f32, in new storage of its own size (a cast or an element-wise op allocates
/// just the view's elements).
fn own_f32(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => x.affine(1.0, 0.0),
        _ => x.to_dtype(DType::F32),
    }
}

/// Whether any of the flags of a pass is set (one copy to the host).
pub fn any_overflow(flags: &[Tensor]) -> Result<bool> {
    if flags.is_empty() {
        return Ok(false);
    }
    let all = Tensor::cat(flags, 0)?;
    Ok(all.max(D::Minus1)?.to_scalar::<f32>()? != 0.0)
}

struct QkvHeads {
    shape: HeadShape,
    dtype: DType,
}

/// The CPU version: the same layout and formula, one rounding per value.
fn convert<T: WithDType>(
    qkv: &[f32],
    cos: &[f32],
    sin: &[f32],
    t: usize,
    HeadShape { nh, nkv, hd }: HeadShape,
) -> Vec<T> {
    let (heads, half) = (nh + 2 * nkv, hd / 2);
    let rows = qkv.len() / (heads * hd);
    let mut out = vec![T::zero(); qkv.len() + 1];
    let (q, rest) = out.split_at_mut(rows * nh * hd);
    let (k, rest) = rest.split_at_mut(rows * nkv * hd);
    let (v, flag) = rest.split_at_mut(rows * nkv * hd);
    let overflow = std::sync::atomic::AtomicBool::new(false);
    let round = |x: f32| {
        let y = T::from_f64(x as f64);
        if x.is_finite() && !y.to_f64().is_finite() {
            overflow.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        y
    };
    let blocks = [
        (q, 0, nh, true),
        (k, nh, nkv, true),
        (v, nh + nkv, nkv, false),
    ];
    for (dst, first, n, rotate) in blocks {
        dst.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
            let (row, h) = (i / n, i % n);
            let x = &qkv[(row * heads + first + h) * hd..][..hd];
            let p = row % t;
            for j in 0..half {
                let (a, b) = (x[j], x[j + half]);
                let (a, b) = match rotate {
                    true => {
                        let (c, s) = (cos[p * half + j], sin[p * half + j]);
                        (a * c - b * s, a * s + b * c)
                    }
                    false => (a, b),
                };
                o[j] = round(a);
                o[j + half] = round(b);
            }
        });
    }
    flag[0] = T::from_f64(f64::from(u8::from(overflow.into_inner())));
    out
}

impl CustomOp3 for QkvHeads {
    fn name(&self) -> &'static str {
        "qkv-heads"
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
        let t = l1.shape().dims3()?.1;
        let (a0, a1) = span(l1, "qkv_heads")?;
        let (c0, c1) = span(l2, "qkv_heads")?;
        let (d0, d1) = span(l3, "qkv_heads")?;
        let (CpuStorage::F32(x), CpuStorage::F32(cos), CpuStorage::F32(sin)) = (s1, s2, s3) else {
            bail!("qkv_heads: the input and the tables must be f32")
        };
        let args = (&x[a0..a1], &cos[c0..c1], &sin[d0..d1]);
        let out = match self.dtype {
            DType::F32 => CpuStorage::F32(convert(args.0, args.1, args.2, t, self.shape)),
            DType::BF16 => CpuStorage::BF16(convert(args.0, args.1, args.2, t, self.shape)),
            DType::F16 => CpuStorage::F16(convert(args.0, args.1, args.2, t, self.shape)),
            other => bail!("qkv_heads: unsupported dtype {other:?}"),
        };
        Ok((out, Shape::from(a1 - a0 + 1)))
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
        let (b, t, w) = l1.shape().dims3()?;
        let (a0, _) = span(l1, "qkv_heads")?;
        let tables = (
            (s2, span(l2, "qkv_heads")?.0),
            (s3, span(l3, "qkv_heads")?.0),
        );
        let out = super::cuda::qkv_heads(s1, a0, tables, (b * t, t), self.shape, self.dtype)?;
        Ok((out, Shape::from(b * t * w + 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::tests::max_diff;
    use candle_core::Device;

    fn tables(t: usize, half: usize, dev: &Device) -> (Tensor, Tensor) {
        let (mut c, mut s) = (Vec::new(), Vec::new());
        for p in 0..t {
            for i in 0..half {
                let a = p as f64 / 10_000f64.powf(i as f64 / half as f64);
                c.push(a.cos() as f32);
                s.push(a.sin() as f32);
            }
        }
        let tab = |v| Tensor::from_vec(v, (t, half), dev).unwrap();
        (tab(c), tab(s))
    }

    fn input(b: usize, t: usize, shape: HeadShape, dev: &Device) -> Tensor {
        let n = b * t * shape.width();
        let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5).collect();
        Tensor::from_vec(x, (b, t, shape.width()), dev).unwrap()
    }

    /// Against the projection split by hand: q and k through candle's `rope_thd` (same
    /// convention, its own code), v as is; in f32 to round-off, in f16/bf16 within one
    /// rounding.
    #[test]
    fn heads_are_the_split_projection_rotated() {
        let dev = Device::Cpu;
        let (b, t) = (2, 5);
        let shape = HeadShape {
            nh: 4,
            nkv: 2,
            hd: 8,
        };
        let x = input(b, t, shape, &dev);
        let (cos, sin) = tables(t, 4, &dev);
        let part = |from: usize, n: usize| {
            x.narrow(2, from * 8, n * 8)
                .unwrap()
                .reshape((b, t, n, 8))
                .unwrap()
        };
        let rope = |x: &Tensor| candle_nn::rotary_emb::rope_thd(x, &cos, &sin).unwrap();
        let want_q = rope(&part(0, 4));
        let want_k = rope(&part(4, 2));
        let want_v = part(6, 2);
        for (dtype, tol) in [
            (DType::F32, 1e-6),
            (DType::F16, 2e-3),
            (DType::BF16, 1.6e-2),
        ] {
            let h = qkv_heads(&x, &cos, &sin, shape, dtype).unwrap();
            assert_eq!(h.q.dims(), [b, t, 4, 8]);
            assert_eq!(h.k.dims(), [b, t, 2, 8]);
            assert!(h.q.is_contiguous() && h.k.is_contiguous() && h.v.is_contiguous());
            for (got, want) in [(&h.q, &want_q), (&h.k, &want_k), (&h.v, &want_v)] {
                let got = got.to_dtype(DType::F32).unwrap();
                assert!(
                    max_diff(&got, want) <= tol,
                    "{dtype:?}: {}",
                    max_diff(&got, want)
                );
            }
            // The flag holds one f32 of its own, not a view of the heads' buffer.
            let (storage, layout) = h.overflow.storage_and_layout();
            let candle_core::Storage::Cpu(CpuStorage::F32(own)) = &*storage else {
                panic!("the flag is not f32 on the CPU")
            };
            assert_eq!((own.len(), layout.start_offset()), (1, 0));
            drop(storage);
            assert!(!any_overflow(&[h.overflow]).unwrap());
        }
        // A rotated pair by hand: position 1, pair 0 of q head 0 of the first sequence.
        let h = qkv_heads(&x, &cos, &sin, shape, DType::F32).unwrap();
        let row = x.get(0).unwrap().get(1).unwrap().to_vec1::<f32>().unwrap();
        let (c, s) = (1f32.cos(), 1f32.sin());
        let q = h.q.get(0).unwrap().get(1).unwrap().get(0).unwrap();
        let q = q.to_vec1::<f32>().unwrap();
        assert!((q[0] - (row[0] * c - row[4] * s)).abs() < 1e-6);
        assert!((q[4] - (row[0] * s + row[4] * c)).abs() < 1e-6);
    }

    /// A value beyond f16's range sets the flag in f16 (in a q, k or v head alike) and
    /// not in bf16, where it is finite; an input that is already infinite does not.
    #[test]
    fn values_beyond_f16_set_the_flag() {
        let dev = Device::Cpu;
        let shape = HeadShape {
            nh: 2,
            nkv: 1,
            hd: 4,
        };
        let (cos, sin) = tables(3, 2, &dev);
        for at in [1, 4 + 2, 8 + 3, 12 + 1 + 16] {
            let mut x = input(1, 3, shape, &dev)
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            x[at] = 1e5;
            let x = Tensor::from_vec(x, (1, 3, 16), &dev).unwrap();
            let flag = |dt| {
                let h = qkv_heads(&x, &cos, &sin, shape, dt).unwrap();
                any_overflow(&[h.overflow]).unwrap()
            };
            assert!(flag(DType::F16), "element {at}");
            assert!(!flag(DType::BF16), "element {at}");
        }
        let mut x = vec![0.5f32; 16];
        x[0] = f32::INFINITY;
        let x = Tensor::from_vec(x, (1, 1, 16), &dev).unwrap();
        let (cos, sin) = tables(1, 2, &dev);
        let h = qkv_heads(&x, &cos, &sin, shape, DType::F16).unwrap();
        assert!(!any_overflow(&[h.overflow]).unwrap());
        assert!(qkv_heads(&x, &cos, &sin, HeadShape { nh: 3, ..shape }, DType::F16).is_err());
    }

    /// The kernel against the CPU version: f16 and bf16, head sizes 64 and 128 (vectors)
    /// and 6 (scalar), grouped kv heads, more rows than positions, and the flag.
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_kernels_qkv_heads_equal_the_cpu_ones() {
        let gpu = Device::new_cuda(0).expect("a CUDA device");
        let cpu = Device::Cpu;
        for (b, t, nh, nkv, hd) in [(2, 37, 8, 2, 64), (1, 300, 4, 4, 128), (3, 5, 2, 1, 6)] {
            let shape = HeadShape { nh, nkv, hd };
            let (cos, sin) = tables(t, hd / 2, &cpu);
            let x = (input(b, t, shape, &cpu) * 3.0).unwrap(); // |x| < 5
                                                               // Same f32 formula, one rounding each, values below 8: at most one unit in the
                                                               // last place apart (the GPU contracts products into FMAs).
            for (dtype, ulp) in [
                (DType::F16, 4e-3),
                (DType::BF16, 3.2e-2),
                (DType::F32, 1e-6),
            ] {
                let want = qkv_heads(&x, &cos, &sin, shape, dtype).unwrap();
                let on = |x: &Tensor| x.to_device(&gpu).unwrap();
                let got = qkv_heads(&on(&x), &on(&cos), &on(&sin), shape, dtype).unwrap();
                for (g, w) in [(&got.q, &want.q), (&got.k, &want.k), (&got.v, &want.v)] {
                    let g = g.to_device(&cpu).unwrap().to_dtype(DType::F32).unwrap();
                    let w = w.to_dtype(DType::F32).unwrap();
                    assert!(
                        max_diff(&g, &w) <= ulp,
                        "{dtype:?} {hd}: {}",
                        max_diff(&g, &w)
                    );
                }
                assert!(!any_overflow(&[got.overflow]).unwrap());
                let big = (on(&x) * 1e5).unwrap();
                let h = qkv_heads(&big, &on(&cos), &on(&sin), shape, dtype).unwrap();
                assert_eq!(any_overflow(&[h.overflow]).unwrap(), dtype == DType::F16);
            }
        }
    }
}
