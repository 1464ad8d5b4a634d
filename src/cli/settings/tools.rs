//! The settings of the tool subcommands: `bench`, `eval`, `inspect`, `compare` and
//! `probe`.

use super::{positive, resolve_dtype, RankSettings};
use crate::checkpoint::ModelSpec;
use crate::cli::{
    BenchArgs, CompareArgs, EvalArgs, InspectArgs, MixArgs, MixName, MixPrint, ProbeArgs, ProbeKind,
};
use crate::input::chat::TemplateKind;
use crate::input::template::Template;
use crate::model::dispatch::AttentionKernel;
use crate::model::shapes::Shape;
use crate::model::DeviceChoice;
use anyhow::{bail, Result};
use candle_core::DType;
use serde::Serialize;
use std::path::PathBuf;

/// What `gateau bench` runs.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    pub shape: Shape,
    pub contexts: Vec<usize>,
    pub resp: usize,
    pub mid: usize,
    pub segment_len: usize,
    pub segments: usize,
    /// None: what `gateau score` would pick on the device.
    pub max_batch_tokens: Option<usize>,
    pub repeat: usize,
    pub warmup: usize,
    pub device: DeviceChoice,
    pub dtype: DType,
    /// `--dtype fp8`: `dtype` is bf16 and the projections E4M3.
    pub fp8: bool,
    pub attention: AttentionKernel,
    pub bucket: crate::model::bucket::Bucket,
    pub json: Option<std::path::PathBuf>,
    pub profile: bool,
    pub small_segments: usize,
    /// Whole samples over a length distribution instead of the --ctx phases.
    pub mix: Option<MixSource>,
    /// With a mix: print this and exit.
    pub print: Option<MixPrint>,
    /// Representative samples of the mix for the PyTorch anchor (0: every sample).
    pub anchor_points: usize,
}

/// Where `gateau bench`'s mix of whole samples comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum MixSource {
    /// A built-in distribution, `samples` drawn with `seed`.
    Builtin {
        name: MixName,
        samples: usize,
        seed: u64,
    },
    /// A --lengths file.
    File(PathBuf),
}

impl BenchSettings {
    /// The dtype as `--dtype` spells it.
    pub fn dtype_label(&self) -> &'static str {
        match self.fp8 {
            true => "fp8",
            false => super::dtype_name(self.dtype),
        }
    }
}

/// `gateau bench` settings: the dtype default follows the device.
pub fn bench_settings(a: &BenchArgs) -> Result<BenchSettings> {
    let (device, _) = crate::model::open_device(&a.device)?;
    Ok(BenchSettings {
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
        device: a.device,
        dtype: resolve_dtype(a.dtype, &device),
        fp8: crate::cli::DTypeArg::is_fp8(a.dtype),
        attention: a.attention,
        bucket: a.bucket,
        json: a.json.clone(),
        profile: a.profile,
        small_segments: a.small_segments,
        mix: mix_source(&a.mix)?,
        print: a.mix.print,
        anchor_points: a.mix.anchor_points,
    })
}

/// The mix `--mix` or `--lengths` names, if any.
fn mix_source(m: &MixArgs) -> Result<Option<MixSource>> {
    let source = match (m.mix, &m.lengths) {
        (Some(name), _) => Some(MixSource::Builtin {
            name,
            samples: positive(m.mix_samples, "--mix-samples")?,
            seed: m.mix_seed,
        }),
        (None, Some(p)) => Some(MixSource::File(p.clone())),
        (None, None) => None,
    };
    if source.is_none() && m.print.is_some() {
        bail!("--print needs a mix: --mix NAME or --lengths FILE");
    }
    Ok(source)
}

/// What `eval` needs beyond the ranking settings.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSettings {
    #[serde(flatten)]
    pub rank: RankSettings,
    pub label_field: String,
    /// Label values that count as positive (JSON text of non-strings: true, 1).
    pub positive: Vec<String>,
    pub ratios: Vec<f64>,
    /// Upper edges (exclusive) of the length bands, in tokens.
    pub bands: Vec<usize>,
    pub json: Option<PathBuf>,
    pub plots: Option<PathBuf>,
}

