//! The config file: every key it may hold, overlaid key by key on the built-in paper
//! settings (configs/paper.json).

use crate::cli::DTypeArg;
use crate::input::chat::TemplateSetting;
#[cfg(test)]
use crate::input::template::Template;
use crate::model::dispatch::AttentionKernel;
use crate::rank::normalize::{CamNorm, HmgNorm};
use crate::rank::recipe::{Fuse, RecipeName};
use crate::rank::selection::Method;
use crate::rank::terms::{CamTerm, HmgTerm};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The paper's settings, compiled in.
pub const PAPER_CONFIG: &str = include_str!("../../../configs/paper.json");

/// Every key a config file may hold (all optional; `null` unsets a built-in default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub long_model: Option<String>,
    pub short_model: Option<String>,
    pub short_rope_theta: Option<f64>,
    pub short_window: Option<usize>,
    pub tokenizer: Option<PathBuf>,
    pub device: Option<String>,
    pub dtype: Option<DTypeArg>,
    pub attention: Option<AttentionKernel>,
    pub max_len: Option<usize>,
    pub segment_len: Option<usize>,
    pub max_segments: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub pack_below: Option<usize>,
    pub bucket: Option<crate::model::bucket::Bucket>,
    pub alpha: Option<f64>,
    pub ratio: Option<f64>,
    pub top: Option<usize>,
    pub hmg_norm: Option<HmgNorm>,
    pub cam_norm: Option<CamNorm>,
    pub recipe: Option<RecipeName>,
    pub hmg_term: Option<HmgTerm>,
    pub cam_term: Option<CamTerm>,
    pub fuse: Option<Fuse>,
    pub template: Option<TemplateSetting>,
    pub data: Option<PathBuf>,
    pub scores: Option<Vec<PathBuf>>,
    pub out: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub report_dir: Option<PathBuf>,
    pub method: Option<Method>,
    pub with_ifd: Option<bool>,
    pub token_nll: Option<bool>,
    pub phases: Option<crate::cli::Phases>,
}

/// Built-in defaults overlaid with the user's config file (key by key).
pub fn load_config(path: Option<&Path>) -> Result<ConfigFile> {
    let mut merged: Value = serde_json::from_str(PAPER_CONFIG).context("built-in config")?;
    if let Some(p) = path {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("cannot read --config {}", p.display()))?;
        let user: Value = serde_json::from_str(&text)
            .with_context(|| format!("--config {}: not valid JSON", p.display()))?;
        let Value::Object(user) = user else {
            bail!(
                "--config {}: expected a JSON object of settings",
                p.display()
            );
        };
        let base = merged
            .as_object_mut()
            .expect("built-in config is an object");
        for (k, v) in user {
            base.insert(k, v);
        }
        // A user's scores list may be one path.
        if let Some(s @ Value::String(_)) = base.get("scores").cloned() {
            base.insert("scores".into(), Value::Array(vec![s]));
        }
    }
    let cfg: ConfigFile = serde_json::from_value(merged).map_err(|e| {
        anyhow!(
            "{}: {e} (keys are the long flag names with _, e.g. \"max_len\")",
            path.map_or("built-in config".into(), |p| format!(
                "--config {}",
                p.display()
            ))
        )
    })?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_config_is_the_papers() {
        let c = load_config(None).unwrap();
        assert_eq!(c.max_len, Some(64000));
        assert_eq!(c.segment_len, Some(128));
        assert_eq!(c.max_segments, Some(500));
        assert_eq!(c.short_rope_theta, Some(2_000_000.0));
        assert_eq!(c.alpha, Some(0.8));
        assert_eq!(
            c.template.unwrap(),
            TemplateSetting::Strings(Template::default())
        );
    }
}
