//! Causal attention over several sequences packed into one row without padding (the
//! segment passes of small samples run together, see `crate::score::batching`): each span attends
//! only to itself.

use super::dispatch::{BatchPlan, Dispatch};
use crate::kernels::attention::{causal_attention, AttentionOutput, Plan};
#[cfg(feature = "flash-attn")]
use candle_core::DType;
use candle_core::{Device, Tensor};

/// One sequence of a packed row: positions `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub len: usize,
}

/// Causal attention over sequences packed into one row, each attending only to itself
/// (the segment passes of several small samples in one forward pass).
pub struct Packing {
    spans: Vec<Span>,
    /// The chunked kernels' plan per distinct span length.
    plans: Vec<(usize, Plan)>,
    /// Cumulative span starts `[n + 1]` (u32) for flash attention's variable-length kernel.
    #[cfg_attr(not(feature = "flash-attn"), allow(dead_code))]
    offsets: Tensor,
}

impl Packing {
    pub fn new(spans: &[Span], heads: usize, device: &Device) -> candle_core::Result<Self> {
        let mut plans: Vec<(usize, Plan)> = Vec::new();
        let mut offsets = vec![0u32];
        for s in spans {
            if !plans.iter().any(|p| p.0 == s.len) {
                plans.push((s.len, Plan::new(1, heads, s.len, None, device)?));
            }
            offsets.push((s.start + s.len) as u32);
        }
        let n = offsets.len();
        Ok(Self {
            spans: spans.to_vec(),
            plans,
            offsets: Tensor::from_vec(offsets, n, device)?,
        })
    }

    fn plan(&self, len: usize) -> &Plan {
        &self
            .plans
            .iter()
            .find(|p| p.0 == len)
            .expect("a plan per span length")
            .1
    }

