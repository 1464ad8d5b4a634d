//! CUDA side of `--dtype fp8` (see `fp8.rs`): the row amax and quantization kernels of fused.cu,
//! and the E4M3 GEMM through cuBLASLt (FP8 needs cuBLASLt; cublasGemmEx has no FP8).
//!
//! cuBLASLt's FP8 kernels want A transposed and B not ("TN"), f32 compute and scale types,
//! and 16-byte aligned leading dimensions. Row-major `h[m, k] · w[d, k]ᵀ` is, column-major,
//! `Dᵀ (d x m) = op(A) · B` with A = the weight as stored (k x d, transposed) and B = the
//! activations (k x m): exactly that layout, so nothing is copied or transposed.

use super::cuda::{flat, func};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DevicePtr, DevicePtrMut, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaDevice, CudaStorage, DType, Result};
use cudarc::cublaslt::{result as lt, sys};
use float8::F8E4M3;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// `[rows]` f32: max |x| over each row of `k` elements of `x[a0..a1]`.
pub fn row_absmax(x: &CudaStorage, (a0, a1): (usize, usize), k: usize) -> Result<CudaStorage> {
    let dev = x.device.clone();
    let f = func(&dev, "row_absmax", x.dtype())?;
    let rows = (a1 - a0) / k;
    if rows == 0 || rows * k != a1 - a0 || rows > i32::MAX as usize || k > u32::MAX as usize {
        bail!("row absmax: {} elements in rows of {k}", a1 - a0);
    }
    // SAFETY: the kernel writes one f32 per row, every row.
    let out = unsafe { dev.alloc::<f32>(rows)? };
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    let xp = device_ptr(x, a0)?;
    let k32 = k as u32;
    b.arg(&xp);
    b.arg(&k32);
    b.arg(&out);
    // One block per row; a row of 576-14336 elements wants a few warps, not a full block.
    let threads = (k.div_ceil(16 / x.dtype().size_in_bytes()) as u32).clamp(32, 256);
    let cfg = cudarc::driver::LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads.div_ceil(32) * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the kernel reads rows * k elements from xp (a live allocation of x's dtype
    // holding them) and writes rows f32 to out.
    unsafe { b.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// E4M3 codes of `x[a0..a1] · (448 / amax[row])`, rows of `k`.
pub fn quant_rows_e4m3(
    x: &CudaStorage,
    (a0, a1): (usize, usize),
    k: usize,
    amax: &CudaStorage,
) -> Result<CudaStorage> {
    let dev = x.device.clone();
    let f = func(&dev, "quant_rows_e4m3", x.dtype())?;
    let n = a1 - a0;
    if k == 0 || n % k != 0 || k > u32::MAX as usize {
        bail!("quant-rows: {n} elements in rows of {k}");
    }
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<F8E4M3>(n)? };
    let xp = device_ptr(x, a0)?;
    let ap = device_ptr(amax, 0)?;
    let k32 = k as u32;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&xp);
    b.arg(&n);
    b.arg(&k32);
    b.arg(&ap);
    b.arg(&out);
    // SAFETY: n elements in and out, n / k f32 amax.
    unsafe { b.launch(flat(n)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// The device address of element `offset` of `s` (any dtype).
pub fn device_ptr(s: &CudaStorage, offset: usize) -> Result<u64> {
    let stream = s.device.cuda_stream();
    fn at<T: candle_core::cuda_backend::CudaDType>(
        s: &CudaStorage,
        offset: usize,
        stream: &Arc<cudarc::driver::CudaStream>,
    ) -> Result<u64> {
        let slice = s.as_cuda_slice::<T>()?;
        let (p, _sync) = slice.device_ptr(stream);
        Ok(p + (offset * std::mem::size_of::<T>()) as u64)
    }
    match s.dtype() {
        DType::F32 => at::<f32>(s, offset, &stream),
        DType::BF16 => at::<half::bf16>(s, offset, &stream),
        DType::F16 => at::<half::f16>(s, offset, &stream),
        DType::F8E4M3 => at::<F8E4M3>(s, offset, &stream),
        other => bail!("fp8: unsupported dtype {other:?}"),
    }
}

/// A cuBLASLt handle, its workspace, and the algorithm the heuristic picked per shape.
struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    algos: Mutex<HashMap<(usize, usize, usize, bool), sys::cublasLtMatmulAlgo_t>>,
}

// SAFETY: the handle is only used under the stream order of candle's one stream per device;
// cuBLASLt handles may be shared between threads.
unsafe impl Send for Lt {}
unsafe impl Sync for Lt {}

/// 32 MiB, NVIDIA's recommendation for Hopper.
const WORKSPACE: usize = 32 << 20;

fn handle(dev: &CudaDevice) -> Result<Arc<Lt>> {
    type Handles = Mutex<Vec<(candle_core::cuda_backend::DeviceId, Arc<Lt>)>>;
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    let mut handles = HANDLES
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| candle_core::Error::Msg("the cuBLASLt handle cache is poisoned".into()))?;
    if let Some((_, h)) = handles.iter().find(|(id, _)| *id == dev.id()) {
        return Ok(h.clone());
    }
    dev.cuda_stream().context().bind_to_thread().w()?;
    let h = Arc::new(Lt {
        handle: lt::create_handle()
            .map_err(|e| candle_core::Error::Msg(format!("cuBLASLt handle: {e:?}")))?,
        workspace: dev.alloc_zeros::<u8>(WORKSPACE)?,
        algos: Mutex::new(HashMap::new()),
    });
    handles.push((dev.id(), h.clone()));
    Ok(h)
}

/// Destroys what it holds when the call returns, also on an error.
struct Guard<'a>(Vec<Box<dyn FnOnce() + 'a>>);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        for f in self.0.drain(..).rev() {
            f();
        }
    }
}

