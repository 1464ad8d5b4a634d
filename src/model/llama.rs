//! The forward pass gateau needs, for every supported family (LLaMA, Mistral, Qwen2,
//! Qwen3): logits only at the scored (response) positions, NLL in f32, and optionally the
//! response rows' attention mass per key.
//!
//! Layout mirrors HF checkpoints (`model.layers.N.self_attn.q_proj`, ...), so the same code
//! loads safetensors folders and (renamed, un-permuted) GGUF tensors.

use super::bucket::{Bucket, BucketStats};
use super::config::ModelConfig;
use super::dispatch::{BatchPlan, Dispatch};
use super::heads::heads_checked;
use super::layer::Layer;
use super::rope_cache::RopeCache;
use super::spans::{Packing, Span};
use crate::kernels::attention::{capture_mass_thd, causal_attention_padded, Plan};
use crate::kernels::fused::{self, HeadShape, Heads};
use crate::kernels::profile::op;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Upper bound on the f32 logits of one chunk of scored rows: 128 MiB.
const LOGIT_BUDGET: usize = 32 << 20;

/// What one forward pass returns, per sequence of the batch.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// `-log p(token_j | tokens_<j)` for every scored position `j >= score_from`.
    pub nll: Vec<Vec<f32>>,
    /// When captured: per key position, the attention probability from the scored rows,
    /// averaged over layers, heads and those rows (length T).
    pub attention: Option<Vec<Vec<f32>>>,
}

pub struct Llama {
    pub(super) cfg: ModelConfig,
    pub(super) embed: Tensor,
    pub(super) layers: Vec<Layer>,
    pub(super) norm: Tensor,
    pub(super) lm_head: Tensor,
    pub(super) device: Device,
    pub(super) dtype: DType,
    pub(super) split: bool,
    /// Which kernel computes the attention outputs (resolved once per run).
    pub(super) dispatch: Dispatch,
    /// With bf16 weights on the split path: attention heads in f16 (see `fused::qkv_heads`);
    /// a pass whose heads overflow f16's range runs again with bf16 heads, and only that
    /// pass: the next one starts in f16 again, so no record depends on the samples before it.
    pub(super) f16_heads: bool,
    /// Whether the overflow warning was printed (logging only; it changes no number).
    pub(super) warned: AtomicBool,
    /// What `--bucket` padded in this model's passes (logging only); shared with the fp8
    /// twin, whose passes are this model's too.
    pub(super) bucket_stats: Arc<BucketStats>,
    /// The cos/sin tables of the longest pass so far (shared with the fp8 twin).
    pub(super) rope: Arc<RopeCache>,
}

