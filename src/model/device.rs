//! Devices: `--device` choices, opening one, its memory pool, and the matmul precision a
//! run's dtype implies on it.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// What every pass of a run computes on: the device, the dtype, the attention dispatch, and
/// whether the projections are E4M3 (`--dtype fp8`, with `dtype` bf16).
#[derive(Debug, Clone)]
pub struct Compute {
    pub device: Device,
    pub dtype: DType,
    pub dispatch: super::dispatch::Dispatch,
    pub fp8: bool,
}

/// `--dtype fp8` needs FP8 tensor cores on CUDA: compute capability 8.9 (Ada) or later. The
/// CPU runs the same arithmetic in plain loops, slowly.
#[cfg(feature = "cuda")]
pub fn check_fp8(device: &Device) -> Result<()> {
    use candle_core::cuda::cudarc::driver::sys::CUdevice_attribute as A;
    let Device::Cuda(d) = device else {
        return Ok(());
    };
    let ctx = d.cuda_stream().context().clone();
    let major = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    if (major, minor) < (8, 9) {
        bail!(
            "--dtype fp8 needs FP8 tensor cores (compute capability 8.9 or later: Ada, Hopper, \
             Blackwell); this GPU is {major}.{minor}; use --dtype bf16"
        );
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
pub fn check_fp8(_: &Device) -> Result<()> {
    Ok(())
}

/// Free device memory in bytes (None on the CPU).
#[cfg(feature = "cuda")]
pub fn free_memory(device: &Device) -> Option<u64> {
    if !device.is_cuda() {
        return None;
    }
    candle_core::cuda::cudarc::driver::result::mem_get_info()
        .ok()
        .map(|(free, _)| free as u64)
}

#[cfg(not(feature = "cuda"))]
pub fn free_memory(_: &Device) -> Option<u64> {
    None
}

/// `--device`: where the models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("{s:?} is not a device: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl serde::Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Whether the f32 GEMMs of a run in `dtype` on `device` may use TF32 tensor cores: with
/// bf16/f16 weights on CUDA, yes (attention scores, the output head, the captured rows'
/// column sums: one operand of each is a 16-bit value widened to f32, exact in TF32; the
/// other, scaled queries or final-normed hidden states, is rounded to TF32's 11 significant
/// bits, still finer than the bf16 it would otherwise be); with f32 weights, no. The CPU
/// has no such setting (None): its GEMMs are always full f32.
pub fn reduced_precision_f32(device: &Device, dtype: DType) -> Option<bool> {
    device.is_cuda().then_some(dtype != DType::F32)
}

/// Applies [`reduced_precision_f32`] for a run in `dtype` on `device`. candle keeps the
/// setting for all CUDA devices of the process, so every CUDA worker of a run must compute
/// in one dtype (`--devices` checks it); a CPU worker leaves it alone.
pub fn configure_matmul(device: &Device, dtype: DType) {
    if let Some(on) = reduced_precision_f32(device, dtype) {
        candle_core::cuda::set_gemm_reduced_precision_f32(on);
    }
}

/// Lets the device's stream-ordered memory pool keep what is freed. Its default releases
/// everything unused to the driver at each synchronization (every forward pass copies its
/// NLL to the host), so each pass mapped its activations afresh; PyTorch's allocator keeps
/// them too. Peak memory is unchanged: the pool only reuses what a pass already needed.
#[cfg(feature = "cuda")]
fn keep_freed_memory(device: &Device) -> Result<()> {
    use candle_core::cuda::cudarc::driver::{result, sys};
    let Device::Cuda(d) = device else {
        return Ok(());
    };
    let stream = d.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread()?;
    let mut keep = u64::MAX;
    // SAFETY: the pool is the device's current one (valid while the context lives) and the
    // release threshold attribute is a u64.
    unsafe {
        let pool = result::device::get_mem_pool(ctx.cu_device())?;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut keep as *mut u64).cast(),
        )?;
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn keep_freed_memory(_: &Device) -> Result<()> {
    Ok(())
}

/// Returns what the memory pool keeps to the driver, so that the memory in use measured
/// next is one phase's own (`gateau bench` measures each phase's peak).
#[cfg(feature = "cuda")]
pub fn release_cached_memory(device: &Device) -> Result<()> {
    use candle_core::cuda::cudarc::driver::result;
    let Device::Cuda(d) = device else {
        return Ok(());
    };
    device.synchronize()?;
    let stream = d.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread()?;
    // SAFETY: the device's current pool; trimming frees only memory no allocation holds.
    unsafe {
        let pool = result::device::get_mem_pool(ctx.cu_device())?;
        result::mem_pool::trim_to(pool, 0)?;
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
pub fn release_cached_memory(_: &Device) -> Result<()> {
    Ok(())
}

/// Opens the device; `auto` falls back to the CPU with a hint when CUDA is missing.
pub fn open_device(choice: &DeviceChoice) -> Result<(Device, Option<String>)> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, None)),
        DeviceChoice::Cuda(n) => {
            if !candle_core::utils::cuda_is_available() {
                bail!(
                    "--device {choice}: this gateau was built without CUDA; rebuild with \
                     `cargo build --release --features cuda`"
                );
            }
            let d =
                Device::new_cuda(*n).with_context(|| format!("cannot open --device {choice}"))?;
            keep_freed_memory(&d).with_context(|| format!("cannot set up --device {choice}"))?;
            Ok((d, None))
        }
        DeviceChoice::Auto => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    keep_freed_memory(&d).context("cannot set up the CUDA device")?;
                    return Ok((d, None));
                }
                return Ok((
                    Device::Cpu,
                    Some("no CUDA device could be opened; running on the CPU".into()),
                ));
            }
            Ok((
                Device::Cpu,
                Some(
                    "running on the CPU: this build has no CUDA (build with --features cuda \
                     for GPUs)"
                        .into(),
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choices_parse() {
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert!("gpu".parse::<DeviceChoice>().is_err());
    }

    /// Matmul precision follows the device and the dtype: TF32 only for 16-bit weights on
    /// CUDA, nothing to set on the CPU, so a CPU worker beside a CUDA one changes nothing.
    #[test]
    fn matmul_precision_is_per_device_and_dtype() {
        assert_eq!(reduced_precision_f32(&Device::Cpu, DType::BF16), None);
        assert_eq!(reduced_precision_f32(&Device::Cpu, DType::F32), None);
        #[cfg(feature = "cuda")]
        if let Ok(gpu) = Device::new_cuda(0) {
            assert_eq!(reduced_precision_f32(&gpu, DType::BF16), Some(true));
            assert_eq!(reduced_precision_f32(&gpu, DType::F32), Some(false));
        }
    }
}
