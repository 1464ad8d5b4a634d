//! Where each resolved setting came from: a flag, the `--config` file, the built-in paper
//! config (configs/paper.json) or gateau's own default. Filled next to the settings'
//! `flag.or(config)` chains, read by the settings lines.

use super::PAPER_CONFIG;
use crate::cli::{RankArgs, ScoreArgs};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where one value came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// The user's `--config` file (or `GATEAU_CONFIG`).
    Config(PathBuf),
    /// The built-in paper config.
    BuiltIn,
    /// gateau's own default: nothing set it.
    #[default]
    Default,
}

impl Source {
    /// The note a settings line puts after a value: empty for gateau's own default.
    pub fn note(&self) -> String {
        match self {
            Source::Flag => " (flag)".into(),
            Source::Config(p) => format!(" (config {})", p.display()),
            Source::BuiltIn => " (built-in)".into(),
            Source::Default => String::new(),
        }
    }
}

/// Which keys the user's config file and the built-in config set.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    config: Option<PathBuf>,
    user: BTreeSet<String>,
    built_in: BTreeSet<String>,
}

fn keys(v: &Value, non_null: bool) -> BTreeSet<String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter(|(_, v)| !non_null || !v.is_null())
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

impl Origins {
    /// The keys of `config` (already read and checked by `load_config`) and of the
    /// built-in config. A user key set to `null` counts as the config's: it unset a
    /// built-in value.
    pub fn read(config: Option<&Path>) -> Self {
        let user = config
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .map(|v| keys(&v, false))
            .unwrap_or_default();
        let built_in = serde_json::from_str::<Value>(PAPER_CONFIG)
            .map(|v| keys(&v, true))
            .unwrap_or_default();
        Self {
            config: config.map(Path::to_path_buf),
            user,
            built_in,
        }
    }

    /// The source of the value of config key `key`, given whether its flag was passed.
    pub fn of(&self, key: &str, flag: bool) -> Source {
        match &self.config {
            _ if flag => Source::Flag,
            Some(p) if self.user.contains(key) => Source::Config(p.clone()),
            _ if self.built_in.contains(key) => Source::BuiltIn,
            _ => Source::Default,
        }
    }
}

/// The source of every resolved value, by its config key (`max_len`, `alpha`, ...).
#[derive(Debug, Clone, Default)]
pub struct Sources(BTreeMap<&'static str, Source>);

impl Sources {
    pub fn set(&mut self, key: &'static str, source: Source) {
        self.0.insert(key, source);
    }

    /// Where `key`'s value came from ([`Source::Default`] when nothing was recorded).
    pub fn get(&self, key: &str) -> Source {
        self.0.get(key).cloned().unwrap_or_default()
    }

    /// The settings line's note for `key`: " (flag)", " (config FILE)", " (built-in)" or
    /// nothing.
    pub fn note(&self, key: &str) -> String {
        self.get(key).note()
    }

    /// The first of `keys` that something other than gateau's default set, else the last.
    pub fn first_set(&self, keys: &[&str]) -> Source {
        keys.iter()
            .map(|k| self.get(k))
            .find(|s| *s != Source::Default)
            .unwrap_or_default()
    }
}

/// The sources of `gateau score`'s values, following `ScoreSettings::resolve`.
pub fn score_sources(a: &ScoreArgs, o: &Origins, short_window: bool) -> Sources {
    let (m, p) = (&a.models, &a.passes);
    let mut s = Sources::default();
    let short = if m.short_window.is_some() || m.short_model.is_some() {
        Source::Flag
    } else if short_window {
        o.of("short_window", false)
    } else {
        o.of("short_model", false)
    };
    s.set("short", short);
    let simple = [
        ("long_model", m.long_model.is_some()),
        ("short_rope_theta", m.short_rope_theta.is_some()),
        ("tokenizer", m.tokenizer.is_some()),
        ("device", m.device.is_some() || m.devices.is_some()),
        ("dtype", m.dtype.is_some()),
        ("attention", m.attention.is_some()),
        ("max_len", p.max_len.is_some()),
        ("segment_len", p.segment_len.is_some()),
        ("max_segments", p.max_segments.is_some()),
        ("max_batch_tokens", p.max_batch_tokens.is_some()),
        ("pack_below", p.pack_below.is_some()),
        ("bucket", p.bucket.is_some()),
        ("phases", p.phases.is_some()),
        ("with_ifd", a.with_ifd),
        ("token_nll", a.token_nll),
        ("template", a.template.is_some()),
        ("out", a.out.is_some()),
    ];
    for (k, flag) in simple {
        s.set(k, o.of(k, flag));
    }
    s
}

/// The sources of the ranking values, following `RankSettings::resolve`; `config_top`:
/// whether the config's `top` (over its `ratio`) set how many are kept.
pub fn rank_sources(a: &RankArgs, o: &Origins, config_top: bool) -> Sources {
    let mut s = Sources::default();
    let keep = match (a.top, a.ratio) {
        (Some(_), _) | (None, Some(_)) => Source::Flag,
        _ if config_top => o.of("top", false),
        _ => o.of("ratio", false),
    };
    s.set("keep", keep);
    let simple = [
        ("scores", !a.scores.is_empty()),
        ("method", a.method.is_some()),
        ("alpha", a.alpha.is_some()),
        ("hmg_norm", a.hmg_norm.is_some()),
        ("cam_norm", a.cam_norm.is_some()),
        ("recipe", a.recipe.is_some()),
        ("hmg_term", a.hmg_term.is_some()),
        ("cam_term", a.cam_term.is_some()),
        ("fuse", a.fuse.is_some()),
    ];
    for (k, flag) in simple {
        s.set(k, o.of(k, flag));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_over_config_over_built_in() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.json");
        std::fs::write(&cfg, r#"{"alpha": 0.5, "short_window": null}"#).unwrap();
        let o = Origins::read(Some(&cfg));
        assert_eq!(o.of("alpha", true), Source::Flag);
        assert_eq!(o.of("alpha", false), Source::Config(cfg.clone()));
        assert_eq!(o.of("short_window", false), Source::Config(cfg.clone()));
        assert_eq!(o.of("max_len", false), Source::BuiltIn);
        assert_eq!(o.of("device", false), Source::Default);
        // A null in the built-in config is no value of its.
        assert_eq!(
            Origins::read(None).of("short_window", false),
            Source::Default
        );
        assert_eq!(Source::Default.note(), "");
        assert_eq!(Source::BuiltIn.note(), " (built-in)");
    }
}