/// `c[i, j] = s_h[i] s_w[j] · (h[m, k] · w[d, k]ᵀ)[i, j] + beta c[i, j]`: E4M3 operands, f32
/// accumulation and output; `scales` = the device addresses of `s_w` (d f32, one per output
/// channel) and `s_h` (m f32, one per row). cuBLASLt applies them in the epilogue: its
/// "outer vector" scaling (cuBLAS 12.9 and later), one scale per row of op(A) and one per
/// column of B.
fn gemm(
    dev: &CudaDevice,
    c: u64,
    (h, w): (u64, u64),
    scales: [u64; 2],
    (m, k, d): (usize, usize, usize),
    beta: f32,
) -> Result<()> {
    if k % 16 != 0 || d % 16 != 0 {
        bail!("fp8 GEMM: sizes {d} x {k} are not multiples of 16 (cuBLASLt's FP8 alignment)");
    }
    if [m, k, d].iter().any(|&v| v > i32::MAX as usize) {
        bail!("fp8 GEMM: {m} x {k} x {d} is beyond its 32-bit sizes");
    }
    let lt_handle = handle(dev)?;
    let stream = dev.cuda_stream();
    stream.context().bind_to_thread().w()?;
    let e = |s: lt::CublasError| {
        candle_core::Error::Msg(format!("cuBLASLt FP8 GEMM {m}x{k}x{d}: {s:?}"))
    };
    let mut guard = Guard(Vec::new());
    let desc = lt::create_matmul_desc(
        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        sys::cudaDataType::CUDA_R_32F,
    )
    .map_err(e)?;
    // SAFETY: each descriptor is destroyed once, after its last use below.
    guard.0.push(Box::new(move || unsafe {
        let _ = lt::destroy_matmul_desc(desc);
    }));
    let set = |attr: sys::cublasLtMatmulDescAttributes_t, p: *const std::ffi::c_void, n: usize| {
        // SAFETY: p points to n live bytes of the attribute's type.
        unsafe { lt::set_matmul_desc_attribute(desc, attr, p, n) }
    };
    let (trans, no_trans) = (1i32, 0i32);
    use sys::cublasLtMatmulDescAttributes_t as A;
    set(
        A::CUBLASLT_MATMUL_DESC_TRANSA,
        (&trans as *const i32).cast(),
        4,
    )
    .map_err(e)?;
    set(
        A::CUBLASLT_MATMUL_DESC_TRANSB,
        (&no_trans as *const i32).cast(),
        4,
    )
    .map_err(e)?;
    let outer = sys::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    for attr in [
        A::CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
        A::CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
    ] {
        set(
            attr,
            (&outer as *const sys::cublasLtMatmulMatrixScale_t).cast(),
            std::mem::size_of::<sys::cublasLtMatmulMatrixScale_t>(),
        )
        .map_err(e)?;
    }
    set(
        A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
        (&scales[0] as *const u64).cast(),
        8,
    )
    .map_err(e)?;
    set(
        A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER,
        (&scales[1] as *const u64).cast(),
        8,
    )
    .map_err(e)?;
    let layout = |ty, rows: usize, cols: usize, ld: usize| -> Result<sys::cublasLtMatrixLayout_t> {
        lt::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64).map_err(e)
    };
    let e4m3 = sys::cudaDataType::CUDA_R_8F_E4M3;
    let a = layout(e4m3, k, d, k)?;
    let b = layout(e4m3, k, m, k)?;
    let cl = layout(sys::cudaDataType::CUDA_R_32F, d, m, d)?;
    for l in [a, b, cl] {
        // SAFETY: as above.
        guard.0.push(Box::new(move || unsafe {
            let _ = lt::destroy_matrix_layout(l);
        }));
    }
    let key = (m, k, d, beta != 0.0);
    let cached = lt_handle
        .algos
        .lock()
        .ok()
        .and_then(|a| a.get(&key).copied());
    let algo = match cached {
        Some(a) => a,
        None => {
            let pref = lt::create_matmul_pref().map_err(e)?;
            // SAFETY: as above.
            guard.0.push(Box::new(move || unsafe {
                let _ = lt::destroy_matmul_pref(pref);
            }));
            // SAFETY: pref is live; the value is a usize.
            unsafe {
                lt::set_matmul_pref_attribute(
                    pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&WORKSPACE as *const usize).cast(),
                    std::mem::size_of::<usize>(),
                )
            }
            .map_err(e)?;
            // SAFETY: live descriptors and layouts.
            let found = unsafe {
                lt::get_matmul_algo_heuristic(lt_handle.handle, desc, a, b, cl, cl, pref)
            }
            .map_err(e)?;
            if let Ok(mut algos) = lt_handle.algos.lock() {
                algos.insert(key, found.algo);
            }
            found.algo
        }
    };
    let one = 1f32;
    let (ws, _sync) = lt_handle.workspace.device_ptr(&stream);
    // SAFETY: h, w, c are live device allocations of m*k, d*k and m*d elements (the callers
    // slice them), the scales d and m f32; alpha and beta are host f32 (the default
    // pointer mode); everything runs on candle's stream. With beta = 0, C is not read.
    unsafe {
        lt::matmul(
            lt_handle.handle,
            desc,
            (&one as *const f32).cast(),
            (&beta as *const f32).cast(),
            w as *const std::ffi::c_void,
            a,
            h as *const std::ffi::c_void,
            b,
            c as *const std::ffi::c_void,
            cl,
            c as *mut std::ffi::c_void,
            cl,
            &algo,
            ws as *mut std::ffi::c_void,
            WORKSPACE,
            stream.cu_stream() as sys::cudaStream_t,
        )
    }
    .map_err(e)?;
    Ok(())
}

