//! Model loading: a local HF folder, a `.gguf` file, or a hub id, on a chosen device and
//! dtype, together with its tokenizer and BOS id.

pub mod attention;
pub mod capture;
pub mod chat_template;
pub mod config;
#[cfg(feature = "cudnn")]
pub mod cudnn;
pub mod fused;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod hf_config;
pub mod hub;
pub mod kernel;
mod layer;
pub mod llama;
pub mod packing;
pub mod profile;
pub mod rope;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
pub use config::ModelConfig;
pub use llama::{ForwardOutput, Llama};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Where a model comes from, as the user named it.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// A folder, a .gguf file, or a hub id.
    pub location: String,
    /// Overrides the tokenizer that comes with the model.
    pub tokenizer: Option<PathBuf>,
    /// Overrides the RoPE base (the paper's 4k model read with theta 2,000,000).
    pub rope_theta: Option<f64>,
}

/// The files of an HF checkpoint.
#[derive(Debug, Clone)]
pub struct HfFiles {
    pub config: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub weights: Vec<PathBuf>,
}

/// A model ready to score: weights on the device, tokenizer, BOS.
pub struct LoadedModel {
    pub llama: Llama,
    pub tokenizer: Tokenizer,
    pub bos: Option<u32>,
    /// What was loaded, for logs and errors.
    pub source: String,
}

/// Shard file names listed by a `model.safetensors.index.json`, in first-seen order.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("cannot read {}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", index.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{}: no \"weight_map\" object", index.display()))?;
    let mut out: Vec<String> = Vec::new();
    for f in map.values() {
        let f = f
            .as_str()
            .ok_or_else(|| anyhow!("{}: weight_map values must be file names", index.display()))?;
        if !out.iter().any(|x| x == f) {
            out.push(f.to_string());
        }
    }
    Ok(out)
}

/// The files of a local HF folder.
pub fn folder_files(dir: &Path) -> Result<HfFiles> {
    let config = dir.join("config.json");
    if !config.is_file() {
        bail!("model folder {} has no config.json", dir.display());
    }
    let tok = dir.join("tokenizer.json");
    let index = dir.join("model.safetensors.index.json");
    let weights = if index.is_file() {
        shard_names(&index)?
            .into_iter()
            .map(|s| dir.join(s))
            .collect()
    } else {
        vec![dir.join("model.safetensors")]
    };
    for w in &weights {
        if !w.is_file() {
            bail!(
                "model folder {}: weight file {} is missing",
                dir.display(),
                w.display()
            );
        }
    }
    Ok(HfFiles {
        config,
        tokenizer: tok.is_file().then_some(tok),
        weights,
    })
}

fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))
}

/// Where `spec` points: a GGUF file or resolved HF files.
enum Located {
    Gguf(std::path::PathBuf),
    Hf(HfFiles),
}

fn locate(spec: &ModelSpec) -> Result<Located> {
    let path = Path::new(&spec.location);
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        if !path.is_file() {
            bail!("GGUF model file {} does not exist", path.display());
        }
        return Ok(Located::Gguf(path.to_path_buf()));
    }
    Ok(Located::Hf(if path.is_dir() {
        folder_files(path)?
    } else if path.exists() {
        bail!(
            "model {} is neither a folder with config.json nor a .gguf file",
            path.display()
        );
    } else if looks_like_hub_id(&spec.location) {
        hub::resolve(&spec.location)?
    } else {
        bail!(
            "model {} does not exist (expected a folder, a .gguf file, or a hub id org/name)",
            spec.location
        );
    }))
}

/// A model's shape alone (no tokenizer, no weights).
pub fn model_config(spec: &ModelSpec) -> Result<ModelConfig> {
    match locate(spec)? {
        Located::Gguf(p) => gguf::GgufFile::open(&p)?.config(),
        Located::Hf(files) => ModelConfig::from_hf_file(&files.config),
    }
}

/// A model's shape and tokenizer without its weights (memory planning, two-phase scoring).
pub fn describe_model(spec: &ModelSpec) -> Result<(ModelConfig, Tokenizer)> {
    match locate(spec)? {
        Located::Gguf(p) => {
            let g = gguf::GgufFile::open(&p)?;
            let tok = match &spec.tokenizer {
                Some(t) => load_tokenizer(t)?,
                None => gguf_tokenizer::from_gguf(&g)?,
            };
            Ok((g.config()?, tok))
        }
        Located::Hf(files) => {
            let cfg = ModelConfig::from_hf_file(&files.config)?;
            let tok = spec
                .tokenizer
                .clone()
                .or(files.tokenizer)
                .ok_or_else(|| anyhow!("model {} has no tokenizer.json", spec.location))?;
            Ok((cfg, load_tokenizer(&tok)?))
        }
    }
}

