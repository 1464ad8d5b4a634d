//! The `gateau bench` options of a realistic mix: whole samples over a length distribution
//! (`--mix longalign`, or `--lengths FILE`) instead of the per-context phases, and what to
//! print for the PyTorch anchor's runs at the same lengths.

use clap::{Args, ValueEnum};
use serde::Serialize;
use std::path::PathBuf;

/// A built-in length distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MixName {
    /// An approximation of LongAlign-10k (not measured from the data set): totals of
    /// 8,192-65,535 tokens, 50% in 8k-16k, 30% in 16k-32k, 20% in 32k-64k, log-uniform
    /// within each band; responses log-uniform in 64-2,048 tokens.
    Longalign,
}

impl MixName {
    pub fn name(self) -> &'static str {
        match self {
            MixName::Longalign => "longalign",
        }
    }
}

/// `--print`: what to print instead of running the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MixPrint {
    /// The mix, one sample per line in the --lengths format (TOKENS RESPONSE).
    Lengths,
    /// The PyTorch anchor's arguments for the --anchor-points representative samples, one
    /// run per line (`--ctx C --resp R --mid M --seg-len L`).
    TorchArgs,
}

#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "A realistic mix")]
pub struct MixArgs {
    /// Time whole samples over this built-in length distribution instead of the --ctx
    /// phases: each sample scored once as `score` scores it (both full passes, every
    /// segment pass), after --warmup untimed small samples; --ctx, --resp, --segments and
    /// --repeat do not apply [default: none, the --ctx phases].
    #[arg(long, value_enum, value_name = "NAME", conflicts_with = "lengths")]
    pub mix: Option<MixName>,
    /// Samples drawn from --mix (stratified: each length band gets its share of them).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub mix_samples: usize,
    /// Seed of the --mix draw: the same seed and --mix-samples give the same lengths.
    #[arg(long, value_name = "SEED", default_value_t = 1)]
    pub mix_seed: u64,
    /// Time the whole samples listed in FILE instead (as --mix does): one sample per line,
    /// `TOKENS RESPONSE` (whole-sample tokens, BOS and the --mid instruction included, and
    /// response tokens), blank lines and `#` comments skipped [default: none].
    #[arg(long, value_name = "FILE")]
    pub lengths: Option<PathBuf>,
    /// Print this for the mix (--mix or --lengths) and exit, without a model: `lengths` or
    /// `torch-args` [default: none, run the mix].
    #[arg(long, value_enum, value_name = "WHAT")]
    pub print: Option<MixPrint>,
    /// Representative samples of the mix for the PyTorch anchor (`--print torch-args`):
    /// totals and responses at evenly spaced quantiles, the shortest and the longest
    /// included; 0: every sample.
    #[arg(long, value_name = "K", default_value_t = 4)]
    pub anchor_points: usize,
}
