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
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKernel {
    /// cuDNN for single sequences of 8192 tokens or more (the long full passes) when built
    /// in and loadable, flash attention for the rest when built in; else whichever of the
    /// two is built; else chunked.
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

/// Under auto, cuDNN runs single sequences of at least this many tokens; shorter ones and
/// batches go to flash attention. cuDNN builds an execution graph for every new shape
/// (~50 ms on the H100 once its kernels exist, ~0.7 s for a new kernel variant); at 16k
/// tokens it saves ~90 ms per 7B pass, at 4k a few ms. Segment batches change shape with
/// every sample, and there cuDNN was only ~5% faster.
pub const CUDNN_MIN_TOKENS: usize = 8192;

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
                "cudnn for single sequences of {CUDNN_MIN_TOKENS}+ tokens (cuDNN {v}), flash \
                 for the rest"
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
        let mut kernel = current();
        if kernel == AttentionKernel::Cudnn
            && EXPLICIT.load(Ordering::Relaxed) == 0
            && cfg!(feature = "flash-attn")
            && (q.dim(0)? > 1 || q.dim(1)? < CUDNN_MIN_TOKENS)
        {
            kernel = AttentionKernel::Flash;
        }
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

/// Whether [`fused_causal`] runs a fused kernel on this device and dtype (then the capture
/// is computed on the side of it).
pub fn fused_available(device: &Device, dtype: DType) -> bool {
    device.is_cuda() && dtype != DType::F32 && current() != AttentionKernel::Chunked
}

#[cfg(test)]
mod tests {
    use super::*;

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
