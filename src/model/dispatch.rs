//! Which kernel computes the causal attention outputs on CUDA with 16-bit weights
//! (`--attention`): cuDNN's fused attention (`cudnn` feature), FlashAttention-2
//! (`flash-attn` feature), or the chunked kernels (always built). The choice is a value,
//! [`Dispatch`], resolved once per run, logged, and owned by each model; the shapes of the
//! passes about to run are another, [`BatchPlan`], handed to the passes it was made for.
//!
//! The choice changes how the layer outputs are computed, not what is scored: every kernel
//! is exact attention with f32 softmax statistics; the GPU tests compare each one with the
//! chunked f32 path.

use super::bucket::Bucket;
use crate::kernels::attention::chunked_causal_real;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernel {
    /// cuDNN for single sequences of 8192 tokens or more (the long full passes) and for
    /// segment batches with enough work to pay for a graph of their shape, when built in and
    /// loadable; flash attention for the rest when built in; else whichever of the two is
    /// built (cuDNN alone: packed spans one by one, bucketed, see `--bucket`); else chunked.
    Auto,
    /// cuDNN's fused attention (needs the `cudnn` feature and libcudnn.so.9 at run time).
    Cudnn,
    /// FlashAttention-2 (needs the `flash-attn` feature).
    Flash,
    /// gateau's chunked kernels (f32 scores; slower, no extra dependency).
    Chunked,
}

impl std::fmt::Display for AttentionKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Cudnn => "cudnn",
            Self::Flash => "flash",
            Self::Chunked => "chunked",
        })
    }
}

/// Under auto, cuDNN runs single sequences of at least this many tokens; shorter ones go to
/// flash attention unless planned work pays for a graph ([`BatchPlan`]). cuDNN builds
/// an execution graph for every new shape (~65 ms on the H100 once its kernels exist,
/// ~0.7 s for a new kernel variant); at 16k tokens it saves ~80 ms per 7B pass (both full
/// passes of a sample share the graph), at 4k ~9 ms.
pub const CUDNN_MIN_TOKENS: usize = 8192;

/// Under auto, the cuDNN time saved per token, head and layer over flash attention for
/// batches of equal sequences up to a few thousand tokens. Measured on the H100 (cuDNN 9.19,
/// candle-flash-attn 0.11, f16, per call of ~15k tokens): 1.43 to 1.48 ns for 150 to 4,097
/// tokens per sequence, 9 to 40 heads, head sizes 64 and 128 (flash 0.9 ms and cuDNN 0.2 to
/// 0.3 ms for 22 x 705 tokens x 32 heads).
const CUDNN_SAVING_PER_TOKEN_HEAD_S: f64 = 1.4e-9;

/// What building cuDNN's graph for a new shape costs, as measured by the same run: 41 to
/// 118 ms, 65 ms typical (a new kernel variant, once per process: 0.7 to 1.4 s).
const CUDNN_BUILD_S: f64 = 0.08;

/// Whether batched attention of `token_heads` tokens x heads x layers in one shape pays for
/// building cuDNN's graph for it.
pub fn cudnn_pays(token_heads: f64) -> bool {
    token_heads * CUDNN_SAVING_PER_TOKEN_HEAD_S >= CUDNN_BUILD_S
}

/// The `(B, T)` shapes of the forward passes about to run whose attention work pays for a
/// cuDNN graph (see [`cudnn_pays`]): a value made by `Llama::plan` and handed to the passes
/// it was made for. Segment batches of a sample share one or two shapes, and every sample brings new ones, so the choice is made per
/// shape from the work announced for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchPlan {
    cudnn: Vec<(usize, usize)>,
}

impl BatchPlan {
    /// No passes announced: every shape is judged alone.
    pub fn none() -> Self {
        Self::default()
    }

