//! Settings resolved once per run: built-in paper defaults (configs/paper.json), then the
//! user's config file, then flags. Validated here, logged by the caller.

use crate::cli::{
    CommonArgs, DTypeArg, MaxBad, RankArgs, ReportArgs, ScoreArgs, SelectArgs, Shard,
};
pub use crate::files::same_file;
use crate::files::{check_new, check_outputs, Named};
use crate::model::{DeviceChoice, ModelSpec};
use crate::passes::PassSettings;
use crate::rank::normalize::{CamNorm, HmgNorm};
use crate::rank::recipe::{Fuse, Recipe, RecipeName, DEFAULT_RECIPE};
use crate::rank::selection::{Method, Ranking};
use crate::rank::terms::{CamTerm, HmgTerm};
use crate::template::Template;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The paper's settings, compiled in.
pub const PAPER_CONFIG: &str = include_str!("../configs/paper.json");

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
    pub attention: Option<crate::model::kernel::AttentionKernel>,
    pub max_len: Option<usize>,
    pub segment_len: Option<usize>,
    pub max_segments: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub pack_below: Option<usize>,
    pub alpha: Option<f64>,
    pub ratio: Option<f64>,
    pub top: Option<usize>,
    pub hmg_norm: Option<HmgNorm>,
    pub cam_norm: Option<CamNorm>,
    pub recipe: Option<RecipeName>,
    pub hmg_term: Option<HmgTerm>,
    pub cam_term: Option<CamTerm>,
    pub fuse: Option<Fuse>,
    pub template: Option<crate::chat::TemplateSetting>,
    pub data: Option<PathBuf>,
    pub scores: Option<Vec<PathBuf>>,
    pub out: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub report_dir: Option<PathBuf>,
    pub method: Option<Method>,
    pub with_ifd: Option<bool>,
    pub token_nll: Option<bool>,
    pub phases: Option<crate::memory::Phases>,
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

/// How model A is obtained.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShortSpec {
    Model {
        location: String,
        rope_theta: Option<f64>,
    },
    Window(usize),
}

#[derive(Debug, Clone, Serialize)]
pub struct ScoreSettings {
    pub data: PathBuf,
    pub out: PathBuf,
    pub shard: Option<Shard>,
    pub resume: bool,
    pub overwrite: bool,
    pub strict: bool,
    pub max_bad: MaxBad,
    pub quiet: bool,
    /// The --config file read, if any (an input the outputs must not be).
    pub config: Option<PathBuf>,
    pub long_model: String,
    pub short: ShortSpec,
    pub tokenizer: Option<PathBuf>,
    pub device: String,
    /// One worker per entry when there are several (`--devices`).
    pub devices: Vec<String>,
    pub dtype: Option<DTypeArg>,
    pub attention: crate::model::kernel::AttentionKernel,
    pub max_len: usize,
    pub segment_len: usize,
    pub max_segments: usize,
    /// None: picked from free device memory once the models are loaded.
    pub max_batch_tokens: Option<usize>,
    /// None: the device's default ([`crate::memory::default_pack_below`]).
    pub pack_below: Option<usize>,
    pub phases: crate::memory::Phases,
    pub with_ifd: bool,
    /// Keep the per-token response NLL of both models in every record.
    pub token_nll: bool,
    pub template: Template,
    /// `--template chat`: the tokenizer's chat template, which then writes the prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<crate::chat::ChatTemplate>,
    /// The run's [`crate::provenance::Fingerprint`] text, once computed.
    #[serde(skip)]
    pub fingerprint: String,
}

fn need<T>(v: Option<T>, flag: &str) -> Result<T> {
    v.ok_or_else(|| {
        anyhow!(
            "no {flag} given: pass {flag} or set \"{}\" in a --config file",
            flag.trim_start_matches("--").replace('-', "_")
        )
    })
}

