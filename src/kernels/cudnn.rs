//! cuDNN's fused causal attention (`cudnn_sdpa.cpp`, built with the `cudnn` feature) as a
//! candle op on `[B, T, H, hd]` q and `[B, T, KV, hd]` k, v (grouped heads allowed), bf16
//! or f16, output `[B, T, H, hd]`.
//!
//! Why: candle-flash-attn is FlashAttention-2, whose sm80 kernels reach about 360 TFLOP/s
//! on an H100; at 64k tokens attention is two thirds of a full pass. cuDNN's Hopper kernels
//! are what PyTorch's SDPA runs there. cuDNN is loaded at run time, so a binary built with
//! the feature still starts where cuDNN is missing and falls back to flash attention.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::DevicePtr;
use candle_core::cuda_backend::cudarc::driver::DevicePtrMut;
use candle_core::cuda_backend::CudaDType;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::OnceLock;

/// The shape record the C++ side keys its graph cache on.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct GateauSdpa {
    device: i32,
    dtype: i32,
    b: i64,
    t: i64,
    hq: i64,
    hkv: i64,
    d: i64,
    q_stride: [i64; 4],
    k_stride: [i64; 4],
    v_stride: [i64; 4],
    o_stride: [i64; 4],
    scale: f32,
}

extern "C" {
    fn gateau_cudnn_load(
        path: *const c_char,
        version: *mut usize,
        err: *mut c_char,
        n: usize,
    ) -> i32;
    fn gateau_cudnn_sdpa_prepare(
        s: *const GateauSdpa,
        workspace: *mut i64,
        err: *mut c_char,
        n: usize,
    ) -> i32;
    fn gateau_cudnn_sdpa_cached(s: *const GateauSdpa) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn gateau_cudnn_sdpa_run(
        s: *const GateauSdpa,
        stream: *mut c_void,
        q: *const c_void,
        k: *const c_void,
        v: *const c_void,
        o: *mut c_void,
        workspace: *mut c_void,
        err: *mut c_char,
        n: usize,
    ) -> i32;
}

const ERR_LEN: usize = 2048;

fn message(buf: &[u8]) -> String {
    CStr::from_bytes_until_nul(buf)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "cuDNN: unknown error".into())
}

/// Loads cuDNN once per process (`$GATEAU_CUDNN_LIB`, else libcudnn.so.9 from the library
/// path): its version (e.g. 91500), or why it cannot be used.
pub fn load() -> std::result::Result<usize, String> {
    static LOADED: OnceLock<std::result::Result<usize, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var("GATEAU_CUDNN_LIB").unwrap_or_default();
            let path = CString::new(path).map_err(|e| format!("GATEAU_CUDNN_LIB: {e}"))?;
            let mut version = 0usize;
            let mut err = vec![0u8; ERR_LEN];
            // SAFETY: valid NUL-terminated path, out-pointers to live locals, buffer length.
            let rc = unsafe {
                gateau_cudnn_load(
                    path.as_ptr(),
                    &mut version,
                    err.as_mut_ptr().cast(),
                    err.len(),
                )
            };
            if rc == 0 {
                Ok(version)
            } else {
                Err(message(&err))
            }
        })
        .clone()
}

/// Causal attention with cuDNN: q `[B, T, H, hd]`, k and v `[B, T, KV, hd]`, the last
/// dimension contiguous; output `[B, T, H, hd]` contiguous.
pub fn causal(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    q.apply_op3_no_bwd(k, v, &Sdpa { scale })
}

/// The graph-cache record of attention over operands with these `[B, T, H, hd]` layouts
/// on `dev` in `dtype` (what the C++ side keys its graphs on).
fn record(
    dev: &candle_core::CudaDevice,
    dtype: DType,
    scale: f32,
    (l1, l2, l3): (&Layout, &Layout, &Layout),
) -> Result<GateauSdpa> {
    let mut r = Sdpa { scale }.shape(l1, l2, l3)?;
    r.device = dev.cuda_stream().context().ordinal() as i32;
    r.dtype = match dtype {
        DType::BF16 => 0,
        DType::F16 => 1,
        other => bail!("cudnn attention: no kernel for {other:?} (bf16 or f16)"),
    };
    Ok(r)
}