    /// The plan for `shapes` (one `(B, T)` per forward pass) through `layers` layers of
    /// `heads` heads: work adds up per shape.
    pub fn new(
        shapes: impl IntoIterator<Item = (usize, usize)>,
        heads: usize,
        layers: usize,
    ) -> Self {
        let mut work: Vec<((usize, usize), f64)> = Vec::new();
        for (b, t) in shapes {
            let w = (b * t * heads * layers) as f64;
            match work.iter_mut().find(|x| x.0 == (b, t)) {
                Some(x) => x.1 += w,
                None => work.push(((b, t), w)),
            }
        }
        let cudnn = work
            .into_iter()
            .filter(|x| cudnn_pays(x.1))
            .map(|x| x.0)
            .collect();
        Self { cudnn }
    }

    /// Whether the plan puts shape `(b, t)` on cuDNN.
    pub fn planned(&self, b: usize, t: usize) -> bool {
        self.cudnn.contains(&(b, t))
    }
}

/// Which kernel computes the causal attention outputs, resolved once per run from
/// `--attention` and owned by each model that runs it. Cloning shares nothing: a model
/// whose auto-chosen cuDNN failed falls back on its own.
#[derive(Debug)]
pub struct Dispatch {
    /// Cudnn, Flash or Chunked (never Auto).
    kernel: AttentionKernel,
    /// The user asked for cuDNN by name: its errors are fatal.
    explicit: bool,
    /// Auto chose cuDNN and it then failed: this model uses the fallback from there on.
    cudnn_failed: AtomicBool,
    /// What runs, in words, for the settings line.
    description: String,
    /// How single-sequence passes round their attention length (`--bucket`).
    bucket: Bucket,
}

impl Clone for Dispatch {
    fn clone(&self) -> Self {
        Self {
            kernel: self.kernel,
            explicit: self.explicit,
            cudnn_failed: AtomicBool::new(self.cudnn_failed.load(Ordering::Relaxed)),
            description: self.description.clone(),
            bucket: self.bucket,
        }
    }
}

impl Dispatch {
    /// gateau's chunked kernels only (the CPU path, and runs in f32 anywhere).
    pub fn chunked() -> Self {
        Self {
            kernel: AttentionKernel::Chunked,
            explicit: false,
            cudnn_failed: AtomicBool::new(false),
            description: "chunked".into(),
            bucket: Bucket::Off,
        }
    }

    /// Resolves `--attention`. An explicit choice that this build or machine cannot run is
    /// an error naming the fix.
    pub fn resolve(choice: AttentionKernel) -> anyhow::Result<Self> {
        let cudnn = cudnn_status();
        let resolved = match choice {
            AttentionKernel::Auto => match (&cudnn, cfg!(feature = "flash-attn")) {
                (Some(Ok(_)), _) => AttentionKernel::Cudnn,
                (_, true) => AttentionKernel::Flash,
                _ => AttentionKernel::Chunked,
            },
            AttentionKernel::Cudnn => match &cudnn {
                Some(Ok(_)) => AttentionKernel::Cudnn,
                Some(Err(e)) => anyhow::bail!(
                    "--attention cudnn: {e}; put libcudnn.so.9 on LD_LIBRARY_PATH or name it in \
                     GATEAU_CUDNN_LIB"
                ),
                None => anyhow::bail!(
                    "--attention cudnn: this gateau was built without cuDNN; rebuild with \
                     `--features cudnn` (scripts/cudnn/headers.sh)"
                ),
            },
            AttentionKernel::Flash if !cfg!(feature = "flash-attn") => anyhow::bail!(
                "--attention flash: this gateau was built without flash attention; rebuild with \
                 `--features flash-attn`"
            ),
            other => other,
        };
        let description = match (resolved, &cudnn) {
            (AttentionKernel::Cudnn, Some(Ok(v)))
                if choice == AttentionKernel::Auto && cfg!(feature = "flash-attn") =>
            {
                format!(
                    "cudnn for single sequences of {CUDNN_MIN_TOKENS}+ tokens and large segment \
                     batches (cuDNN {v}), flash for the rest"
                )
            }
            (AttentionKernel::Cudnn, Some(Ok(v))) => format!("cudnn (cuDNN {v})"),
            (AttentionKernel::Chunked | AttentionKernel::Flash, Some(Err(e)))
                if choice == AttentionKernel::Auto =>
            {
                format!("{resolved} (cuDNN not used: {e})")
            }
            _ => resolved.to_string(),
        };
        Ok(Self {
            kernel: resolved,
            explicit: choice == AttentionKernel::Cudnn,
            cudnn_failed: AtomicBool::new(false),
            description,
            bucket: Bucket::Auto,
        })
    }

