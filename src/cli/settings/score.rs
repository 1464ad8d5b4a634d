//! `gateau score`'s settings: data and outputs, the two models and their devices, the
//! pass sizes.

use super::provenance::{score_sources, Origins, Sources};
use super::{load_config, need, positive, sibling};
use crate::checkpoint::ModelSpec;
use crate::cli::{DTypeArg, MaxBad, Phases, ScoreArgs, Shard};
use crate::files::{check_outputs, Named};
use crate::input::chat::{ChatTemplate, TemplateKind};
use crate::input::template::Template;
use crate::model::bucket::Bucket;
use crate::model::dispatch::AttentionKernel;
use crate::model::DeviceChoice;
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Score only the first N pending samples (`--limit`).
    pub limit: Option<u64>,
    /// `--dry-run`: tokenize and estimate, load no weights, write no --out.
    pub dry_run: bool,
    /// `--dry-run --json FILE`.
    pub json: Option<PathBuf>,
    /// `--data -`: standard input copied to a temporary file (`data`), removed once the
    /// last copy of the settings is dropped.
    #[serde(skip)]
    pub stdin: Option<Arc<crate::input::reader::Spool>>,
    pub resume: bool,
    pub overwrite: bool,
    pub strict: bool,
    pub max_bad: MaxBad,
    pub quiet: bool,
    /// Also log the resolved settings as JSON.
    #[serde(skip)]
    pub verbose: bool,
    /// The --config file read, if any (an input the outputs must not be).
    pub config: Option<PathBuf>,
    pub long_model: String,
    pub short: ShortSpec,
    pub tokenizer: Option<PathBuf>,
    pub device: DeviceChoice,
    /// One worker per entry when there are several (`--devices`).
    pub devices: Vec<DeviceChoice>,
    pub dtype: Option<DTypeArg>,
    pub attention: AttentionKernel,
    pub max_len: usize,
    pub segment_len: usize,
    pub max_segments: usize,
    /// None: picked from free device memory once the models are loaded.
    pub max_batch_tokens: Option<usize>,
    /// None: the device's default ([`crate::score::memory::default_pack_below`]).
    pub pack_below: Option<usize>,
    /// `--bucket`: the attention length of single-sequence passes.
    pub bucket: Bucket,
    pub phases: Phases,
    pub with_ifd: bool,
    /// Keep the per-token response NLL of both models in every record.
    pub token_nll: bool,
    pub template: Template,
    /// `--template chat`: the tokenizer's chat template, which then writes the prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatTemplate>,
    /// The run's [`crate::records::provenance::Fingerprint`] text, once computed.
    #[serde(skip)]
    pub fingerprint: String,
    /// Where each value came from (flag, config, built-in), for the settings line.
    #[serde(skip)]
    pub sources: Sources,
}

/// `--devices`: `all`, or a comma-separated list of `N`, `cuda:N` or `cpu`.
pub fn parse_devices(list: &str) -> Result<Vec<DeviceChoice>> {
    if list.trim() == "all" {
        let n = cuda_device_count();
        if n == 0 {
            bail!("--devices all: no CUDA device found (or this gateau was built without CUDA)");
        }
        return Ok((0..n).map(DeviceChoice::Cuda).collect());
    }
    let out: Vec<DeviceChoice> = list
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
                .map_err(|e| anyhow!("--devices {list}: {e}"))
        })
        .collect::<Result<_>>()?;
    if out.contains(&DeviceChoice::Auto) {
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

impl ScoreSettings {
    pub fn resolve(a: &ScoreArgs) -> Result<Self> {
        let c = load_config(a.common.config.as_deref())?;
        let mut data = need(a.data.clone().or(c.data), "--data")?;
        let shard = a.shard;
        let from_stdin = data == Path::new("-");
        let out = match a.out.clone().or(c.out) {
            Some(o) => o,
            None if from_stdin && !a.dry_run => bail!(
                "--data - reads standard input, which has no name to put the scores beside: \
                 pass --out FILE"
            ),
            None => match shard {
                Some(s) => sibling(&data, &format!(".scores.{}-of-{}.jsonl", s.index, s.count)),
                None => sibling(&data, ".scores.jsonl"),
            },
        };
        if a.limit == Some(0) {
            bail!("--limit must be at least 1 (leave it out to score every pending sample)");
        }
        let stdin = match from_stdin {
            true => {
                let spool = crate::input::reader::Spool::stdin()?;
                data = spool.path.clone();
                Some(Arc::new(spool))
            }
            false => None,
        };
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
            Some(d) => *d,
            None => match c.device {
                Some(d) => d
                    .parse::<DeviceChoice>()
                    .map_err(|e| anyhow!("config \"device\": {e}"))?,
                None => DeviceChoice::Auto,
            },
        };
        let devices = match &m.devices {
            Some(list) => parse_devices(list)?,
            None => vec![device],
        };
        let p = &a.passes;
        let origins = Origins::read(a.common.config.as_deref());
        let sources = score_sources(a, &origins, matches!(short, ShortSpec::Window(_)));
        let mut s = Self {
            out,
            shard,
            limit: a.limit,
            dry_run: a.dry_run,
            json: a.json.clone(),
            stdin,
            resume: a.resume,
            overwrite: a.overwrite,
            strict: a.common.strict,
            max_bad: a.common.max_bad,
            quiet: a.common.quiet,
            verbose: a.common.verbose,
            config: a.common.config.clone(),
            long_model: need(m.long_model.clone().or(c.long_model), "--long-model")?,
            short,
            tokenizer: m.tokenizer.clone().or(c.tokenizer),
            device: devices[0],
            devices,
            dtype: m.dtype.or(c.dtype),
            attention: m.attention.or(c.attention).unwrap_or(AttentionKernel::Auto),
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
            bucket: p.bucket.or(c.bucket).unwrap_or_default(),
            phases: p.phases.or(c.phases).unwrap_or(Phases::Auto),
            with_ifd: a.with_ifd || c.with_ifd.unwrap_or(false),
            token_nll: a.token_nll || c.token_nll.unwrap_or(false),
            template: c.template.as_ref().map(|t| t.strings()).unwrap_or_default(),
            chat: None,
            fingerprint: String::new(),
            sources,
            data,
        };
        if !s.data.is_file() {
            bail!(
                "--data {} does not exist or is not a file",
                s.data.display()
            );
        }
        // A dry run writes no --out; only its --json must not be an input.
        let outputs: Vec<Named> = match s.dry_run {
            true => s.json.iter().map(|j| Named::new("--json", j)).collect(),
            false => vec![Named::new("--out", &s.out)],
        };
        check_outputs(&outputs, &[Named::new("--data", &s.data)])?;
        if a.template.or(c.template.map(|t| t.kind())) == Some(TemplateKind::Chat) {
            s.chat = Some(crate::checkpoint::chat_template::for_model(&s.long_spec())?);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists() {
        use DeviceChoice::{Cpu, Cuda};
        assert_eq!(parse_devices("0, 2").unwrap(), [Cuda(0), Cuda(2)]);
        assert_eq!(parse_devices("cpu,cuda:1").unwrap(), [Cpu, Cuda(1)]);
        assert!(parse_devices("gpu").is_err());
        assert!(parse_devices("auto").is_err());
    }
}
