//! The models one device holds for `gateau score`: B, and A when it is a separate
//! checkpoint (or, in a two-phase run, A's perplexities computed beforehand), with the
//! segment batch budget for that device. Also the one-or-two-phase decision.

use super::memory::{self, Phases};
use super::passes::ShortModel;
use crate::checkpoint::{self, LoadedModel, ModelSpec};
use crate::cli::settings::{ScoreSettings, ShortSpec};
use crate::model::{self, Compute, ModelConfig};
use anyhow::{anyhow, bail, Result};
use candle_core::{DType, Device};
use std::collections::HashMap;

/// Model A's numbers for one sample, from phase one of a two-phase run.
#[derive(Debug, Clone)]
pub struct ShortResult {
    pub ppl: f64,
    pub nll: Option<Vec<f32>>,
}

pub struct Models {
    pub long: LoadedModel,
    pub short: Option<LoadedModel>,
    window: Option<usize>,
    /// Two-phase runs: ppl_short by line, computed before the long model was loaded.
    given: Option<HashMap<u64, ShortResult>>,
    /// Most tokens in one batched segment pass on this device.
    pub batch_tokens: usize,
    /// Samples with fewer segment tokens than this share segment passes (0: never).
    pub pack_below: usize,
}

pub fn short_spec(s: &ScoreSettings) -> Option<ModelSpec> {
    match &s.short {
        ShortSpec::Model {
            location,
            rope_theta,
        } => Some(ModelSpec {
            location: location.clone(),
            tokenizer: s.tokenizer.clone(),
            rope_theta: *rope_theta,
        }),
        ShortSpec::Window(_) => None,
    }
}

/// Loads model A and checks it is homologous to B (same vocabulary size).
pub fn load_short(
    s: &ScoreSettings,
    spec: &ModelSpec,
    long_vocab: usize,
    c: &Compute,
) -> Result<LoadedModel> {
    // Model A runs full passes only, which stay 16-bit under --dtype fp8: no E4M3 twin.
    let c = Compute {
        fp8: false,
        ..c.clone()
    };
    let m = checkpoint::load(spec, &c)?;
    let a = m.tokenizer.get_vocab_size(true);
    if a != long_vocab {
        bail!(
            "--short-model {} and --long-model {} are not homologous: their tokenizers have \
             {a} and {long_vocab} tokens",
            spec.location,
            s.long_model
        );
    }
    Ok(m)
}

impl Models {
    pub fn load(
        s: &ScoreSettings,
        c: &Compute,
        given: Option<HashMap<u64, ShortResult>>,
    ) -> Result<Self> {
        let (device, dtype) = (&c.device, c.dtype);
        let long = checkpoint::load(&s.long_spec(), c)?;
        let vocab = long.tokenizer.get_vocab_size(true);
        let short = match (short_spec(s), &given) {
            (Some(spec), None) => Some(load_short(s, &spec, vocab, c)?),
            _ => None,
        };
        let window = match s.short {
            ShortSpec::Window(w) => Some(w),
            ShortSpec::Model { .. } => None,
        };
        let width = dtype.size_in_bytes() as u64;
        let batch_tokens = s.max_batch_tokens.unwrap_or_else(|| {
            memory::default_batch_tokens(long.llama.config(), width, model::free_memory(device))
        });
        if !s.quiet {
            for m in std::iter::once(&long).chain(&short) {
                if let Some(q) = &m.fp8 {
                    eprintln!("gateau score: fp8: {}: {q}", m.source);
                }
            }
        }
        // E4M3 activation scales are per token, so fp8 packs small samples as bf16 does.
        let pack_below = s
            .pack_below
            .unwrap_or_else(|| memory::default_pack_below(device));
        Ok(Self {
            long,
            short,
            window,
            given,
            batch_tokens,
            pack_below,
        })
    }