    /// This dispatch with `--bucket` set to `bucket`.
    pub fn with_bucket(mut self, bucket: Bucket) -> Self {
        self.bucket = bucket;
        self
    }

    /// The `--bucket` setting this dispatch pads by.
    pub fn bucket(&self) -> Bucket {
        self.bucket
    }

    /// The length the attention of `b` sequences of `t` tokens runs on under `plan`
    /// (see [`super::bucket`]): single sequences only, and under auto only where the
    /// padded pass runs on a cuDNN graph (`fused`: the layer outputs come from a fused
    /// kernel, i.e. CUDA with 16-bit heads). From the pass's own length alone.
    pub fn attention_len(&self, b: usize, t: usize, plan: &BatchPlan, fused: bool) -> usize {
        if b != 1 {
            return t;
        }
        self.bucket().padded(t, |len| {
            fused && self.kernel_for(1, len, plan) == AttentionKernel::Cudnn
        })
    }

    /// What runs, in words.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// The kernel the next attention call uses.
    pub fn current(&self) -> AttentionKernel {
        match self.kernel {
            AttentionKernel::Cudnn if !self.cudnn_failed.load(Ordering::Relaxed) => {
                AttentionKernel::Cudnn
            }
            AttentionKernel::Cudnn | AttentionKernel::Flash if cfg!(feature = "flash-attn") => {
                AttentionKernel::Flash
            }
            _ => AttentionKernel::Chunked,
        }
    }

    /// The kernel [`Self::causal`] runs for `b` sequences of `t` tokens on CUDA in 16 bits
    /// under `plan`.
    pub fn kernel_for(&self, b: usize, t: usize, plan: &BatchPlan) -> AttentionKernel {
        let kernel = self.current();
        let auto_flash = kernel == AttentionKernel::Cudnn
            && !self.explicit
            && cfg!(feature = "flash-attn")
            && !((b == 1 && t >= CUDNN_MIN_TOKENS) || plan.planned(b, t));
        match auto_flash {
            true => AttentionKernel::Flash,
            false => kernel,
        }
    }

    /// Whether [`Self::causal`] runs a fused kernel on this device and dtype (then the
    /// capture is computed on the side of it).
    pub fn fused_available(&self, device: &Device, dtype: DType) -> bool {
        device.is_cuda() && dtype != DType::F32 && self.current() != AttentionKernel::Chunked
    }

    /// Builds now, on this thread, the cuDNN graphs of the planned shapes that have none
    /// yet, for heads `(hq, hkv, hd)` in `dtype`: called where the thread is about to wait
    /// for the GPU anyway, so the builds overlap queued work instead of holding up the first
    /// pass of a new shape. A graph that fails to build here is left to the call itself,
    /// which reports it.
    pub fn prebuild(
        &self,
        plan: &BatchPlan,
        device: &Device,
        dtype: DType,
        (hq, hkv, hd): (usize, usize, usize),
    ) {
        #[cfg(feature = "cudnn")]
        if device.is_cuda() && dtype != DType::F32 && self.current() == AttentionKernel::Cudnn {
            let scale = 1.0 / (hd as f32).sqrt();
            for &(b, t) in &plan.cudnn {
                let _ = crate::kernels::cudnn::prebuild(device, dtype, (b, t, hq, hkv, hd), scale);
            }
        }
        #[cfg(not(feature = "cudnn"))]
        let _ = (plan, device, dtype, hq, hkv, hd);
    }

    /// Causal attention in the `[B, T, H, hd]` layout, output only: the chosen kernel on
    /// CUDA with 16-bit weights, else the chunked kernels.
    pub fn causal(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        plan: &BatchPlan,
    ) -> candle_core::Result<Tensor> {
        self.causal_padded(q, k, v, plan, q.dim(1)?)
    }