/// Whether this thread has cuDNN's graph for these operands' shape already, so that
/// [`causal`] would run without building one (false where cuDNN cannot be loaded).
pub fn cached(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> bool {
    let candle_core::Device::Cuda(dev) = q.device() else {
        return false;
    };
    let Ok(r) = record(dev, q.dtype(), scale, (q.layout(), k.layout(), v.layout())) else {
        return false;
    };
    // SAFETY: `r` is a live local; the callee only reads it.
    load().is_ok() && unsafe { gateau_cudnn_sdpa_cached(&r) } == 1
}

/// Builds and caches on this thread cuDNN's graph for attention over contiguous q
/// `[b, t, hq, d]` and k, v `[b, t, hkv, d]` in `dtype` (the layout the model's heads
/// have), without running it: a later [`causal`] call on such operands finds it ready.
pub fn prebuild(
    device: &candle_core::Device,
    dtype: DType,
    (b, t, hq, hkv, d): (usize, usize, usize, usize, usize),
    scale: f32,
) -> Result<()> {
    let candle_core::Device::Cuda(dev) = device else {
        bail!("cudnn attention runs on CUDA only");
    };
    if let Err(e) = load() {
        bail!("{e}");
    }
    let (q, kv) = (
        Layout::contiguous((b, t, hq, d)),
        Layout::contiguous((b, t, hkv, d)),
    );
    prepare(dev, &record(dev, dtype, scale, (&q, &kv, &kv))?).map(|_| ())
}

/// Builds (or finds) this thread's graph for `shape` on `dev`: its workspace size in bytes.
fn prepare(dev: &candle_core::CudaDevice, shape: &GateauSdpa) -> Result<usize> {
    // cuDNN and the CUDA runtime it calls work on the thread's current context.
    dev.cuda_stream()
        .context()
        .bind_to_thread()
        .map_err(|e| candle_core::Error::Msg(format!("cudnn attention: {e:?}")))?;
    let mut err = vec![0u8; ERR_LEN];
    let mut ws_bytes = 0i64;
    // SAFETY: `shape` and the out-pointers are live locals; the buffer length is passed.
    let rc = unsafe {
        gateau_cudnn_sdpa_prepare(shape, &mut ws_bytes, err.as_mut_ptr().cast(), err.len())
    };
    if rc != 0 {
        bail!("{}", message(&err));
    }
    Ok(ws_bytes.max(0) as usize)
}

struct Sdpa {
    scale: f32,
}

/// Strides of a `[B, T, H, hd]` layout as cuDNN's `[B, H, T, hd]`.
fn bhtd(l: &Layout) -> Result<[i64; 4]> {
    let s = l.stride();
    if s.len() != 4 || s[3] != 1 {
        bail!("cudnn attention: operands need 4 dims with the last contiguous, got strides {s:?}");
    }
    Ok([s[0] as i64, s[2] as i64, s[1] as i64, 1])
}

/// `stride` with, for a single sequence (`b` = 1), the batch stride a contiguous one of
/// `t` rows would have: it is never stepped along, and the graphs are keyed on strides, so a
/// span cut out of a packed row finds the graph of a contiguous sequence of its length
/// instead of one keyed on the row's length.
fn one_batch(b: usize, mut stride: [i64; 4], t: usize) -> [i64; 4] {
    if b == 1 {
        stride[0] = t as i64 * stride[2];
    }
    stride
}

impl Sdpa {
    /// The record's dims and strides; [`record`] fills in the device and dtype.
    fn shape(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> Result<GateauSdpa> {
        let (b, t, hq, d) = l1.shape().dims4()?;
        let (kb, kt, hkv, kd) = l2.shape().dims4()?;
        if (kb, kt, kd) != (b, t, d) || l3.shape() != l2.shape() || hkv == 0 || hq % hkv != 0 {
            bail!(
                "cudnn attention: q {:?}, k {:?}, v {:?} do not fit",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        Ok(GateauSdpa {
            device: 0,
            dtype: 0,
            b: b as i64,
            t: t as i64,
            hq: hq as i64,
            hkv: hkv as i64,
            d: d as i64,
            q_stride: one_batch(b, bhtd(l1)?, t),
            k_stride: one_batch(b, bhtd(l2)?, t),
            v_stride: one_batch(b, bhtd(l3)?, t),
            o_stride: [(t * hq * d) as i64, d as i64, (hq * d) as i64, 1],
            scale: self.scale,
        })
    }
}

impl CustomOp3 for Sdpa {
    fn name(&self) -> &'static str {
        "cudnn-sdpa"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("cudnn attention runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = record(s1.device(), s1.dtype(), self.scale, (l1, l2, l3))?;
        match s1.dtype() {
            DType::BF16 => run::<half::bf16>(shape, (s1, l1), (s2, l2), (s3, l3)),
            _ => run::<half::f16>(shape, (s1, l1), (s2, l2), (s3, l3)),
        }
    }
}

fn run<T: CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
    shape: GateauSdpa,
    (s1, l1): (&candle_core::CudaStorage, &Layout),
    (s2, l2): (&candle_core::CudaStorage, &Layout),
    (s3, l3): (&candle_core::CudaStorage, &Layout),
) -> Result<(candle_core::CudaStorage, Shape)> {
    if s2.dtype() != s1.dtype() || s3.dtype() != s1.dtype() {
        bail!(
            "cudnn attention: q {:?}, k {:?}, v {:?}",
            s1.dtype(),
            s2.dtype(),
            s3.dtype()
        );
    }
    if let Err(e) = load() {
        bail!("{e}");
    }
    let dev = s1.device().clone();
    let stream = dev.cuda_stream();
    let ws_bytes = prepare(&dev, &shape)?;
    let mut err = vec![0u8; ERR_LEN];
    let q = s1.as_cuda_slice::<T>()?.slice(l1.start_offset()..);
    let k = s2.as_cuda_slice::<T>()?.slice(l2.start_offset()..);
    let v = s3.as_cuda_slice::<T>()?.slice(l3.start_offset()..);
    let n_out = l1.shape().elem_count();
    // SAFETY: cuDNN writes every element of the output before anything reads it.
    let mut out = unsafe { dev.alloc::<T>(n_out)? };
    let mut ws = dev.alloc_zeros::<u8>(ws_bytes.max(1))?;
    {
        let (qp, _g1) = q.device_ptr(&stream);
        let (kp, _g2) = k.device_ptr(&stream);
        let (vp, _g3) = v.device_ptr(&stream);
        let (op, _g4) = out.device_ptr_mut(&stream);
        let (wp, _g5) = ws.device_ptr_mut(&stream);
        // SAFETY: device pointers of live allocations with the shapes and strides in
        // `shape`, on candle's stream, which orders this launch with candle's own work.
        let rc = unsafe {
            gateau_cudnn_sdpa_run(
                &shape,
                stream.cu_stream() as *mut c_void,
                qp as *const c_void,
                kp as *const c_void,
                vp as *const c_void,
                op as *mut c_void,
                wp as *mut c_void,
                err.as_mut_ptr().cast(),
                err.len(),
            )
        };
        if rc != 0 {
            bail!("{}", message(&err));
        }
    }
    let out = candle_core::CudaStorage::wrap_cuda_slice(out, dev);
    Ok((out, l1.shape().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::attention::tests::max_diff;
    use crate::kernels::attention::{causal_attention, Plan};
    use candle_core::Device;
    use std::time::Instant;

    /// The f32 chunked attention on the CPU, in and out in the `[B, T, H, hd]` layout.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let f = |x: &Tensor| {
            x.to_device(&Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (b, t, h, _) = q.dims4().unwrap();
        let plan = Plan::new(b, h, t, None, &Device::Cpu).unwrap();
        causal_attention(&f(q), &f(k), &f(v), &plan)
            .unwrap()
            .out
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    }

    /// A span cut out of a packed row (one sequence of 300 rows at row 1,000 of 5,000)
    /// is keyed like a contiguous sequence of 300 rows, so one graph per length serves
    /// every packed row; a batch of two keeps its real batch stride.
    #[test]
    fn a_single_sequence_is_keyed_without_its_row() {
        let key = |l: &Layout| {
            let r = Sdpa { scale: 0.125 }.shape(l, l, l).unwrap();
            (r.b, r.t, r.q_stride, r.k_stride, r.v_stride, r.o_stride)
        };
        let span = Layout::contiguous((1, 5000, 9, 64))
            .narrow(1, 1000, 300)
            .unwrap();
        let alone = Layout::contiguous((1, 300, 9, 64));
        assert_eq!(key(&span), key(&alone));
        assert_eq!(key(&alone).2, [300 * 9 * 64, 64, 9 * 64, 1]);
        let two = Layout::contiguous((2, 5000, 9, 64))
            .narrow(1, 0, 300)
            .unwrap();
        assert_eq!(key(&two).2[0], 5000 * 9 * 64);
    }

    /// cuDNN's attention on bf16/f16 inputs (grouped heads, head sizes 64 and 128, odd
    /// lengths, q/k/v as strided views of one fused projection, as the model makes them)
    /// against the f32 chunked attention on the CPU. Prints the graph build times: first
    /// shape, then a new length (kernel cache), then the same shape again (graph cache).
    /// Needs a CUDA GPU and libcudnn.so.9.
    #[test]
    #[ignore = "needs a CUDA GPU and cuDNN"]
    fn cuda_kernels_cudnn_attention_matches_f32() {
        let gpu = Device::new_cuda(0).expect("a CUDA device");
        let version = load().expect("cuDNN loads");
        eprintln!("cuDNN {version}");
        for dt in [DType::BF16, DType::F16] {
            for (b, t, h, kv, hd) in [
                (2, 1037, 8, 2, 128),
                (1, 4133, 32, 32, 128),
                (1, 4200, 32, 32, 128),
                (1, 2304, 32, 32, 128),
                (3, 517, 9, 3, 64),
                (1, 2048, 9, 3, 64),
                (22, 705, 8, 8, 128),
                (40, 301, 9, 3, 64),
            ] {
                let qkv = Tensor::randn(0f32, 1.0, (b, t, (h + 2 * kv) * hd), &gpu)
                    .unwrap()
                    .to_dtype(dt)
                    .unwrap()
                    .reshape((b, t, h + 2 * kv, hd))
                    .unwrap();
                let q = qkv.narrow(2, 0, h).unwrap();
                let k = qkv.narrow(2, h, kv).unwrap();
                let v = qkv.narrow(2, h + kv, kv).unwrap();
                let scale = 1.0 / (hd as f32).sqrt();
                // The model's contiguous heads: a graph built ahead is the one a call finds.
                let own = |x: &Tensor| x.contiguous().unwrap();
                let (qc, kc, vc) = (own(&q), own(&k), own(&v));
                if b > 1 {
                    assert!(!cached(&qc, &kc, &vc, scale));
                    prebuild(&gpu, dt, (b, t, h, kv, hd), scale).unwrap();
                    assert!(cached(&qc, &kc, &vc, scale), "prebuilt {:?}", (b, t));
                }
                let start = Instant::now();
                let got = causal(&q, &k, &v, scale).unwrap();
                gpu.synchronize().unwrap();
                let first = start.elapsed().as_secs_f64();
                let start = Instant::now();
                let again = causal(&q, &k, &v, scale).unwrap();
                gpu.synchronize().unwrap();
                let cached = start.elapsed().as_secs_f64();
                let got = got
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap();
                let again = again.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu);
                let err = max_diff(&got, &reference(&q, &k, &v));
                eprintln!(
                    "{dt:?} b{b} t{t} h{h}/{kv} hd{hd}: max error {err:.2e}, first call \
                     {first:.3} s, cached {cached:.4} s"
                );
                // Outputs are 16-bit averages of values of size ~1: an ulp near 1 is 8e-3
                // in bf16; f32 statistics on the inside.
                assert!(
                    err < 2e-2,
                    "{dt:?} {:?}: max error {err}",
                    (b, t, h, kv, hd)
                );
                assert_eq!(max_diff(&got, &again.unwrap()), 0.0, "deterministic");
            }
        }
    }
}
