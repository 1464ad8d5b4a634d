//! One decoder layer's weights as the families lay them out in HF checkpoints
//! (`model.layers.N.self_attn.q_proj`, ...): the projections stacked for one GEMM each, the
//! optional q/k/v and output biases (Qwen2, `attention_bias`) and the per-head q/k RMSNorm
//! weights (Qwen3).

use super::config::ModelConfig;
use crate::kernels::fused::fp8::Proj;
use crate::kernels::fused::{self, HeadShape};
use candle_core::{DType, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

#[derive(Clone)]
pub(crate) struct Layer {
    pub input_norm: Tensor,
    /// q, k and v projections stacked (one GEMM; rows in that order), with their biases
    /// stacked the same way when the family has them.
    pub qkv: Proj,
    pub o: Proj,
    pub post_norm: Tensor,
    /// Gate and up projections stacked (one GEMM; gate's rows first).
    pub gate_up: Proj,
    pub down: Proj,
    /// f32 RMSNorm weights `[head_dim]` of the q and k heads (Qwen3).
    pub qk_norm: Option<(Tensor, Tensor)>,
}

fn weight(vb: &VarBuilder, out: usize, inp: usize, name: &str) -> Result<Tensor> {
    vb.get((out, inp), &format!("{name}.weight"))
}

fn linear(vb: &VarBuilder, out: usize, inp: usize, name: &str) -> Result<Proj> {
    Ok(Proj::Dense(Linear::new(weight(vb, out, inp, name)?, None)))
}

impl Layer {
    pub fn load(vb: VarBuilder, c: &ModelConfig) -> Result<Self> {
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let (qd, kvd) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
        let att = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        let qkv_bias = match c.qkv_bias {
            true => Some(Tensor::cat(
                &[
                    att.get(qd, "q_proj.bias")?,
                    att.get(kvd, "k_proj.bias")?,
                    att.get(kvd, "v_proj.bias")?,
                ],
                0,
            )?),
            false => None,
        };
        let o_bias = match c.o_bias {
            true => Some(att.get(d, "o_proj.bias")?),
            false => None,
        };
        let qk_norm = match c.qk_norm {
            true => Some((
                att.get(c.head_dim, "q_norm.weight")?.to_dtype(DType::F32)?,
                att.get(c.head_dim, "k_norm.weight")?.to_dtype(DType::F32)?,
            )),
            false => None,
        };
        Ok(Self {
            input_norm: vb.get(d, "input_layernorm.weight")?.to_dtype(DType::F32)?,
            qkv: Proj::Dense(Linear::new(
                Tensor::cat(
                    &[
                        weight(&att, qd, d, "q_proj")?,
                        weight(&att, kvd, d, "k_proj")?,
                        weight(&att, kvd, d, "v_proj")?,
                    ],
                    0,
                )?,
                qkv_bias,
            )),
            o: Proj::Dense(Linear::new(weight(&att, d, qd, "o_proj")?, o_bias)),
            post_norm: vb
                .get(d, "post_attention_layernorm.weight")?
                .to_dtype(DType::F32)?,
            gate_up: Proj::Dense(Linear::new(
                Tensor::cat(
                    &[
                        weight(&mlp, f, d, "gate_proj")?,
                        weight(&mlp, f, d, "up_proj")?,
                    ],
                    0,
                )?,
                None,
            )),
            down: linear(&mlp, d, f, "down_proj")?,
            qk_norm,
        })
    }

    /// The layer with its four projections in E4M3 (`--dtype fp8`), and the smallest and
    /// largest of their per-channel scales.
    pub fn quantize_fp8(&mut self) -> Result<(f32, f32)> {
        let (mut lo, mut hi) = (f32::INFINITY, 0f32);
        for p in [
            &mut self.qkv,
            &mut self.o,
            &mut self.gate_up,
            &mut self.down,
        ] {
            *p = p.to_fp8()?;
            if let Proj::Fp8(f) = p {
                for s in f.scales()? {
                    lo = lo.min(s);
                    hi = hi.max(s);
                }
            }
        }
        Ok((lo, hi))
    }

    /// The stacked projection `[B, T, (nh + 2 nkv) hd]` with q's and k's heads RMS-normed
    /// (Qwen3; unchanged otherwise), in its own dtype. The norm runs in f32 as transformers'
    /// `Qwen3RMSNorm` does, before RoPE, so both attention paths see normed heads.
    pub fn norm_qk(&self, qkv: Tensor, shape: HeadShape, eps: f64) -> Result<Tensor> {
        let Some((qn, kn)) = &self.qk_norm else {
            return Ok(qkv);
        };
        let HeadShape { nh, nkv, hd } = shape;
        let (b, t, _) = qkv.dims3()?;
        let dtype = qkv.dtype();
        let heads = qkv.reshape((b, t, nh + 2 * nkv, hd))?;
        let norm = |from: usize, n: usize, w: &Tensor| {
            let x = heads.narrow(2, from, n)?.to_dtype(DType::F32)?;
            fused::rms_norm_to(&x.contiguous()?, w, eps as f32, dtype)
        };
        let q = norm(0, nh, qn)?;
        let k = norm(nh, nkv, kn)?;
        let v = heads.narrow(2, nh + nkv, nkv)?;
        Tensor::cat(&[q, k, v], 2)?.reshape((b, t, (nh + 2 * nkv) * hd))
    }
}
