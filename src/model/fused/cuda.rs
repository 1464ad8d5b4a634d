//! Launches of the kernels in fused.cu (one PTX module, loaded once per device).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, DType, Result};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
const THREADS: u32 = 256;

fn func(dev: &CudaDevice, kernel: &str, dtype: DType) -> Result<CudaFunction> {
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
fn flat(n: usize) -> LaunchConfig {
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

pub fn silu_mul(
    a: &CudaStorage,
    (a0, a1): (usize, usize),
    b: &CudaStorage,
    (b0, b1): (usize, usize),
) -> Result<CudaStorage> {
    fn go<T: CudaDType + DeviceRepr>(
        f: &CudaFunction,
        dev: &CudaDevice,
        a: &CudaStorage,
        (a0, a1): (usize, usize),
        b: &CudaStorage,
        (b0, b1): (usize, usize),
    ) -> Result<CudaStorage> {
        let n = a1 - a0;
        let av = a.as_cuda_slice::<T>()?.slice(a0..a1);
        let bv = b.as_cuda_slice::<T>()?.slice(b0..b1);
        // SAFETY: every element is written by the kernel before it is read.
        let out = unsafe { dev.alloc::<T>(n)? };
        let stream = dev.cuda_stream();
        let mut l = stream.launch_builder(f);
        l.arg(&av);
        l.arg(&bv);
        l.arg(&out);
        l.arg(&n);
        // SAFETY: the three buffers hold n elements; the kernel touches indices < n.
        unsafe { l.launch(flat(n)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
    let dev = a.device.clone();
    let f = func(&dev, "silu_mul", a.dtype())?;
    match a.dtype() {
        DType::F32 => go::<f32>(&f, &dev, a, (a0, a1), b, (b0, b1)),
        DType::BF16 => go::<half::bf16>(&f, &dev, a, (a0, a1), b, (b0, b1)),
        _ => go::<half::f16>(&f, &dev, a, (a0, a1), b, (b0, b1)),
    }
}