/// `--devices`: `all`, or a comma-separated list of `N`, `cuda:N` or `cpu`.
pub fn parse_devices(list: &str) -> Result<Vec<String>> {
    if list.trim() == "all" {
        let n = cuda_device_count();
        if n == 0 {
            bail!("--devices all: no CUDA device found (or this gateau was built without CUDA)");
        }
        return Ok((0..n).map(|i| format!("cuda:{i}")).collect());
    }
    let out: Vec<String> = list
        .split(',')
        .map(|d| {
            let d = d.trim();
            let choice = if d.chars().all(|c| c.is_ascii_digit()) && !d.is_empty() {
                format!("cuda:{d}")
            } else {
                d.to_string()
            };
            choice
                .parse::<DeviceChoice>()
                .map(|c| c.to_string())
                .map_err(|e| anyhow!("--devices {list}: {e}"))
        })
        .collect::<Result<_>>()?;
    if out.iter().any(|d| d == "auto") {
        bail!("--devices {list}: name devices (0,1 or cuda:0,cpu); `auto` is for --device");
    }
    Ok(out)
}

#[cfg(feature = "cuda")]
fn cuda_device_count() -> usize {
    candle_core::cuda::cudarc::driver::result::init()
        .and_then(|_| candle_core::cuda::cudarc::driver::result::device::get_count())
        .map_or(0, |n| n as usize)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device_count() -> usize {
    0
}

/// `data.jsonl` -> `data<suffix>` next to it.
pub fn sibling(data: &Path, suffix: &str) -> PathBuf {
    let stem = data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.strip_suffix(".jsonl").unwrap_or(&stem).to_string();
    data.with_file_name(format!("{stem}{suffix}"))
}

fn positive(v: usize, flag: &str) -> Result<usize> {
    if v == 0 {
        bail!("{flag} must be at least 1");
    }
    Ok(v)
}

impl ScoreSettings {
    pub fn resolve(a: &ScoreArgs) -> Result<Self> {
        let c = load_config(a.common.config.as_deref())?;
        let data = need(a.data.clone().or(c.data), "--data")?;
        let shard = a.shard;
        let out = a.out.clone().or(c.out).unwrap_or_else(|| match shard {
            Some(s) => sibling(&data, &format!(".scores.{}-of-{}.jsonl", s.index, s.count)),
            None => sibling(&data, ".scores.jsonl"),
        });
        let m = &a.models;
        let short = if let Some(w) = m.short_window {
            ShortSpec::Window(w)
        } else if let Some(s) = &m.short_model {
            ShortSpec::Model {
                location: s.clone(),
                rope_theta: m.short_rope_theta.or(c.short_rope_theta),
            }
        } else if let Some(w) = c.short_window {
            ShortSpec::Window(w)
        } else if let Some(s) = c.short_model {
            ShortSpec::Model {
                location: s,
                rope_theta: m.short_rope_theta.or(c.short_rope_theta),
            }
        } else {
            bail!("no short model: pass --short-model MODEL or --short-window W (or set one in --config)");
        };
        if let ShortSpec::Window(w) = short {
            positive(w, "--short-window")?;
        }
        if let ShortSpec::Model {
            rope_theta: Some(t),
            ..
        } = short
        {
            if t.is_nan() || t <= 0.0 {
                bail!("--short-rope-theta must be positive, got {t}");
            }
        }
        let device = match &m.device {
            Some(d) => d.to_string(),
            None => match c.device {
                Some(d) => d
                    .parse::<DeviceChoice>()
                    .map_err(|e| anyhow!("config \"device\": {e}"))?
                    .to_string(),
                None => "auto".into(),
            },
        };
        let devices = match &m.devices {
            Some(list) => parse_devices(list)?,
            None => vec![device.clone()],
        };
        let p = &a.passes;
        let mut s = Self {
            out,
            shard,
            resume: a.resume,
            overwrite: a.overwrite,
            strict: a.common.strict,
            max_bad: a.common.max_bad,
            quiet: a.common.quiet,
            config: a.common.config.clone(),
            long_model: need(m.long_model.clone().or(c.long_model), "--long-model")?,
            short,
            tokenizer: m.tokenizer.clone().or(c.tokenizer),
            device: devices[0].clone(),
            devices,
            dtype: m.dtype.or(c.dtype),
            attention: m
                .attention
                .or(c.attention)
                .unwrap_or(crate::model::kernel::AttentionKernel::Auto),
            max_len: positive(need(p.max_len.or(c.max_len), "--max-len")?, "--max-len")?,
            segment_len: positive(
                need(p.segment_len.or(c.segment_len), "--segment-len")?,
                "--segment-len",
            )?,
            max_segments: positive(
                need(p.max_segments.or(c.max_segments), "--max-segments")?,
                "--max-segments",
            )?,
            max_batch_tokens: p
                .max_batch_tokens
                .or(c.max_batch_tokens)
                .map(|v| positive(v, "--max-batch-tokens"))
                .transpose()?,
            pack_below: p.pack_below.or(c.pack_below),
            phases: p.phases.or(c.phases).unwrap_or(crate::memory::Phases::Auto),
            with_ifd: a.with_ifd || c.with_ifd.unwrap_or(false),
            token_nll: a.token_nll || c.token_nll.unwrap_or(false),
            template: c.template.as_ref().map(|t| t.strings()).unwrap_or_default(),
            chat: None,
            fingerprint: String::new(),
            data,
        };
        if !s.data.is_file() {
            bail!(
                "--data {} does not exist or is not a file",
                s.data.display()
            );
        }
        check_outputs(
            &[Named::new("--out", &s.out)],
            &[Named::new("--data", &s.data)],
        )?;
        if a.template.or(c.template.map(|t| t.kind())) == Some(crate::chat::TemplateKind::Chat) {
            s.chat = Some(crate::model::chat_template::for_model(&s.long_spec())?);
        }
        Ok(s)
    }

    pub fn long_spec(&self) -> ModelSpec {
        ModelSpec {
            location: self.long_model.clone(),
            tokenizer: self.tokenizer.clone(),
            rope_theta: None,
        }
    }

    /// The pass settings with the batch budget resolved for one worker's device.
    pub fn passes(&self, max_batch_tokens: usize) -> PassSettings {
        PassSettings {
            segment_len: self.segment_len,
            max_segments: self.max_segments,
            max_batch_tokens,
            with_ifd: self.with_ifd,
            token_nll: self.token_nll,
        }
    }
}

/// How many samples `select` keeps.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    Ratio(f64),
    Top(usize),
}