impl Llama {
    /// Loads from a VarBuilder laid out like an HF checkpoint; attention runs as `dispatch`
    /// says.
    pub fn load(vb: VarBuilder, cfg: ModelConfig, dispatch: Dispatch) -> Result<Self> {
        cfg.validate()?;
        let (v, d) = (cfg.vocab_size, cfg.hidden_size);
        let m = vb.pp("model");
        let embed = m.get((v, d), "embed_tokens.weight")?;
        let layers = (0..cfg.num_layers)
            .map(|i| Layer::load(m.pp("layers").pp(i), &cfg))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = m.get(d, "norm.weight")?.to_dtype(DType::F32)?;
        let lm_head = if cfg.tie_word_embeddings || !vb.contains_tensor("lm_head.weight") {
            embed.clone()
        } else {
            vb.get((v, d), "lm_head.weight")?
        };
        Ok(Self {
            split: dispatch.fused_available(embed.device(), embed.dtype()),
            f16_heads: embed.dtype() == DType::BF16,
            warned: AtomicBool::new(false),
            bucket_stats: Arc::default(),
            rope: Arc::default(),
            dispatch,
            device: embed.device().clone(),
            dtype: embed.dtype(),
            cfg,
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// Attention through [`Dispatch::causal`] for the layer outputs with the capture computed on
    /// the side (the default where a fused kernel exists), or the chunked kernel doing both.
    pub fn set_split_attention(&mut self, split: bool) {
        self.split = split;
    }

    /// Whether the split path's attention heads start in f16 (bf16 weights).
    pub fn f16_heads(&self) -> bool {
        self.f16_heads
    }

    /// The dtype a pass's attention heads start in on the split path.
    fn heads_dtype(&self) -> DType {
        match self.f16_heads {
            true => DType::F16,
            false => self.dtype,
        }
    }

    /// Turns the f16 heads off (or back on, for bf16 weights) — for comparisons.
    pub fn set_f16_heads(&mut self, on: bool) {
        self.f16_heads = on && self.dtype == DType::BF16;
    }

    /// The attention dispatch this model runs.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    /// Sets `--bucket` for this model's passes (see [`super::bucket`]).
    pub fn set_bucket(&mut self, bucket: Bucket) {
        self.dispatch = self.dispatch.clone().with_bucket(bucket);
    }

    /// The length the attention of a `(b, t)` pass of this model runs on under `plan`.
    pub fn attention_len(&self, (b, t): (usize, usize), plan: &BatchPlan) -> usize {
        self.dispatch.attention_len(b, t, plan, self.split)
    }

    /// What bucketing padded so far, in words (None when no pass was padded).
    pub fn bucket_summary(&self) -> Option<String> {
        self.bucket_stats.summary()
    }

    /// The plan for forward passes of these `(B, T)` shapes about to run, so that the
    /// attention kernel is chosen for the whole set (see [`BatchPlan`]); hand it to
    /// [`Self::forward_planned`].
    pub fn plan(&self, shapes: impl IntoIterator<Item = (usize, usize)>) -> BatchPlan {
        BatchPlan::new(shapes, self.cfg.num_heads, self.cfg.num_layers)
    }

    /// Builds the cuDNN graphs of `plan`'s shapes, for this model's heads as the split
    /// path makes them.
    fn prebuild(&self, plan: &BatchPlan) {
        if self.split {
            let c = &self.cfg;
            self.dispatch.prebuild(
                plan,
                &self.device,
                self.heads_dtype(),
                (c.num_heads, c.num_kv_heads, c.head_dim),
            );
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// cos and sin tables for passes of these lengths laid end to end ([`RopeCache`]).
    fn rope_tables(&self, lens: &[usize]) -> candle_core::Result<(Tensor, Tensor)> {
        self.rope.tables(&self.cfg, lens, &self.device)
    }

    /// RMSNorm of the f32 residual stream, returned in the compute dtype (matmul input).
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        fused::rms_norm_to(x, w, self.cfg.rms_norm_eps as f32, self.dtype)
    }

    /// Runs `pass` (a trunk with its heads in the given dtype and what is computed from
    /// it, up to a copy to the host); if a layer's f16 heads overflowed, runs this pass
    /// again with heads in the compute dtype (see [`heads_checked`]).
    fn with_heads_checked<T>(&self, pass: impl Fn(DType) -> Result<(T, Vec<Tensor>)>) -> Result<T> {
        heads_checked(
            self.heads_dtype(),
            self.dtype,
            pass,
            |overflow| fused::any_overflow(overflow).map_err(Into::into),
            || {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    eprintln!(
                    "gateau: warning: attention heads exceeded f16's range (65,504) in a pass; \
                     such passes run again with {} heads",
                    self.dtype.as_str()
                );
                }
            },
        )
    }

    /// The decoder stack over `ids` laid out as `b` rows of `t` tokens: the final f32
    /// residual stream `[B, T, D]`, with `capture_from` the attention mass `[B, T]`
    /// (summed) of the rows from there on, and the layers' f16 overflow flags (none when
    /// the heads are in the compute dtype). With `packed` spans (`b` = 1), every span is
    /// its own sequence: positions restart at 0 and attention stays inside the span.
    fn trunk(
        &self,
        ids: &[u32],
        (b, t): (usize, usize),
        packed: Option<&[Span]>,
        capture_from: Option<usize>,
        (heads_dtype, batch_plan): (DType, &BatchPlan),
    ) -> Result<(Tensor, Option<Tensor>, Vec<Tensor>)> {
        let c = &self.cfg;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        if packed.is_some() && (b != 1 || capture_from.is_some()) {
            bail!("packed sequences go in one row and capture no attention");
        }
        let ids = Tensor::from_slice(ids, b * t, &self.device)?;
        // The residual stream stays f32 whatever the compute dtype: in bf16 each of the
        // 2 x layers additions would round it again (measured on SmolLM2: 2.9% ppl drift),
        // and on CUDA the sublayer products accumulate into it unrounded. Updated in place
        // by `fused::linear_add_into`; its storage is the gathered rows' own (fresh, held by
        // nothing else), so no weight or cached tensor can change under it.
        let x = self
            .embed
            .index_select(&ids, 0)?
            .reshape((b, t, c.hidden_size))?
            .to_dtype(DType::F32)?;
        let (cos, sin) = match packed {
            None => self.rope_tables(&[t])?,
            Some(spans) => self.rope_tables(&spans.iter().map(|s| s.len).collect::<Vec<_>>())?,
        };
        // fused::qkv_heads reads f32 tables; candle's rope wants them in the dtype of q.
        let (cos, sin) = match self.split {
            true => (cos, sin),
            false => (cos.to_dtype(self.dtype)?, sin.to_dtype(self.dtype)?),
        };
        // The attention length (a bucket, `--bucket`): the split path pads inside the
        // dispatch, the chunked kernel here; everything else runs on the `t` real rows.
        let len = match packed {
            None => self.attention_len((b, t), batch_plan),
            Some(_) => t,
        };
        let plan = match self.split {
            true => Plan::new(b, nh, t, capture_from, &self.device)?,
            false => Plan::padded(b, nh, len, t, capture_from, &self.device)?,
        };
        let packing = match packed {
            Some(spans) => Some(Packing::new(spans, nh, &self.device)?),
            None => None,
        };
        let capture = capture_from.is_some();
        let mut mass: Option<Tensor> = None;
        let dev = &self.device;
        let shape = HeadShape { nh, nkv, hd };
        let mut overflow = Vec::new();
        for layer in &self.layers {
            let h = op(dev, "rms_norm", || self.rms_norm(&x, &layer.input_norm))?;
            let (att, m) = if self.split {
                let qkv = op(dev, "qkv_proj", || fused::linear_f32(&h, &layer.qkv))?;
                let qkv = op(dev, "qk_norm", || layer.norm_qk(qkv, shape, c.rms_norm_eps))?;
                let Heads {
                    q,
                    k,
                    v,
                    overflow: o,
                } = op(dev, "rope", || {
                    fused::qkv_heads(&qkv.reshape((b, t, ()))?, &cos, &sin, shape, heads_dtype)
                })?;
                drop(qkv);
                if heads_dtype != self.dtype {
                    overflow.push(o);
                }
                let m = match capture {
                    true => Some(op(dev, "attention_capture", || {
                        capture_mass_thd(&q, &k, &plan)
                    })?),
                    false => None,
                };
                let out = op(dev, "attention", || match &packing {
                    None => self.dispatch.causal_padded(&q, &k, &v, batch_plan, len),
                    Some(p) => p.causal_thd(&q, &k, &v, &self.dispatch),
                })?;
                let out = op(dev, "attention_out_cast", || {
                    out.reshape((b, t, nh * hd))?.to_dtype(self.dtype)
                })?;
                (out, m)
            } else {
                let qkv = op(dev, "qkv_proj", || layer.qkv.forward(&h))?;
                let qkv = op(dev, "qk_norm", || layer.norm_qk(qkv, shape, c.rms_norm_eps))?;
                let heads = |from: usize, n: usize| {
                    qkv.narrow(2, from * hd, n * hd)?
                        .reshape((b, t, n, hd))?
                        .transpose(1, 2)?
                        .contiguous()
                };
                let (q, k, v) = (heads(0, nh)?, heads(nh, nkv)?, heads(nh + nkv, nkv)?);
                let (q, k) = op(dev, "rope", || {
                    Ok((
                        candle_nn::rotary_emb::rope(&q, &cos, &sin)?,
                        candle_nn::rotary_emb::rope(&k, &cos, &sin)?,
                    ))
                })?;
                let a = op(dev, "attention (+capture)", || match &packing {
                    None => causal_attention_padded(&q, &k, &v, &plan, len),
                    Some(p) => p.causal(&q, &k, &v),
                })?;
                let out = a.out.transpose(1, 2)?.reshape((b, t, nh * hd))?;
                (out, a.mass)
            };
            if let Some(m) = m {
                mass = Some(match mass {
                    None => m,
                    Some(acc) => (acc + m)?,
                });
            }
            op(dev, "o_proj+residual", || {
                fused::linear_add_into(&x, &att, &layer.o)
            })?;
            let h = op(dev, "rms_norm", || self.rms_norm(&x, &layer.post_norm))?;
            let mlp = op(dev, "mlp_gate_up", || {
                let gu = fused::linear_f32(&h, &layer.gate_up)?;
                op(dev, "silu_mul", || fused::silu_mul_halves(&gu, self.dtype))
            })?;
            op(dev, "mlp_down+residual", || {
                fused::linear_add_into(&x, &mlp, &layer.down)
            })?;
        }
        Ok((x, mass, overflow))
    }

    /// Final RMSNorm of the rows that predict scored tokens: position p predicts token
    /// p + 1, so the tokens `from..end` of a span come from the rows `from-1..end-1`.
    /// Only those rows reach the vocabulary, and they stay f32 (see `logits`).
    fn scored_rows(&self, x: &Tensor, dim: usize, ranges: &[(usize, usize)]) -> Result<Tensor> {
        let parts = ranges
            .iter()
            .map(|&(from, end)| x.narrow(dim, from - 1, end - from))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let rows = Tensor::cat(&parts, dim)?.contiguous()?;
        let eps = self.cfg.rms_norm_eps as f32;
        Ok(candle_nn::ops::rms_norm(&rows, &self.norm, eps)?)
    }

    /// The head in f32, for one forward pass: a bf16 product would round every logit to
    /// 8 significant bits (0.06 at a logit of 16, straight into the NLL). Only the scored
    /// rows meet it; widening bf16 to f32 is exact, so TF32 GEMMs lose nothing on it.
    fn head32(&self) -> candle_core::Result<Tensor> {
        self.lm_head.to_dtype(DType::F32)
    }

    /// f32 logits of `rows` f32 hidden states `[n, D]`.
    fn logits(&self, rows: &Tensor, head32: &Tensor) -> candle_core::Result<Tensor> {
        rows.matmul(&head32.t()?)
    }

    /// `-log p` of `targets` from their f32 hidden rows `[n, D]` (all the scored rows of a
    /// pass, whatever sequences they belong to), in chunks of logits; one copy to the host.
    fn nll(&self, hidden: &Tensor, targets: &[u32], plan: &BatchPlan) -> Result<Vec<f32>> {
        let head32 = self.head32()?;
        let r = targets.len();
        let rows = (LOGIT_BUDGET / self.cfg.vocab_size).max(1);
        let targets = Tensor::from_slice(targets, r, &self.device)?;
        let mut parts = Vec::with_capacity(r.div_ceil(rows));
        let mut s = 0;
        while s < r {
            let n = rows.min(r - s);
            parts.push(op(&self.device, "logits+nll", || {
                let logits = self.logits(&hidden.narrow(0, s, n)?, &head32)?;
                fused::nll_rows(&logits, &targets.narrow(0, s, n)?)
            })?);
            s += n;
        }
        self.prebuild(plan);
        Ok(Tensor::cat(&parts, 0)?.to_vec1::<f32>()?)
    }

    /// Splits `flat` into consecutive pieces of the given lengths.
    fn split(flat: Vec<f32>, lens: impl Iterator<Item = usize>) -> Vec<Vec<f32>> {
        let mut it = flat.into_iter();
        lens.map(|n| it.by_ref().take(n).collect()).collect()
    }

    /// Runs `tokens` (`B` sequences of equal length `T`) and scores positions
    /// `score_from..T`; with `capture`, also returns the attention those rows pay to each key.
    pub fn forward(
        &self,
        tokens: &[Vec<u32>],
        score_from: usize,
        capture: bool,
    ) -> Result<ForwardOutput> {
        self.forward_planned(tokens, score_from, capture, &BatchPlan::none())
    }

    /// [`Self::forward`] as one of the passes `plan` was made for (see [`Self::plan`]).
    pub fn forward_planned(
        &self,
        tokens: &[Vec<u32>],
        score_from: usize,
        capture: bool,
        plan: &BatchPlan,
    ) -> Result<ForwardOutput> {
        let (b, t) = self.cfg.check_batch(tokens, score_from)?;
        let ids: Vec<u32> = tokens.iter().flatten().copied().collect();
        let r = t - score_from;
        let targets: Vec<u32> = tokens
            .iter()
            .flat_map(|s| s[score_from..].iter().copied())
            .collect();
        if b == 1 {
            self.bucket_stats
                .record(t, self.attention_len((b, t), plan));
        }
        self.with_heads_checked(|heads| {
            let capture_from = capture.then_some(score_from);
            let (x, mass, overflow) =
                self.trunk(&ids, (b, t), None, capture_from, (heads, plan))?;
            let hidden = self.scored_rows(&x, 1, &[(score_from, t)])?;
            let hidden = hidden.reshape((b * r, self.cfg.hidden_size))?;
            let flat = self.nll(&hidden, &targets, plan)?;
            let nll = Self::split(flat, std::iter::repeat_n(r, b));
            let attention = match mass {
                Some(m) => {
                    let denom = (self.cfg.num_layers * self.cfg.num_heads * r) as f64;
                    Some((m / denom)?.to_vec2::<f32>()?)
                }
                None => None,
            };
            Ok((ForwardOutput { nll, attention }, overflow))
        })
    }

    /// Runs sequences of any lengths packed into one row (no padding: each attends only to
    /// itself, positions restart at 0) and returns, per sequence `(tokens, score_from)`, the
    /// NLL of positions `score_from..len`. Equal to [`Llama::forward`] on each alone, up to
    /// the summation order of the matrix products.
    pub fn forward_packed(&self, seqs: &[(&[u32], usize)]) -> Result<Vec<Vec<f32>>> {
        if seqs.is_empty() {
            bail!("forward pass over an empty batch");
        }
        let mut spans = Vec::with_capacity(seqs.len());
        let mut ranges = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for &(tok, from) in seqs {
            if from == 0 || from >= tok.len() {
                bail!(
                    "scored positions must start in 1..{}, got {from}",
                    tok.len()
                );
            }
            self.cfg.check_window(tok.len())?;
            spans.push(Span {
                start,
                len: tok.len(),
            });
            ranges.push((start + from, start + tok.len()));
            start += tok.len();
        }
        self.cfg.check_vocab(seqs.iter().flat_map(|s| s.0.iter()))?;
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.0.iter().copied()).collect();
        let targets: Vec<u32> = seqs
            .iter()
            .flat_map(|&(tok, from)| tok[from..].iter().copied())
            .collect();
        let none = BatchPlan::none();
        let flat = self.with_heads_checked(|heads| {
            let (x, _, overflow) =
                self.trunk(&ids, (1, start), Some(&spans), None, (heads, &none))?;
            let hidden = self.scored_rows(&x.squeeze(0)?, 0, &ranges)?;
            Ok((self.nll(&hidden, &targets, &none)?, overflow))
        })?;
        Ok(Self::split(
            flat,
            seqs.iter().map(|&(tok, from)| tok.len() - from),
        ))
    }

    /// The f32 logits at the rows predicting positions `score_from..T` of one sequence
    /// (for inspection and tests; scoring never materializes them all at once).
    pub fn scored_logits(&self, tokens: &[u32], score_from: usize) -> Result<Vec<Vec<f32>>> {
        let seq = [tokens.to_vec()];
        let (b, t) = self.cfg.check_batch(&seq, score_from)?;
        let none = BatchPlan::none();
        self.with_heads_checked(|heads| {
            let (x, _, overflow) = self.trunk(tokens, (b, t), None, None, (heads, &none))?;
            let hidden = self.scored_rows(&x, 1, &[(score_from, t)])?;
            let logits = self.logits(&hidden.get(0)?, &self.head32()?)?;
            Ok((logits.to_vec2::<f32>()?, overflow))
        })
    }
}
