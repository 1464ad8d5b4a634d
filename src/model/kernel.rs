//! Which kernel computes the causal attention outputs on CUDA with 16-bit weights
//! (`--attention`): cuDNN's fused attention (`cudnn` feature), FlashAttention-2
//! (`flash-attn` feature), or the chunked kernels of attention.rs (always built). One
//! choice per process, resolved once and logged, like the matmul precision.
//!
//! The choice changes how the layer outputs are computed, not what is scored: every kernel
//! is exact attention with f32 softmax statistics; the GPU tests compare each one with the
//! chunked f32 path.

use super::attention::{causal_attention, Plan};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernel {
    /// cuDNN for single sequences of 8192 tokens or more (the long full passes) and for
    /// segment batches with enough work to pay for a graph of their shape, when built in and
    /// loadable; flash attention for the rest when built in; else whichever of the two is
    /// built; else chunked.
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
/// flash attention unless announced work pays for a graph ([`plan_batches`]). cuDNN builds
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

thread_local! {
    /// The `(B, T)` shapes whose attention this thread's announced batches run on cuDNN.
    static PLANNED: RefCell<Vec<(usize, usize)>> = const { RefCell::new(Vec::new()) };
}

/// Announces the batches about to run on this thread (`(B, T)` per forward pass, through
/// `layers` layers of `heads` heads) until the guard drops: under auto, the shapes with
/// enough attention work to pay for a cuDNN graph run on cuDNN, the rest on flash
/// attention. Segment batches of a sample share one or two shapes, and every sample brings
/// new ones, so the choice is made per shape from the work announced for it.
pub fn plan_batches(
    shapes: impl IntoIterator<Item = (usize, usize)>,
    heads: usize,
    layers: usize,
) -> PlanGuard {
    let mut work: Vec<((usize, usize), f64)> = Vec::new();
    for (b, t) in shapes {
        let w = (b * t * heads * layers) as f64;
        match work.iter_mut().find(|x| x.0 == (b, t)) {
            Some(x) => x.1 += w,
            None => work.push(((b, t), w)),
        }
    }
    let chosen: Vec<(usize, usize)> = work
        .into_iter()
        .filter(|x| cudnn_pays(x.1))
        .map(|x| x.0)
        .collect();
    PlanGuard(PLANNED.with(|p| p.replace(chosen)))
}

/// Puts back the announcement it replaced when dropped.
pub struct PlanGuard(Vec<(usize, usize)>);

impl Drop for PlanGuard {
    fn drop(&mut self) {
        let before = std::mem::take(&mut self.0);
        PLANNED.with(|p| *p.borrow_mut() = before);
    }
}

/// Whether announced batches put shape `(b, t)` on cuDNN.
pub fn planned(b: usize, t: usize) -> bool {
    PLANNED.with(|p| p.borrow().contains(&(b, t)))
}

/// Builds now, on this thread, the cuDNN graphs of the announced shapes that run on cuDNN
/// and have none yet, for the model's heads (`hq`, `hkv`, `hd` in `dtype`): called where
/// the thread is about to wait for the GPU anyway, so the builds overlap queued work
/// instead of holding up the first pass of a new shape. A graph that fails to build here
/// is left to the call itself, which reports it.
pub fn prebuild_planned(device: &Device, dtype: DType, (hq, hkv, hd): (usize, usize, usize)) {
    #[cfg(feature = "cudnn")]
    if device.is_cuda() && dtype != DType::F32 && current() == AttentionKernel::Cudnn {
        let shapes = PLANNED.with(|p| p.borrow().clone());
        let scale = 1.0 / (hd as f32).sqrt();
        for (b, t) in shapes {
            let _ = super::cudnn::prebuild(device, dtype, (b, t, hq, hkv, hd), scale);
        }
    }
    #[cfg(not(feature = "cudnn"))]
    let _ = (device, dtype, hq, hkv, hd);
}

/// The kernel [`fused_causal`] runs for `b` sequences of `t` tokens on CUDA in 16 bits,
/// leaving out auto's use of a graph this thread happens to hold already.
pub fn kernel_for(b: usize, t: usize) -> AttentionKernel {
    let kernel = current();
    let auto_flash = kernel == AttentionKernel::Cudnn
        && EXPLICIT.load(Ordering::Relaxed) == 0
        && cfg!(feature = "flash-attn")
        && !((b == 1 && t >= CUDNN_MIN_TOKENS) || planned(b, t));
    match auto_flash {
        true => AttentionKernel::Flash,
        false => kernel,
    }
}

/// 0: not configured yet (auto on first use); else 1 + the resolved kernel's index.
static KERNEL: AtomicU8 = AtomicU8::new(0);
/// Set when auto picked cuDNN and cuDNN then failed: later calls use the fallback.
static CUDNN_FAILED: AtomicU8 = AtomicU8::new(0);
/// 1 when the user asked for cuDNN by name: its errors are then fatal.
static EXPLICIT: AtomicU8 = AtomicU8::new(0);

fn encode(k: AttentionKernel) -> u8 {
    match k {
        AttentionKernel::Auto => 1,
        AttentionKernel::Cudnn => 2,
        AttentionKernel::Flash => 3,
        AttentionKernel::Chunked => 4,
    }
}

/// The kernel the next attention call uses (auto, resolved on first use, when the run did
/// not configure one).
pub fn current() -> AttentionKernel {
    if KERNEL.load(Ordering::Relaxed) == 0 {
        let _ = configure(AttentionKernel::Auto);
    }
    match KERNEL.load(Ordering::Relaxed) {
        2 if CUDNN_FAILED.load(Ordering::Relaxed) == 0 => AttentionKernel::Cudnn,
        2 | 3 if cfg!(feature = "flash-attn") => AttentionKernel::Flash,
        _ => AttentionKernel::Chunked,
    }
}

/// Resolves `--attention` once for the process: what runs, in words, for the settings log.
/// An explicit choice that this build or machine cannot run is an error naming the fix.
pub fn configure(choice: AttentionKernel) -> anyhow::Result<String> {
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
    KERNEL.store(encode(resolved), Ordering::Relaxed);
    EXPLICIT.store(
        u8::from(choice == AttentionKernel::Cudnn),
        Ordering::Relaxed,
    );
    CUDNN_FAILED.store(0, Ordering::Relaxed);
    Ok(match (resolved, &cudnn) {
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
    })
}

/// None: not built with cuDNN; else the loaded version or why it cannot be loaded.
fn cudnn_status() -> Option<Result<usize, String>> {
    #[cfg(feature = "cudnn")]
    return Some(super::cudnn::load());
    #[cfg(not(feature = "cudnn"))]
    None
}

/// Causal attention in the `[B, T, H, hd]` layout, output only: the configured kernel on
/// CUDA with 16-bit weights, else the chunked kernels.
pub fn fused_causal(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(any(feature = "cudnn", feature = "flash-attn"))]
    if q.device().is_cuda() && q.dtype() != DType::F32 {
        let scale = 1.0 / (q.dim(3)? as f32).sqrt();
        let kernel = match kernel_for(q.dim(0)?, q.dim(1)?) {
            // The graph exists: nothing is left to pay for.
            AttentionKernel::Flash
                if current() == AttentionKernel::Cudnn && holds_graph(q, k, v, scale) =>
            {
                AttentionKernel::Cudnn
            }
            other => other,
        };
        match kernel {
            #[cfg(feature = "cudnn")]
            AttentionKernel::Cudnn => match super::cudnn::causal(q, k, v, scale) {
                Ok(o) => return Ok(o),
                Err(e) if EXPLICIT.load(Ordering::Relaxed) == 1 => return Err(e),
                Err(e) => {
                    // Auto chose cuDNN and it cannot run this: fall back for the rest of
                    // the run, once, loudly.
                    CUDNN_FAILED.store(1, Ordering::Relaxed);
                    eprintln!(
                        "gateau: warning: cuDNN attention failed ({e}); using {} from here on",
                        current()
                    );
                    return fused_causal(q, k, v);
                }
            },
            #[cfg(feature = "flash-attn")]
            AttentionKernel::Flash => return candle_flash_attn::flash_attn(q, k, v, scale, true),
            _ => {}
        }
    }
    let (b, t, h, _) = q.dims4()?;
    let heads = |x: &Tensor| x.transpose(1, 2)?.contiguous();
    let plan = Plan::new(b, h, t, None, q.device())?;
    causal_attention(&heads(q)?, &heads(k)?, &heads(v)?, &plan)?
        .out
        .transpose(1, 2)?
        .contiguous()
}