    /// [`Self::causal`] run on `len >= T` positions: q, k and v get `len - T` zero rows
    /// after their last one and the output is cut back to the first `T` rows, which under
    /// the causal mask never see the appended ones (see [`super::bucket`]).
    pub fn causal_padded(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        plan: &BatchPlan,
        len: usize,
    ) -> candle_core::Result<Tensor> {
        let t = q.dim(1)?;
        if len <= t {
            return self.run(q, k, v, plan, t);
        }
        let pad = |x: &Tensor| x.pad_with_zeros(1, 0, len - t);
        self.run(&pad(q)?, &pad(k)?, &pad(v)?, plan, t)?
            .narrow(1, 0, t)
    }

    /// The kernel on operands whose first `real` rows are the pass's and whose later rows
    /// (zeros, or any finite values) only pad the call: the causal mask hides them from the
    /// first `real`. Returns every row of the call.
    pub fn run(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        plan: &BatchPlan,
        real: usize,
    ) -> candle_core::Result<Tensor> {
        #[cfg(any(feature = "cudnn", feature = "flash-attn"))]
        if q.device().is_cuda() && q.dtype() != DType::F32 {
            let scale = 1.0 / (q.dim(3)? as f32).sqrt();
            // The plan alone decides (not which graphs this thread happens to hold): the
            // kernel, and so the rounding, of a pass never depends on the samples before it.
            let kernel = self.kernel_for(q.dim(0)?, q.dim(1)?, plan);
            match kernel {
                #[cfg(feature = "cudnn")]
                AttentionKernel::Cudnn => match crate::kernels::cudnn::causal(q, k, v, scale) {
                    Ok(o) => return Ok(o),
                    Err(e) if self.explicit => return Err(e),
                    Err(e) => {
                        // Auto chose cuDNN and it cannot run this: fall back for the rest
                        // of this model's run, once, loudly.
                        self.cudnn_failed.store(true, Ordering::Relaxed);
                        eprintln!(
                            "gateau: warning: cuDNN attention failed ({e}); using {} from here on",
                            self.current()
                        );
                        return self.run(q, k, v, plan, real);
                    }
                },
                #[cfg(feature = "flash-attn")]
                AttentionKernel::Flash => {
                    return candle_flash_attn::flash_attn(q, k, v, scale, true)
                }
                _ => {}
            }
        }
        #[cfg(not(any(feature = "cudnn", feature = "flash-attn")))]
        let _ = plan;
        chunked_causal_real(q, k, v, real)
    }
}

#[cfg(test)]
impl Dispatch {
    /// What auto resolves to where cuDNN loads (for tests on any machine).
    pub(crate) fn auto_cudnn() -> Self {
        Self {
            kernel: AttentionKernel::Cudnn,
            explicit: false,
            cudnn_failed: AtomicBool::new(false),
            description: String::new(),
            bucket: Bucket::Auto,
        }
    }
}

