//! Where a model comes from: a local HF folder, a `.gguf` file, or a hub id, resolved to
//! its files, its configuration and tokenizer, and loaded onto a device as a [`Llama`].

pub mod chat_template;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod hf_config;
pub mod hub;

use crate::model::dispatch::Dispatch;
use crate::model::{Compute, Llama, ModelConfig};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
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
    /// With `--dtype fp8`: the projections' quantization, for the log.
    pub fp8: Option<crate::model::Fp8Scales>,
    /// With `--dtype fp8`: the twin of `llama` with E4M3 projections that runs the segment
    /// passes; the full passes stay on `llama` (16-bit).
    pub segments: Option<Llama>,
}

impl LoadedModel {
    /// The model the segment passes run on: the E4M3 twin under `--dtype fp8`, else `llama`.
    pub fn segment_model(&self) -> &Llama {
        self.segments.as_ref().unwrap_or(&self.llama)
    }
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
        Located::Hf(files) => hf_config::read(&files.config),
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
            let cfg = hf_config::read(&files.config)?;
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

/// Loads a model as `spec` names it.
pub fn load(spec: &ModelSpec, c: &Compute) -> Result<LoadedModel> {
    let (device, dtype, dispatch) = (&c.device, c.dtype, c.dispatch.clone());
    let mut m = match locate(spec)? {
        Located::Gguf(p) => load_gguf(spec, &p, (device, dtype), dispatch),
        Located::Hf(files) => load_hf(spec, &files, (device, dtype), dispatch),
    }?;
    if c.fp8 {
        let (twin, scales) = m
            .llama
            .fp8_twin()
            .with_context(|| format!("model {}", spec.location))?;
        m.segments = Some(twin);
        m.fp8 = Some(scales);
    }
    Ok(m)
}

fn looks_like_hub_id(s: &str) -> bool {
    let name = s.split('@').next().unwrap_or(s);
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
}

fn load_hf(
    spec: &ModelSpec,
    files: &HfFiles,
    (device, dtype): (&Device, DType),
    dispatch: Dispatch,
) -> Result<LoadedModel> {
    let cfg = hf_config::read(&files.config)?;
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
    finish(spec, cfg, vb, tokenizer, dispatch)
}

/// The model from its weights, with the user's RoPE override applied.
fn finish(
    spec: &ModelSpec,
    mut cfg: ModelConfig,
    vb: VarBuilder,
    tokenizer: Tokenizer,
    dispatch: Dispatch,
) -> Result<LoadedModel> {
    if let Some(theta) = spec.rope_theta {
        cfg.rope_theta = theta;
    }
    let bos = cfg.bos_token_id;
    let llama = Llama::load(vb, cfg, dispatch)
        .with_context(|| format!("cannot load model weights from {}", spec.location))?;
    Ok(LoadedModel {
        llama,
        tokenizer,
        bos,
        source: spec.location.clone(),
        fp8: None,
        segments: None,
    })
}

fn load_gguf(
    spec: &ModelSpec,
    path: &Path,
    (device, dtype): (&Device, DType),
    dispatch: Dispatch,
) -> Result<LoadedModel> {
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
        dispatch,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_recognised() {
        assert!(looks_like_hub_id("THUDM/LongAlign-7B-64k-base"));
        assert!(looks_like_hub_id("org/name@v1"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("model"));
    }
}