impl Keep {
    /// `ceil(ratio * n)` with the spec's 1e-9 guard, or `min(top, n)`.
    pub fn count(&self, n: usize) -> usize {
        match *self {
            Keep::Ratio(r) => ((r * n as f64 - 1e-9).ceil().max(0.0) as usize).min(n),
            Keep::Top(t) => t.min(n),
        }
    }
}

/// Which scores, on which input, ranked how (select, report, inspect, compare).
#[derive(Debug, Clone, Serialize)]
pub struct RankSettings {
    pub data: PathBuf,
    pub scores: Vec<PathBuf>,
    pub keep: Keep,
    pub method: Method,
    pub alpha: f64,
    pub hmg_norm: HmgNorm,
    pub cam_norm: CamNorm,
    pub recipe: Recipe,
    pub strict: bool,
    pub max_bad: MaxBad,
    /// Rank the scored lines even when some lines have no record.
    pub allow_missing: bool,
    pub quiet: bool,
    /// The --config file read, if any.
    pub config: Option<PathBuf>,
}

impl RankSettings {
    pub fn ranking(&self) -> Ranking {
        Ranking {
            recipe: self.recipe,
            alpha: self.alpha,
            hmg_norm: self.hmg_norm,
            cam_norm: self.cam_norm,
        }
    }