/// `gateau eval`'s settings: the ranking's, plus labels, ratios, bands and outputs.
pub fn eval_settings(a: &EvalArgs) -> Result<EvalSettings> {
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
    Ok(EvalSettings {
        rank,
        label_field: a.label_field.clone(),
        positive: a.positive.clone(),
        ratios: a.ratios.clone(),
        bands,
        json: a.json.clone(),
        plots: a.plots.clone(),
    })
}

/// `gateau inspect`: one sample of a ranking, and how its segments map to text.
pub struct InspectSettings {
    pub rank: RankSettings,
    pub id: String,
    pub out: Option<PathBuf>,
    pub json: bool,
    /// The tokenizer's model, the template and max_len: how segments map to text.
    pub model: Option<ModelSpec>,
    pub template: Template,
    /// Whether the scores were made with `--template chat`.
    pub chat: bool,
    pub max_len: Option<usize>,
}

impl InspectSettings {
    pub fn resolve(a: &InspectArgs) -> Result<Self> {
        let (rank, c) = RankSettings::resolve(&a.rank, &a.common)?;
        if let Some(o) = &a.out {
            rank.check_output(o, "--out")?;
        }
        let model = a
            .long_model
            .clone()
            .or(c.long_model)
            .map(|location| ModelSpec {
                location,
                tokenizer: a.tokenizer.clone().or(c.tokenizer.clone()),
                rope_theta: None,
            });
        Ok(Self {
            rank,
            id: a.id.clone(),
            out: a.out.clone(),
            json: a.json,
            model,
            template: c.template.as_ref().map(|t| t.strings()).unwrap_or_default(),
            chat: a.template.or(c.template.map(|t| t.kind())) == Some(TemplateKind::Chat),
            max_len: c.max_len,
        })
    }
}

/// `gateau compare`: one ranking's settings, every method at its ratio.
#[derive(Debug, Clone, Serialize)]
pub struct CompareSettings {
    #[serde(flatten)]
    pub rank: RankSettings,
    /// Also write the table as JSON here.
    pub json: Option<PathBuf>,
}

impl CompareSettings {
    pub fn resolve(a: &CompareArgs) -> Result<Self> {
        let (rank, _) = RankSettings::resolve(&a.rank, &a.common)?;
        if let Some(j) = &a.json {
            rank.check_output(j, "--json")?;
        }
        Ok(Self {
            rank,
            json: a.json.clone(),
        })
    }
}

/// What to make.
#[derive(Debug, Clone)]
pub struct ProbeSettings {
    pub n: usize,
    pub seed: u64,
    pub min_tokens: usize,
    pub max_tokens: usize,
    /// Model A's window W (the scoring `--short-window`).
    pub window: usize,
    /// Far passages end at least this many tokens before the end of the context.
    pub gap: usize,
    /// Far-apart passages of `far-multi` are at least this many tokens apart.
    pub spread: usize,
    pub kinds: Vec<ProbeKind>,
    /// Most tokens of one document in a context (more documents for `diffuse`).
    pub doc_tokens: usize,
}

/// `gateau probe`: where the documents come from, whose tokens place the passages, what
/// to make and where it goes.
#[derive(Debug, Clone)]
pub struct ProbeRun {
    pub docs: Vec<PathBuf>,
    pub model: ModelSpec,
    pub out: PathBuf,
    pub make: ProbeSettings,
}

impl ProbeRun {
    pub fn resolve(a: &ProbeArgs) -> Result<Self> {
        if a.out.exists() && !a.overwrite {
            bail!(
                "--out {} exists; pass --overwrite to replace it",
                a.out.display()
            );
        }
        Ok(Self {
            docs: a.docs.clone(),
            model: ModelSpec {
                location: a.long_model.clone(),
                tokenizer: a.tokenizer.clone(),
                rope_theta: None,
            },
            out: a.out.clone(),
            make: ProbeSettings {
                n: a.n,
                seed: a.seed,
                min_tokens: a.min_tokens,
                max_tokens: a.max_tokens,
                window: a.window,
                gap: a.gap,
                spread: a.spread,
                kinds: a.kinds.clone(),
                doc_tokens: a.doc_tokens,
            },
        })
    }
}
