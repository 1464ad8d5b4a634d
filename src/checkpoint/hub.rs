//! Hugging Face hub ids (`org/name`) resolved to local files with hf-hub: from the local
//! cache first, downloading only when online. The conventions of the Python stack hold:
//! `HF_HUB_OFFLINE=1` forbids any download, `HF_HUB_CACHE` (else `HF_HOME/hub`) is the
//! cache, `HF_ENDPOINT` a mirror, `HF_TOKEN` the token for gated repositories (else the
//! token file `huggingface-cli login` wrote), and an online resolution that fails falls
//! back to the cache with a warning, as transformers does.

use super::HfFiles;
use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo};
use std::path::PathBuf;

pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// A file getter: from the cache only, or through the API (which reads the cache first).
enum Source {
    Cache(hf_hub::CacheRepo, PathBuf),
    /// The repository and the file names its listing holds.
    Api(hf_hub::api::sync::ApiRepo, Vec<String>),
}

impl Source {
    fn get(&self, id: &str, file: &str) -> Result<Option<PathBuf>> {
        match self {
            Source::Cache(repo, _) => Ok(repo.get(file)),
            Source::Api(repo, files) => {
                if !files.iter().any(|f| f == file) {
                    return Ok(None);
                }
                repo.get(file)
                    .map(Some)
                    .map_err(|e| anyhow!("cannot download {file} of hub model {id}: {e}"))
            }
        }
    }

    fn need(&self, id: &str, file: &str) -> Result<PathBuf> {
        self.get(id, file)?.ok_or_else(|| match self {
            Source::Cache(_, root) => anyhow!(
                "hub model {id} is not in the local hub cache {} (missing {file}); \
                 HF_HUB_OFFLINE is set, so nothing is downloaded: fetch it once with \
                 `huggingface-cli download {id}`, or pass a local folder or .gguf file",
                root.display()
            ),
            Source::Api(..) => anyhow!("hub model {id} has no file {file}"),
        })
    }
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

/// The cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache/huggingface/hub.
pub fn cache() -> Cache {
    match env("HF_HUB_CACHE") {
        Some(dir) => Cache::new(PathBuf::from(dir)),
        None => Cache::from_env(),
    }
}

/// Resolves `id` (optionally `id@revision`) to the files of an HF checkpoint.
pub fn resolve(id: &str) -> Result<HfFiles> {
    let (name, revision) = match id.split_once('@') {
        Some((n, r)) => (n, r.to_string()),
        None => (id, "main".to_string()),
    };
    let repo = Repo::with_revision(name.to_string(), hf_hub::RepoType::Model, revision);
    let cache = cache();
    let from_cache = || {
        files(
            id,
            &Source::Cache(cache.repo(repo.clone()), cache.path().clone()),
        )
    };
    if offline() {
        return from_cache();
    }
    match online(id, &repo, &cache) {
        Ok(f) => Ok(f),
        Err(e) => match from_cache() {
            Ok(f) => {
                eprintln!(
                    "gateau: warning: {e:#}; using the copy of {id} in the local hub cache {}",
                    cache.path().display()
                );
                Ok(f)
            }
            Err(_) => Err(e),
        },
    }
}

fn online(id: &str, repo: &Repo, cache: &Cache) -> Result<HfFiles> {
    let mut builder = ApiBuilder::from_cache(cache.clone())
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if let Some(endpoint) = env("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    // The token file lives in HF_HOME even when HF_HUB_CACHE moves the cache.
    let token = env("HF_TOKEN").or_else(|| Cache::from_env().token());
    let api = builder
        .with_token(token)
        .build()
        .context("cannot set up the Hugging Face hub client")?;
    let repo = api.repo(repo.clone());
    let info = repo.info().map_err(|e| {
        anyhow!(
            "cannot reach the Hugging Face hub for {id}: {e} (gated repositories such as \
             meta-llama need HF_TOKEN; mirrors are set with HF_ENDPOINT); with no network, \
             set HF_HUB_OFFLINE=1 to use the local cache, or pass a local folder or .gguf file"
        )
    })?;
    let names = info.siblings.into_iter().map(|s| s.rfilename).collect();
    files(id, &Source::Api(repo, names))
}

fn files(id: &str, source: &Source) -> Result<HfFiles> {
    let config = source.need(id, "config.json")?;
    let tokenizer = source.need(id, "tokenizer.json")?;
    // Beside it in the snapshot, for --template chat (optional files).
    for extra in ["tokenizer_config.json", "chat_template.jinja"] {
        source.get(id, extra)?;
    }
    let weights = match source.get(id, "model.safetensors.index.json")? {
        Some(index) => {
            let shards = super::shard_names(&index)?;
            let mut files = Vec::with_capacity(shards.len());
            for s in shards {
                files.push(source.need(id, &s)?);
            }
            files
        }
        None => vec![source.need(id, "model.safetensors")?],
    };
    if weights.is_empty() {
        bail!("hub model {id}: the weight index lists no files");
    }
    Ok(HfFiles {
        config,
        tokenizer: Some(tokenizer),
        weights,
    })
}