/// `h[m, k] · w[d, k]ᵀ` (E4M3) into a fresh f32 `[m, d]`.
pub fn gemm_out(
    (h, h0): (&CudaStorage, usize),
    (w, w0): (&CudaStorage, usize),
    scales: [u64; 2],
    (m, k, d): (usize, usize, usize),
) -> Result<CudaStorage> {
    let dev = h.device.clone();
    // SAFETY: with beta = 0 the GEMM writes every element and reads none.
    let mut out = unsafe { dev.alloc::<f32>(m * d)? };
    let stream = dev.cuda_stream();
    let (cp, _sync) = out.device_ptr_mut(&stream);
    let ops = (device_ptr(h, h0)?, device_ptr(w, w0)?);
    gemm(&dev, cp, ops, scales, (m, k, d), 0.0)?;
    drop(_sync);
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// `x[m, d] += h[m, k] · w[d, k]ᵀ` (E4M3), the f32 stream as C with beta = 1.
pub fn gemm_add(
    x: &mut CudaStorage,
    x0: usize,
    (h, h0): (&CudaStorage, usize),
    (w, w0): (&CudaStorage, usize),
    scales: [u64; 2],
    (m, k, d): (usize, usize, usize),
) -> Result<()> {
    let dev = x.device.clone();
    let ops = (device_ptr(h, h0)?, device_ptr(w, w0)?);
    let stream = dev.cuda_stream();
    let xs = x.as_cuda_slice_mut::<f32>()?;
    let mut xv = xs.slice_mut(x0..x0 + m * d);
    let (cp, _sync) = xv.device_ptr_mut(&stream);
    gemm(&dev, cp, ops, scales, (m, k, d), 1.0)
}