    /// q: `[1, H, P, hd]`, k and v: `[1, KV, P, hd]` (the chunked kernels' layout).
    pub fn causal(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<AttentionOutput> {
        let cut = |x: &Tensor, s: &Span| x.narrow(2, s.start, s.len)?.contiguous();
        let outs = self
            .spans
            .iter()
            .map(|s| {
                let plan = self.plan(s.len);
                Ok(causal_attention(&cut(q, s)?, &cut(k, s)?, &cut(v, s)?, plan)?.out)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AttentionOutput {
            out: Tensor::cat(&outs, 2)?,
            mass: None,
        })
    }

    /// q: `[1, P, H, hd]`, k and v: `[1, P, KV, hd]`: flash attention's variable-length
    /// kernel when built with flash-attn (also under `--attention cudnn`: one kernel for
    /// all spans beats a cuDNN graph per span length), else span by span.
    pub fn causal_thd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        dispatch: &Dispatch,
    ) -> candle_core::Result<Tensor> {
        #[cfg(feature = "flash-attn")]
        if q.device().is_cuda()
            && q.dtype() != DType::F32
            && dispatch.current() != super::dispatch::AttentionKernel::Chunked
        {
            let scale = 1.0 / (q.dim(3)? as f32).sqrt();
            let longest = self.spans.iter().map(|s| s.len).max().unwrap_or(0);
            let (q0, k0, v0) = (q.squeeze(0)?, k.squeeze(0)?, v.squeeze(0)?);
            let o = &self.offsets;
            return candle_flash_attn::flash_attn_varlen(
                &q0, &k0, &v0, o, o, longest, longest, scale, true,
            )?
            .unsqueeze(0);
        }
        // Span by span. Each span's attention length comes from its own length
        // (`--bucket`, as for a single-sequence pass), so under cuDNN the graphs of a few
        // bucket lengths serve every span of the run: spans of 1-2k tokens otherwise bring
        // a new length, and a new ~65 ms graph, with almost every sample. A bucket that
        // fits in the row runs on the row itself: the rows after the span are the next
        // spans' (finite values), which under the causal mask its own rows never see, so
        // nothing is copied; only a bucket that runs past the row's end gets zero rows.
        let fused = dispatch.fused_available(q.device(), q.dtype());
        let total = q.dim(1)?;
        let none = BatchPlan::none();
        let outs = self
            .spans
            .iter()
            .map(|s| {
                let len = dispatch.attention_len(1, s.len, &none, fused);
                if s.start + len <= total {
                    let cut = |x: &Tensor| x.narrow(1, s.start, len);
                    dispatch
                        .run(&cut(q)?, &cut(k)?, &cut(v)?, &none, s.len)?
                        .narrow(1, 0, s.len)
                } else {
                    let cut = |x: &Tensor| x.narrow(1, s.start, s.len);
                    dispatch.causal_padded(&cut(q)?, &cut(k)?, &cut(v)?, &none, len)
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&outs, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::tests::max_diff;
    use crate::model::bucket::Bucket;
    use candle_core::DType;

    /// Packed spans: each span's output is that of the span attended alone.
    fn packed_case(dt: DType, dev: &Device) -> (Tensor, Tensor, Tensor, Vec<Span>) {
        let lens = [37usize, 5, 130, 64, 1];
        let mut spans = Vec::new();
        let mut start = 0;
        for len in lens {
            spans.push(Span { start, len });
            start += len;
        }
        let x = |h| {
            Tensor::randn(0f32, 1.0, (1, start, h, 64), &Device::Cpu)
                .unwrap()
                .to_dtype(dt)
                .unwrap()
                .to_device(dev)
                .unwrap()
        };
        (x(8), x(2), x(2), spans)
    }

    /// Span by span on the CPU in f32 (`[1, P, H, hd]` layout).
    fn packed_reference(q: &Tensor, k: &Tensor, v: &Tensor, spans: &[Span]) -> Tensor {
        let f = |x: &Tensor, s: &Span| {
            x.to_device(&Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .narrow(1, s.start, s.len)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let outs: Vec<Tensor> = spans
            .iter()
            .map(|s| {
                let plan = Plan::with_rows(s.len, None, 1 << 20, &Device::Cpu).unwrap();
                causal_attention(&f(q, s), &f(k, s), &f(v, s), &plan)
                    .unwrap()
                    .out
                    .transpose(1, 2)
                    .unwrap()
            })
            .collect();
        Tensor::cat(&outs, 1).unwrap()
    }

    #[test]
    fn packed_spans_attend_only_to_themselves() {
        let dev = Device::Cpu;
        let (q, k, v, spans) = packed_case(DType::F32, &dev);
        let p = Packing::new(&spans, 8, &dev).unwrap();
        let want = packed_reference(&q, &k, &v, &spans);
        let thd = p.causal_thd(&q, &k, &v, &Dispatch::chunked()).unwrap();
        assert!(max_diff(&thd, &want) < 1e-6);
        let heads = |x: &Tensor| x.transpose(1, 2).unwrap().contiguous().unwrap();
        let out = p.causal(&heads(&q), &heads(&k), &heads(&v)).unwrap();
        assert!(max_diff(&out.out.transpose(1, 2).unwrap(), &want) < 1e-6);
        // Attending across spans would differ (the reference is not trivially equal).
        let whole = crate::kernels::attention::chunked_causal(&q, &k, &v).unwrap();
        assert!(max_diff(&whole, &want) > 1e-2);
    }

    /// Span by span with `--bucket`: every span's attention runs on a length rounded up,
    /// over the next spans' rows where the bucket fits in the row (the first three here)
    /// and over zero rows past the row's end (the last two), and its outputs are those of
    /// the span alone, bit for bit: spans of 37, 5, 130, 64 and 1 tokens padded to
    /// multiples of 48 (so 48, 48, 144, 96, 48) against the unbucketed path and the
    /// reference span by span.
    #[test]
    fn bucketed_spans_give_the_unbucketed_outputs_exactly() {
        let dev = Device::Cpu;
        let (q, k, v, spans) = packed_case(DType::F32, &dev);
        let p = Packing::new(&spans, 8, &dev).unwrap();
        let plain = p.causal_thd(&q, &k, &v, &Dispatch::chunked()).unwrap();
        let bucketed = Dispatch::chunked().with_bucket(Bucket::Tokens(48));
        assert_eq!(
            bucketed.attention_len(1, 37, &BatchPlan::none(), false),
            48,
            "the bucket pads this span"
        );
        let got = p.causal_thd(&q, &k, &v, &bucketed).unwrap();
        assert_eq!(got.dims(), plain.dims());
        assert_eq!(max_diff(&got, &plain), 0.0);
        assert!(max_diff(&got, &packed_reference(&q, &k, &v, &spans)) < 1e-6);
    }

    /// Flash attention's variable-length kernel (with `flash-attn`) on packed bf16/f16
    /// spans against the f32 reference span by span. Needs a CUDA GPU.
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_kernels_attend_packed_spans_alone() {
        let gpu = Device::new_cuda(0).expect("a CUDA device");
        for dt in [DType::BF16, DType::F16] {
            let (q, k, v, spans) = packed_case(dt, &gpu);
            let p = Packing::new(&spans, 8, &gpu).unwrap();
            let auto = Dispatch::resolve(super::super::dispatch::AttentionKernel::Auto).unwrap();
            let got = p
                .causal_thd(&q, &k, &v, &auto)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let err = max_diff(&got, &packed_reference(&q, &k, &v, &spans));
            // Outputs are 16-bit: half an ulp of values up to ~3 is 8e-3 in bf16.
            assert!(err < 2e-2, "{dt:?}: max error {err}");
        }
    }
}