    pub fn resolve(a: &RankArgs, common: &CommonArgs) -> Result<(Self, ConfigFile)> {
        let c = load_config(common.config.as_deref())?;
        let data = need(a.data.clone().or(c.data.clone()), "--data")?;
        let scores = if !a.scores.is_empty() {
            a.scores.clone()
        } else if let Some(s) = c.scores.clone().filter(|s| !s.is_empty()) {
            s
        } else {
            vec![sibling(&data, ".scores.jsonl")]
        };
        let keep = match (a.top, a.ratio) {
            (Some(t), _) => Keep::Top(t),
            (None, Some(r)) => Keep::Ratio(r),
            (None, None) => match (c.top, c.ratio) {
                (Some(t), _) => Keep::Top(t),
                (None, Some(r)) => Keep::Ratio(r),
                (None, None) => bail!("no --ratio or --top given"),
            },
        };
        if let Keep::Ratio(r) = keep {
            if !(0.0..=1.0).contains(&r) {
                bail!("--ratio must be in [0, 1], got {r}");
            }
        }
        let alpha = need(a.alpha.or(c.alpha), "--alpha")?;
        if !(0.0..=1.0).contains(&alpha) {
            bail!("--alpha must be in [0, 1], got {alpha}");
        }
        if !data.is_file() {
            bail!("--data {} does not exist or is not a file", data.display());
        }
        for s in &scores {
            if !s.is_file() {
                bail!(
                    "score file {} does not exist (run `gateau score --data {}` first, or \
                     pass --scores)",
                    s.display(),
                    data.display()
                );
            }
        }
        let s = Self {
            data,
            scores,
            keep,
            method: a.method.or(c.method).unwrap_or(Method::Gateau),
            alpha,
            hmg_norm: a.hmg_norm.or(c.hmg_norm).unwrap_or(HmgNorm::Minmax),
            cam_norm: a.cam_norm.or(c.cam_norm).unwrap_or(CamNorm::Softmax),
            recipe: {
                let base = a.recipe.or(c.recipe).unwrap_or(DEFAULT_RECIPE).recipe();
                Recipe {
                    hmg: a.hmg_term.or(c.hmg_term).unwrap_or(base.hmg),
                    cam: a.cam_term.or(c.cam_term).unwrap_or(base.cam),
                    fuse: a.fuse.or(c.fuse).unwrap_or(base.fuse),
                }
            },
            strict: common.strict,
            max_bad: common.max_bad,
            allow_missing: a.allow_missing,
            quiet: common.quiet,
            config: common.config.clone(),
        };
        Ok((s, c))
    }

    /// The files this run reads, named by their flags.
    pub fn inputs(&self) -> Vec<Named> {
        let mut v = vec![Named::new("--data", &self.data)];
        v.extend(self.scores.iter().map(|f| Named::new("--scores", f)));
        v.extend(self.config.iter().map(|f| Named::new("--config", f)));
        v
    }