/// None: not built with cuDNN; else the loaded version or why it cannot be loaded.
fn cudnn_status() -> Option<Result<usize, String>> {
    #[cfg(feature = "cudnn")]
    return Some(crate::kernels::cudnn::load());
    #[cfg(not(feature = "cudnn"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The break-even worked by hand for a 7B model (32 heads, 32 layers) on 705-token
    /// segments: a 16k-token sample's 128 segments in two batches of 64 save 2 x 64 x 705 x
    /// 1,024 x 1.4 ns = 129 ms against an 80 ms graph; an 8k sample's 64 segments, 65 ms.
    #[test]
    fn cudnn_pays_for_its_graph_from_about_57k_segment_tokens_of_a_7b_model() {
        assert!(cudnn_pays((2 * 64 * 705 * 1024) as f64));
        assert!(!cudnn_pays((64 * 705 * 1024) as f64));
        let tokens = CUDNN_BUILD_S / CUDNN_SAVING_PER_TOKEN_HEAD_S / 1024.0;
        assert!((55_000.0..58_000.0).contains(&tokens), "{tokens}");
    }

    /// Work adds up per shape across the announced batches; shapes are judged apart; a plan
    /// is a value: another plan (or none) decides for its own passes only.
    #[test]
    fn planned_batches_choose_per_shape() {
        let (heads, layers) = (32, 32);
        let plan = BatchPlan::new([(64, 705), (64, 705), (3, 705)], heads, layers);
        assert!(
            plan.planned(64, 705),
            "two batches of 64 x 705 pay together"
        );
        assert!(!plan.planned(3, 705), "three sequences do not");
        let one = BatchPlan::new([(64, 705)], heads, layers);
        assert!(!one.planned(64, 705), "one batch alone does not");
        assert!(plan.planned(64, 705), "the first plan is unchanged");
        assert!(!BatchPlan::none().planned(64, 705));
    }

    /// Under auto with flash attention built in, a long single sequence and a planned shape
    /// run on cuDNN, the rest on flash; without a plan nothing small goes to cuDNN.
    #[test]
    fn auto_sends_planned_shapes_and_long_sequences_to_cudnn() {
        let d = Dispatch::auto_cudnn();
        let plan = BatchPlan::new([(64, 705); 2], 32, 32);
        let small = if cfg!(feature = "flash-attn") {
            AttentionKernel::Flash
        } else {
            AttentionKernel::Cudnn
        };
        assert_eq!(
            d.kernel_for(1, CUDNN_MIN_TOKENS, &BatchPlan::none()),
            AttentionKernel::Cudnn
        );
        assert_eq!(d.kernel_for(64, 705, &plan), AttentionKernel::Cudnn);
        assert_eq!(d.kernel_for(64, 705, &BatchPlan::none()), small);
        assert_eq!(d.kernel_for(1, 4096, &plan), small);
        // Two dispatch values are independent: a failure in one leaves the other.
        let other = d.clone();
        d.cudnn_failed.store(true, Ordering::Relaxed);
        assert_ne!(d.current(), AttentionKernel::Cudnn);
        assert_eq!(other.current(), AttentionKernel::Cudnn);
    }

    /// What each choice resolves to in this build; a choice the build lacks is an error
    /// that names the feature to build with. Resolving is a value: it changes nothing for
    /// the other tests running beside this one.
    #[test]
    fn choices_resolve_by_what_is_built() {
        let cudnn = Dispatch::resolve(AttentionKernel::Cudnn);
        if cfg!(feature = "cudnn") {
            if let Err(e) = &cudnn {
                assert!(e.to_string().contains("libcudnn.so.9"), "{e}");
            }
        } else {
            let e = cudnn.unwrap_err().to_string();
            assert!(e.contains("--features cudnn"), "{e}");
        }
        let flash = Dispatch::resolve(AttentionKernel::Flash);
        if cfg!(feature = "flash-attn") {
            let f = flash.unwrap();
            assert_eq!(f.describe(), "flash");
            assert_eq!(f.current(), AttentionKernel::Flash);
        } else {
            let e = flash.unwrap_err().to_string();
            assert!(e.contains("--features flash-attn"), "{e}");
        }
        let chunked = Dispatch::resolve(AttentionKernel::Chunked).unwrap();
        assert_eq!(chunked.describe(), "chunked");
        assert_eq!(chunked.current(), AttentionKernel::Chunked);
        assert!(!chunked.fused_available(&Device::Cpu, DType::BF16));
        let auto = Dispatch::resolve(AttentionKernel::Auto).unwrap();
        let want = if cfg!(feature = "cudnn") && super::cudnn_status().is_some_and(|s| s.is_ok()) {
            AttentionKernel::Cudnn
        } else if cfg!(feature = "flash-attn") {
            AttentionKernel::Flash
        } else {
            AttentionKernel::Chunked
        };
        assert_eq!(auto.current(), want, "auto resolved to {}", auto.describe());
        assert!(
            auto.describe().starts_with(&want.to_string()),
            "{}",
            auto.describe()
        );
        assert!(!auto.fused_available(&Device::Cpu, DType::BF16));
    }
}
