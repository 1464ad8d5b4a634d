//! With the `cuda` feature, compiles gateau's own kernels (src/kernels/fused.cu, capture.cu)
//! to PTX with nvcc; the driver JIT-compiles them for the GPU at first use, as it does
//! candle's kernels. With `cudnn`, compiles src/kernels/cudnn_sdpa.cpp (cudnn-frontend's
//! header-only graph API; cuDNN itself is loaded at run time) into a static library.

use std::path::PathBuf;
use std::process::Command;

/// The .cu files under src/kernels, each one PTX module.
const KERNELS: [&str; 2] = ["fused", "capture"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for name in KERNELS {
        println!("cargo:rerun-if-changed=src/kernels/{name}.cu");
    }
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDNN").is_some() {
        cudnn_shim();
    }
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
            .arg(format!("src/kernels/{name}.cu"))
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "could not run nvcc ({}): {e}; install the CUDA toolkit or set NVCC",
                    nvcc.display()
                )
            });
        assert!(status.success(), "nvcc failed on src/kernels/{name}.cu");
    }
}

/// The include folders the shim needs: `$CUDNN_FRONTEND_INCLUDE` (cudnn_frontend.h),
/// `$CUDNN_INCLUDE` (cudnn.h; default: the CUDA toolkit's), the CUDA toolkit's include.
fn cudnn_shim() {
    const SRC: &str = "src/kernels/cudnn_sdpa.cpp";
    println!("cargo:rerun-if-changed={SRC}");
    for var in ["CUDNN_FRONTEND_INCLUDE", "CUDNN_INCLUDE", "CXX"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cuda_include = nvcc()
        .parent()
        .and_then(|bin| bin.parent())
        .map(|root| root.join("include"));
    let mut includes: Vec<PathBuf> = Vec::new();
    match std::env::var_os("CUDNN_FRONTEND_INCLUDE") {
        Some(p) => includes.push(p.into()),
        None => panic!(
            "the cudnn feature needs cudnn-frontend's headers: set CUDNN_FRONTEND_INCLUDE to the \
             folder holding cudnn_frontend.h (scripts/cudnn/headers.sh fetches them from PyPI)"
        ),
    }
    if let Some(p) = std::env::var_os("CUDNN_INCLUDE") {
        includes.push(p.into());
    }
    includes.extend(cuda_include);
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let obj = out.join("cudnn_sdpa.o");
    let mut cmd = Command::new(&cxx);
    cmd.args(["-std=c++17", "-O2", "-fPIC", "-w", "-c"])
        .arg("-DNV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING")
        .arg("-DCUDNN_FRONTEND_SKIP_JSON_LIB");
    for dir in &includes {
        cmd.arg("-I").arg(dir);
    }
    let status = cmd
        .arg(SRC)
        .arg("-o")
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| panic!("could not run the C++ compiler {cxx}: {e}; set CXX"));
    assert!(status.success(), "{cxx} failed on {SRC}");
    let lib = out.join("libgateau_cudnn.a");
    let _ = std::fs::remove_file(&lib);
    let status = Command::new("ar")
        .arg("crs")
        .arg(&lib)
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| panic!("could not run ar: {e}"));
    assert!(status.success(), "ar failed on {}", obj.display());
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=gateau_cudnn");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:rustc-link-lib=dylib=dl");
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