/// Whether this thread holds cuDNN's graph for these operands' shape already.
#[cfg(any(feature = "cudnn", feature = "flash-attn"))]
fn holds_graph(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> bool {
    #[cfg(feature = "cudnn")]
    return super::cudnn::cached(q, k, v, scale);
    #[cfg(not(feature = "cudnn"))]
    {
        let _ = (q, k, v, scale);
        false
    }
}

/// Whether [`fused_causal`] runs a fused kernel on this device and dtype (then the capture
/// is computed on the side of it).
pub fn fused_available(device: &Device, dtype: DType) -> bool {
    device.is_cuda() && dtype != DType::F32 && current() != AttentionKernel::Chunked
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

    /// Work adds up per shape across the announced batches; shapes are judged apart; the
    /// guard puts back what it replaced (a nested announcement ends, the outer holds).
    #[test]
    fn announced_batches_choose_per_shape_and_the_guard_restores() {
        let (heads, layers) = (32, 32);
        assert!(!planned(64, 705));
        {
            let _outer = plan_batches([(64, 705), (64, 705), (3, 705)], heads, layers);
            assert!(planned(64, 705), "two batches of 64 x 705 pay together");
            assert!(!planned(3, 705), "three sequences do not");
            {
                let _inner = plan_batches([(64, 705)], heads, layers);
                assert!(!planned(64, 705), "one batch alone does not");
            }
            assert!(planned(64, 705));
        }
        assert!(!planned(64, 705));
        // Another thread's announcement is its own.
        let _here = plan_batches([(64, 705); 2], heads, layers);
        std::thread::spawn(|| assert!(!planned(64, 705)))
            .join()
            .unwrap();
    }

    /// What each choice resolves to in this build; a choice the build lacks is an error
    /// that names the feature to build with. (The global choice only steers CUDA calls, so
    /// setting it here does not change the CPU tests running beside this one.)
    #[test]
    fn choices_resolve_by_what_is_built() {
        let cudnn = configure(AttentionKernel::Cudnn);
        if cfg!(feature = "cudnn") {
            if let Err(e) = &cudnn {
                assert!(e.to_string().contains("libcudnn.so.9"), "{e}");
            }
        } else {
            let e = cudnn.unwrap_err().to_string();
            assert!(e.contains("--features cudnn"), "{e}");
        }
        let flash = configure(AttentionKernel::Flash);
        if cfg!(feature = "flash-attn") {
            assert_eq!(flash.unwrap(), "flash");
            assert_eq!(current(), AttentionKernel::Flash);
        } else {
            let e = flash.unwrap_err().to_string();
            assert!(e.contains("--features flash-attn"), "{e}");
        }
        assert_eq!(configure(AttentionKernel::Chunked).unwrap(), "chunked");
        assert_eq!(current(), AttentionKernel::Chunked);
        assert!(!fused_available(&Device::Cpu, DType::BF16));
        let auto = configure(AttentionKernel::Auto).unwrap();
        let want = if cfg!(feature = "cudnn") && super::cudnn_status().is_some_and(|s| s.is_ok()) {
            AttentionKernel::Cudnn
        } else if cfg!(feature = "flash-attn") {
            AttentionKernel::Flash
        } else {
            AttentionKernel::Chunked
        };
        assert_eq!(current(), want, "auto resolved to {auto}");
        assert!(auto.starts_with(&want.to_string()), "{auto}");
    }
}
