//! Command line: clap derive, doc comments are the help. Values left unset here fall back
//! to the config file, then to the built-in paper settings (see `settings`).

pub mod args;
mod help_check;
pub mod mix_args;
pub mod settings;
pub mod values;

pub use args::*;
use clap::{Parser, Subcommand};
pub use mix_args::{MixArgs, MixName, MixPrint};
pub use values::{DTypeArg, MaxBad, Phases, ProbeKind, Shard};

/// Pick the most valuable samples of a long-context instruction dataset (GATEAU).
///
/// `gateau score` runs two homologous models over every sample and writes one JSON record
/// per sample: response perplexities under the short- and long-window model (HMG), and
/// per-segment perplexities and attention of the long model (CAM). `gateau select` ranks
/// the records across the dataset and writes the top samples, byte for byte.
///
/// Exit status: 0 success (also with bad or skipped samples, up to --max-bad), 1 error
/// (nothing usable, a refused input or output), 2 finished with more bad or skipped samples
/// than --max-bad (see the summary, the records' "error" fields and `select --report`).
#[derive(Debug, Parser)]
#[command(name = "gateau", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score every sample of a JSONL file (resumable, shardable).
    Score(ScoreArgs),
    /// Rank score records across the dataset and write the selected samples.
    Select(SelectArgs),
    /// Plots and a summary of a selection: distributions, the cut, HMG vs CAM, length
    /// drift, per-source counts (PNG + summary.json + summary.md).
    Report(ReportArgs),
    /// One sample's segment view: importance (IS) and attention (ATT) along the context,
    /// with its HMP, CAS, score and rank.
    Inspect(InspectArgs),
    /// Overlap (Jaccard) of the selections made by every method at the same ratio.
    Compare(CompareArgs),
    /// Time every phase on random-weight models of a named shape (tokens/s, TFLOP/s, MFU).
    Bench(BenchArgs),
    /// How well every recipe, term and baseline separates labeled samples: AUROC,
    /// precision of the top fractions, length bias, per label pair and length band.
    Eval(EvalArgs),
    /// Make a labeled probe set from plain-text documents (far, far-multi, diffuse, near,
    /// none), seeded and deterministic, for `gateau eval`.
    Probe(ProbeArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
