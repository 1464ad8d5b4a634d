//! Launches of the kernels in fused.cu (one PTX module, loaded once per device).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, DType, Result};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
const THREADS: u32 = 256;

pub(super) fn func(dev: &CudaDevice, kernel: &str, dtype: DType) -> Result<CudaFunction> {
    let suffix = match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        other => bail!("{kernel}: unsupported dtype {other:?}"),
    };
    Ok(dev
        .get_or_load_custom_func(&format!("{kernel}_{suffix}"), "gateau_fused", PTX)?
        .into_cuda_function())
}

/// Grid-stride launch over `n` elements.
pub(super) fn flat(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub fn add_into(
    x: &mut CudaStorage,
    (a0, a1): (usize, usize),
    y: &CudaStorage,
    (b0, b1): (usize, usize),
) -> Result<()> {
    fn go<T: CudaDType + DeviceRepr>(
        f: &CudaFunction,
        dev: &CudaDevice,
        x: &mut CudaSlice<f32>,
        (a0, a1): (usize, usize),
        y: &CudaStorage,
        (b0, b1): (usize, usize),
    ) -> Result<()> {
        let n = a1 - a0;
        let mut xv = x.slice_mut(a0..a1);
        let yv = y.as_cuda_slice::<T>()?.slice(b0..b1);
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(f);
        b.arg(&mut xv);
        b.arg(&yv);
        b.arg(&n);
        // SAFETY: both views hold n elements; the kernel touches indices < n.
        unsafe { b.launch(flat(n)) }.w()?;
        Ok(())
    }
    let dev = x.device.clone();
    let f = func(&dev, "add_into", y.dtype())?;
    let xs = x.as_cuda_slice_mut::<f32>()?;
    match y.dtype() {
        DType::F32 => go::<f32>(&f, &dev, xs, (a0, a1), y, (b0, b1)),
        DType::BF16 => go::<half::bf16>(&f, &dev, xs, (a0, a1), y, (b0, b1)),
        _ => go::<half::f16>(&f, &dev, xs, (a0, a1), y, (b0, b1)),
    }
}

pub fn rms_norm_to(
    x: &CudaStorage,
    (a0, a1): (usize, usize),
    w: &CudaStorage,
    (b0, b1): (usize, usize),
    d: usize,
    eps: f32,
    dtype: DType,
) -> Result<CudaStorage> {
    fn go<T: CudaDType + DeviceRepr>(
        f: &CudaFunction,
        dev: &CudaDevice,
        x: &CudaStorage,
        (a0, a1): (usize, usize),
        w: &CudaStorage,
        (b0, b1): (usize, usize),
        (d, eps): (usize, f32),
    ) -> Result<CudaStorage> {
        let n = a1 - a0;
        let xv = x.as_cuda_slice::<f32>()?.slice(a0..a1);
        let wv = w.as_cuda_slice::<f32>()?.slice(b0..b1);
        // SAFETY: every element is written by the kernel before it is read.
        let out = unsafe { dev.alloc::<T>(n)? };
        let rows = (n / d) as u32;
        let d32 = d as i32;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(f);
        b.arg(&xv);
        b.arg(&wv);
        b.arg(&out);
        b.arg(&d32);
        b.arg(&eps);
        let cfg = LaunchConfig {
            grid_dim: (rows, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: one block per row of d elements, all within the views.
        unsafe { b.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
    let dev = x.device.clone();
    let f = func(&dev, "rms_norm_to", dtype)?;
    let (x, w) = ((x, (a0, a1)), (w, (b0, b1)));
    match dtype {
        DType::F32 => go::<f32>(&f, &dev, x.0, x.1, w.0, w.1, (d, eps)),
        DType::BF16 => go::<half::bf16>(&f, &dev, x.0, x.1, w.0, w.1, (d, eps)),
        _ => go::<half::f16>(&f, &dev, x.0, x.1, w.0, w.1, (d, eps)),
    }
}

/// `silu_mul_halves_<dtype>`: `rows` rows of `2 f` f32 from `x0` into a fresh `[rows, f]`.
pub fn silu_mul_halves(
    x: &CudaStorage,
    x0: usize,
    (rows, f): (usize, usize),
    dtype: DType,
) -> Result<CudaStorage> {
    fn go<T: CudaDType + DeviceRepr>(
        func: &CudaFunction,
        dev: &CudaDevice,
        x: &CudaStorage,
        x0: usize,
        (rows, f): (usize, usize),
    ) -> Result<CudaStorage> {
        let n = rows * f;
        let xv = x.as_cuda_slice::<f32>()?.slice(x0..x0 + 2 * n);
        // SAFETY: every element is written by the kernel before it is read.
        let out = unsafe { dev.alloc::<T>(n)? };
        let f32_ = f as u32;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(func);
        b.arg(&xv);
        b.arg(&out);
        b.arg(&rows);
        b.arg(&f32_);
        // SAFETY: x holds rows x 2f f32 and out rows x f; the kernel's indices stay below.
        unsafe { b.launch(flat(n / 4)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
    let dev = x.device.clone();
    let func = func(&dev, "silu_mul_halves", dtype)?;
    match dtype {
        DType::F32 => go::<f32>(&func, &dev, x, x0, (rows, f)),
        DType::BF16 => go::<half::bf16>(&func, &dev, x, x0, (rows, f)),
        _ => go::<half::f16>(&func, &dev, x, x0, (rows, f)),
    }
}

/// `qkv_heads_<dtype>`: `rows` rows of the f32 fused projection from `x0` into a fresh
/// `[q | k | v | flag]` buffer in `dtype`, the flag zeroed before the kernel may set it.
pub fn qkv_heads(
    x: &CudaStorage,
    x0: usize,
    (cos, sin): ((&CudaStorage, usize), (&CudaStorage, usize)),
    (rows, t): (usize, usize),
    shape: super::HeadShape,
    dtype: DType,
) -> Result<CudaStorage> {
    fn go<T: CudaDType + DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        f: &CudaFunction,
        dev: &CudaDevice,
        x: &CudaStorage,
        x0: usize,
        (cos, sin): ((&CudaStorage, usize), (&CudaStorage, usize)),
        (rows, t): (usize, usize),
        super::HeadShape { nh, nkv, hd }: super::HeadShape,
    ) -> Result<CudaStorage> {
        let n = rows * (nh + 2 * nkv) * hd;
        let half = hd / 2;
        let xv = x.as_cuda_slice::<f32>()?.slice(x0..x0 + n);
        let cv = cos.0.as_cuda_slice::<f32>()?.slice(cos.1..cos.1 + t * half);
        let sv = sin.0.as_cuda_slice::<f32>()?.slice(sin.1..sin.1 + t * half);
        let stream = dev.cuda_stream();
        // SAFETY: the kernel writes every element but the flag, zeroed here.
        let mut out = unsafe { dev.alloc::<T>(n + 1)? };
        stream.memset_zeros(&mut out.slice_mut(n..n + 1)).w()?;
        let dims = [t, nh, nkv, hd].map(|v| v as u32);
        let mut b = stream.launch_builder(f);
        b.arg(&xv);
        b.arg(&cv);
        b.arg(&sv);
        b.arg(&out);
        b.arg(&rows);
        for d in &dims {
            b.arg(d);
        }
        // SAFETY: x holds rows x (nh + 2 nkv) x hd f32, out that many T and the flag, the
        // tables t x hd/2; the kernel's indices stay below those (position = row % t).
        unsafe { b.launch(flat(n / 2 / 8)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
    let dev = x.device.clone();
    let f = func(&dev, "qkv_heads", dtype)?;
    let args = (x, x0, (cos, sin), (rows, t), shape);
    match dtype {
        DType::F32 => go::<f32>(&f, &dev, args.0, args.1, args.2, args.3, args.4),
        DType::BF16 => go::<half::bf16>(&f, &dev, args.0, args.1, args.2, args.3, args.4),
        _ => go::<half::f16>(&f, &dev, args.0, args.1, args.2, args.3, args.4),
    }
}

/// `nll_rows` over `rows` f32 rows of `v` logits from `l0`, targets from `t0`.
pub fn nll_rows(
    logits: &CudaStorage,
    l0: usize,
    targets: &CudaStorage,
    t0: usize,
    (rows, v): (usize, usize),
) -> Result<CudaStorage> {
    let dev = logits.device.clone();
    let f = dev
        .get_or_load_custom_func("nll_rows", "gateau_fused", PTX)?
        .into_cuda_function();
    let lv = logits.as_cuda_slice::<f32>()?.slice(l0..l0 + rows * v);
    let tv = targets.as_cuda_slice::<u32>()?.slice(t0..t0 + rows);
    // SAFETY: every element is written by the kernel before it is read.
    let out = unsafe { dev.alloc::<f32>(rows)? };
    let v32 = v as i32;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&lv);
    b.arg(&tv);
    b.arg(&out);
    b.arg(&v32);
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: one block per row of v logits and one target, all within the views.
    unsafe { b.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// One cuBLAS handle per device, on candle's stream (creating one takes milliseconds).
fn blas(dev: &CudaDevice) -> Result<std::sync::Arc<cudarc::cublas::CudaBlas>> {
    use std::sync::{Arc, Mutex, OnceLock};
    type Handles = Mutex<
        Vec<(
            candle_core::cuda_backend::DeviceId,
            Arc<cudarc::cublas::CudaBlas>,
        )>,
    >;
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    let mut handles = HANDLES
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| candle_core::Error::Msg("the cuBLAS handle cache is poisoned".into()))?;
    if let Some((_, h)) = handles.iter().find(|(id, _)| *id == dev.id()) {
        return Ok(h.clone());
    }
    let h = Arc::new(cudarc::cublas::CudaBlas::new(dev.cuda_stream()).w()?);
    handles.push((dev.id(), h.clone()));
    Ok(h)
}

/// `c[m, d] = h[m, k] · w[d, k]ᵀ + beta c`: cuBLAS GemmEx, 16-bit inputs, f32 accumulation
/// and f32 output.
fn gemm_f32(
    dev: &CudaDevice,
    c: &mut cudarc::driver::CudaViewMut<'_, f32>,
    (h, h0): (&CudaStorage, usize),
    (w, w0): (&CudaStorage, usize),
    (m, k, d): (usize, usize, usize),
    beta: f32,
) -> Result<()> {
    use cudarc::cublas::{result as cublas, sys};
    fn go<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        x: &mut cudarc::driver::CudaViewMut<'_, f32>,
        (h, h0): (&CudaStorage, usize),
        (w, w0): (&CudaStorage, usize),
        (m, k, d): (usize, usize, usize),
        (ty, beta): (sys::cudaDataType, f32),
    ) -> Result<()> {
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        let blas = blas(dev)?;
        let stream = dev.cuda_stream();
        stream.context().bind_to_thread().w()?;
        let hv = h.as_cuda_slice::<T>()?.slice(h0..h0 + m * k);
        let wv = w.as_cuda_slice::<T>()?.slice(w0..w0 + d * k);
        let (hp, _g1) = hv.device_ptr(&stream);
        let (wp, _g2) = wv.device_ptr(&stream);
        let (xp, _g3) = x.device_ptr_mut(&stream);
        let (one, dims) = (1f32, [d, m, k].map(|v| v as i32));
        // Column-major view: xᵀ (d x m) = wᵀ-as-stored (k x d, transposed) · hᵀ (k x m)
        // + beta xᵀ.
        // SAFETY: live device allocations of the sizes sliced above, on candle's stream;
        // alpha and beta are host f32 (the handle's default pointer mode). With beta = 0
        // cuBLAS does not read C.
        unsafe {
            cublas::gemm_ex(
                *blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                dims[0],
                dims[1],
                dims[2],
                (&one as *const f32).cast(),
                wp as *const std::ffi::c_void,
                ty,
                dims[2],
                hp as *const std::ffi::c_void,
                ty,
                dims[2],
                (&beta as *const f32).cast(),
                xp as *mut std::ffi::c_void,
                sys::cudaDataType::CUDA_R_32F,
                dims[0],
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .w()?;
        Ok(())
    }
    if [m, k, d].iter().any(|&v| v > i32::MAX as usize) {
        bail!("cuBLAS GEMM: {m} x {k} x {d} is beyond its 32-bit sizes");
    }
    let (hs, ws, dims) = ((h, h0), (w, w0), (m, k, d));
    match h.dtype() {
        DType::BF16 => {
            go::<half::bf16>(dev, c, hs, ws, dims, (sys::cudaDataType::CUDA_R_16BF, beta))
        }
        DType::F16 => go::<half::f16>(dev, c, hs, ws, dims, (sys::cudaDataType::CUDA_R_16F, beta)),
        other => bail!("cuBLAS GEMM: unsupported dtype {other:?}"),
    }
}

/// `x[m, d] += h[m, k] · w[d, k]ᵀ`, the f32 stream as C with beta = 1.
pub fn gemm_add(
    x: &mut CudaStorage,
    x0: usize,
    h: (&CudaStorage, usize),
    w: (&CudaStorage, usize),
    (m, k, d): (usize, usize, usize),
) -> Result<()> {
    let dev = x.device.clone();
    let mut xv = x.as_cuda_slice_mut::<f32>()?.slice_mut(x0..x0 + m * d);
    gemm_f32(&dev, &mut xv, h, w, (m, k, d), 1.0)
}

/// `h[m, k] · w[d, k]ᵀ` into a fresh f32 `[m, d]`.
pub fn gemm_out(
    h: (&CudaStorage, usize),
    w: (&CudaStorage, usize),
    (m, k, d): (usize, usize, usize),
) -> Result<CudaStorage> {
    let dev = h.0.device.clone();
    // SAFETY: with beta = 0 the GEMM writes every element and reads none.
    let mut out = unsafe { dev.alloc::<f32>(m * d)? };
    gemm_f32(&dev, &mut out.slice_mut(0..m * d), h, w, (m, k, d), 0.0)?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}