    /// Refuses an output path that is one of the inputs.
    pub fn check_output(&self, out: &Path, flag: &str) -> Result<()> {
        check_outputs(&[Named::new(flag, out)], &self.inputs())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SelectSettings {
    #[serde(flatten)]
    pub rank: RankSettings,
    pub out: PathBuf,
    pub keep_order: bool,
    pub report: Option<PathBuf>,
    pub report_dir: Option<PathBuf>,
}

impl SelectSettings {
    pub fn resolve(a: &SelectArgs) -> Result<Self> {
        let (rank, c) = RankSettings::resolve(&a.rank, &a.common)?;
        let out = a
            .out
            .clone()
            .or(c.out)
            .unwrap_or_else(|| sibling(&rank.data, ".selected.jsonl"));
        let report = a.report.clone().or(c.report);
        let report_dir = a.report_dir.clone().or(c.report_dir);
        // Every file select writes: none may be an input, another output, or (without
        // --overwrite) already there.
        let mut outputs = vec![Named::new("--out", &out)];
        outputs.extend(report.iter().map(|r| Named::new("--report", r)));
        if let Some(dir) = &report_dir {
            outputs.extend(
                crate::summary::FILES
                    .iter()
                    .map(|f| Named::new("--report-dir", dir.join(f))),
            );
        }
        check_outputs(&outputs, &rank.inputs())?;
        for o in &outputs {
            check_new(o, a.overwrite)?;
        }
        Ok(Self {
            rank,
            out,
            keep_order: a.keep_order,
            report,
            report_dir,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportSettings {
    #[serde(flatten)]
    pub rank: RankSettings,
    pub out: PathBuf,
    pub bins: usize,
}

impl ReportSettings {
    pub fn resolve(a: &ReportArgs) -> Result<Self> {
        let (rank, c) = RankSettings::resolve(&a.rank, &a.common)?;
        let out = a
            .out
            .clone()
            .or(c.report_dir)
            .unwrap_or_else(|| sibling(&rank.data, ".report"));
        rank.check_output(&out, "--out")?;
        Ok(Self {
            rank,
            out,
            bins: positive(a.bins, "--bins")?,
        })
    }
}

/// `gateau bench` settings: the dtype default follows the device.
pub fn bench_settings(a: &crate::cli::BenchArgs) -> Result<crate::bench::BenchSettings> {
    let (device, _) = crate::model::open_device(&a.device)?;
    Ok(crate::bench::BenchSettings {
        shape: a.shape,
        contexts: a.ctx.clone(),
        resp: positive(a.resp, "--resp")?,
        mid: a.mid,
        segment_len: positive(a.segment_len, "--segment-len")?,
        segments: a.segments,
        max_batch_tokens: a
            .max_batch_tokens
            .map(|n| positive(n, "--max-batch-tokens"))
            .transpose()?,
        repeat: positive(a.repeat, "--repeat")?,
        warmup: a.warmup,
        device: a.device.clone(),
        dtype: resolve_dtype(a.dtype, &device),
        attention: a.attention,
        json: a.json.clone(),
        profile: a.profile,
        small_segments: a.small_segments,
    })
}

/// `--dtype`, defaulting to bf16 on CUDA and f32 on the CPU.
pub fn resolve_dtype(d: Option<DTypeArg>, device: &candle_core::Device) -> candle_core::DType {
    use candle_core::DType;
    match d {
        Some(DTypeArg::F32) => DType::F32,
        Some(DTypeArg::Bf16) => DType::BF16,
        Some(DTypeArg::F16) => DType::F16,
        None if device.is_cuda() => DType::BF16,
        None => DType::F32,
    }
}

/// For logs: the resolved settings as one JSON line.
/// `gateau eval`'s settings: the ranking's, plus labels, ratios, bands and outputs.
pub fn eval_settings(a: &crate::cli::EvalArgs) -> Result<crate::eval::EvalSettings> {
    let (rank, _) = RankSettings::resolve(&a.rank, &a.common)?;
    for &r in &a.ratios {
        if !(r > 0.0 && r <= 1.0) {
            bail!("--ratios: {r} is not a fraction in (0, 1]");
        }
    }
    let mut bands = a.bands.clone();
    bands.sort_unstable();
    bands.dedup();
    for (flag, p) in [("--json", &a.json), ("--plots", &a.plots)] {
        if let Some(p) = p {
            rank.check_output(p, flag)?;
        }
    }
    Ok(crate::eval::EvalSettings {
        rank,
        label_field: a.label_field.clone(),
        positive: a.positive.clone(),
        ratios: a.ratios.clone(),
        bands,
        json: a.json.clone(),
        plots: a.plots.clone(),
    })
}

pub fn describe<T: Serialize>(s: &T) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_ceiling_is_exact() {
        assert_eq!(Keep::Ratio(0.3).count(10), 3);
        assert_eq!(Keep::Ratio(0.3).count(11), 4);
        assert_eq!(Keep::Ratio(0.0).count(11), 0);
        assert_eq!(Keep::Ratio(1.0).count(7), 7);
        assert_eq!(Keep::Top(5).count(3), 3);
    }

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
            crate::chat::TemplateSetting::Strings(Template::default())
        );
    }

    #[test]
    fn device_lists() {
        assert_eq!(parse_devices("0, 2").unwrap(), ["cuda:0", "cuda:2"]);
        assert_eq!(parse_devices("cpu,cuda:1").unwrap(), ["cpu", "cuda:1"]);
        assert!(parse_devices("gpu").is_err());
        assert!(parse_devices("auto").is_err());
    }

    #[test]
    fn sibling_names() {
        assert_eq!(
            sibling(Path::new("d/x.jsonl"), ".scores.jsonl"),
            PathBuf::from("d/x.scores.jsonl")
        );
    }
}
