//! Hugging Face hub ids (`org/name`) resolved to local files with hf-hub: from the local
//! cache first, downloading only when online. `HF_HUB_OFFLINE=1` forbids any download.

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

/// Resolves `id` (optionally `id@revision`) to the files of an HF LLaMA checkpoint.
pub fn resolve(id: &str) -> Result<HfFiles> {
    let (name, revision) = match id.split_once('@') {
        Some((n, r)) => (n, r.to_string()),
        None => (id, "main".to_string()),
    };
    let repo = Repo::with_revision(name.to_string(), hf_hub::RepoType::Model, revision);
    let cache = Cache::from_env();
    let source = if offline() {
        Source::Cache(cache.repo(repo), cache.path().clone())
    } else {
        let api = ApiBuilder::from_cache(cache)
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .build()
            .context("cannot set up the Hugging Face hub client")?;
        let repo = api.repo(repo);
        let info = repo.info().map_err(|e| {
            anyhow!(
                "cannot reach the Hugging Face hub for {id}: {e}; with no network, set \
                 HF_HUB_OFFLINE=1 to use the local cache, or pass a local folder or .gguf file"
            )
        })?;
        let files = info.siblings.into_iter().map(|s| s.rfilename).collect();
        Source::Api(repo, files)
    };
    let config = source.need(id, "config.json")?;
    let tokenizer = source.need(id, "tokenizer.json")?;
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