/// Every file a model is read from: a GGUF file, or config, tokenizer files (and a chat
/// template beside them) and weights; what its fingerprint hashes.
pub fn model_files(spec: &ModelSpec) -> Result<Vec<PathBuf>> {
    Ok(match locate(spec)? {
        Located::Gguf(p) => vec![p],
        Located::Hf(f) => {
            let mut files = vec![f.config.clone()];
            if let Some(dir) = f.config.parent() {
                for extra in ["tokenizer_config.json", "chat_template.jinja"] {
                    let p = dir.join(extra);
                    if p.is_file() {
                        files.push(p);
                    }
                }
            }
            files.extend(f.tokenizer);
            files.extend(f.weights);
            files
        }
    })
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

/// Loads a model as `spec` names it.
pub fn load(spec: &ModelSpec, device: &Device, dtype: DType) -> Result<LoadedModel> {
    match locate(spec)? {
        Located::Gguf(p) => load_gguf(spec, &p, device, dtype),
        Located::Hf(files) => load_hf(spec, &files, device, dtype),
    }
}

fn looks_like_hub_id(s: &str) -> bool {
    let name = s.split('@').next().unwrap_or(s);
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
}

fn load_hf(
    spec: &ModelSpec,
    files: &HfFiles,
    device: &Device,
    dtype: DType,
) -> Result<LoadedModel> {
    let cfg = ModelConfig::from_hf_file(&files.config)?;
    let tok_path = spec
        .tokenizer
        .clone()
        .or_else(|| files.tokenizer.clone())
        .ok_or_else(|| {
            anyhow!(
                "model {} has no tokenizer.json; pass --tokenizer FILE",
                spec.location
            )
        })?;
    let tokenizer = load_tokenizer(&tok_path)?;
    // Safety: the files are memory-mapped read-only; gateau does not modify them while
    // loaded, and a concurrent writer would be a user error outside our control.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files.weights, dtype, device) }
        .with_context(|| format!("cannot read safetensors of model {}", spec.location))?;
    finish(spec, cfg, vb, tokenizer)
}

/// The model from its weights, with the user's RoPE override applied.
fn finish(
    spec: &ModelSpec,
    mut cfg: ModelConfig,
    vb: VarBuilder,
    tokenizer: Tokenizer,
) -> Result<LoadedModel> {
    if let Some(theta) = spec.rope_theta {
        cfg.rope_theta = theta;
    }
    let bos = cfg.bos_token_id;
    let llama = Llama::load(vb, cfg)
        .with_context(|| format!("cannot load model weights from {}", spec.location))?;
    Ok(LoadedModel {
        llama,
        tokenizer,
        bos,
        source: spec.location.clone(),
    })
}

fn load_gguf(spec: &ModelSpec, path: &Path, device: &Device, dtype: DType) -> Result<LoadedModel> {
    let g = gguf::GgufFile::open(path)?;
    let cfg = g.config()?;
    let tokenizer = match &spec.tokenizer {
        Some(t) => load_tokenizer(t)?,
        None => gguf_tokenizer::from_gguf(&g)?,
    };
    let tensors = g.tensors(&cfg, device, dtype)?;
    finish(
        spec,
        cfg,
        VarBuilder::from_tensors(tensors, dtype, device),
        tokenizer,
    )
}

/// `--device`: where the models run.
#[derive(Debug, Clone, PartialEq)]
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

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Process-wide matmul settings for a run in `dtype`: with bf16/f16 weights, the f32 GEMMs
/// (attention scores, the output head, the captured rows' column sums) may use TF32 tensor
/// cores. One operand of each is a
/// bf16/f16 value widened to f32 (keys, head weights), exact in TF32; the other (scaled
/// queries, final-normed hidden states) is rounded to TF32's 11 significant bits, still
/// finer than the bf16 it would otherwise be. With f32 weights every GEMM stays full f32.
pub fn configure_matmul(dtype: DType) {
    candle_core::cuda::set_gemm_reduced_precision_f32(dtype != DType::F32);
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

    #[test]
    fn hub_ids_are_recognised() {
        assert!(looks_like_hub_id("THUDM/LongAlign-7B-64k-base"));
        assert!(looks_like_hub_id("org/name@v1"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("model"));
    }
}
