//! With the `cuda` feature, compiles gateau's own kernels (src/model/fused.cu, capture.cu)
//! to PTX with nvcc; the driver JIT-compiles them for the GPU at first use, as it does
//! candle's kernels.

use std::path::PathBuf;
use std::process::Command;

/// The .cu files under src/model, each one PTX module.
const KERNELS: [&str; 2] = ["fused", "capture"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for name in KERNELS {
        println!("cargo:rerun-if-changed=src/model/{name}.cu");
    }
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    // PTX for the GPU's virtual architecture (candle's own kernels read the same variable);
    // without it, compute_80, the oldest with native bf16 conversions, which newer GPUs JIT.
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|c| c.trim().replace('.', "").parse::<u32>().ok())
        .unwrap_or(80);
    for name in KERNELS {
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17"])
            .arg(format!("-arch=compute_{cap}"))
            .arg("-o")
            .arg(out.join(format!("{name}.ptx")))
            .arg(format!("src/model/{name}.cu"))
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "could not run nvcc ({}): {e}; install the CUDA toolkit or set NVCC",
                    nvcc.display()
                )
            });
        assert!(status.success(), "nvcc failed on src/model/{name}.cu");
    }
}

/// `$NVCC`, else `nvcc` from CUDA_ROOT / CUDA_HOME / CUDA_PATH, else from PATH.
fn nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return p.into();
    }
    for var in ["CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = std::env::var_os(var) {
            let p = PathBuf::from(root).join("bin").join("nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("nvcc")
}