    /// Model A for the sample on `line`.
    pub fn short_for(&self, line: u64) -> Result<ShortModel<'_>> {
        Ok(match (&self.given, &self.short, self.window) {
            (Some(g), _, _) => {
                let r = g.get(&line).ok_or_else(|| {
                    anyhow!("line {line} has no ppl_short from the short-model phase")
                })?;
                ShortModel::Given {
                    ppl: r.ppl,
                    nll: r.nll.as_deref(),
                }
            }
            (None, Some(m), _) => ShortModel::Separate(&m.llama),
            (None, None, w) => ShortModel::Window(w.unwrap_or(0)),
        })
    }

    /// What `--bucket` padded in each model's passes ("long model: ...", "short model:
    /// ..."), for the models that padded any.
    pub fn bucket_summaries(&self) -> Vec<String> {
        let short = self.short.as_ref().map(|m| ("short", m));
        [("long", &self.long)]
            .into_iter()
            .chain(short)
            .filter_map(|(name, m)| {
                m.llama
                    .bucket_summary()
                    .map(|s| format!("{name} model: {s}"))
            })
            .collect()
    }

    pub fn short_name(&self) -> String {
        match (&self.given, &self.short) {
            (Some(_), _) => "(computed in the first phase)".into(),
            (None, Some(m)) => m.source.clone(),
            (None, None) => "(window of the long model)".into(),
        }
    }
}

/// Whether this run goes in two phases (`--phases`, or auto: a separate model A on a GPU
/// where A, B and a `--max-len` pass do not fit in free memory).
pub fn two_phase(s: &ScoreSettings, device: &Device, dtype: DType, fp8: bool) -> Result<bool> {
    let spec = short_spec(s);
    match (s.phases, &spec) {
        (Phases::One, _) => Ok(false),
        (Phases::Two, None) => {
            bail!("--phases two needs a separate --short-model (--short-window uses one model)")
        }
        (Phases::Two, Some(_)) => Ok(true),
        (Phases::Auto, None) => Ok(false),
        (Phases::Auto, Some(spec)) => {
            let Some(free) = model::free_memory(device) else {
                return Ok(false);
            };
            let (lc, _) = crate::checkpoint::describe_model(&s.long_spec())?;
            let (sc, _) = crate::checkpoint::describe_model(spec)?;
            let width = dtype.size_in_bytes() as u64;
            let twin = if fp8 { memory::fp8_twin_bytes(&lc) } else { 0 };
            let need = memory::needed(&[&lc, &sc], width, s.max_len) + twin;
            if need <= free {
                return Ok(false);
            }
            if !s.quiet {
                eprintln!(
                    "gateau score: both models ({} + {}) and a {}-token pass need about {}, but \
                     the device has {} free: scoring in two phases (the short model over every \
                     sample, then the long model); --phases one overrides",
                    memory::gb(memory::weight_bytes(&sc, width)),
                    memory::gb(memory::weight_bytes(&lc, width)),
                    s.max_len,
                    memory::gb(need),
                    memory::gb(free)
                );
            }
            Ok(true)
        }
    }
}

/// The long model's context for the settings line, e.g. "qwen2, trained context 32768
/// tokens (max_position_embeddings 32768, RoPE yarn x4)".
pub fn context_phrase(cfg: &ModelConfig) -> String {
    let rope = match &cfg.rope_scaling {
        None => "default".to_string(),
        Some(r) => format!("{} x{}", r.name(), r.factor()),
    };
    format!(
        "{}, trained context {} tokens (max_position_embeddings {}, RoPE {rope})",
        cfg.family.name(),
        cfg.context_length(),
        cfg.max_position_embeddings
    )
}

/// `--max-len` against the long model: a sliding window shorter than it is an error (the
/// attention it needs is not implemented); beyond the trained context a warning, returned
/// for the caller to print, or an error with `--strict`.
pub fn check_context(s: &ScoreSettings, cfg: &ModelConfig) -> Result<Option<String>> {
    if let Some(w) = cfg.sliding_window {
        if w < s.max_len {
            bail!(
                "--max-len {} exceeds the sliding window of {w} tokens of --long-model {} \
                 (config.json sliding_window): gateau computes full attention only; pass \
                 --max-len {w} or less",
                s.max_len,
                s.long_model
            );
        }
    }
    let context = cfg.context_length();
    if s.max_len <= context {
        return Ok(None);
    }
    let msg = format!(
        "--max-len {} exceeds the trained context of --long-model {} ({}): perplexities past \
         {context} tokens come from positions the model never saw; pass --max-len {context} \
         or less",
        s.max_len,
        s.long_model,
        context_phrase(cfg)
    );
    if s.strict {
        bail!("{msg} (--strict)");
    }
    Ok(Some(msg))
}
